"""The DiT family (diffusers DiTTransformer2DModel): its named sizes, its record, and its cut into head /
blocks[i:j] / tail as pure functions."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .convert_official import (OFFICIAL_NORM_EPS, convert_official_state_dict, is_official_state_dict,
                               use_official_timestep_embedding)
from .family import Family, StockPipeline, WeightFormat, names_class
from .macs import dit_costs
from .model_spec import FASHION_MNIST_CLASSES, ModelSpec
from .segments import PatchTail, PatchTokenParts, Segment


class DiTHead(nn.Module):
    """Patch embedding with the fixed sin-cos position table."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.pos_embed = model.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_embed(x)  # (B, C, H, W) -> (B, T, D)


class DiTBlocks(nn.Module):
    """Blocks [start, end); each block embeds (timestep, class) itself, as in diffusers."""

    def __init__(self, model: nn.Module, start: int, end: int):
        super().__init__()
        self.blocks = nn.ModuleList(model.transformer_blocks[start:end])

    def forward(self, h: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, timestep=timestep, class_labels=class_labels)  # (B, T, D)
        return h


class DiTTail(PatchTail):
    """Final adaLN, projection to patches, unpatchify."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.emb = model.transformer_blocks[0].norm1.emb  # diffusers conditions the tail on block 0's embedding
        self.norm_out = model.norm_out
        self.proj_out_1 = model.proj_out_1
        self.proj_out_2 = model.proj_out_2

    def forward(self, h: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        cond = self.emb(timestep, class_labels, hidden_dtype=h.dtype)  # (B, D)
        shift, scale = self.proj_out_1(F.silu(cond)).chunk(2, dim=1)  # 2 x (B, D)
        h = self.norm_out(h) * (1 + scale[:, None]) + shift[:, None]  # (B, T, D)
        return self.unpatchify(self.proj_out_2(h))  # (B, T, p*p*C) -> (B, C, H, W)


class DiTParts(PatchTokenParts):
    """The DiT decomposition: ``tail(blocks[0:Nb](head(x), t, y), t, y) == model(x, t, y)``."""

    input_names = ("x", "timestep", "class_labels")
    cond_names = ("timestep", "class_labels")
    block_inputs = cond_names
    block_module = DiTBlocks

    def __init__(self, model: nn.Module, spec: ModelSpec):
        self.model = model
        self.spec = spec
        self.num_blocks = len(model.transformer_blocks)
        self._head = Segment("head", DiTHead(model), ("x",), ("h",))
        self._tail = Segment("tail", DiTTail(model), ("h", *self.cond_names), ("out",))

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (``batch`` counts the CFG doubling)."""
        size = self.spec.sample_size
        return {
            "x": torch.randn(batch, self.spec.in_channels, size, size, generator=generator),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
            "class_labels": torch.randint(0, self.spec.num_classes + 1, (batch,), generator=generator),
        }


# ---- named sizes ------------------------------------------------------------------------------------------
def _dit(layers: int, hidden: int, heads: int, sample_size: int, **extra: Any) -> dict[str, Any]:
    """diffusers DiTTransformer2DModel kwargs of a DiT/2 size."""
    config: dict[str, Any] = {
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "in_channels": 4,
        "out_channels": 8,  # learned sigma, as every official DiT
        "num_layers": layers,
        "sample_size": sample_size,
        "patch_size": 2,
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_elementwise_affine": False,
    }
    config.update(extra)
    return config


DIT_MODELS = (
    ModelSpec("dit-xl", "dit", _dit(28, 1152, 16, 32), True,
              "DiT-XL/2 256x256 (675M params)", hf_repo="facebook/DiT-XL-2-256"),
    ModelSpec("dit-xl-512", "dit", _dit(28, 1152, 16, 64), True,
              "DiT-XL/2 512x512 (675M params)", hf_repo="facebook/DiT-XL-2-512"),
    ModelSpec("dit-l", "dit", _dit(24, 1024, 16, 32), True, "DiT-L/2 256x256 (458M params)"),
    ModelSpec("dit-b", "dit", _dit(12, 768, 12, 32), True, "DiT-B/2 256x256 (130M params)"),
    ModelSpec("dit-s", "dit", _dit(12, 384, 6, 32), True, "DiT-S/2 256x256 (33M params)"),
    ModelSpec("dit-tiny", "dit", _dit(4, 32, 2, 8), True,
              "tiny DiT for tests (4 blocks, width 32, 1000 classes)"),
    ModelSpec(
        "dit-fmnist", "dit",
        _dit(12, 128, 4, 28, in_channels=1, out_channels=1, patch_size=4, num_embeds_ada_norm=10),
        False,
        "reference DiT trained on Fashion-MNIST 28x28 (12 blocks, width 128), shipped",
        bundled="dit-fmnist",
        class_names=FASHION_MNIST_CLASSES,
    ),
)

