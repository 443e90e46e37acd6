"""The family registry: one record per model family (DiT, PixArt-α, U-Net) holding everything that differs.

A family is a diffusers model class plus what ditcache needs around it: the decomposition (parts class), the
analytic MAC counts, its named sizes, how a diffusers config is recognised as the family's, which checkpoint
layouts load into it, and diffusers' own pipeline for the benchmarks' baseline. Nothing outside the records
branches on a family name. **Adding a family** (Flux, SD3, Wan, ...) is one module in graphs/ that defines its
parts class and a ``FAMILY = Family(...)`` record, and one entry in :func:`families` below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .macs import SegmentCosts
    from .model_spec import ModelSpec
    from .segments import DenoiserParts

Config = Mapping[str, Any]


@dataclass(frozen=True)
class WeightFormat:
    """A checkpoint layout, other than diffusers' own keys, that a family converts when loading it.

    Args:
        name: recorded in ``WeightsInfo.format`` (``official-dit``), so engine keys and manifests tell it apart.
        description: what such a file is, for messages.
        detect: True when a state dict is in this layout.
        convert: ``convert(state, spec)``: the state dict under the diffusers model's keys; raises ValueError
            naming what does not fit (or why the layout is refused, with the fix).
        config: diffusers config entries the model is built with for this layout (the original model's
            ``norm_eps``, where diffusers' default differs).
        adapt: in-place change of the built diffusers model, where its forward differs from the original's in
            something no config entry sets (None: none needed).
    """

    name: str
    description: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[dict[str, torch.Tensor], ModelSpec], dict[str, torch.Tensor]]
    config: Mapping[str, Any] = field(default_factory=dict)
    adapt: Callable[[nn.Module], None] | None = None


def refused_layout(name: str, description: str, detect: Callable[[Mapping[str, torch.Tensor]], bool],
                   message: str) -> WeightFormat:
    """A checkpoint layout that is recognised only to be refused with ``message`` (which says how to convert it)."""

    def refuse(state: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
        raise ValueError(message)

    return WeightFormat(name=name, description=description, detect=detect, convert=refuse)


@dataclass(frozen=True)
class StockPipeline:
    """diffusers' own pipeline of a family, as the benchmarks' baseline rows run it (eager, a stand-in VAE).

    Args:
        class_name: the diffusers pipeline class (``DiTPipeline``).
        components: ``components(denoiser, vae, scheduler)``: the pipeline constructor's keyword arguments.
        call_inputs: ``call_inputs(spec, class_labels, prompts, guidance)``: ``__call__`` keyword arguments for
            the conditioning and the output type (``prompts``: the prompt embeddings of text families, else None);
            raises ValueError where the pipeline cannot run the request.
        returns_latents: True when the call returns the latents (``output.images``); False when the pipeline
            always decodes, so the stand-in VAE keeps what it is handed.
        output: the pipeline output's field holding them (``images``; WanPipeline: ``frames``).
    """

    class_name: str
    components: Callable[[nn.Module, nn.Module, Any], dict[str, Any]]
    call_inputs: Callable[[ModelSpec, tuple[int, ...], Any, float], dict[str, Any]]
    returns_latents: bool
    output: str = "images"

    def build(self, denoiser: nn.Module, vae: nn.Module, scheduler: Any) -> Any:
        """The pipeline around ``denoiser`` (text encoders, where it has them, left out)."""
        import diffusers

        return getattr(diffusers, self.class_name)(**self.components(denoiser, vae, scheduler))


def resize_sample_size(spec: ModelSpec, side: int | None, frames: int | None) -> ModelSpec:
    """``spec`` with latent side ``side`` in its config's ``sample_size`` (DiT, PixArt, U-Nets; the sin-cos table
    follows); a ValueError for a frame count, which image models do not have."""
    if frames is not None:
        raise ValueError(f"{spec.name} generates images and has no frame count; drop the frame count")
    if side is None or side == spec.sample_size:
        return spec
    return replace(spec, config={**spec.config, "sample_size": side})


def no_forward_extras(spec: ModelSpec) -> dict[str, Any]:
    """Extra diffusers forward arguments a family needs besides ditcache's inputs: none."""
    return {}


def text_length_of_call(spec: ModelSpec, call: Mapping[str, Any]) -> ModelSpec:
    """The spec of one stock-pipeline call of the denoiser (diffusers' argument names in ``call``): text models
    get graphs for the token count the pipeline padded its prompts to; nothing else changes."""
    states = call.get("encoder_hidden_states")
    if not spec.text_conditioned or states is None:
        return spec
    return replace(spec, text_length=int(states.shape[1]))


