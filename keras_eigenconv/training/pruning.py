"""SVD rank pruning during ``fit`` and the model-wide regularizer helpers.

Sharma et al. (2024, "dynamic rank pruning") do not publish their exact regularizer and
schedule, so this module follows the closest published recipe with code, Yang et al. 2020
("SVD training"), and keeps every part pluggable (the regularizers are in
``layers.regularizers``):

- ``RankPruning``: a callback that, between epochs, drops the singular values of every
  ``SVDConv2D`` that fall outside an energy share or under a threshold relative to the
  largest one, and physically rebuilds the layer at the smaller rank (see its docstring);
- ``add_svd_regularization`` / ``prune_svd_ranks``: the model-wide versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .. import graph
from ..layers import SingularValueHoyer, SingularValueL1, SVDConv2D

__all__ = [
    "RankPruning",
    "add_svd_regularization",
    "prune_svd_ranks",
    "pruning_keep",
    "set_svd_rank",
    "svd_ranks",
]


def _svd_layers(model) -> list[SVDConv2D]:
    return [layer for layer in graph.flatten_layers(model) if isinstance(layer, SVDConv2D)]


def _copy_model(model, replace=None):
    """A copy of a Functional/Sequential model (nested ones too) with its weights; layers
    that ``replace(layer)`` returns a new layer for get that layer's weights copied too."""

    def rebuilt(layer):
        new = replace(layer) if replace is not None else None
        if new is not None:
            new.build_from_config(layer.get_build_config())
            graph.copy_weights(layer, new)
        return new

    try:
        return graph.clone_model(model, replace=rebuilt)
    except ValueError as err:
        raise ValueError(
            f"{err} Or apply the per-layer tools (set_svd_rank, regularizer arguments) yourself."
        ) from None


def add_svd_regularization(
    model,
    orthogonality: float | None = None,
    l1: float | None = None,
    hoyer: float | None = None,
):
    """Copy ``model`` with regularizers on its ``SVDConv2D`` layers.

    Weights are copied; the input model is not modified. The regularizers live in the layer
    configs, so they survive ``save``/``load``. For each argument, ``None`` keeps the layer's
    own setting.

    Args:
        model: A Functional or Sequential model holding ``SVDConv2D`` layers.
        orthogonality: Each layer's ``orthogonality`` strength.
        l1: The strength of a ``SingularValueL1`` ``singular_value_regularizer``.
        hoyer: The strength of a ``SingularValueHoyer`` ``singular_value_regularizer``
            (not together with ``l1``).

    Returns:
        The regularized copy of ``model``.

    Raises:
        ValueError: When both ``l1`` and ``hoyer`` are given, ``model`` has no
            ``SVDConv2D`` layer, or it cannot be copied (e.g. a subclassed model).
    """
    if l1 is not None and hoyer is not None:
        raise ValueError("add_svd_regularization: pass l1 or hoyer, not both.")
    if not _svd_layers(model):
        raise ValueError(
            f"add_svd_regularization: model '{model.name}' has no SVDConv2D layer. Convert "
            "its Conv2D layers first (SVDConv2D.from_conv2d or keras_eigenconv.convert)."
        )

    def clone(layer):
        if not isinstance(layer, SVDConv2D):
            return None
        config = layer.get_config()
        if orthogonality is not None:
            config["orthogonality"] = float(orthogonality)
        if l1 is not None:
            config["singular_value_regularizer"] = keras.saving.serialize_keras_object(
                SingularValueL1(l1)
            )
        if hoyer is not None:
            config["singular_value_regularizer"] = keras.saving.serialize_keras_object(
                SingularValueHoyer(hoyer)
            )
        return layer.__class__.from_config(config)

    return _copy_model(model, clone)


# --- rank pruning -----------------------------------------------------------------------


def pruning_keep(
    singular_values,
    energy: float | None = None,
    threshold: float | None = None,
    min_rank: int = 1,
) -> np.ndarray:
    """Choose the singular values to keep.

    With both ``energy`` and ``threshold``, the smaller of the two ranks is kept; never
    fewer than ``min_rank`` values.

    Args:
        singular_values: The singular values (their absolute values are used).
        energy: Keep the fewest values with ``sum s_i^2 >= energy * sum s^2``.
        threshold: Drop values with ``|s_i| < threshold * max|s|``.
        min_rank: The fewest values to keep.

    Returns:
        The indices of the values to keep, largest ``|s|`` first.
    """
    a = np.abs(np.asarray(singular_values, dtype=np.float64))
    order = np.argsort(-a, kind="stable")
    r = a.size
    if energy is not None:
        r = min(r, dec.energy_rank(a[order] ** 2, float(energy)))
    if threshold is not None and a.size and a.max() > 0:
        r = min(r, int(np.sum(a >= float(threshold) * a.max())))
    r = max(min(int(min_rank), a.size), r)
    return order[:r]