# what makes two DiT configs the same architecture
_ARCHITECTURE = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
                 "sample_size", "patch_size", "num_embeds_ada_norm")


def _recognises(config: Mapping[str, Any]) -> bool:
    """A DiTTransformer2DModel config (the Hub's DiT folders still say Transformer2DModel): adaLN-zero blocks
    (diffusers' default norm type), class embeddings, no U-Net levels (FLUX, SD3 and Wan configs have no norm_type
    either)."""
    return (names_class(config, "DiTTransformer2DModel", "Transformer2DModel")
            and config.get("norm_type", "ada_norm_zero") == "ada_norm_zero" and "num_embeds_ada_norm" in config
            and "down_block_types" not in config)


def _spec_for_config(config: Mapping[str, Any], latent: bool = True) -> ModelSpec:
    """The registered DiT size of a config, else a ``custom`` spec of its architecture."""
    for spec in DIT_MODELS:
        if all(spec.config.get(k) == config.get(k) for k in _ARCHITECTURE):
            return spec
    return ModelSpec("custom", "dit", {k: config[k] for k in _ARCHITECTURE if k in config}, latent,
                     "model given by the user")


# ---- weights ------------------------------------------------------------------------------------------------
OFFICIAL_DIT = WeightFormat(
    name="official-dit",
    description="the official facebookresearch/DiT checkpoint (DiT-XL-2-256x256.pt, or train.py's checkpoints)",
    detect=is_official_state_dict,
    convert=lambda state, spec: convert_official_state_dict(state, spec.num_blocks),
    config={"norm_eps": OFFICIAL_NORM_EPS},  # the MLP's pre-norm: official 1e-6, diffusers' default 1e-5
    adapt=use_official_timestep_embedding,  # frequencies exp(-ln(10^4) i / 128), diffusers' divide by 127
)

_WEIGHTS_HELP = (
    "  --weights DIR        a diffusers model folder (or a DiTPipeline folder with transformer/),\n"
    "                       e.g. a local copy of {repo}\n"
    "  --weights FILE.pt    the official facebookresearch/DiT checkpoint (e.g. DiT-XL-2-256x256.pt),\n"
    "                       or a .safetensors/.bin file with diffusers or official keys\n"
    "  --random-weights     random initialisation, for timing only (outputs are noise)"
)


# ---- diffusers' DiTPipeline, the benchmarks' baseline ------------------------------------------------------
def _stock_inputs(spec: ModelSpec, class_labels: tuple[int, ...], prompts: Any, guidance: float) -> dict[str, Any]:
    if spec.null_class != 1000:
        raise ValueError(f"DiTPipeline hard-codes the null class 1000; {spec.name} has {spec.null_class}")
    return {"class_labels": list(class_labels), "output_type": "pt"}


FAMILY = Family(
    name="dit",
    parts=DiTParts,
    costs=dit_costs,
    model_class="DiTTransformer2DModel",
    models=DIT_MODELS,
    num_blocks=lambda config: int(config["num_layers"]),
    num_classes=lambda config: int(config["num_embeds_ada_norm"]),
    resolution_step=lambda config: int(config["patch_size"]),
    recognises=_recognises,
    spec_for_config=_spec_for_config,
    weights_help=_WEIGHTS_HELP,
    stock=StockPipeline(
        "DiTPipeline",
        components=lambda denoiser, vae, scheduler: {"transformer": denoiser, "vae": vae, "scheduler": scheduler},
        call_inputs=_stock_inputs,
        returns_latents=False,  # DiTPipeline always decodes: the stand-in VAE keeps the latents
    ),
    formats=(OFFICIAL_DIT,),
    sampler="ddim",
    guidance_scale=4.0,
)
