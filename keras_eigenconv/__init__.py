"""keras-eigenconv: low-rank and structured replacements for Keras ``Conv2D``/``Dense`` layers.

Importing the package registers every layer and regularizer with Keras serialization, so
``keras.models.load_model`` reads converted models after ``import keras_eigenconv``.

Architecture (each stage a subpackage; dependencies point one way, down this list, and
``tests/test_architecture.py`` checks it by reading the imports):

- ``decompositions``: the maths on NumPy arrays (no Keras);
- ``graph``: model walking, cloning with weight copy, and every use of private Keras
  internals; ``cost``: parameter and MAC counting, the op-time table; ``_table``: text and
  Markdown tables;
- ``layers``: one file per layer family over one contract (``layers.CompressedLayer``);
  imports only ``decompositions``, ``cost``, ``graph`` and itself;
- ``compress`` (registry, ranks, ``convert``, report), ``deploy`` (inference rewrite, LiteRT,
  timing, export) and ``training`` (data, rank pruning, from-scratch recipes, measured
  training paths): each reaches the layers through the contract; ``compress`` and
  ``deploy`` never import each other, and ``training`` imports only ``deploy``'s
  training-step timer (``tune_implementations``);
- ``latency``: ``convert`` to a latency budget on a target runtime (``Target``): joins
  ``compress`` (the plan, the build), ``deploy`` (LiteRT timing) and ``training`` (the train
  target's measured training paths); the package's ``convert`` and ``prune_channels`` are
  its (other budgets go to ``compress.convert`` and ``compress.prune_channels``);
- ``analysis``, ``zoo`` (reference networks), ``demo``: built on the stages above;
- ``cli``: the command line; nothing imports it.
"""

# _cli_start comes first, before TensorFlow is imported: it quiets TensorFlow in the
# keras-eigenconv command-line process only (see _quiet); a no-op for library use
from . import _cli_start, compress, decompositions, deploy, layers, training  # noqa: F401
from .analysis import RankAnalysis, analyze
from .compress import (
    ChannelPruningReport,
    ConversionReport,
    Method,
    available_methods,
    get_method,
    prunable_blocks,
    recalibrate_batchnorm,
    register_method,
)
from .cost import Cost, ModelCost, layer_cost, model_cost
from .deploy import (
    ExportReport,
    PrepareReport,
    bench_tflite,
    check_tflite,
    export_tflite,
    prepare_for_inference,
)
from .latency import LatencyPlan, Target, convert, prune_channels
from .layers import (
    BasisConv2D,
    CompressedLayer,
    CPConv2D,
    DeCEFConv2D,
    NaiveTTConv2D,
    Orthogonality,
    SingularValueHoyer,
    SingularValueL1,
    SSConv2D,
    SVDConv2D,
    TTConv2D,
    TTDense,
    Tucker2Conv2D,
    set_ssc_implementation,
)
from .training import RankPruning, add_svd_regularization, distill, train_decef_from_scratch

__version__ = "0.2.0"

__all__ = [
    "BasisConv2D",
    "CPConv2D",
    "ChannelPruningReport",
    "CompressedLayer",
    "ConversionReport",
    "Cost",
    "DeCEFConv2D",
    "ExportReport",
    "LatencyPlan",
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
    "Target",
    "Tucker2Conv2D",
    "add_svd_regularization",
    "analyze",
    "available_methods",
    "bench_tflite",
    "check_tflite",
    "convert",
    "distill",
    "export_tflite",
    "get_method",
    "layer_cost",
    "model_cost",
    "prepare_for_inference",
    "prunable_blocks",
    "prune_channels",
    "recalibrate_batchnorm",
    "register_method",
    "set_ssc_implementation",
    "train_decef_from_scratch",
]


def __getattr__(name):
    if name == "data":  # tf.data pipelines (imports TensorFlow): keras_eigenconv.data
        return training.data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