def set_svd_rank(layer: SVDConv2D, keep) -> dict[str, tuple[int, np.ndarray]]:
    """Shrink a built ``SVDConv2D`` in place to some of its rank components.

    The three factor variables are replaced by smaller ones (sliced values, same names and
    order, created under the distribution strategy in force) and ``layer.rank`` becomes
    ``len(keep)``, so the layer's config, ``.keras`` files and cost follow. Compiled
    functions that captured the old variables must be rebuilt.

    Args:
        layer: A built ``SVDConv2D``.
        keep: The indices of the rank components to keep (distinct, in
            ``[0, layer.rank)``).

    Returns:
        Per replaced variable path, ``(axis, keep)`` (what ``RankPruning`` slices optimizer
        slots with).

    Raises:
        ValueError: When ``layer`` is not a built ``SVDConv2D``, or ``keep`` is empty or
            does not hold distinct indices in ``[0, layer.rank)``.
    """
    if not isinstance(layer, SVDConv2D) or not layer.built:
        raise ValueError(f"set_svd_rank needs a built SVDConv2D, got '{layer.name}'.")
    keep = np.asarray(keep, dtype=np.int64).ravel()
    if (
        keep.size < 1
        or len(set(keep.tolist())) != keep.size
        or keep.min() < 0
        or (keep.max() >= layer.rank)
    ):
        raise ValueError(
            f"{layer._who}: keep must hold distinct indices in [0, {layer.rank}), got "
            f"{keep.tolist()}."
        )
    axes = {"left_vectors": 3, "singular_values": 0, "right_vectors": 2}
    sliced = {}
    for name, axis in axes.items():
        old = getattr(layer, name)
        value = np.take(ops.convert_to_numpy(old), keep, axis=axis)
        sliced[old.path] = (axis, keep)
        _replace_variable(layer, name, old, value)
    layer.rank = int(keep.size)
    # "auto" picks factorized or dense from the rank: decide again, as a reloaded layer would
    build = layer.get_build_config() or {}
    shape = build.get("input_shape")
    if shape is not None:
        layer.resolve_implementations(tuple(shape))
    return sliced


def _replace_variable(layer, attr: str, old, value: np.ndarray) -> None:
    scope = None
    if keras.backend.backend() == "tensorflow":  # create it under the strategy in force
        import tensorflow as tf

        scope = tf.distribute.get_strategy().scope()
    graph.replace_variable(layer, attr, old, value, scope=scope)


def _rebuild_optimizer(model, sliced: dict[str, tuple[int, np.ndarray]]) -> None:
    """Give ``model`` a fresh optimizer of the same config holding the old one's state.

    Slot variables (momenta, ...) of pruned variables are sliced like them; the step count and
    every other slot are copied. Keras optimizers are built for a fixed variable list, so a new
    instance is the supported way to change it.
    """
    old = model.optimizer
    if old is None or not old.built:
        return
    new = old.__class__.from_config(old.get_config())
    new.build(model.trainable_variables)
    prefixes = {path.replace("/", "_") + "_": ax_keep for path, ax_keep in sliced.items()}
    old_by_name = {v.name: v for v in old.variables}
    for v in new.variables:
        src = old_by_name.get(v.name)
        if src is None:
            continue
        value = ops.convert_to_numpy(src)
        if tuple(value.shape) != tuple(v.shape):
            for prefix, (axis, keep) in prefixes.items():
                if v.name.startswith(prefix):
                    value = np.take(value, keep, axis=axis)
                    break
        if tuple(value.shape) == tuple(v.shape):
            v.assign(value)
    model.optimizer = new


def _refresh_compiled(model) -> None:
    model.make_train_function(force=True)
    model.test_function = None
    model.predict_function = None


