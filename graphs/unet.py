"""The U-Net family (diffusers UNet2DConditionModel): its record, and its cut into head / links / blocks[i:j] /
tail, skips as named values (its sizes: graphs/unet_sizes.py).

**Caching unit.** ditcache's *block* on a U-Net is one **attention layer**: a ``Transformer2DModel`` (spatial
transformer: self-attention, cross-attention to the text, feed-forward) in Stable Diffusion's
``CrossAttn*Block2D`` and mid block, or the self-attention ``Attention`` of ``Attn*Block2D``, numbered in
forward order (down blocks, mid block, up blocks: 16 in SD 1.5). This is the block of the block-caching
paper (Wimbauer et al., CVPR 2024): its schedules (their Fig. 4) give one cache lifetime per *spatial
transformer* of LDM's input, middle and output blocks. A whole down/mid/up level would be a coarser unit
whose input and output differ in shape (resnets change channels, samplers change resolution) and which also
emits skip features, so it could only be replayed as a plain output and would have to replay its skips too.
An attention layer maps (B, C, H, W) to the same shape (its residual is inside), so both replay modes are
defined — ``offset`` adds the cached residual ``F(h) - h`` to the current input, ``output`` returns the
cached output — and the per-channel scale/shift broadcasts as (C, 1, 1) on dim 1 of NCHW features.

**Program.** The forward is flattened into ops: the embedding and ``conv_in``, resnets, attention layers,
pushes of skip features, down/up-samplers, the output convolution. Everything between two attention layers
is a *link* (``link.i`` runs before block i): resnets, samplers and skip handling always run, also on steps
that replay the blocks around them. The head (embedding, ``conv_in`` and the link before block 0) and the
tail (the link after the last block and the output convolution) close the chain. Skip features are explicit
environment values ``skip<k>`` (the k-th feature pushed on the down path): the segment that pushes one lists
it among its outputs, the segment that concatenates it lists it among its inputs, as do the time embedding
``emb`` and the text ``encoder_hidden_states``. ``levels()`` cuts the same ops at diffusers' module boundaries
instead (embedding + ``conv_in``, each down block, the mid block, each up block, ``conv_out``), skips again explicit:
chained, either cut equals ``UNet2DConditionModel.forward`` (tests/graphs/test_unet.py).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .family import Family, StockPipeline, names_class, refused_layout
from .macs import unet_costs
from .model_spec import DIT_SCHEDULER_CONFIG, ModelSpec
from .segments import Segment, block_name, check_block_range, link_name
from .unet_sizes import (CLIP_TOKENS, GUIDANCE_SCALE, SAMPLER, SD_SCHEDULER_CONFIG, UNET_MODELS, attention_layers,
                         downsample_factor)

HIDDEN, EMB, OUT = "h", "emb", "out"
CONTEXT = "encoder_hidden_states"
_DOWN = {"CrossAttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"}
_UP = {"CrossAttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"}
_MID = {"UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None}


def skip_name(index: int) -> str:
    """Environment name of the ``index``-th skip feature pushed on the down path."""
    return f"skip{index}"


class _Op(nn.Module):
    """One step of the flattened forward: reads and writes named values of an environment."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    is_block = False

    def run(self, env: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


class _Embed(_Op):
    """Timestep (and class) embedding, ``conv_in``; as ``UNet2DConditionModel.forward``."""

    def __init__(self, model: nn.Module, class_conditional: bool):
        super().__init__()
        self.time_proj, self.time_embedding, self.conv_in = model.time_proj, model.time_embedding, model.conv_in
        self.class_embedding = model.class_embedding if class_conditional else None
        self.reads = ("x", "timestep", *(("class_labels",) if class_conditional else ()))
        self.writes = (HIDDEN, EMB)

    def run(self, env):
        x = env["x"]  # (B, C_in, S, S)
        t_emb = self.time_proj(env["timestep"]).to(dtype=x.dtype)  # (B, C0)
        emb = self.time_embedding(t_emb)  # (B, 4*C0)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(env["class_labels"]).to(dtype=x.dtype)  # (B, 4*C0)
        env[EMB] = emb
        env[HIDDEN] = self.conv_in(x)  # (B, C0, S, S)


class _Resnet(_Op):
    """``h = resnet(h, emb)``, on the up path after concatenating a skip feature."""

    def __init__(self, resnet: nn.Module, skip: str | None = None):
        super().__init__()
        self.resnet, self.skip = resnet, skip
        self.reads = (HIDDEN, *((skip,) if skip else ()), EMB)
        self.writes = (HIDDEN,)

    def run(self, env):
        h = env[HIDDEN]
        if self.skip is not None:
            h = torch.cat([h, env[self.skip]], dim=1)  # (B, C + C_skip, H, W)
        env[HIDDEN] = self.resnet(h, env[EMB])  # (B, C_out, H, W)


class _Attention(_Op):
    """One attention layer: the caching unit (shape-preserving, residual inside)."""

    is_block = True

    def __init__(self, attention: nn.Module, cross: bool):
        super().__init__()
        self.attention, self.cross = attention, cross
        self.reads = (HIDDEN, CONTEXT) if cross else (HIDDEN,)
        self.writes = (HIDDEN,)

    def run(self, env):
        h = env[HIDDEN]  # (B, C, H, W)
        if self.cross:
            env[HIDDEN] = self.attention(h, encoder_hidden_states=env[CONTEXT], return_dict=False)[0]
        else:
            env[HIDDEN] = self.attention(h)


class _Push(_Op):
    """Keep the current features as a skip connection."""

    def __init__(self, name: str):
        super().__init__()
        self.reads, self.writes = (HIDDEN,), (name,)

    def run(self, env):
        env[self.writes[0]] = env[HIDDEN]


class _Resample(_Op):
    """A down-sampler (strided conv) or up-sampler (nearest x2 + conv)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.reads = self.writes = (HIDDEN,)

    def run(self, env):
        env[HIDDEN] = self.module(env[HIDDEN])  # (B, C, H/2, W/2) or (B, C, 2H, 2W)


class _Out(_Op):
    """Final group norm, activation, ``conv_out``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.norm, self.act, self.conv = model.conv_norm_out, model.conv_act, model.conv_out
        self.reads, self.writes = (HIDDEN,), (OUT,)

    def run(self, env):
        h = env[HIDDEN]
        if self.norm is not None:
            h = self.act(self.norm(h))
        env[OUT] = self.conv(h)  # (B, C_out, S, S)


class UNetSegment(nn.Module):
    """A run of consecutive ops as a pure function of its named inputs."""

    def __init__(self, ops: list[_Op], inputs: tuple[str, ...], outputs: tuple[str, ...]):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.input_names, self.output_names = inputs, outputs

    def forward(self, *args: torch.Tensor):
        env = dict(zip(self.input_names, args))
        for op in self.ops:
            op.run(env)
        outs = tuple(env[n] for n in self.output_names)
        return outs[0] if len(outs) == 1 else outs


def _check_supported(model: nn.Module, spec: ModelSpec) -> None:
    """Raise ValueError naming the first UNet2DConditionModel feature this decomposition does not implement."""
    config = model.config
    unsupported = {
        "center_input_sample": bool(config.center_input_sample),
        "class_embed_type": config.class_embed_type is not None,
        "class_embeddings_concat": bool(config.class_embeddings_concat),
        "addition_embed_type": config.addition_embed_type is not None,
        "encoder_hid_dim_type": model.encoder_hid_proj is not None,
        "time_embedding_act_fn": model.time_embed_act is not None,
        "time_cond_proj_dim": config.time_cond_proj_dim is not None,
    }
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(f"{spec.name}: UNet2DConditionModel with {key}={config[key]!r} is not supported by "
                             f"ditcache's U-Net decomposition (Stable Diffusion 1.x/2.x-style U-Nets are)")
    kinds = [*config.down_block_types, *config.up_block_types, config.mid_block_type]
    unknown = [k for k in kinds if k not in _DOWN | _UP | _MID]
    if unknown:
        raise ValueError(f"{spec.name}: block type {unknown[0]!r} is not supported; use "
                         f"{', '.join(sorted(_DOWN | _UP | (_MID - {None})))}")
    factor = downsample_factor(config)
    if spec.sample_size % factor:
        raise ValueError(f"{spec.name}: sample size {spec.sample_size} is not a multiple of the U-Net's down-sampling "
                         f"factor {factor}; pad or resize the input to a multiple of {factor}")


class UNetParts:
    """The U-Net decomposition: head, links and attention-layer blocks, tail; chained, equal to the model.

    ``num_blocks`` attention layers; ``link(i)`` (0 < i < num_blocks) runs before block i on every step.
    """

    hidden_name = HIDDEN
    output_name = OUT

    def __init__(self, model: nn.Module, spec: ModelSpec):
        _check_supported(model, spec)
        self.model, self.spec = model, spec
        self.input_names = ("x", "timestep", *spec.conditioning_inputs)
        self._cross = CONTEXT in spec.conditioning_inputs
        self._shapes: list[tuple[int, int]] = []  # (channels, size) entering each attention layer
        self._labels: list[str] = []  # where each attention layer sits ("down.1 14x14")
        self.ops: tuple[_Op, ...] = tuple(self._program())
        self._blocks = [i for i, op in enumerate(self.ops) if op.is_block]
        self.num_blocks = len(self._blocks)
        if self.num_blocks == 0:
            raise ValueError(f"{spec.name}: the U-Net has no attention layers, so nothing to cache")
        if self.num_blocks != spec.num_blocks:
            raise ValueError(f"{spec.name}: the model has {self.num_blocks} attention layers, its spec says "
                             f"{spec.num_blocks}; the weights' config does not match the registry entry")

    # ---- the flattened forward ----------------------------------------------------------------
    def _attention(self, module: nn.Module, size: int, channels: int) -> _Attention:
        from diffusers.models.attention_processor import Attention
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        if isinstance(module, Transformer2DModel):
            if not self._cross:
                raise ValueError(f"{self.spec.name}: the U-Net has cross-attention layers, so its conditioning "
                                 f"inputs must include {CONTEXT!r}")
            op = _Attention(module, cross=True)
        elif isinstance(module, Attention) and module.spatial_norm is None:
            op = _Attention(module, cross=False)
        else:
            raise ValueError(f"{self.spec.name}: attention layer {type(module).__name__} is not supported")
        self._shapes.append((channels, size))
        self._labels.append(f"{self._levels[-1][0]} {size}x{size}")
        return op

    def _program(self) -> list[_Op]:
        model = self.model
        class_conditional = "class_labels" in self.spec.conditioning_inputs
        if class_conditional != (model.class_embedding is not None):
            raise ValueError(f"{self.spec.name}: conditioning inputs {self.spec.conditioning_inputs} do not match "
                             f"the model (num_class_embeds={model.config.num_class_embeds})")
        size, channels = self.spec.sample_size, model.conv_in.out_channels
        ops: list[_Op] = [_Embed(model, class_conditional), _Push(skip_name(0))]
        self._levels = [("embed", 0)]  # (name, first op) of each diffusers module level, for levels()
        skips = [skip_name(0)]
        for index, block in enumerate(model.down_blocks):
            self._levels.append((f"down.{index}", len(ops)))
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attention in zip(block.resnets, attentions):
                ops.append(_Resnet(resnet))
                channels = resnet.out_channels
                if attention is not None:
                    ops.append(self._attention(attention, size, channels))
                skips.append(skip_name(len(skips)))
                ops.append(_Push(skips[-1]))
            for sampler in block.downsamplers or []:
                ops.append(_Resample(sampler))
                size, channels = size // 2, sampler.out_channels
                skips.append(skip_name(len(skips)))
                ops.append(_Push(skips[-1]))
        mid = model.mid_block
        if mid is not None:
            self._levels.append(("mid", len(ops)))
            ops.append(_Resnet(mid.resnets[0]))
            for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
                if attention is not None:
                    ops.append(self._attention(attention, size, channels))
                ops.append(_Resnet(resnet))
        for index, block in enumerate(model.up_blocks):
            self._levels.append((f"up.{index}", len(ops)))
            if getattr(block, "s1", None):
                raise ValueError(f"{self.spec.name}: FreeU is enabled on the U-Net; disable it (pipe.disable_freeu())")
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attention in zip(block.resnets, attentions):
                ops.append(_Resnet(resnet, skips.pop()))
                channels = resnet.out_channels
                if attention is not None:
                    ops.append(self._attention(attention, size, channels))
            for sampler in block.upsamplers or []:
                ops.append(_Resample(sampler))
                size, channels = size * 2, sampler.out_channels
        self._levels.append(("out", len(ops)))
        ops.append(_Out(model))
        return ops

    def _segment(self, name: str, first: int, stop: int, start: int | None = None,
                 end: int | None = None) -> Segment:
        """Ops [first, stop) as a segment: inputs are what they read before writing, outputs what they write
        that a later op reads (and the model output)."""
        ops = list(self.ops[first:stop])
        inputs: list[str] = []
        written: set[str] = set()
        for op in ops:
            inputs += [n for n in op.reads if n not in written and n not in inputs]
            written.update(op.writes)
        later = {n for op in self.ops[stop:] for n in op.reads} | {OUT}
        outputs = sorted((n for n in written if n in later), key=_value_order)
        return Segment(name, UNetSegment(ops, tuple(inputs), tuple(outputs)), tuple(inputs), tuple(outputs),
                       start, end)

    # ---- DenoiserParts ------------------------------------------------------------------------
    def head(self) -> Segment:
        return self._segment("head", 0, self._blocks[0])

    def link(self, position: int) -> Segment | None:
        """What runs between blocks ``position - 1`` and ``position`` (resnets, samplers, skips), or None."""
        if not 0 < position < self.num_blocks:
            return None
        first, stop = self._blocks[position - 1] + 1, self._blocks[position]
        return self._segment(link_name(position), first, stop) if stop > first else None

    def blocks(self, start: int, end: int) -> Segment:
        check_block_range(start, end, self.num_blocks)
        return self._segment(block_name(start, end), self._blocks[start], self._blocks[end - 1] + 1, start, end)

    def tail(self) -> Segment:
        return self._segment("tail", self._blocks[-1] + 1, len(self.ops))

    def levels(self) -> list[Segment]:
        """The same program cut at diffusers' module boundaries instead of at the attention layers: ``embed``
        (time and class embedding, ``conv_in``), ``down.<i>`` per down block, ``mid``, ``up.<i>`` per up block,
        ``out`` (norm, activation, ``conv_out``); skips are their explicit inputs/outputs. Chained, they equal the
        model's forward. A view for inspection and tests: plans are built on the finer attention-layer cut (the
        caching unit), where a level is a chain of links and blocks."""
        bounds = [first for _, first in self._levels] + [len(self.ops)]
        return [self._segment(name, first, stop) for (name, first), stop in zip(self._levels, bounds[1:])]

    def block_labels(self) -> list[str]:
        """Where each attention layer sits: its diffusers level and feature size (``up.0 7x7``), for plots."""
        return list(self._labels)

    def resnet_modules(self) -> list[nn.Module]:
        """The resnets, in forward order (not caching units; calibration may measure them for comparison)."""
        return [op.resnet for op in self.ops if isinstance(op, _Resnet)]

    def block_modules(self) -> list[nn.Module]:
        """The attention layers, in block order (what calibration hooks)."""
        return [self.ops[i].attention for i in self._blocks]

    def hidden_shape(self, batch: int, block: int = 0) -> tuple[int, ...]:
        """Shape of the features entering (and leaving) attention layer ``block``."""
        channels, size = self._shapes[block]
        return (batch, channels, size, size)

    def channel_shape(self, block: int = 0) -> tuple[int, ...]:
        """Shape of a per-channel scale/shift of block ``block``: channels on dim 1 of (B, C, H, W)."""
        return (self._shapes[block][0], 1, 1)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (``batch`` counts the CFG doubling)."""
        spec, size = self.spec, self.spec.sample_size
        values = {
            "x": torch.randn(batch, spec.in_channels, size, size, generator=generator),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
        }
        if "class_labels" in spec.conditioning_inputs:
            values["class_labels"] = torch.randint(0, spec.num_classes + 1, (batch,), generator=generator)
        if self._cross:
            tokens = spec.text_length or CLIP_TOKENS
            width = int(self.model.config.cross_attention_dim)
            values[CONTEXT] = torch.randn(batch, tokens, width, generator=generator)
        return values


def _value_order(name: str) -> tuple[int, str]:
    """Segment outputs in a stable order: the hidden state (or model output) first, ``emb``, skips by index."""
    if name in (HIDDEN, OUT):
        return (-2, name)
    return (int(name[4:]), name) if name.startswith("skip") and name[4:].isdigit() else (-1, name)


# ---- the family record ------------------------------------------------------------------------------------
# what makes two U-Net configs the same architecture
_ARCHITECTURE = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                 "layers_per_block", "cross_attention_dim", "sample_size", "num_class_embeds")


def _recognises(config: Mapping[str, Any]) -> bool:
    """A UNet2DConditionModel config: down/up block levels."""
    return names_class(config, "UNet2DConditionModel") and "down_block_types" in config


def _spec_for_config(config: Mapping[str, Any], latent: bool = True) -> ModelSpec:
    """The U-Net spec of a UNet2DConditionModel config: a registered one where the architecture matches, else
    ``custom`` (text-conditioned unless it has class embeddings)."""
    ours = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if not k.startswith("_")}
    for spec in UNET_MODELS:
        if all(spec.config.get(k) == ours.get(k) for k in _ARCHITECTURE):
            return spec
    classes = bool(ours.get("num_class_embeds"))
    return ModelSpec("custom", "unet", ours, latent, "U-Net given by the user",
                     scheduler_config=dict(DIT_SCHEDULER_CONFIG if classes else SD_SCHEDULER_CONFIG),
                     conditioning_inputs=("class_labels",) if classes else ("encoder_hidden_states",),
                     text_length=None if classes else CLIP_TOKENS, sampler=SAMPLER,
                     guidance_scale=4.0 if classes else GUIDANCE_SCALE)


ORIGINAL_SD = refused_layout(
    "original-sd",
    "an original (CompVis/LDM) Stable Diffusion checkpoint (refused: convert it with diffusers first)",
    lambda state: any(k.startswith("model.diffusion_model.") for k in state),
    "an original (CompVis/LDM) Stable Diffusion checkpoint, not diffusers weights; convert it with "
    "diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR) and pass "
    "--weights DIR",
)

_WEIGHTS_HELP = (
    "  --weights DIR        a diffusers UNet2DConditionModel folder, or a StableDiffusionPipeline folder\n"
    "                       with unet/ (e.g. a local copy of {repo})\n"
    "  --weights FILE       a .safetensors/.bin file with diffusers U-Net keys\n"
    "  --random-weights     random initialisation, for timing only (outputs are noise)"
)


# ---- diffusers' StableDiffusionPipeline, the benchmarks' baseline ------------------------------------------
def _stock_inputs(spec: ModelSpec, class_labels: tuple[int, ...], prompts: Any, guidance: float) -> dict[str, Any]:
    """Prompt embeddings in (no attention masks: SD's text encoder attends to its padding), latents out."""
    if prompts is None:
        raise ValueError(f"StableDiffusionPipeline takes prompt embeddings; {spec.name} is class-conditional")
    negative = prompts.negatives() if guidance > 1 else (None, None)
    return {"prompt_embeds": prompts.embeds, "negative_prompt_embeds": negative[0], "output_type": "latent"}


def _stock_components(denoiser: nn.Module, vae: nn.Module, scheduler: Any) -> dict[str, Any]:
    """Text encoder and safety checker left out: prompts come as embeddings."""
    return {"vae": vae, "text_encoder": None, "tokenizer": None, "unet": denoiser, "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


FAMILY = Family(
    name="unet",
    parts=UNetParts,
    costs=unet_costs,
    model_class="UNet2DConditionModel",
    models=UNET_MODELS,
    num_blocks=attention_layers,  # U-Nets cache their attention layers
    num_classes=lambda config: max(int(config.get("num_class_embeds") or 0) - 1, 0),  # counts the null class
    resolution_step=downsample_factor,
    recognises=_recognises,
    spec_for_config=_spec_for_config,
    weights_help=_WEIGHTS_HELP,
    stock=StockPipeline("StableDiffusionPipeline", components=_stock_components, call_inputs=_stock_inputs,
                        returns_latents=True),
    formats=(ORIGINAL_SD,),
    sampler=SAMPLER,
    guidance_scale=GUIDANCE_SCALE,
)
