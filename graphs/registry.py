"""Named model sizes, collected from the family records: the DiT paper's /2 models, PixArt-α, U-Nets, the shipped
reference models, tiny test sizes; and the lookups around them (by name, by resolution, by diffusers config)."""

from __future__ import annotations

from typing import Any, Mapping

from .family import families, family_of_config
from .model_spec import DIT_SCHEDULER_CONFIG, FASHION_MNIST_CLASSES, WEIGHTS_DIR, ModelSpec

__all__ = ["DIT_SCHEDULER_CONFIG", "FASHION_MNIST_CLASSES", "MODELS", "WEIGHTS_DIR", "ModelSpec", "at_resolution",
           "get_spec", "spec_for_config"]


def _collect() -> dict[str, ModelSpec]:
    models: dict[str, ModelSpec] = {}
    for record in families().values():
        for spec in record.models:
            if spec.name in models:
                raise RuntimeError(f"model name {spec.name!r} is registered twice (families "
                                   f"{models[spec.name].family} and {spec.family})")
            if spec.family_record is not record:
                raise RuntimeError(f"{spec.name} is listed by family {record.name} but names family {spec.family}")
            models[spec.name] = spec
    return models


MODELS: dict[str, ModelSpec] = _collect()


def at_resolution(spec: ModelSpec, resolution: int | None, frames: int | None = None) -> ModelSpec:
    """``spec`` generating ``resolution``-pixel square images (the position tables follow; weights do not change),
    and for video models ``frames`` frames; None keeps the spec's. The family record's ``resize`` does the change."""
    if resolution is None and frames is None:
        return spec
    factor = 8 if spec.latent else 1
    if resolution is not None:
        step = spec.family_record.resolution_step(spec.config) * factor
        if resolution <= 0 or resolution % step:
            raise ValueError(f"--resolution must be a positive multiple of {step} for {spec.name} (got {resolution})")
    return spec.family_record.resize(spec, None if resolution is None else resolution // factor, frames)


def spec_for_config(config: Mapping[str, Any], latent: bool = True) -> ModelSpec:
    """The registered spec whose architecture equals a diffusers config, else an ad-hoc ``custom`` spec of the
    config's family (ValueError when no registered family has that model class)."""
    return family_of_config(config).spec_for_config(config, latent)


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name``, or a ValueError listing the choices."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
