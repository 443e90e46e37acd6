"""FLUX.1 (diffusers FluxTransformer2DModel) cut into head / blocks[i:j] / tail as pure functions.

**Hidden state.** FLUX runs two token streams: the T5 text tokens and the packed image tokens. Its 19
dual-stream blocks keep them apart (separate weights, one joint attention), its 38 single-stream blocks run on
their concatenation [text; image]. ditcache carries the concatenation as its one hidden state
``h = [text; image]`` (B, L + T, D) through every block: a dual-stream segment splits ``h``, runs its blocks
and joins the streams again; a single-stream segment hands diffusers' blocks the two views, which join them
themselves. So the blocks are one chain of 19 + 38 = 57, numbered dual first; a cached offset (or output) of
any range covers both streams, and a range may span the dual/single boundary (Δ-DiT's front range on FLUX.1
starts with dual-stream blocks, its back range ends with single-stream ones). Block caching's scale/shift has a
text row and an image row per range and step (``streams()``, graphs/streams.py).

**Head.** Packed-latent and text embeddings, the timestep (+ guidance) + pooled-text embedding ``temb``
(B, D), and the rotary table of the joined sequence. The pipeline divides the scheduler's timestep by 1000,
the model multiplies by 1000 again; ``timestep`` here is what the model takes (t / 1000). The token positions
(text: zeros; image: (0, row, column) of each 2x2 patch, as FluxPipeline makes them) depend only on the image
size, so the head computes the rotary table once, with diffusers' own function, and hands it on as the
named values ``rope_cos`` / ``rope_sin`` (L + T, head_dim).

**Tail.** Final adaptive norm on the image tokens, projection to packed patches (B, T, 4C): the model's
output, packed as the pipeline steps it.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import nn

from .family import Family, StockPipeline, names_class, refused_layout
from .flow_spec import FlowModelSpec, FlowSampling, resize_latents
from .macs import TIME_FREQ_DIM, SegmentCosts
from .model_spec import ModelSpec
from .segments import PatchTokenParts, Segment
from .streams import TextImageStreams

TEMB = "temb"  # (B, D): timestep (+ guidance) + pooled-text embedding, modulates every block and the tail
ROPE_COS, ROPE_SIN = "rope_cos", "rope_sin"  # (L + T, head_dim): rotary table of the joined sequence
TEXT_INPUTS = ("encoder_hidden_states", "pooled_projections")
GUIDANCE = "guidance"  # (B,): FLUX.1-dev's distilled guidance scale, a model input (no CFG batch)


def token_positions(text_length: int, height: int, width: int) -> torch.Tensor:
    """(L + T, 3) rotary positions of the joined sequence: zeros for the text tokens, (0, row, column) for the
    2x2 patches of (H, W) latents, as FluxPipeline builds txt_ids and img_ids."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")  # (h, w)
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)  # (T, 3)
    return torch.cat([torch.zeros(text_length, 3), image.float()])  # (L + T, 3)


class FluxHead(nn.Module):
    """Packed-latent and text embeddings joined as [text; image], ``temb``, and the rotary table."""

    def __init__(self, model: nn.Module, text_length: int, height: int, width: int):
        super().__init__()
        self.x_embedder = model.x_embedder
        self.context_embedder = model.context_embedder
        self.time_text_embed = model.time_text_embed
        self.guidance = bool(model.config.guidance_embeds)
        device = model.x_embedder.weight.device
        with torch.no_grad():
            cos, sin = model.pos_embed(token_positions(text_length, height, width).to(device))  # 2 x (L + T, hd)
        self.register_buffer(ROPE_COS, cos, persistent=False)
        self.register_buffer(ROPE_SIN, sin, persistent=False)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, *guidance: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = self.x_embedder(x)  # (B, T, 4C) -> (B, T, D)
        timestep = timestep.to(image.dtype) * 1000  # the pipeline passed t / 1000
        if self.guidance:
            scale = guidance[0].to(image.dtype) * 1000
            temb = self.time_text_embed(timestep, scale, pooled_projections)  # (B, D)
        else:
            temb = self.time_text_embed(timestep, pooled_projections)  # (B, D)
        text = self.context_embedder(encoder_hidden_states)  # (B, L, C_text) -> (B, L, D)
        return torch.cat([text, image], dim=1), temb, self.rope_cos, self.rope_sin  # (B, L + T, D), ...