@dataclass(frozen=True)
class Family:
    """Everything ditcache knows about one model family.

    Args:
        name: the registry key, which ``ModelSpec.family`` names (``dit``).
        parts: the decomposition class, called as ``parts(model, spec)`` (DiTParts, PixArtParts, UNetParts).
        costs: ``costs(spec, batch)``: analytic MACs of one denoiser call (graphs/macs.py).
        model_class: the diffusers model class, built as ``model_class(**spec.config)``.
        models: the family's named sizes (graphs/registry.py's MODELS is the union, in registry order).
        num_blocks: cacheable blocks of a config (U-Nets: their attention layers).
        num_classes: class labels of a config without the null class (0: the model takes no class labels).
        resolution_step: what the model's input side must be a multiple of (the patch size; U-Nets: their
            down-sampling factor); ``at_resolution`` multiplies it by the VAE's 8 for latent models.
        recognises: True for a diffusers config of this family's model class.
        spec_for_config: ``spec_for_config(config, latent)``: the registered size with this architecture, else
            an ad-hoc ``custom`` spec of the family.
        weights_help: the lines of "no weights found" and "cannot read" messages saying what to give;
            ``{repo}`` stands for the spec's Hugging Face repo.
        stock: diffusers' own pipeline for the family, for the benchmarks' baseline rows.
        formats: checkpoint layouts converted on load besides diffusers' own keys.
        sampler: the default sampler of the family's sizes (``ddim``, ``dpm++``); a size may override it.
        guidance_scale: the default classifier-free guidance scale of the family's sizes.
        resize: ``resize(spec, side, frames)``: ``spec`` generating latents ``side`` x ``side`` (None: as it is) and,
            for video, ``frames`` frames (None: as it is); called by ``registry.at_resolution`` after its checks.
            Default: the config's ``sample_size``; the flow families keep their size in ``latent_shape``.
        forward_extras: ``forward_extras(spec)``: keyword arguments the diffusers model's forward needs besides
            ``hidden_states``, ``timestep`` and the conditioning inputs (FLUX: ``txt_ids`` / ``img_ids``, the
            token positions its head builds itself), for running the unmodified model (calibration, references).
        call_spec: ``call_spec(spec, call)``: the spec one call of the denoiser by the family's stock pipeline
            describes (``call``: the keyword arguments under diffusers' names): its text length, and for the flow
            families the latent size, so that ``ditcache.apply`` builds graphs of the shapes the pipeline uses.
    """

    name: str
    parts: Callable[[nn.Module, ModelSpec], DenoiserParts]
    costs: Callable[[ModelSpec, int], SegmentCosts]
    model_class: str
    models: tuple[ModelSpec, ...]
    num_blocks: Callable[[Config], int]
    num_classes: Callable[[Config], int]
    resolution_step: Callable[[Config], int]
    recognises: Callable[[Config], bool]
    spec_for_config: Callable[[Config, bool], ModelSpec]
    weights_help: str
    stock: StockPipeline
    formats: tuple[WeightFormat, ...] = ()
    sampler: str = "ddim"
    guidance_scale: float = 4.0
    resize: Callable[[ModelSpec, int | None, int | None], ModelSpec] = resize_sample_size
    forward_extras: Callable[[ModelSpec], dict[str, Any]] = no_forward_extras
    call_spec: Callable[[ModelSpec, Mapping[str, Any]], ModelSpec] = text_length_of_call

    def build_model(self, config: Config) -> nn.Module:
        """An eval-mode diffusers model of ``config`` with freshly initialised weights."""
        import diffusers

        return getattr(diffusers, self.model_class)(**config).eval()

    def format_of(self, state: Mapping[str, torch.Tensor]) -> WeightFormat | None:
        """The non-diffusers layout ``state`` is in, or None (diffusers keys)."""
        return next((f for f in self.formats if f.detect(state)), None)


def names_class(config: Config, *class_names: str) -> bool:
    """True unless ``config`` names another model class (configs read from JSON carry ``_class_name``; a model's
    ``.config`` does not)."""
    return config.get("_class_name", class_names[0]) in class_names


@functools.cache
def families() -> dict[str, Family]:
    """The registry: family name -> record, in the order their sizes are listed.

    One entry per family. The modules are imported here, not at the top, because each imports this one.
    """
    from . import dit, flux, pixart, sd3, unet, wan

    records = (dit.FAMILY, pixart.FAMILY, unet.FAMILY, flux.FAMILY, sd3.FAMILY, wan.FAMILY)
    return {record.name: record for record in records}


def get_family(name: str) -> Family:
    """The record of family ``name``; a ValueError listing the registered families otherwise."""
    registered = families()
    if name not in registered:
        raise ValueError(f"unknown model family {name!r}; registered families: {', '.join(registered)} "
                         f"(a new family is a module in graphs/ with a Family record, listed in graphs/family.py)")
    return registered[name]


def family_of_config(config: Config) -> Family:
    """The family whose model class a diffusers config describes; a ValueError listing the families otherwise."""
    for record in families().values():
        if record.recognises(config):
            return record
    known = ", ".join(f"{r.name} ({r.model_class})" for r in families().values())
    raise ValueError(f"the model config ({config.get('_class_name', 'no _class_name')}) is of no registered family; "
                     f"ditcache knows: {known}")
