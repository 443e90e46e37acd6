"""What runs: the family registry, model sizes, weights, the head/blocks/tail decomposition, schedules, plans,
variants."""

from torch import nn

from .dit import DiTParts
from .family import Family, StockPipeline, WeightFormat, families, get_family
from .macs import SegmentCosts, dit_costs, pixart_costs, unet_costs
from .pixart import PixArtParts
from .plan import CacheRange, Plan, PlanError, Variant
from .registry import MODELS, ModelSpec, get_spec
from .schedule import Schedule, ScheduleError, full_schedule, load_schedule, parse_schedule
from .segments import DenoiserParts
from .unet import UNetParts
from .variants import VariantModule, build_segments, run_variant
from .weights import WeightsError, WeightsInfo, load_model

__all__ = [
    "MODELS", "CacheRange", "DenoiserParts", "DiTParts", "Family", "ModelSpec", "PixArtParts", "Plan", "PlanError",
    "Schedule", "ScheduleError", "SegmentCosts", "StockPipeline", "Variant", "VariantModule", "WeightFormat",
    "WeightsError", "WeightsInfo", "build_segments", "costs_for", "dit_costs", "families", "full_schedule",
    "get_family", "get_spec", "load_model", "load_schedule", "parse_schedule", "parts_for", "pixart_costs",
    "run_variant", "UNetParts", "unet_costs",
]


def parts_for(model: nn.Module, spec: ModelSpec) -> DenoiserParts:
    """The decomposition of ``model`` for its family (its record's parts class)."""
    return spec.family_record.parts(model, spec)


def costs_for(spec: ModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of one denoiser call on ``batch`` samples (its family record's cost model)."""
    return spec.family_record.costs(spec, batch)
