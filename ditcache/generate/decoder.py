"""Latents to what ``generate`` stores: uint8 images, or the latents themselves (latent models without a VAE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ImageDecoder:
    """Latents -> uint8 (B, H, W, C): pixel models directly, latent models through a VAE loaded once."""

    def __init__(self, spec, vae_path: str | None, device: str):
        self.spec, self.vae, self.device = spec, None, device
        if spec.latent and vae_path is not None:
            from diffusers import AutoencoderKL

            path = Path(vae_path)
            if (path / "vae").is_dir():
                path = path / "vae"
            self.vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval().to(device)

    @property
    def images(self) -> bool:
        """Whether the output is uint8 images (else float32 latents)."""
        return not self.spec.latent or self.vae is not None

    def __call__(self, latents) -> np.ndarray:
        import torch

        from ditcache.images import decode, to_uint8

        if not self.spec.latent:
            return to_uint8(decode(latents, self.spec))
        if self.vae is None:
            return latents.float().cpu().numpy()
        with torch.no_grad():
            images = self.vae.decode(latents.float() / self.vae.config.scaling_factor).sample  # (B, 3, H, W)
        return to_uint8((images / 2 + 0.5).clamp(0, 1))
