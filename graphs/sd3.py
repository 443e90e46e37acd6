"""Stable Diffusion 3 / 3.5 (diffusers SD3Transformer2DModel) cut into head / blocks[i:j] / tail as pure functions.

**Hidden state.** SD3's MMDiT blocks (``JointTransformerBlock``) keep a text and an image stream with their own
weights and one joint attention. As for FLUX (graphs/flux.py), ditcache carries their concatenation
``h = [text; image]`` (B, L + T, D) between segments: a block segment splits ``h``, runs its joint blocks and
joins the streams again, so a cached offset of any block range covers both streams. Text and image widths are
equal (caption_projection_dim == D in every SD3 / 3.5 size; checked).

**The last block.** SD3's last joint block is ``context_pre_only``: it reads the text stream but returns none
(only the image stream feeds the tail). Its segment carries the text part of ``h`` through unchanged, so a
cached range that ends there records a zero text offset and the image offset; nothing downstream reads the
text part, and replaying a range that ends there is exact for it — so is the text row of its per-stream
scale/shift (``streams()``, graphs/streams.py), which changes no output.

**Head.** Patch embedding with the cropped sin-cos table, the timestep + pooled-text embedding ``temb`` (B, D),
and the projected text tokens. **Tail.** Final adaptive norm of the image tokens, projection, unpatchify.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import torch
from torch import nn

from .family import Family, StockPipeline, names_class, refused_layout
from .flow_spec import FlowModelSpec, FlowSampling, resize_latents, unpacked_call_spec
from .macs import TIME_FREQ_DIM, SegmentCosts
from .model_spec import ModelSpec
from .segments import PatchTokenParts, Segment
from .streams import TextImageStreams

TEMB = "temb"  # (B, D): timestep + pooled-text embedding, modulates every block and the tail
TEXT_INPUTS = ("encoder_hidden_states", "pooled_projections")


class SD3Head(nn.Module):
    """Patch embedding (+ cropped position table), ``temb``, text projection; joined as [text; image]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.pos_embed = model.pos_embed
        self.time_text_embed = model.time_text_embed
        self.context_embedder = model.context_embedder

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.pos_embed(x).contiguous()  # (B, C, H, W) -> (B, T, D)
        temb = self.time_text_embed(timestep, pooled_projections)  # (B, D)
        text = self.context_embedder(encoder_hidden_states)  # (B, L, C_text) -> (B, L, D)
        return torch.cat([text, image], dim=1), temb  # (B, L + T, D), (B, D)


class SD3Blocks(nn.Module):
    """Joint blocks [start, end) on h = [text; image]; the ``context_pre_only`` last block leaves the text as is."""

    def __init__(self, model: nn.Module, start: int, end: int, text_length: int):
        super().__init__()
        self.blocks = nn.ModuleList(model.transformer_blocks[start:end])
        self.text_length = text_length  # static: the split needs no shape arithmetic at run time

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        text = h[:, :self.text_length].contiguous()  # (B, L, D)
        image = h[:, self.text_length:].contiguous()  # (B, T, D)
        for block in self.blocks:
            new_text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb)
            text = text if new_text is None else new_text  # context_pre_only: no text stream out
        return torch.cat([text, image], dim=1)  # (B, L + T, D)


