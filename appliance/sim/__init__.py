"""Performance simulator: predict serving metrics and recommend deployment configurations."""

from appliance.sim.catalog import known_models, lookup_model
from appliance.sim.errors import SimInputError
from appliance.sim.hardware import GpuCatalog, GpuSpec, default_catalog
from appliance.sim.service import Simulator, default_simulator, predict, recommend
from appliance.sim.shapes import ModelShape, resolve_model, shape_from_gguf, shape_from_hf_config
from appliance.sim.structs import (
    Candidate,
    Deployment,
    MemoryBreakdown,
    Prediction,
    Recommendation,
    Slo,
    Workload,
)

__all__ = [
    "Candidate",
    "Deployment",
    "GpuCatalog",
    "GpuSpec",
    "MemoryBreakdown",
    "ModelShape",
    "Prediction",
    "Recommendation",
    "SimInputError",
    "Simulator",
    "Slo",
    "Workload",
    "default_catalog",
    "default_simulator",
    "known_models",
    "lookup_model",
    "predict",
    "recommend",
    "resolve_model",
    "shape_from_gguf",
    "shape_from_hf_config",
]
