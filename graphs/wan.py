"""Wan 2.1 text-to-video (diffusers WanTransformer3DModel) cut into head / blocks[i:j] / tail as pure functions.

Wan is single-stream, like PixArt: every block runs self-attention over the video tokens (3-D rotary
positions), cross-attention to the projected UMT5 text tokens and a feed-forward, modulated by the shared
timestep projection. The hidden state is the video tokens h (B, T, D), T = F' * H' * W' patches of (1, 2, 2).

**Head.** 3-D patch embedding, the timestep embedding ``temb`` (B, D) with its projection ``timestep_proj``
(B, 6, D), the projected text ``context`` (B, L, D), and the rotary table ``rope_cos`` / ``rope_sin``
(1, T, 1, head_dim), which depends only on the latent shape: the head computes it once, with diffusers' own
module, and hands it on. **Tail.** Final norm with the shared scale/shift table, projection, unpatchify to
(B, C, F, H, W).

Image-to-video Wan (image_dim / added_kv_proj_dim set) is refused: its extra image tokens are not wired here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .family import Family, StockPipeline, names_class, refused_layout
from .flow_spec import FlowModelSpec, FlowSampling, resize_latents, unpacked_call_spec
from .macs import TIME_FREQ_DIM, SegmentCosts
from .model_spec import ModelSpec
from .segments import PatchTokenParts, Segment

TEMB = "temb"  # (B, D): timestep embedding, the tail's modulation input
TIMESTEP_PROJ = "timestep_proj"  # (B, 6, D): every block's modulation input
CONTEXT = "context"  # (B, L, D): projected text tokens (cross-attention keys and values)
ROPE_COS, ROPE_SIN = "rope_cos", "rope_sin"  # (1, T, 1, head_dim): 3-D rotary table of the video tokens
TEXT_INPUTS = ("encoder_hidden_states",)


class WanHead(nn.Module):
    """3-D patch embedding, timestep and text embeddings, the rotary table."""

    def __init__(self, model: nn.Module, latent_shape: tuple[int, int, int, int]):
        super().__init__()
        self.patch_embedding = model.patch_embedding
        self.condition_embedder = model.condition_embedder
        with torch.no_grad():  # the rotary module reads only the input's shape
            cos, sin = model.rope(torch.empty(1, *latent_shape, device="meta"))  # 2 x (1, T, 1, head_dim)
        self.register_buffer(ROPE_COS, cos, persistent=False)
        self.register_buffer(ROPE_SIN, sin, persistent=False)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.patch_embedding(x)  # (B, C, F, H, W) -> (B, D, F', H', W')
        h = h.flatten(2).transpose(1, 2).contiguous()  # (B, T, D)
        temb, timestep_proj, context, _ = self.condition_embedder(timestep, encoder_hidden_states, None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))  # (B, 6D) -> (B, 6, D)
        return h, temb, timestep_proj, context, self.rope_cos, self.rope_sin


class WanBlocks(nn.Module):
    """Blocks [start, end): self-attention with 3-D RoPE, cross-attention to the text, feed-forward."""

    def __init__(self, model: nn.Module, start: int, end: int):
        super().__init__()
        self.blocks = nn.ModuleList(model.blocks[start:end])

    def forward(self, h: torch.Tensor, timestep_proj: torch.Tensor, context: torch.Tensor, rope_cos: torch.Tensor,
                rope_sin: torch.Tensor) -> torch.Tensor:
        rope = (rope_cos, rope_sin)
        for block in self.blocks:
            h = block(h, context, timestep_proj, rope)  # (B, T, D)
        return h


class WanTail(nn.Module):
    """Final norm with the shared scale/shift table, projection to patches, unpatchify."""

    def __init__(self, model: nn.Module, latent_shape: tuple[int, int, int, int]):
        super().__init__()
        self.norm_out = model.norm_out
        self.proj_out = model.proj_out
        self.scale_shift_table = model.scale_shift_table
        self.patch = tuple(int(p) for p in model.config.patch_size)
        self.grid = tuple(s // p for s, p in zip(latent_shape[1:], self.patch))  # static (F', H', W')

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)  # 2 x (B, 1, D)
        h = (self.norm_out(h.float()) * (1 + scale) + shift).type_as(h)  # (B, T, D)
        h = self.proj_out(h)  # (B, T, pt*ph*pw*C)
        batch = h.shape[0]
        (frames, rows, cols), (pt, ph, pw) = self.grid, self.patch
        h = h.reshape(batch, frames, rows, cols, pt, ph, pw, -1)  # (B, F', H', W', pt, ph, pw, C)
        h = h.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, F', pt, H', ph, W', pw)
        return h.reshape(batch, h.shape[1], frames * pt, rows * ph, cols * pw)  # (B, C, F, H, W)


class WanParts(PatchTokenParts):
    """The Wan 2.1 decomposition: ``tail(blocks[0:Nb](head(x, t, text)), temb) == model(x, t, text)``.

    Inputs: ``x`` (B, 16, F, H, W) video latents, ``timestep`` (B,) in [0, 1000], ``encoder_hidden_states``
    (B, L, 4096) UMT5 embeddings (zero past each prompt's tokens, as WanPipeline pads them; no mask).
    """

    block_inputs = (TIMESTEP_PROJ, CONTEXT, ROPE_COS, ROPE_SIN)
    block_module = WanBlocks

    def __init__(self, model: nn.Module, spec: FlowModelSpec):
        check_model(model, spec)
        self.model = model
        self.spec = spec
        self.num_blocks = len(model.blocks)
        self.input_names = ("x", "timestep", *TEXT_INPUTS)
        latent = tuple(spec.latent_shape)
        self._head = Segment("head", WanHead(model, latent), self.input_names,
                             ("h", TEMB, TIMESTEP_PROJ, CONTEXT, ROPE_COS, ROPE_SIN))
        self._tail = Segment("tail", WanTail(model, latent), ("h", TEMB), ("out",))

    @property
    def tokens(self) -> int:
        patch = self.spec.config["patch_size"]
        return math.prod(s // int(p) for s, p in zip(self.spec.latent_shape[1:], patch))

    def block_modules(self) -> list[nn.Module]:
        """The transformer blocks (diffusers calls them ``blocks``), whose outputs are the hidden state."""
        return list(self.model.blocks)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (``batch`` counts the CFG doubling); integer timesteps, as the
        UniPC scheduler hands them to WanPipeline's model, in float32."""
        return {
            "x": torch.randn(batch, *self.spec.latent_shape, generator=generator),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
            "encoder_hidden_states": torch.randn(batch, int(self.spec.text_length),
                                                 int(self.spec.config["text_dim"]), generator=generator),
        }


def check_model(model: nn.Module, spec: FlowModelSpec) -> None:
    """Raise ValueError when ``model`` is not the Wan 2.1 text-to-video transformer ``spec`` describes."""
    config = model.config
    if config.image_dim is not None or config.added_kv_proj_dim is not None:
        raise ValueError(f"{spec.name}: image-to-video Wan (image_dim={config.image_dim}, added_kv_proj_dim="
                         f"{config.added_kv_proj_dim}) is not supported; use a text-to-video Wan 2.1 transformer")
    if len(model.blocks) != spec.num_blocks:
        raise ValueError(f"{spec.name}: the model has {len(model.blocks)} blocks, its spec says {spec.num_blocks}")
    if spec.text_length is None or len(spec.latent_shape) != 4:
        raise ValueError(f"{spec.name}: a Wan spec needs text_length and latent_shape (C, F, H, W)")
    bad = [s for s, p in zip(spec.latent_shape[1:], config.patch_size) if s % int(p)]
    if bad:
        raise ValueError(f"{spec.name}: latent (F, H, W) {spec.latent_shape[1:]} must be multiples of the patch "
                         f"size {tuple(config.patch_size)}")


# ---- sizes ------------------------------------------------------------------------------------------------
# UniPCMultistepScheduler config of the Wan-AI/Wan2.1-T2V-*-Diffusers repos (flow prediction, shift 3 for 480p)
WAN_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
    "solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
    "final_sigmas_type": "zero", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
    "timestep_spacing": "linspace", "steps_offset": 0,
}
WAN_TEXT_LENGTH = 512  # UMT5 tokens (WanPipeline's max_sequence_length)
WAN_480P_LATENT = (16, 21, 60, 104)  # 81 frames of 480x832: (81 - 1) / 4 + 1 latent frames, 8x spatial


