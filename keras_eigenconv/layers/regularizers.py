"""Regularizers of the SVD factors, for training that drives ranks down.

- ``Orthogonality(strength, rank_axis)``: ``strength * ||M^T M - I||_F^2 / R^2`` where ``M``
  holds a factor's ``R`` rank components as columns (``SVDConv2D(orthogonality=...)`` puts it
  on both singular-vector factors);
- ``SingularValueL1(l1)``: ``l1 * sum|s|``;
- ``SingularValueHoyer(strength)``: ``strength * ||s||_1 / ||s||_2`` (scale-invariant,
  pushes towards few large values).

These follow Yang et al. 2020 ("Learning low-rank deep neural networks via singular vector
orthogonality regularization and singular value sparsification"), the closest published
recipe with code to SVD training with rank pruning (Sharma et al. 2024 do not publish their
exact regularizer).
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["Orthogonality", "SingularValueHoyer", "SingularValueL1"]

_PKG = "keras_eigenconv"


@keras.saving.register_keras_serializable(package=_PKG)
class Orthogonality(keras.regularizers.Regularizer):
    """Orthogonality penalty ``strength * ||M^T M - I||_F^2 / R^2`` (+ ``base(x)``).

    ``M`` is the weight with its ``rank_axis`` moved last and reshaped to ``(-1, R)``: for
    ``SVDConv2D`` the left vectors ``(kh, kw, C, R)`` use ``rank_axis=-1`` and the right
    vectors ``(1, kw, R, N)`` use ``rank_axis=2``.

    Args:
        strength: float ``>= 0``, the penalty's weight.
        rank_axis: int, the axis of the weight that holds the ``R`` rank components.
        base: an optional regularizer (or its identifier) added to the penalty (the
            layer's ``kernel_regularizer``), or ``None``.

    Raises:
        ValueError: when ``strength`` is negative or not a number.

    Example:

    >>> reg = Orthogonality(1e-2, rank_axis=-1)
    >>> float(reg(np.eye(4, dtype="float32")))
    0.0
    """

    def __init__(self, strength: float = 1e-2, rank_axis: int = -1, base=None):
        if isinstance(strength, bool) or not float(strength) >= 0.0:
            raise ValueError(f"Orthogonality: strength must be >= 0, got {strength!r}.")
        self.strength = float(strength)
        self.rank_axis = int(rank_axis)
        self.base = keras.regularizers.get(base)

    def __call__(self, x):
        r = x.shape[self.rank_axis]
        m = ops.reshape(ops.moveaxis(x, self.rank_axis, -1), (-1, r))
        gram = ops.matmul(ops.transpose(m), m)
        penalty = ops.sum(ops.square(gram - ops.eye(r, dtype=gram.dtype))) / float(r * r)
        out = self.strength * penalty
        if self.base is not None:
            out = out + self.base(x)
        return out

    def get_config(self):
        return {
            "strength": self.strength,
            "rank_axis": self.rank_axis,
            "base": keras.saving.serialize_keras_object(self.base),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base"] = keras.saving.deserialize_keras_object(config.get("base"))
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PKG)
class SingularValueL1(keras.regularizers.Regularizer):
    """L1 penalty on singular values, ``l1 * sum_i |s_i|``: drives small ones to zero.

    Args:
        l1: float ``>= 0``, the penalty's weight.

    Raises:
        ValueError: when ``l1`` is negative or not a number.
    """

    def __init__(self, l1: float = 1e-4):
        if isinstance(l1, bool) or not float(l1) >= 0.0:
            raise ValueError(f"SingularValueL1: l1 must be >= 0, got {l1!r}.")
        self.l1 = float(l1)

    def __call__(self, s):
        return self.l1 * ops.sum(ops.abs(s))

    def get_config(self):
        return {"l1": self.l1}


@keras.saving.register_keras_serializable(package=_PKG)
class SingularValueHoyer(keras.regularizers.Regularizer):
    """Hoyer penalty on singular values, ``strength * ||s||_1 / ||s||_2``.

    A scale-invariant sparsity measure (the ratio lies between 1 and ``sqrt(R)``) that
    pushes towards few large values.

    Args:
        strength: float ``>= 0``, the penalty's weight.
        epsilon: float added to ``||s||_2^2`` under the square root (no division by zero).

    Raises:
        ValueError: when ``strength`` is negative or not a number.
    """

    def __init__(self, strength: float = 1e-3, epsilon: float = 1e-12):
        if isinstance(strength, bool) or not float(strength) >= 0.0:
            raise ValueError(f"SingularValueHoyer: strength must be >= 0, got {strength!r}.")
        self.strength = float(strength)
        self.epsilon = float(epsilon)

    def __call__(self, s):
        l1 = ops.sum(ops.abs(s))
        l2 = ops.sqrt(ops.sum(ops.square(s)) + self.epsilon)
        return self.strength * l1 / l2

    def get_config(self):
        return {"strength": self.strength, "epsilon": self.epsilon}
