"""Turning samples into images: VAE decode for latent models, uint8 grids, PSNR."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ditcache.graphs.registry import ModelSpec

from ditcache.compiler.atomic import atomic_path


def decode(latents: torch.Tensor, spec: ModelSpec, vae_path: str | os.PathLike | None = None) -> torch.Tensor | None:
    """Images in [0, 1] (B, C, H, W): pixel models directly, latent models through a local VAE (None without one)."""
    if not spec.latent:
        return (latents.float() / 2 + 0.5).clamp(0, 1)
    if vae_path is None:
        return None
    from diffusers import AutoencoderKL

    path = Path(vae_path)
    if (path / "vae").is_dir():
        path = path / "vae"
    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        images = vae.decode(latents.float() / vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile (B, H, W, C) uint8 images into one (rows*H, columns*W, C) image."""
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    out = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        out[y:y + height, x:x + width] = image
    return out


def save_png(image: np.ndarray, path: str | os.PathLike, scale: int = 1) -> None:
    """Write an (H, W, C) uint8 image, optionally enlarged by pixel repetition, atomically."""
    from PIL import Image

    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    with atomic_path(path) as tmp:
        pil.save(tmp)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio of ``a`` against ``b`` in dB (inf when equal)."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened."""
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()