def wan_config(layers: int, heads: int, ffn: int, head_dim: int = 128, in_channels: int = 16,
               text_channels: int = 4096, rope_max_seq_len: int = 1024) -> dict[str, Any]:
    """diffusers WanTransformer3DModel kwargs of a text-to-video size."""
    return {"patch_size": (1, 2, 2), "num_attention_heads": heads, "attention_head_dim": head_dim,
            "in_channels": in_channels, "out_channels": in_channels, "text_dim": text_channels, "freq_dim": 256,
            "ffn_dim": ffn, "num_layers": layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
            "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": rope_max_seq_len}


def wan_spec(name: str, config: dict[str, Any], description: str, latent: tuple[int, int, int, int],
             text_length: int = WAN_TEXT_LENGTH, hf_repo: str | None = None) -> FlowModelSpec:
    return FlowModelSpec(
        name, "wan", config, True, description, hf_repo=hf_repo, scheduler_config=dict(WAN_SCHEDULER),
        conditioning_inputs=TEXT_INPUTS, text_length=text_length, sampler="flow-unipc", guidance_scale=5.0,
        latent_shape=latent, flow=FlowSampling(sigmas="scheduler", guidance="cfg"))


WAN_MODELS = (
    wan_spec("wan21-t2v-1.3b", wan_config(30, 12, 8960), "Wan 2.1 text-to-video 1.3B, 81 frames of 480x832 "
             "(30 blocks, width 1536)", WAN_480P_LATENT, hf_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    wan_spec("wan21-t2v-14b", wan_config(40, 40, 13824), "Wan 2.1 text-to-video 14B, 81 frames of 480x832 "
             "(40 blocks, width 5120)", WAN_480P_LATENT, hf_repo="Wan-AI/Wan2.1-T2V-14B-Diffusers"),
    wan_spec("wan-tiny", wan_config(3, 2, 64, head_dim=16, in_channels=4, text_channels=32, rope_max_seq_len=32),
             "tiny Wan 2.1 for tests (3 blocks, width 32, 3 latent frames of 8x8, 8 text tokens)", (4, 3, 8, 8),
             text_length=8),
)


# ---- MACs -------------------------------------------------------------------------------------------------
def wan_costs(spec: FlowModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of a Wan 2.1 forward on ``batch`` samples with ``spec.text_length`` text tokens (3-D
    convolution, matmuls and attention; norms, RoPE and elementwise ops not counted; padded tokens count)."""
    config = spec.config
    d = spec.hidden_size
    patch = tuple(int(p) for p in config["patch_size"])
    text = int(spec.text_length)
    video = math.prod(s // p for s, p in zip(spec.latent_shape[1:], patch))
    head = (video * math.prod(patch) * spec.in_channels * d  # patchify conv
            + TIME_FREQ_DIM * d + d * d + d * 6 * d  # time MLP 256 -> D -> D, projection D -> 6D
            + text * (int(config["text_dim"]) * d + d * d))  # text projection C_text -> D -> D
    block = (4 * video * d * d  # self-attention q, k, v, out
             + 2 * video * video * d  # self-attention scores and weighted sum
             + 2 * video * d * d + 2 * text * d * d  # cross-attention q, out (video); k, v (text)
             + 2 * video * text * d  # cross-attention scores and weighted sum
             + 2 * video * d * int(config["ffn_dim"]))  # feed-forward D -> F -> D
    tail = video * d * math.prod(patch) * spec.out_channels
    return SegmentCosts(head * batch, tuple(block * batch for _ in range(spec.num_blocks)), tail * batch)


# ---- the family record ------------------------------------------------------------------------------------
_ARCHITECTURE = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                 "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "image_dim",
                 "added_kv_proj_dim")


def _recognises(config: Mapping[str, Any]) -> bool:
    """A WanTransformer3DModel config: a feed-forward width and a text width."""
    return names_class(config, "WanTransformer3DModel") and "ffn_dim" in config and "text_dim" in config


def _spec_for_config(config: Mapping[str, Any], latent: bool = True) -> FlowModelSpec:
    """The registered Wan size of a config, else a ``custom`` spec of it at 81 frames of 480x832."""
    ours = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if not k.startswith("_")}
    for spec in WAN_MODELS:
        if all(spec.config.get(k) == ours.get(k) for k in _ARCHITECTURE):
            return spec
    return wan_spec("custom", ours, "Wan model given by the user", (int(ours["in_channels"]), *WAN_480P_LATENT[1:]))


ORIGINAL_WAN = refused_layout(
    "original-wan",
    "an original Wan-AI checkpoint (refused: use the -Diffusers weights)",
    lambda state: any(".self_attn." in k for k in state),
    "an original Wan-AI checkpoint (blocks.*.self_attn keys), not diffusers weights; use the "
    "Wan-AI/Wan2.1-T2V-*-Diffusers folders (or convert with diffusers' conversion script) and pass "
    "--weights DIR",
)

_WEIGHTS_HELP = (
    "  --weights DIR        a diffusers WanTransformer3DModel folder, or a WanPipeline folder with\n"
    "                       transformer/ (e.g. a local copy of {repo})\n"
    "  --weights FILE       a .safetensors file with diffusers Wan keys\n"
    "  --random-weights     random initialisation, for timing only (outputs are noise)"
)


def _stock_inputs(spec: ModelSpec, class_labels: tuple[int, ...], prompts: Any, guidance: float) -> dict[str, Any]:
    """Prompt embeddings (and the negative prompt's under guidance) in, video latents out."""
    if prompts is None:
        raise ValueError(f"WanPipeline takes prompt embeddings; {spec.name} was given none")
    _, frames, height, width = spec.latent_shape
    inputs = {"prompt_embeds": prompts.embeds, "height": 8 * height, "width": 8 * width,
              "num_frames": video_frames(frames), "output_type": "latent"}
    if guidance > 1:
        inputs["negative_prompt_embeds"] = prompts.negatives()[0]
    return inputs


TEMPORAL_COMPRESSION = 4  # Wan's VAE: latent frame f covers video frames 4(f - 1) + 1 .. 4f (the first alone)


def video_frames(latent_frames: int) -> int:
    """Video frames of ``latent_frames`` latent frames (WanPipeline's num_frames)."""
    return TEMPORAL_COMPRESSION * (latent_frames - 1) + 1


def _resize(spec: ModelSpec, side: int | None, frames: int | None) -> FlowModelSpec:
    """Wan at another (square) size and ``frames`` video frames (4k + 1, as WanPipeline rounds num_frames)."""
    latent_frames = None
    if frames is not None:
        if frames < 1 or (frames - 1) % TEMPORAL_COMPRESSION:
            raise ValueError(f"{spec.name} generates 4k + 1 frames (1, 5, ..., 81): got {frames}")
        latent_frames = (frames - 1) // TEMPORAL_COMPRESSION + 1
    return resize_latents(spec, side, latent_frames)


def _stock_components(denoiser: nn.Module, vae: nn.Module, scheduler: Any) -> dict[str, Any]:
    """Text encoder and VAE left out: prompts come as embeddings, the pipeline returns latents."""
    return {"tokenizer": None, "text_encoder": None, "vae": None, "scheduler": scheduler, "transformer": denoiser}


FAMILY = Family(
    name="wan",
    parts=WanParts,
    costs=wan_costs,
    model_class="WanTransformer3DModel",
    models=WAN_MODELS,
    num_blocks=lambda config: int(config["num_layers"]),
    num_classes=lambda config: 0,
    resolution_step=lambda config: int(config["patch_size"][-1]),
    recognises=_recognises,
    spec_for_config=_spec_for_config,
    weights_help=_WEIGHTS_HELP,
    stock=StockPipeline("WanPipeline", components=_stock_components, call_inputs=_stock_inputs, returns_latents=True,
                        output="frames"),
    formats=(ORIGINAL_WAN,),
    sampler="flow-unipc",
    guidance_scale=5.0,
    resize=_resize,
    call_spec=unpacked_call_spec,
)