class FluxBlocks(nn.Module):
    """Blocks [start, end) of the chain dual-stream, then single-stream, on h = [text; image]."""

    def __init__(self, model: nn.Module, start: int, end: int, text_length: int):
        super().__init__()
        chain = [*model.transformer_blocks, *model.single_transformer_blocks]
        self.blocks = nn.ModuleList(chain[start:end])
        self.text_length = text_length  # static: the split needs no shape arithmetic at run time

    def forward(self, h: torch.Tensor, temb: torch.Tensor, rope_cos: torch.Tensor,
                rope_sin: torch.Tensor) -> torch.Tensor:
        text = h[:, :self.text_length].contiguous()  # (B, L, D)
        image = h[:, self.text_length:].contiguous()  # (B, T, D)
        rope = (rope_cos, rope_sin)
        for block in self.blocks:  # both kinds take (image, text) and return (text, image)
            text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        return torch.cat([text, image], dim=1)  # (B, L + T, D)


class FluxTail(nn.Module):
    """Final adaptive norm of the image tokens and projection to packed 2x2 patches."""

    def __init__(self, model: nn.Module, text_length: int):
        super().__init__()
        self.norm_out = model.norm_out
        self.proj_out = model.proj_out
        self.text_length = text_length

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        image = h[:, self.text_length:]  # (B, T, D): the view diffusers' last single-stream block returns
        return self.proj_out(self.norm_out(image, temb))  # (B, T, 4C)


