"""Latency simulator: device profiles that predict the batch-1 latency of an ONNX graph.

- :mod:`devices.sim.graph`: ONNX (shape inference) -> per-operator work and memory traffic.
- :mod:`devices.sim.profile`: profile parameters, files, the roofline-style cost.
- :mod:`devices.sim.calibrate`: fitting a profile to measured latencies (scipy).
- :mod:`devices.sim.device`: ``sim:PROFILE`` as a Device (``source="simulated"``).

``onnx`` and ``scipy`` are imported lazily, inside the functions that need them.
"""

from devices.sim.device import SIM_PREFIX, SimDevice
from devices.sim.graph import OP_CLASSES, GraphFeatures, SimGraphError, features_from_model, load_features
from devices.sim.profile import (
    SimParams,
    SimProfile,
    available_profiles,
    layer_breakdown,
    load_profile,
    predict_latency_ms,
)

__all__ = [
    "GraphFeatures",
    "OP_CLASSES",
    "SIM_PREFIX",
    "SimDevice",
    "SimGraphError",
    "SimParams",
    "SimProfile",
    "available_profiles",
    "features_from_model",
    "layer_breakdown",
    "load_features",
    "load_profile",
    "predict_latency_ms",
]
