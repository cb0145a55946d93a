"""The layers: the maths of each method, one family a file, on one contract.

- ``base``: ``CompressedLayer`` (the contract every compressed layer honours: ``from_source``
  / ``from_conv2d`` / ``from_dense``, ``to_source``, ``cost``, ``spectrum``, ``rank_for``,
  ``vbmf_matrices``, ``max_rank``, ``inference_layers``, ``resolved_implementation``) and
  ``FactorizedConv2D`` (its implementation for low-rank ``Conv2D`` replacements), with the
  shared argument checks;
- ``decef``, ``basis``, ``svd``, ``tucker``, ``cp``, ``tt_conv``, ``tt_dense``, ``ssc``: the
  methods;
- ``regularizers``: penalties on SVD factors; ``inference``: helper layers of the export
  rewrite.

This package imports only ``decompositions``, ``cost``, ``graph`` and its own modules.
"""

from .base import CompressedLayer, FactorizedConv2D
from .basis import BasisConv2D
from .cp import CPConv2D
from .decef import DeCEFConv2D
from .inference import ChannelTile
from .regularizers import Orthogonality, SingularValueHoyer, SingularValueL1
from .ssc import SSConv2D, set_ssc_implementation
from .svd import SVDConv2D
from .tt_conv import NaiveTTConv2D, TTConv2D
from .tt_dense import TTDense
from .tucker import Tucker2Conv2D

__all__ = [
    "BasisConv2D",
    "CPConv2D",
    "ChannelTile",
    "CompressedLayer",
    "DeCEFConv2D",
    "FactorizedConv2D",
    "NaiveTTConv2D",
    "Orthogonality",
    "SSConv2D",
    "SVDConv2D",
    "SingularValueHoyer",
    "SingularValueL1",
    "TTConv2D",
    "TTDense",
    "Tucker2Conv2D",
    "set_ssc_implementation",
]