class FluxParts(TextImageStreams, PatchTokenParts):
    """The FLUX.1 decomposition: ``tail(blocks[0:Nb](head(x, t, text, pooled[, guidance])), temb) == model(...)``.

    Inputs: ``x`` (B, T, 4C) packed latents, ``timestep`` (B,) = t / 1000, ``encoder_hidden_states`` (B, L, 4096)
    T5 embeddings, ``pooled_projections`` (B, 768) pooled CLIP embedding, and for FLUX.1-dev ``guidance`` (B,).
    Blocks 0 .. num_layers-1 are dual-stream, the rest single-stream; h = [text; image] (B, L + T, D) between them.
    """

    block_inputs = (TEMB, ROPE_COS, ROPE_SIN)

    def __init__(self, model: nn.Module, spec: FlowModelSpec):
        check_model(model, spec)
        self.model = model
        self.spec = spec
        self.text_length = int(spec.text_length)
        self.block_module = functools.partial(FluxBlocks, text_length=self.text_length)
        self.num_dual = len(model.transformer_blocks)
        self.num_blocks = self.num_dual + len(model.single_transformer_blocks)
        self.input_names = ("x", "timestep", *spec.conditioning_inputs)
        height, width = spec.latent_shape[-2:]
        self._head = Segment("head", FluxHead(model, self.text_length, height, width), self.input_names,
                             ("h", TEMB, ROPE_COS, ROPE_SIN))
        self._tail = Segment("tail", FluxTail(model, self.text_length), ("h", TEMB), ("out",))

    @property
    def image_tokens(self) -> int:
        height, width = self.spec.latent_shape[-2:]
        return (height // 2) * (width // 2)

    @property
    def tokens(self) -> int:
        """Tokens of the hidden state: text, then image."""
        return self.text_length + self.image_tokens

    def block_labels(self) -> list[str]:
        """``dual.<i>`` / ``single.<i>``: each block's kind and index within its kind, in chain order."""
        return [f"dual.{i}" for i in range(self.num_dual)] + [
            f"single.{i}" for i in range(self.num_blocks - self.num_dual)]

    def block_modules(self) -> list[nn.Module]:
        """The diffusers blocks in chain order; their outputs are (text, image): :meth:`block_output` joins them."""
        return [*self.model.transformer_blocks, *self.model.single_transformer_blocks]

    @staticmethod
    def block_output(output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """A diffusers block's (text, image) output as ditcache's hidden state [text; image]."""
        return torch.cat(list(output), dim=1)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (no CFG doubling on FLUX: guidance is an input)."""
        config = self.spec.config
        inputs = {
            "x": torch.randn(batch, self.image_tokens, int(config["in_channels"]), generator=generator),
            "timestep": torch.rand(batch, generator=generator),  # t / 1000
            "encoder_hidden_states": torch.randn(batch, self.text_length, int(config["joint_attention_dim"]),
                                                 generator=generator),
            "pooled_projections": torch.randn(batch, int(config["pooled_projection_dim"]), generator=generator),
        }
        if GUIDANCE in self.input_names:
            inputs[GUIDANCE] = torch.full((batch,), 3.5)
        return inputs


def check_model(model: nn.Module, spec: FlowModelSpec) -> None:
    """Raise ValueError when ``model`` is not the FLUX.1 transformer ``spec`` describes."""
    config = model.config
    expected = ("x", "timestep", *TEXT_INPUTS, *((GUIDANCE,) if config.guidance_embeds else ()))
    if ("x", "timestep", *spec.conditioning_inputs) != expected:
        raise ValueError(f"{spec.name} declares conditioning inputs {spec.conditioning_inputs}, the model takes "
                         f"{expected[2:]} (guidance_embeds={config.guidance_embeds}): FLUX.1-dev embeds guidance, "
                         f"-schnell does not; choose the --model these weights belong to")
    blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    if blocks != spec.num_blocks:
        raise ValueError(f"{spec.name}: the model has {blocks} blocks, its spec says {spec.num_blocks}")
    if spec.text_length is None:
        raise ValueError(f"{spec.name}: a FLUX spec needs text_length (the padded T5 token count)")
    channels, height, width = spec.latent_shape
    if height % 2 or width % 2 or 4 * channels != int(config.in_channels) or int(config.patch_size) != 1:
        raise ValueError(f"{spec.name}: latents {spec.latent_shape} do not pack into the model's "
                         f"{config.in_channels} input channels (2x2 patches of C = in_channels / 4, even sides)")


# ---- sizes ------------------------------------------------------------------------------------------------
# FlowMatchEulerDiscreteScheduler configs of the black-forest-labs/FLUX.1-dev and -schnell repos
FLUX_DEV_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                                      "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                                      "max_image_seq_len": 4096}
FLUX_SCHNELL_SCHEDULER: dict[str, Any] = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}


def flux_config(guidance: bool, layers: int = 19, single_layers: int = 38, heads: int = 24, head_dim: int = 128,
                in_channels: int = 64, text_channels: int = 4096, pooled: int = 768,
                rope: tuple[int, int, int] = (16, 56, 56)) -> dict[str, Any]:
    """diffusers FluxTransformer2DModel kwargs (FLUX.1 sizes by default)."""
    return {"patch_size": 1, "in_channels": in_channels, "out_channels": None, "num_layers": layers,
            "num_single_layers": single_layers, "attention_head_dim": head_dim, "num_attention_heads": heads,
            "joint_attention_dim": text_channels, "pooled_projection_dim": pooled, "guidance_embeds": guidance,
            "axes_dims_rope": rope}


def flux_spec(name: str, config: dict[str, Any], description: str, latent: tuple[int, int, int],
              text_length: int, hf_repo: str | None = None) -> FlowModelSpec:
    """A FLUX.1 size: dev-like (guidance embedded, dynamic shifting) when the config embeds guidance, else
    schnell-like (no guidance, shift 1)."""
    guided = bool(config["guidance_embeds"])
    return FlowModelSpec(
        name, "flux", config, True, description, hf_repo=hf_repo,
        scheduler_config=dict(FLUX_DEV_SCHEDULER if guided else FLUX_SCHNELL_SCHEDULER),
        conditioning_inputs=(*TEXT_INPUTS, *((GUIDANCE,) if guided else ())), text_length=text_length,
        sampler="flow-euler", guidance_scale=3.5 if guided else 0.0, latent_shape=latent,
        flow=FlowSampling(sigmas="linspace", timestep_divisor=1000.0, guidance="embedded" if guided else "none",
                          packed=True))


_TINY = {"layers": 2, "single_layers": 2, "heads": 2, "head_dim": 16, "in_channels": 16, "text_channels": 32,
         "pooled": 16, "rope": (4, 6, 6)}

FLUX_MODELS = (
    flux_spec("flux-dev", flux_config(True), "FLUX.1-dev 1024x1024 (12B params, 19 dual + 38 single-stream blocks, "
              "guidance embedded)", (16, 128, 128), 512, hf_repo="black-forest-labs/FLUX.1-dev"),
    flux_spec("flux-schnell", flux_config(False), "FLUX.1-schnell 1024x1024 (12B params, 4-step distillation, no "
              "guidance)", (16, 128, 128), 256, hf_repo="black-forest-labs/FLUX.1-schnell"),
    flux_spec("flux-dev-d2s4", flux_config(True, layers=2, single_layers=4), "FLUX.1-dev at full width (3072) and "
              "REDUCED DEPTH: 2 dual + 4 single-stream blocks instead of 19 + 38 (1.3B params; CPU benchmarks with "
              "random weights, since 12B do not fit)", (16, 128, 128), 512),
    flux_spec("flux-tiny", flux_config(True, **_TINY), "tiny FLUX.1-dev-like model for tests (2 dual + 2 single "
              "blocks, width 32, 8 text tokens)", (4, 8, 8), 8),
    flux_spec("flux-schnell-tiny", flux_config(False, **_TINY), "tiny FLUX.1-schnell-like model for tests (no "
              "guidance embedding)", (4, 8, 8), 8),
)


# ---- MACs -------------------------------------------------------------------------------------------------
def flux_costs(spec: FlowModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of a FLUX.1 forward on ``batch`` samples with ``spec.text_length`` text tokens (matmuls and
    attention; norms, RoPE, elementwise ops not counted; the rotary table is built once, outside the step)."""
    config = spec.config
    d = spec.hidden_size
    text = int(spec.text_length)
    height, width = spec.latent_shape[-2:]
    image = (height // 2) * (width // 2)
    joined = text + image
    embedding = TIME_FREQ_DIM * d + d * d + int(config["pooled_projection_dim"]) * d + d * d  # time MLP, pooled MLP
    if config["guidance_embeds"]:
        embedding += TIME_FREQ_DIM * d + d * d  # guidance MLP
    head = (image * int(config["in_channels"]) * d  # x_embedder
            + embedding
            + text * int(config["joint_attention_dim"]) * d)  # context_embedder
    dual = (2 * d * 6 * d  # adaLN-zero modulation of both streams
            + 4 * joined * d * d  # q, k, v, out projections of both streams
            + 2 * joined * joined * d  # joint attention: scores and weighted sum
            + 8 * joined * d * d)  # MLPs D -> 4D -> D of both streams
    single = (d * 3 * d  # adaLN-zero-single modulation
              + 3 * joined * d * d  # q, k, v
              + 2 * joined * joined * d  # attention
              + joined * d * 4 * d  # MLP in D -> 4D
              + joined * 5 * d * d)  # out projection of [attention; MLP] 5D -> D
    blocks = (dual,) * int(config["num_layers"]) + (single,) * int(config["num_single_layers"])
    tail = d * 2 * d + image * d * spec.out_channels  # adaptive norm modulation, projection
    return SegmentCosts(head * batch, tuple(b * batch for b in blocks), tail * batch)


# ---- the family record ------------------------------------------------------------------------------------
_ARCHITECTURE = ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                 "joint_attention_dim", "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")


def _recognises(config: Mapping[str, Any]) -> bool:
    """A FluxTransformer2DModel config: dual- and single-stream block counts."""
    return (names_class(config, "FluxTransformer2DModel") and "num_single_layers" in config
            and "joint_attention_dim" in config)


def _spec_for_config(config: Mapping[str, Any], latent: bool = True) -> FlowModelSpec:
    """The registered FLUX.1 size of a config, else a ``custom`` spec of it at 1024x1024 (dev: 512 text tokens,
    schnell: 256, as their pipelines' max_sequence_length)."""
    ours = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if not k.startswith("_")}
    for spec in FLUX_MODELS:
        if all(spec.config.get(k) == ours.get(k) for k in _ARCHITECTURE):
            return spec
    guided = bool(ours.get("guidance_embeds"))
    return flux_spec("custom", ours, "FLUX model given by the user", (int(ours["in_channels"]) // 4, 128, 128),
                     512 if guided else 256)


ORIGINAL_FLUX = refused_layout(
    "original-flux",
    "an original Black Forest Labs FLUX checkpoint (refused: convert it with diffusers first)",
    lambda state: any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in state),
    "an original Black Forest Labs FLUX checkpoint (double_blocks.* keys), not diffusers weights; "
    "convert it with diffusers' FluxTransformer2DModel.from_single_file(FILE).save_pretrained(DIR) "
    "and pass --weights DIR",
)

_WEIGHTS_HELP = (
    "  --weights DIR        a diffusers FluxTransformer2DModel folder, or a FluxPipeline folder with\n"
    "                       transformer/ (e.g. a local copy of {repo})\n"
    "  --weights FILE       a .safetensors file with diffusers FLUX keys\n"
    "  --random-weights     random initialisation, for timing only (outputs are noise)"
)


def _forward_extras(spec: ModelSpec) -> dict[str, Any]:
    """FluxTransformer2DModel's ``txt_ids`` (L, 3) and ``img_ids`` (T, 3), as FluxPipeline makes them."""
    _, height, width = spec.latent_shape
    positions = token_positions(int(spec.text_length), height, width)  # (L + T, 3)
    return {"txt_ids": positions[:int(spec.text_length)], "img_ids": positions[int(spec.text_length):]}


def _call_spec(spec: ModelSpec, call: Mapping[str, Any]) -> FlowModelSpec:
    """The spec of one FluxPipeline call: the latent size from ``img_ids`` (packed tokens do not tell height from
    width; the last token sits at (0, rows - 1, columns - 1)), the text length from the prompt embeddings."""
    tokens = call["hidden_states"]  # (B, T, 4C)
    ids = call.get("img_ids")
    if ids is None:
        raise ValueError("FluxTransformer2DModel is called with img_ids (the packed tokens' positions); pass them")
    ids = ids[0] if ids.ndim == 3 else ids  # (T, 3): older pipelines passed a batch of them
    rows, cols = (int(v) + 1 for v in ids[-1, 1:].tolist())
    if rows * cols != tokens.shape[1]:
        raise ValueError(f"img_ids ({tuple(ids.shape)}, last {ids[-1].tolist()}) do not lay out the {tokens.shape[1]} "
                         f"packed tokens row by row, as FluxPipeline makes them")
    latent = (int(tokens.shape[2]) // 4, 2 * rows, 2 * cols)
    length = int(call["encoder_hidden_states"].shape[1])
    if latent == tuple(spec.latent_shape) and length == spec.text_length:
        return spec
    return replace(spec, latent_shape=latent, text_length=length)


def _stock_inputs(spec: ModelSpec, class_labels: tuple[int, ...], prompts: Any, guidance: float) -> dict[str, Any]:
    """Prompt and pooled embeddings in, packed latents out (FluxPipeline embeds the guidance scale itself)."""
    if prompts is None or getattr(prompts, "pooled", None) is None:
        raise ValueError(f"FluxPipeline takes prompt embeddings with pooled_prompt_embeds; {spec.name} was given "
                         f"{'none' if prompts is None else 'no pooled embeddings'}")
    _, height, width = spec.latent_shape
    return {"prompt_embeds": prompts.embeds, "pooled_prompt_embeds": prompts.pooled, "height": 8 * height,
            "width": 8 * width, "output_type": "latent"}


def _stock_components(denoiser: nn.Module, vae: nn.Module, scheduler: Any) -> dict[str, Any]:
    """Text encoders and the VAE left out: prompts come as embeddings, the pipeline returns latents."""
    return {"scheduler": scheduler, "vae": None, "text_encoder": None, "tokenizer": None, "text_encoder_2": None,
            "tokenizer_2": None, "transformer": denoiser}


FAMILY = Family(
    name="flux",
    parts=FluxParts,
    costs=flux_costs,
    model_class="FluxTransformer2DModel",
    models=FLUX_MODELS,
    num_blocks=lambda config: int(config["num_layers"]) + int(config["num_single_layers"]),
    num_classes=lambda config: 0,
    resolution_step=lambda config: 2,  # 2x2 packing of the latents
    recognises=_recognises,
    spec_for_config=_spec_for_config,
    weights_help=_WEIGHTS_HELP,
    stock=StockPipeline("FluxPipeline", components=_stock_components, call_inputs=_stock_inputs,
                        returns_latents=True),
    formats=(ORIGINAL_FLUX,),
    sampler="flow-euler",
    guidance_scale=3.5,
    resize=resize_latents,
    forward_extras=_forward_extras,
    call_spec=_call_spec,
)
