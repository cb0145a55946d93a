"""keras-eigenconv: low-rank and structured replacements for Keras ``Conv2D`` layers."""

from .basis import BasisConv2D
from .cost import Cost, ModelCost, layer_cost, model_cost
from .decef import DeCEFConv2D
from .svd import SVDConv2D

__version__ = "0.1.0"

__all__ = [
    "BasisConv2D",
    "Cost",
    "DeCEFConv2D",
    "ModelCost",
    "SVDConv2D",
    "layer_cost",
    "model_cost",
]
