"""How it runs: backends, the runtime dispatcher, the sampling loop."""

from .dispatcher import Dispatcher, VariantFn
from .eager import eager_variants
from .sampling import SCHEDULERS, SampleRequest, model_denoiser, sample

__all__ = ["SCHEDULERS", "Dispatcher", "SampleRequest", "VariantFn", "eager_variants", "model_denoiser", "sample"]