class RankPruning(keras.callbacks.Callback):
    """Shrink the rank of every ``SVDConv2D`` between epochs of ``fit``.

    At the end of epoch ``e`` (0-based) with ``start_epoch <= e`` (and ``e <= stop_epoch``
    when given) and ``(e - start_epoch) % every == 0``, each layer keeps
    ``rule(singular_values)`` (default: ``pruning_keep`` with ``energy``/``threshold``/
    ``min_rank``); a custom ``rule`` maps the ``|s|`` array to the indices to keep.

    How shapes stay static: nothing changes inside a compiled step. Between epochs the
    callback physically shrinks each layer (``set_svd_rank``: new, smaller variables in the
    same layer objects), gives the model a new optimizer of the same config holding the old
    state (slots of pruned variables sliced, step count kept), and rebuilds the compiled
    train/test/predict functions; the next epoch trains the small model. ``model.optimizer``
    is therefore a new object after a pruning step. After ``fit`` the model holds the small
    layers (``rank`` in their configs), so it saves and reloads as is. ``history`` lists, per
    pruning step, the epoch and the rank of each layer.

    Args:
        energy: Keep the fewest singular values holding this share of ``sum s^2``, in
            ``(0, 1]`` (e.g. 0.95).
        threshold: Drop singular values under this share of the largest one, in ``[0, 1)``
            (e.g. 0.05).
        rule: A function of the ``|s|`` array returning the indices to keep (at least one);
            replaces ``energy``/``threshold``/``min_rank``.
        start_epoch: The first epoch (0-based) at whose end to prune.
        every: Prune every this many epochs from ``start_epoch``.
        stop_epoch: The last epoch at whose end to prune, or None.
        min_rank: The fewest singular values to keep.
        verbose: Print the ranks after each pruning step.

    Raises:
        ValueError: When none of ``energy``, ``threshold`` and ``rule`` is given, one is out
            of range, ``every`` or ``min_rank`` is below 1 or ``start_epoch`` below 0; and,
            during ``fit``, when the model has no ``SVDConv2D`` layer or ``rule`` keeps
            nothing.
    """

    def __init__(
        self,
        energy: float | None = None,
        threshold: float | None = None,
        rule: Callable[[np.ndarray], Any] | None = None,
        start_epoch: int = 0,
        every: int = 1,
        stop_epoch: int | None = None,
        min_rank: int = 1,
        verbose: int = 0,
    ):
        super().__init__()
        if rule is None and energy is None and threshold is None:
            raise ValueError(
                "RankPruning: pass energy=... (e.g. 0.95), threshold=... (e.g. 0.05, relative "
                "to the largest singular value) or a rule(|s|) -> indices to keep."
            )
        if energy is not None and not 0.0 < float(energy) <= 1.0:
            raise ValueError(f"RankPruning: energy must be in (0, 1], got {energy!r}.")
        if threshold is not None and not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"RankPruning: threshold must be in [0, 1), got {threshold!r}.")
        if int(every) < 1 or int(start_epoch) < 0 or int(min_rank) < 1:
            raise ValueError("RankPruning: every and min_rank must be >= 1, start_epoch >= 0.")
        self.energy, self.threshold, self.rule = energy, threshold, rule
        self.start_epoch, self.every, self.stop_epoch = int(start_epoch), int(every), stop_epoch
        self.min_rank, self.verbose = int(min_rank), verbose
        self.history: list[dict] = []

    def _due(self, epoch: int) -> bool:
        if epoch < self.start_epoch or (self.stop_epoch is not None and epoch > self.stop_epoch):
            return False
        return (epoch - self.start_epoch) % self.every == 0

    def _keep(self, layer) -> np.ndarray:
        s = np.abs(ops.convert_to_numpy(layer.singular_values))
        if self.rule is not None:
            keep = np.asarray(self.rule(s), dtype=np.int64).ravel()
            if keep.size < 1:
                raise ValueError(
                    f"RankPruning: rule kept no singular value of '{layer.name}'; keep >= 1."
                )
            return keep
        return pruning_keep(s, self.energy, self.threshold, self.min_rank)

    def on_train_begin(self, logs=None):
        if not _svd_layers(self.model):
            raise ValueError(
                f"RankPruning: model '{self.model.name}' has no SVDConv2D layer to prune."
            )

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        sliced = {}
        ranks = {}
        for layer in _svd_layers(self.model):
            keep = self._keep(layer)
            if keep.size < layer.rank:
                sliced.update(set_svd_rank(layer, keep))
            ranks[layer.name] = layer.rank
        self.history.append({"epoch": epoch, "ranks": ranks})
        if sliced:
            _rebuild_optimizer(self.model, sliced)
            _refresh_compiled(self.model)
        if self.verbose:
            print(f"RankPruning epoch {epoch + 1}: ranks {ranks}")


def svd_ranks(model) -> dict[str, int]:
    """List the rank of every ``SVDConv2D`` in ``model``.

    Args:
        model: A Keras model (nested models included).

    Returns:
        ``{layer name: rank}``.
    """
    return {layer.name: layer.rank for layer in _svd_layers(model)}


def prune_svd_ranks(
    model,
    energy: float | None = None,
    threshold: float | None = None,
    min_rank: int = 1,
):
    """Prune the ranks of ``model``'s ``SVDConv2D`` layers in one shot.

    Each ``SVDConv2D`` of a copy is cut by ``pruning_keep``. The input model is not
    modified. Fine-tune the result afterwards.

    Args:
        model: A Functional or Sequential model holding ``SVDConv2D`` layers.
        energy: Keep the fewest singular values with ``sum s_i^2 >= energy * sum s^2``.
        threshold: Drop singular values with ``|s_i| < threshold * max|s|``.
        min_rank: The fewest singular values to keep per layer.

    Returns:
        The pruned copy of ``model``.

    Raises:
        ValueError: When neither ``energy`` nor ``threshold`` is given, or the model cannot
            be copied (e.g. a subclassed model).
    """
    if energy is None and threshold is None:
        raise ValueError("prune_svd_ranks: pass energy=... or threshold=....")
    new = _copy_model(model)
    for layer in _svd_layers(new):
        s = ops.convert_to_numpy(layer.singular_values)
        keep = pruning_keep(s, energy, threshold, min_rank)
        if keep.size < layer.rank:
            set_svd_rank(layer, keep)
    return new
