"""The PixArt-α family (diffusers PixArtTransformer2DModel): its named sizes, its record, and its cut into head /
blocks[i:j] / tail as pure functions.

Unlike DiT, PixArt embeds its conditioning once (adaLN-single): the head computes the patch tokens, the
timestep embedding (with the 1024-MS micro-conditions), the projected caption tokens and the cross-attention
bias, and hands them to every block segment and the tail as named values.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .family import Family, StockPipeline, names_class
from .macs import pixart_costs
from .model_spec import ModelSpec
from .segments import PatchTail, PatchTokenParts, Segment

# values the head computes for the blocks and the tail (besides the hidden state "h")
TEMB = "temb"  # (B, 6D): adaLN-single modulation input of every block
EMBEDDED_TIMESTEP = "embedded_timestep"  # (B, D): the tail's modulation input
CONTEXT = "context"  # (B, L, D): projected caption tokens (cross-attention keys and values)
ENCODER_BIAS = "encoder_bias"  # (B, 1, L): 0 for kept tokens, -10000 for padding

MASK_BIAS = -10000.0  # diffusers' mask -> bias conversion

PIXART_TEXT_LENGTH = 120  # T5 tokens, padded to max length (PixArtAlphaPipeline's max_sequence_length)
PIXART_TEXT_INPUTS = ("encoder_hidden_states", "encoder_attention_mask")
PIXART_SIZE_INPUTS = ("resolution", "aspect_ratio")  # micro-conditions of the 1024-MS models


def mask_to_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) keep-mask (1 keep, 0 drop) -> (B, 1, L) additive attention bias, exactly as diffusers converts it."""
    bias = (1 - mask.to(dtype)) * MASK_BIAS  # (B, L)
    return bias.unsqueeze(1)  # (B, 1, L)


class PixArtHead(nn.Module):
    """Patch embedding, adaLN-single timestep embedding, caption projection and the cross-attention bias."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.pos_embed = model.pos_embed
        self.adaln_single = model.adaln_single
        self.caption_projection = model.caption_projection
        self.additional = bool(model.use_additional_conditions)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor, *size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = x.shape[0]
        bias = mask_to_bias(encoder_attention_mask, x.dtype)  # (B, 1, L)
        h = self.pos_embed(x)  # (B, C, H, W) -> (B, T, D)
        added = {"resolution": size[0], "aspect_ratio": size[1]} if self.additional else None  # (B, 2), (B, 1)
        temb, embedded = self.adaln_single(timestep, added, batch_size=batch, hidden_dtype=h.dtype)  # (B, 6D), (B, D)
        context = encoder_hidden_states
        if self.caption_projection is not None:
            context = self.caption_projection(context)  # (B, L, C_text) -> (B, L, D)
            context = context.view(batch, -1, h.shape[-1])  # (B, L, D)
        return h, temb, embedded, context, bias


class PixArtBlocks(nn.Module):
    """Blocks [start, end): self-attention, cross-attention to the caption tokens, MLP; adaLN-single modulated."""

    def __init__(self, model: nn.Module, start: int, end: int):
        super().__init__()
        self.blocks = nn.ModuleList(model.transformer_blocks[start:end])

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                encoder_bias: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, attention_mask=None, encoder_hidden_states=context, encoder_attention_mask=encoder_bias,
                      timestep=temb, class_labels=None)  # (B, T, D)
        return h


class PixArtTail(PatchTail):
    """Final norm with the shared scale/shift table, projection to patches, unpatchify."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.norm_out = model.norm_out
        self.scale_shift_table = model.scale_shift_table
        self.proj_out = model.proj_out

    def forward(self, h: torch.Tensor, embedded_timestep: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)  # 2 x (B, 1, D)
        h = self.norm_out(h) * (1 + scale) + shift  # (B, T, D)
        return self.unpatchify(self.proj_out(h))  # (B, T, p*p*C) -> (B, C, H, W)