class SD3Tail(nn.Module):
    """Final adaptive norm of the image tokens, projection to patches, unpatchify."""

    def __init__(self, model: nn.Module, text_length: int, height: int, width: int):
        super().__init__()
        self.norm_out = model.norm_out
        self.proj_out = model.proj_out
        self.text_length = text_length
        self.patch = int(model.config.patch_size)
        self.out_channels = int(model.out_channels)
        self.grid = (height // self.patch, width // self.patch)  # static: no shape arithmetic at run time

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        image = h[:, self.text_length:].contiguous()  # (B, T, D)
        image = self.proj_out(self.norm_out(image, temb))  # (B, T, p*p*C)
        batch = image.shape[0]
        (rows, cols), p, c = self.grid, self.patch, self.out_channels
        image = image.reshape(batch, rows, cols, p, p, c)  # (B, h, w, p, q, C)
        image = torch.einsum("nhwpqc->nchpwq", image)  # (B, C, h, p, w, q)
        return image.reshape(batch, c, rows * p, cols * p)  # (B, C, H, W)


class SD3Parts(TextImageStreams, PatchTokenParts):
    """The SD3 decomposition: ``tail(blocks[0:Nb](head(x, t, text, pooled)), temb) == model(x, ...)``.

    Inputs: ``x`` (B, 16, H, W) latents, ``timestep`` (B,) in [0, 1000], ``encoder_hidden_states`` (B, L, 4096)
    (CLIP-L + CLIP-G padded to 4096, then T5: L = 77 + 256 in the stock pipeline), ``pooled_projections``
    (B, 2048). h = [text; image] (B, L + T, D) between the blocks.
    """

    block_inputs = (TEMB,)

    def __init__(self, model: nn.Module, spec: FlowModelSpec):
        check_model(model, spec)
        self.model = model
        self.spec = spec
        self.text_length = int(spec.text_length)
        self.block_module = functools.partial(SD3Blocks, text_length=self.text_length)
        self.num_blocks = len(model.transformer_blocks)
        self.input_names = ("x", "timestep", *TEXT_INPUTS)
        height, width = spec.latent_shape[-2:]
        self._head = Segment("head", SD3Head(model), self.input_names, ("h", TEMB))
        self._tail = Segment("tail", SD3Tail(model, self.text_length, height, width), ("h", TEMB), ("out",))

    @property
    def image_tokens(self) -> int:
        height, width = self.spec.latent_shape[-2:]
        patch = int(self.spec.config["patch_size"])
        return (height // patch) * (width // patch)

    @property
    def tokens(self) -> int:
        """Tokens of the hidden state: text, then image."""
        return self.text_length + self.image_tokens

    def block_modules(self) -> list[nn.Module]:
        """The joint blocks; their outputs are (text or None, image): :meth:`block_output` makes them ``h``."""
        return list(self.model.transformer_blocks)

    def block_output(self, output: tuple[torch.Tensor | None, torch.Tensor],
                     text: torch.Tensor | None = None) -> torch.Tensor:
        """A joint block's (text, image) output as [text; image]; the last block returns no text: give the
        ``text`` it read, or its image tokens alone come back."""
        new_text, image = output
        new_text = text if new_text is None else new_text
        return image if new_text is None else torch.cat([new_text, image], dim=1)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (``batch`` counts the CFG doubling)."""
        config = self.spec.config
        return {
            "x": torch.randn(batch, *self.spec.latent_shape, generator=generator),
            "timestep": 1000 * torch.rand(batch, generator=generator),
            "encoder_hidden_states": torch.randn(batch, self.text_length, int(config["joint_attention_dim"]),
                                                 generator=generator),
            "pooled_projections": torch.randn(batch, int(config["pooled_projection_dim"]), generator=generator),
        }


def check_model(model: nn.Module, spec: FlowModelSpec) -> None:
    """Raise ValueError when ``model`` is not the SD3 transformer ``spec`` describes, or cannot carry [text; image]."""
    config = model.config
    if int(config.caption_projection_dim) != int(model.inner_dim):
        raise ValueError(f"{spec.name}: caption_projection_dim {config.caption_projection_dim} differs from the "
                         f"image width {model.inner_dim}, so the two streams cannot travel as one hidden state")
    if len(model.transformer_blocks) != spec.num_blocks:
        raise ValueError(f"{spec.name}: the model has {len(model.transformer_blocks)} blocks, its spec says "
                         f"{spec.num_blocks}")
    if spec.text_length is None:
        raise ValueError(f"{spec.name}: an SD3 spec needs text_length (77 CLIP + the T5 tokens)")
    if tuple(spec.conditioning_inputs) != TEXT_INPUTS:
        raise ValueError(f"{spec.name}: SD3 takes conditioning inputs {TEXT_INPUTS}, the spec declares "
                         f"{spec.conditioning_inputs}")
    patch, grid = int(config.patch_size), int(config.pos_embed_max_size)
    height, width = spec.latent_shape[-2:]
    if height % patch or width % patch or max(height, width) // patch > grid:
        raise ValueError(f"{spec.name}: latents {spec.latent_shape[-2:]} must be multiples of the patch size {patch} "
                         f"and at most {grid * patch} (pos_embed_max_size {grid} patches)")


# ---- sizes ------------------------------------------------------------------------------------------------
# FlowMatchEulerDiscreteScheduler config of stabilityai/stable-diffusion-3-medium-diffusers and -3.5-large
SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
SD3_TEXT_LENGTH = 77 + 256  # CLIP tokens (padded to T5's width), then T5 tokens (max_sequence_length 256)


def sd3_config(layers: int, heads: int, head_dim: int = 64, qk_norm: str | None = None,
               dual_attention_layers: tuple[int, ...] = (), sample_size: int = 128, in_channels: int = 16,
               text_channels: int = 4096, pooled: int = 2048, pos_embed_max_size: int = 192) -> dict[str, Any]:
    """diffusers SD3Transformer2DModel kwargs."""
    return {"sample_size": sample_size, "patch_size": 2, "in_channels": in_channels, "num_layers": layers,
            "attention_head_dim": head_dim, "num_attention_heads": heads, "joint_attention_dim": text_channels,
            "caption_projection_dim": heads * head_dim, "pooled_projection_dim": pooled, "out_channels": in_channels,
            "pos_embed_max_size": pos_embed_max_size, "dual_attention_layers": dual_attention_layers,
            "qk_norm": qk_norm}


def sd3_spec(name: str, config: dict[str, Any], description: str, latent: tuple[int, int, int],
             text_length: int = SD3_TEXT_LENGTH, guidance_scale: float = 7.0,
             hf_repo: str | None = None) -> FlowModelSpec:
    return FlowModelSpec(
        name, "sd3", config, True, description, hf_repo=hf_repo, scheduler_config=dict(SD3_SCHEDULER),
        conditioning_inputs=TEXT_INPUTS, text_length=text_length, sampler="flow-euler", guidance_scale=guidance_scale,
        latent_shape=latent, flow=FlowSampling(sigmas="scheduler", guidance="cfg"))


SD3_MODELS = (
    sd3_spec("sd3-medium", sd3_config(24, 24), "Stable Diffusion 3 Medium 1024x1024 (2B params, 24 joint blocks)",
             (16, 128, 128), hf_repo="stabilityai/stable-diffusion-3-medium-diffusers"),
    sd3_spec("sd35-large", sd3_config(38, 38, qk_norm="rms_norm"),
             "Stable Diffusion 3.5 Large 1024x1024 (8B params, 38 joint blocks, QK norm)", (16, 128, 128),
             guidance_scale=3.5, hf_repo="stabilityai/stable-diffusion-3.5-large"),
    sd3_spec("sd3-tiny", sd3_config(3, 2, head_dim=16, qk_norm="rms_norm", dual_attention_layers=(0,), sample_size=8,
                                    in_channels=4, text_channels=32, pooled=16, pos_embed_max_size=8),
             "tiny SD3 for tests (3 joint blocks, width 32, one SD3.5 dual-attention block, QK norm, 8 text tokens)",
             (4, 8, 8), text_length=8),
)


# ---- MACs -------------------------------------------------------------------------------------------------
def sd3_costs(spec: FlowModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of an SD3 forward on ``batch`` samples with ``spec.text_length`` text tokens (convolution,
    matmuls and attention; norms, QK norms and elementwise ops not counted)."""
    config = spec.config
    d = spec.hidden_size
    patch = int(config["patch_size"])
    text = int(spec.text_length)
    height, width = spec.latent_shape[-2:]
    image = (height // patch) * (width // patch)
    joined = text + image
    head = (image * patch * patch * spec.in_channels * d  # patchify conv
            + TIME_FREQ_DIM * d + d * d + int(config["pooled_projection_dim"]) * d + d * d  # time, pooled MLPs
            + text * int(config["joint_attention_dim"]) * d)  # context_embedder
    dual_attention = set(config.get("dual_attention_layers") or ())
    blocks = []
    for index in range(int(config["num_layers"])):
        last = index == int(config["num_layers"]) - 1  # context_pre_only: no text output
        macs = (d * (9 if index in dual_attention else 6) * d  # image adaLN-zero (SD3.5's X variant: 9D)
                + d * (2 if last else 6) * d  # text adaptive norm (continuous on the last block)
                + 3 * joined * d * d  # q, k, v of both streams
                + 2 * joined * joined * d  # joint attention
                + image * d * d + (0 if last else text * d * d)  # out projections
                + 8 * image * d * d + (0 if last else 8 * text * d * d))  # MLPs D -> 4D -> D
        if index in dual_attention:
            macs += 4 * image * d * d + 2 * image * image * d  # SD3.5's second (image-only) self-attention
        blocks.append(macs)
    tail = d * 2 * d + image * d * patch * patch * spec.out_channels
    return SegmentCosts(head * batch, tuple(b * batch for b in blocks), tail * batch)


# ---- the family record ------------------------------------------------------------------------------------
_ARCHITECTURE = ("patch_size", "in_channels", "num_layers", "attention_head_dim", "num_attention_heads",
                 "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
                 "pos_embed_max_size", "dual_attention_layers", "qk_norm")


def _recognises(config: Mapping[str, Any]) -> bool:
    """An SD3Transformer2DModel config: a caption projection and a croppable position table."""
    return (names_class(config, "SD3Transformer2DModel") and "caption_projection_dim" in config
            and "pos_embed_max_size" in config)


def _spec_for_config(config: Mapping[str, Any], latent: bool = True) -> FlowModelSpec:
    """The registered SD3 size of a config, else a ``custom`` spec of it at 1024x1024 with 333 text tokens."""
    ours = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if not k.startswith("_")}
    ours.setdefault("dual_attention_layers", ())
    for spec in SD3_MODELS:
        if all(spec.config.get(k) == ours.get(k) for k in _ARCHITECTURE):
            return spec
    return sd3_spec("custom", ours, "SD3 model given by the user", (int(ours["in_channels"]), 128, 128))


ORIGINAL_SD3 = refused_layout(
    "original-sd3",
    "an original Stability AI SD3 / 3.5 checkpoint (refused: convert it with diffusers first)",
    lambda state: any(k.startswith(("joint_blocks.", "model.diffusion_model.joint_blocks.")) for k in state),
    "an original Stability AI SD3 checkpoint (joint_blocks.* keys), not diffusers weights; convert "
    "it with diffusers' SD3Transformer2DModel.from_single_file(FILE).save_pretrained(DIR) and pass "
    "--weights DIR",
)

_WEIGHTS_HELP = (
    "  --weights DIR        a diffusers SD3Transformer2DModel folder, or a StableDiffusion3Pipeline folder\n"
    "                       with transformer/ (e.g. a local copy of {repo})\n"
    "  --weights FILE       a .safetensors file with diffusers SD3 keys\n"
    "  --random-weights     random initialisation, for timing only (outputs are noise)"
)


def _stock_inputs(spec: ModelSpec, class_labels: tuple[int, ...], prompts: Any, guidance: float) -> dict[str, Any]:
    """Prompt and pooled embeddings (and the negative prompt's under guidance) in, latents out."""
    if prompts is None or getattr(prompts, "pooled", None) is None:
        raise ValueError(f"StableDiffusion3Pipeline takes prompt embeddings with pooled_prompt_embeds; {spec.name} "
                         f"was given {'none' if prompts is None else 'no pooled embeddings'}")
    _, height, width = spec.latent_shape
    inputs = {"prompt_embeds": prompts.embeds, "pooled_prompt_embeds": prompts.pooled, "height": 8 * height,
              "width": 8 * width, "output_type": "latent"}
    if guidance > 1:
        inputs.update(negative_prompt_embeds=prompts.negatives()[0],
                      negative_pooled_prompt_embeds=prompts.negative_pooling())
    return inputs


def _resize(spec: ModelSpec, side: int | None, frames: int | None) -> FlowModelSpec:
    """SD3 at another image size: the position table is cropped from pos_embed_max_size patches, so at most that."""
    if side is not None:
        patch, grid = int(spec.config["patch_size"]), int(spec.config["pos_embed_max_size"])
        if side > grid * patch:
            raise ValueError(f"--resolution {8 * side} is beyond {spec.name}'s position table ({grid} patches: at "
                             f"most {8 * grid * patch} pixels)")
    return resize_latents(spec, side, frames)


def _stock_components(denoiser: nn.Module, vae: nn.Module, scheduler: Any) -> dict[str, Any]:
    """The three text encoders and the VAE left out: prompts come as embeddings, the pipeline returns latents."""
    return {"transformer": denoiser, "scheduler": scheduler, "vae": None, "text_encoder": None, "tokenizer": None,
            "text_encoder_2": None, "tokenizer_2": None, "text_encoder_3": None, "tokenizer_3": None}


FAMILY = Family(
    name="sd3",
    parts=SD3Parts,
    costs=sd3_costs,
    model_class="SD3Transformer2DModel",
    models=SD3_MODELS,
    num_blocks=lambda config: int(config["num_layers"]),
    num_classes=lambda config: 0,
    resolution_step=lambda config: int(config["patch_size"]),
    recognises=_recognises,
    spec_for_config=_spec_for_config,
    weights_help=_WEIGHTS_HELP,
    stock=StockPipeline("StableDiffusion3Pipeline", components=_stock_components, call_inputs=_stock_inputs,
                        returns_latents=True),
    formats=(ORIGINAL_SD3,),
    sampler="flow-euler",
    guidance_scale=7.0,
    resize=_resize,
    call_spec=unpacked_call_spec,
)
