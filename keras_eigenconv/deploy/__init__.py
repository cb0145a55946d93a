"""Deployment: the inference rewrite, LiteRT conversion and running, timing, export.

- ``rewrite``: ``prepare_for_inference`` (each compressed layer in its fastest plain-Keras
  arrangement, BatchNorm folded, training-only layers dropped) and ``fold_batchnorm``;
- ``litert``: the converter per quantization mode, the interpreter, running ``.tflite``;
- ``timing``: the interleaved timer, the LiteRT timing cache and the cost model fitted to it,
  ``bench_tflite``;
- ``export``: ``export_tflite`` (convert, check against Keras within ``CHECK_TOLERANCE``,
  write atomically) and ``check_tflite``.

Reaches the layers only through their contract (``layers.CompressedLayer``).
"""

from .export import CHECK_TOLERANCE, ExportCheckError, ExportReport, check_tflite, export_tflite
from .litert import QUANTIZE_MODES, run_tflite, tflite_converter, tflite_ops
from .rewrite import PrepareReport, candidate_arrangements, fold_batchnorm, prepare_for_inference
from .timing import (
    DEFAULT_COST_MODEL,
    CostModel,
    LiteRTTimer,
    TimingCache,
    TimingCacheWarning,
    TrainStep,
    TrainStepTimer,
    bench_tflite,
    default_cache_path,
    time_interleaved,
)

__all__ = [
    "CHECK_TOLERANCE",
    "DEFAULT_COST_MODEL",
    "QUANTIZE_MODES",
    "CostModel",
    "ExportCheckError",
    "ExportReport",
    "LiteRTTimer",
    "PrepareReport",
    "TimingCache",
    "TimingCacheWarning",
    "TrainStep",
    "TrainStepTimer",
    "bench_tflite",
    "candidate_arrangements",
    "check_tflite",
    "default_cache_path",
    "export_tflite",
    "fold_batchnorm",
    "prepare_for_inference",
    "run_tflite",
    "tflite_converter",
    "tflite_ops",
    "time_interleaved",
]