class PixArtParts(PatchTokenParts):
    """The PixArt decomposition: ``tail(blocks[0:Nb](head(x, t, text...)), ...) == model(x, ...)``.

    Inputs: ``x`` (B, 4, H, W), ``timestep`` (B,), ``encoder_hidden_states`` (B, L, C_text) T5 embeddings,
    ``encoder_attention_mask`` (B, L) 1 = token, 0 = padding, and for the 1024-MS models ``resolution``
    (B, 2) = (height, width) in pixels and ``aspect_ratio`` (B, 1) = height / width.
    """

    block_inputs = (TEMB, CONTEXT, ENCODER_BIAS)
    block_module = PixArtBlocks

    def __init__(self, model: nn.Module, spec: ModelSpec):
        if spec.text_length is None:
            raise ValueError(f"{spec.name}: a PixArt spec needs text_length (the padded T5 token count)")
        self.model = model
        self.spec = spec
        self.num_blocks = len(model.transformer_blocks)
        self.additional = bool(model.use_additional_conditions)
        size = PIXART_SIZE_INPUTS if self.additional else ()
        self.input_names = ("x", "timestep", *PIXART_TEXT_INPUTS, *size)
        if tuple(spec.conditioning_inputs) != self.input_names[2:]:
            raise ValueError(f"{spec.name} declares conditioning inputs {spec.conditioning_inputs} but the model "
                             f"takes {self.input_names[2:]} (use_additional_conditions="
                             f"{model.use_additional_conditions}); choose the --model these weights belong to")
        self.cond_names = self.input_names[1:]
        self._head = Segment("head", PixArtHead(model), self.input_names,
                             ("h", TEMB, EMBEDDED_TIMESTEP, CONTEXT, ENCODER_BIAS))
        self._tail = Segment("tail", PixArtTail(model), ("h", EMBEDDED_TIMESTEP), ("out",))

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (``batch`` counts the CFG doubling); every mask keeps at least its
        first token and pads a random tail, as a tokenizer padding to max length does."""
        size, length = self.spec.sample_size, int(self.spec.text_length)
        channels = int(self.spec.config["caption_channels"])
        kept = torch.randint(1, length + 1, (batch, 1), generator=generator)  # (B, 1) real tokens per prompt
        inputs = {
            "x": torch.randn(batch, self.spec.in_channels, size, size, generator=generator),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
            "encoder_hidden_states": torch.randn(batch, length, channels, generator=generator),
            "encoder_attention_mask": (torch.arange(length)[None] < kept).long(),  # (B, L)
        }
        if self.additional:
            pixels = float(self.spec.image_size)
            inputs["resolution"] = torch.full((batch, 2), pixels)  # (B, 2) height, width
            inputs["aspect_ratio"] = torch.ones(batch, 1)  # (B, 1)
        return inputs


# ---- named sizes ------------------------------------------------------------------------------------------
# PixArt-α samples with DPM-Solver++ (diffusers' DPMSolverMultistepScheduler defaults: order 2, linear betas
# 1e-4..0.02 over 1000 steps, the DDPM schedule it was trained with), as PixArtAlphaPipeline's scheduler config.
PIXART_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
# PixArt-α-LCM: LCMScheduler on the same linear betas, as PixArt's scripts/inference_lcm.py builds it (epsilon,
# 50 original steps, boundary scalings at t/0.1 = diffusers' timestep_scaling 10), x0 not clipped (diffusers'
# default). The Hub folder's scheduler_config.json could not be read offline; tests/graphs/test_pixart.py pins
# these values.
PIXART_LCM_SCHEDULER_CONFIG: dict[str, Any] = {**PIXART_SCHEDULER_CONFIG, "clip_sample": False}
SAMPLER, GUIDANCE_SCALE = "dpm++", 4.5  # PixArtAlphaPipeline's defaults
LCM_SAMPLER, LCM_GUIDANCE_SCALE = "lcm", 0.0  # the LCM distillation runs without guidance


def _pixart(sample_size: int, interpolation_scale: float, additional: bool, layers: int = 28, heads: int = 16,
            head_dim: int = 72, caption_channels: int = 4096) -> dict[str, Any]:
    """diffusers PixArtTransformer2DModel kwargs (PixArt-alpha/PixArt-XL-2-* transformer configs).

    ``interpolation_scale`` is PixArt's pe_interpolation (256: 0.5, 512: 1, 1024: 2), written into the Hub
    configs because diffusers' default (``max(sample_size // 64, 1)``) is wrong for 256 px.
    """
    return {
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 4,
        "out_channels": 8,  # learned sigma
        "num_layers": layers,
        "cross_attention_dim": heads * head_dim,
        "attention_bias": True,
        "sample_size": sample_size,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "caption_channels": caption_channels,
        "interpolation_scale": interpolation_scale,
        "use_additional_conditions": additional,
    }


def _pixart_spec(name: str, config: dict[str, Any], description: str, hf_repo: str | None = None, lcm: bool = False,
                 text_length: int = PIXART_TEXT_LENGTH) -> ModelSpec:
    inputs = PIXART_TEXT_INPUTS + (PIXART_SIZE_INPUTS if config["use_additional_conditions"] else ())
    return ModelSpec(
        name, "pixart", config, True, description, hf_repo=hf_repo,
        scheduler_config=dict(PIXART_LCM_SCHEDULER_CONFIG if lcm else PIXART_SCHEDULER_CONFIG),
        conditioning_inputs=inputs, text_length=text_length,
        sampler=LCM_SAMPLER if lcm else SAMPLER, guidance_scale=LCM_GUIDANCE_SCALE if lcm else GUIDANCE_SCALE,
    )


PIXART_MODELS = (
    _pixart_spec("pixart-256", _pixart(32, 0.5, False), "PixArt-α XL/2 256x256 (611M params, T5 text)",
                 hf_repo="PixArt-alpha/PixArt-XL-2-256x256"),
    _pixart_spec("pixart-512", _pixart(64, 1, False), "PixArt-α XL/2 512x512 (611M params, T5 text)",
                 hf_repo="PixArt-alpha/PixArt-XL-2-512x512"),
    _pixart_spec("pixart-1024", _pixart(128, 2, True), "PixArt-α XL/2 1024x1024 multi-scale (611M params, T5 text)",
                 hf_repo="PixArt-alpha/PixArt-XL-2-1024-MS"),
    _pixart_spec("pixart-lcm-1024", _pixart(128, 2, True),
                 "PixArt-α-LCM XL/2 1024x1024 (4-step LCM distillation, no guidance)",
                 hf_repo="PixArt-alpha/PixArt-LCM-XL-2-1024-MS", lcm=True),
    _pixart_spec("pixart-tiny", _pixart(8, 1, False, layers=4, heads=2, head_dim=24, caption_channels=32),
                 "tiny PixArt-α for tests (4 blocks, width 48, 32-dim captions, 8 text tokens)", text_length=8),
    _pixart_spec("pixart-tiny-ms", _pixart(8, 1, True, layers=4, heads=2, head_dim=24, caption_channels=32),
                 "tiny PixArt-α for tests with the 1024-MS micro-conditions (resolution, aspect ratio)", text_length=8),
)

# what makes two PixArt configs the same architecture
_ARCHITECTURE = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
                 "sample_size", "patch_size", "caption_channels", "interpolation_scale", "use_additional_conditions")


def _recognises(config: Mapping[str, Any]) -> bool:
    """A PixArtTransformer2DModel config: adaLN-single blocks."""
    return (names_class(config, "PixArtTransformer2DModel", "Transformer2DModel")
            and config.get("norm_type") == "ada_norm_single")


def _spec_for_config(config: Mapping[str, Any], latent: bool = True) -> ModelSpec:
    """The registered PixArt size of a config (LCM distillations share their base's architecture: the base is
    taken), else a ``custom`` spec of it; diffusers' size-dependent defaults are filled in as diffusers does."""
    ours = {k: v for k, v in config.items() if not k.startswith("_")}
    if ours.get("use_additional_conditions") is None:  # diffusers decides from the size
        ours["use_additional_conditions"] = ours.get("sample_size") == 128
    if ours.get("interpolation_scale") is None:
        ours["interpolation_scale"] = max(int(ours.get("sample_size", 128)) // 64, 1)
    for spec in PIXART_MODELS:
        if spec.sampler != LCM_SAMPLER and all(spec.config.get(k) == ours.get(k) for k in _ARCHITECTURE):
            return spec
    return _pixart_spec("custom", ours, "PixArt model given by the user")


_WEIGHTS_HELP = (
    "  --weights DIR        a diffusers PixArtTransformer2DModel folder, or a PixArtAlphaPipeline folder with\n"
    "                       transformer/ (e.g. a local copy of {repo})\n"
    "  --weights FILE       a .safetensors/.bin file with diffusers PixArt keys\n"
    "  --random-weights     random initialisation, for timing only (outputs are noise)"
)


# ---- diffusers' PixArtAlphaPipeline, the benchmarks' baseline ----------------------------------------------
def _stock_inputs(spec: ModelSpec, class_labels: tuple[int, ...], prompts: Any, guidance: float) -> dict[str, Any]:
    """Prompt embeddings in, latents out, no resolution binning (the graphs are built for one size)."""
    if prompts is None:
        raise ValueError(f"PixArtAlphaPipeline takes prompt embeddings; {spec.name} was given none")
    negative = prompts.negatives() if guidance > 1 else (None, None)
    return {"negative_prompt": None, "prompt_embeds": prompts.embeds, "prompt_attention_mask": prompts.mask,
            "negative_prompt_embeds": negative[0], "negative_prompt_attention_mask": negative[1],
            "output_type": "latent", "use_resolution_binning": False}


FAMILY = Family(
    name="pixart",
    parts=PixArtParts,
    costs=pixart_costs,
    model_class="PixArtTransformer2DModel",
    models=PIXART_MODELS,
    num_blocks=lambda config: int(config["num_layers"]),
    num_classes=lambda config: int(config["num_embeds_ada_norm"]),
    resolution_step=lambda config: int(config["patch_size"]),
    recognises=_recognises,
    spec_for_config=_spec_for_config,
    weights_help=_WEIGHTS_HELP,
    stock=StockPipeline(
        "PixArtAlphaPipeline",
        components=lambda denoiser, vae, scheduler: {"tokenizer": None, "text_encoder": None, "vae": vae,
                                                     "transformer": denoiser, "scheduler": scheduler},
        call_inputs=_stock_inputs,
        returns_latents=True,
    ),
    sampler=SAMPLER,
    guidance_scale=GUIDANCE_SCALE,
)
