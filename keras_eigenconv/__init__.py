"""keras-eigenconv: low-rank and structured replacements for Keras ``Conv2D``/``Dense`` layers.

Importing the package registers every layer and regularizer with Keras serialization, so
``keras.models.load_model`` reads converted models after ``import keras_eigenconv``.
"""

from . import data, decompositions, registry  # noqa: F401
from .analysis import RankAnalysis, analyze
from .basis import BasisConv2D
from .cost import Cost, ModelCost, layer_cost, model_cost
from .cp import CPConv2D
from .decef import DeCEFConv2D
from .export import ExportReport, bench_tflite, check_tflite, export_tflite
from .inference import PrepareReport, prepare_for_inference
from .registry import Method, available_methods, get_method, register_method
from .ssc import SSConv2D, set_ssc_implementation
from .surgery import ConversionReport, convert
from .svd import SVDConv2D
from .training import (
    Orthogonality,
    RankPruning,
    SingularValueHoyer,
    SingularValueL1,
    add_svd_regularization,
    train_decef_from_scratch,
)
from .tt import NaiveTTConv2D, TTConv2D, TTDense
from .tucker import Tucker2Conv2D

__version__ = "0.1.0"

__all__ = [
    "BasisConv2D",
    "CPConv2D",
    "ConversionReport",
    "Cost",
    "DeCEFConv2D",
    "ExportReport",
    "Method",
    "ModelCost",
    "NaiveTTConv2D",
    "Orthogonality",
    "PrepareReport",
    "RankAnalysis",
    "RankPruning",
    "SSConv2D",
    "SVDConv2D",
    "SingularValueHoyer",
    "SingularValueL1",
    "TTConv2D",
    "TTDense",
    "Tucker2Conv2D",
    "add_svd_regularization",
    "analyze",
    "available_methods",
    "bench_tflite",
    "check_tflite",
    "convert",
    "export_tflite",
    "get_method",
    "layer_cost",
    "model_cost",
    "prepare_for_inference",
    "register_method",
    "set_ssc_implementation",
    "train_decef_from_scratch",
]
