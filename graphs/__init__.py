"""What runs: model registry, weights, the head/blocks/tail decomposition, schedules, plans, variants."""

from .dit import DiTParts
from .macs import SegmentCosts, dit_costs, pixart_costs, unet_costs
from .pixart import PixArtParts
from .plan import CacheRange, Plan, PlanError, Variant
from .registry import MODELS, ModelSpec, get_spec
from .schedule import Schedule, ScheduleError, full_schedule, load_schedule, parse_schedule
from .unet import UNetParts
from .variants import VariantModule, build_segments, run_variant
from .weights import WeightsError, WeightsInfo, load_model

__all__ = [
    "MODELS", "CacheRange", "DiTParts", "ModelSpec", "PixArtParts", "Plan", "PlanError", "Schedule", "ScheduleError",
    "SegmentCosts", "Variant", "VariantModule", "WeightsError", "WeightsInfo", "build_segments", "dit_costs",
    "full_schedule", "get_spec", "load_model", "load_schedule", "parse_schedule", "pixart_costs", "run_variant",
    "UNetParts", "unet_costs",
]


def parts_for(model, spec: ModelSpec):
    """The decomposition of ``model`` for its family."""
    if spec.family == "dit":
        return DiTParts(model, spec)
    if spec.family == "pixart":
        return PixArtParts(model, spec)
    if spec.family == "unet":
        return UNetParts(model, spec)
    raise NotImplementedError(f"model family {spec.family!r} has no decomposition yet")


def costs_for(spec: ModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of one denoiser call on ``batch`` samples."""
    if spec.family == "dit":
        return dit_costs(spec, batch)
    if spec.family == "pixart":
        return pixart_costs(spec, batch)
    if spec.family == "unet":
        return unet_costs(spec, batch)
    raise NotImplementedError(f"model family {spec.family!r} has no cost model yet")
