"""Training: tf.data pipelines, SVD rank pruning during ``fit``, from-scratch recipes.

- ``data``: ``from_tfds``, ``from_arrays``, ``from_folder`` (batched, augmented ``tf.data``);
- ``pruning``: ``RankPruning``, ``set_svd_rank``, ``prune_svd_ranks``,
  ``add_svd_regularization`` (regularizers in ``layers.regularizers``);
- ``from_scratch``: ``effective_ranks``, ``from_scratch``, ``train_decef_from_scratch``,
  ``basis_from_scratch``;
- ``distill``: a short recovery step on unlabeled data (the student reproduces the
  teacher's outputs);
- ``implementations``: ``tune_implementations``, each factorized layer's training path
  (factor ops or rebuilt dense kernel) chosen by timing it on the machine that trains.

Reaches the layers only through their public classes and contract. ``data`` imports
TensorFlow; it is loaded when first used (``keras_eigenconv.training.data``).
"""

from ..layers import Orthogonality, SingularValueHoyer, SingularValueL1
from .distill import distill, distillation_loss
from .from_scratch import (
    DeCEFRecipeResult,
    basis_from_scratch,
    effective_ranks,
    from_scratch,
    train_decef_from_scratch,
)
from .implementations import (
    ImplementationChoice,
    TuningReport,
    training_path_variants,
    tune_implementations,
)
from .pruning import (
    RankPruning,
    add_svd_regularization,
    prune_svd_ranks,
    pruning_keep,
    set_svd_rank,
    svd_ranks,
)

__all__ = [
    "DeCEFRecipeResult",
    "ImplementationChoice",
    "Orthogonality",
    "RankPruning",
    "SingularValueHoyer",
    "SingularValueL1",
    "add_svd_regularization",
    "distill",
    "distillation_loss",
    "basis_from_scratch",
    "effective_ranks",
    "from_scratch",
    "prune_svd_ranks",
    "pruning_keep",
    "set_svd_rank",
    "svd_ranks",
    "train_decef_from_scratch",
    "training_path_variants",
    "TuningReport",
    "tune_implementations",
]


def __getattr__(name):
    if name == "data":  # tf.data pipelines: imports TensorFlow on first use
        import importlib

        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
