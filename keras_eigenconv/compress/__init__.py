"""Model surgery: the method registry, rank selection, ``convert`` and its report.

- ``registry``: ``Method`` records (name, layer class, options) and ``register_method``;
- ``ranks``: energy / effective / VBMF ranks and whole-model budget allocation;
- ``convert``: replace the layers of a model; ``report``: what it did;
- ``calibration``: data-aware conversion (statistics, refit, ``recalibrate_batchnorm``);
- ``channels``: structured pruning of the hidden channels of inverted-residual blocks
  (``prune_channels``; not low-rank: the same layers, narrower).

Reaches the layers only through their contract (``layers.CompressedLayer``).
"""

from .calibration import recalibrate_batchnorm
from .channels import BlockReport, ChannelPruningReport, prunable_blocks, prune_channels
from .convert import RANK_RULES, convert
from .registry import (
    BUILTIN_METHODS,
    Method,
    available_methods,
    get_method,
    register_method,
    registered_methods,
)
from .report import ConversionReport, LayerReport

__all__ = [
    "BUILTIN_METHODS",
    "BlockReport",
    "ChannelPruningReport",
    "ConversionReport",
    "LayerReport",
    "Method",
    "RANK_RULES",
    "available_methods",
    "convert",
    "get_method",
    "prunable_blocks",
    "prune_channels",
    "recalibrate_batchnorm",
    "register_method",
    "registered_methods",
]
