"""Training helpers: SVD regularizers, rank pruning during ``fit``, from-scratch recipes.

SVD rank pruning (METHODS.md section 3; DPRP's exact rule is not published, so this module
follows the closest published recipe, Yang et al. 2020, and keeps every part pluggable):

- ``Orthogonality(strength, rank_axis)``: ``strength * ||M^T M - I||_F^2 / R^2`` where ``M``
  holds a factor's ``R`` rank components as columns (``SVDConv2D(orthogonality=...)`` puts it
  on both singular-vector factors);
- ``SingularValueL1(l1)``: ``l1 * sum|s|``; ``SingularValueHoyer(strength)``:
  ``strength * ||s||_1 / ||s||_2`` (scale-invariant, pushes towards few large values);
- ``RankPruning``: a callback that, between epochs, drops the singular values of every
  ``SVDConv2D`` that fall outside an energy share or under a threshold relative to the
  largest one, and physically rebuilds the layer at the smaller rank (see its docstring);
- ``add_svd_regularization`` / ``prune_svd_ranks``: the model-wide versions.

From-scratch recipes: ``effective_ranks`` measures, per ``Conv2D``, the rank that keeps an
energy share; ``from_scratch`` rebuilds a plain network with factorized layers freshly
initialized at those ranks (optionally a BatchNorm after each, as the TT papers train);
``train_decef_from_scratch`` runs the whole DeCEF recipe (train plain briefly, measure ranks,
build DeCEF, train from scratch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from . import decompositions as dec
from .basis import BasisConv2D
from .decef import DeCEFConv2D
from .svd import SVDConv2D

__all__ = [
    "DeCEFRecipeResult",
    "Orthogonality",
    "RankPruning",
    "SingularValueHoyer",
    "SingularValueL1",
    "add_svd_regularization",
    "effective_ranks",
    "from_scratch",
    "prune_svd_ranks",
    "pruning_keep",
    "set_svd_rank",
    "svd_ranks",
    "train_decef_from_scratch",
]

_PKG = "keras_eigenconv"


# --- regularizers ---------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PKG)
class Orthogonality(keras.regularizers.Regularizer):
    """``strength * ||M^T M - I||_F^2 / R^2`` (+ ``base(x)``).

    ``M`` is the weight with its ``rank_axis`` moved last and reshaped to ``(-1, R)``: for
    ``SVDConv2D`` the left vectors ``(kh, kw, C, R)`` use ``rank_axis=-1`` and the right
    vectors ``(1, kw, R, N)`` use ``rank_axis=2``. ``base`` is an optional regularizer added
    to the penalty (the layer's ``kernel_regularizer``).
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
    """``l1 * sum_i |s_i|``: drives small singular values to zero."""

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
    """``strength * ||s||_1 / ||s||_2``: scale-invariant sparsity (between 1 and ``sqrt(R)``)."""

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


def _svd_layers(model) -> list[SVDConv2D]:
    out, seen = [], set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, SVDConv2D) and id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def _copy_model(model, clone_function=None):
    """Clone a Functional/Sequential model (nested ones too) with its weights."""
    from keras.src.models.functional import Functional

    if not isinstance(model, (Functional, keras.Sequential)):
        raise ValueError(
            f"Model '{getattr(model, 'name', '?')}' is a subclassed model; these helpers "
            "clone Functional or Sequential models only. Build it with the functional API "
            "or apply the per-layer tools (set_svd_rank, regularizer arguments) yourself."
        )
    kwargs = {"recursive": True}
    if clone_function is not None:
        kwargs["clone_function"] = clone_function
    new = keras.models.clone_model(model, **kwargs)
    new.set_weights(model.get_weights())
    return new


def add_svd_regularization(
    model,
    orthogonality: float | None = None,
    l1: float | None = None,
    hoyer: float | None = None,
):
    """A copy of ``model`` whose ``SVDConv2D`` layers carry the given regularizers.

    ``orthogonality`` sets each layer's ``orthogonality`` strength; ``l1`` or ``hoyer`` sets
    its ``singular_value_regularizer`` (``SingularValueL1`` / ``SingularValueHoyer``). ``None``
    keeps the layer's own setting. Weights are copied; the input model is not modified. The
    regularizers live in the layer configs, so they survive ``save``/``load``.
    """
    if l1 is not None and hoyer is not None:
        raise ValueError("add_svd_regularization: pass l1 or hoyer, not both.")
    if not _svd_layers(model):
        raise ValueError(
            f"add_svd_regularization: model '{model.name}' has no SVDConv2D layer. Convert "
            "its Conv2D layers first (SVDConv2D.from_conv2d or keras_eigenconv.surgery)."
        )

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, SVDConv2D):
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
    """Indices of the singular values to keep, largest ``|s|`` first.

    ``energy``: the fewest values with ``sum s_i^2 >= energy * sum s^2``. ``threshold``: drop
    values with ``|s_i| < threshold * max|s|``. Both: the smaller of the two ranks. Never
    fewer than ``min_rank``.
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
    """Shrink a built ``SVDConv2D`` in place to the rank components ``keep`` (indices).

    The three factor variables are replaced by smaller ones (sliced values, same names and
    order, created under the distribution strategy in force) and ``layer.rank`` becomes
    ``len(keep)``, so the layer's config, ``.keras`` files and cost follow. Returns, per
    replaced variable path, ``(axis, keep)`` (what ``RankPruning`` slices optimizer slots
    with). Compiled functions that captured the old variables must be rebuilt.
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
        layer._resolved_implementation = layer._resolve_implementation(tuple(shape))
    return sliced


def _replace_variable(layer, attr: str, old, value: np.ndarray) -> None:
    import tensorflow as tf

    with tf.distribute.get_strategy().scope(), keras.name_scope(layer.name, caller=layer):
        new = keras.Variable(
            initializer=value.astype(old.dtype),
            shape=value.shape,
            dtype=old.dtype,
            trainable=old.trainable,
            name=old.name,
        )
    new.regularizer = old.regularizer
    new.constraint = old.constraint
    # Swap in place so the variable order (saving, get_weights) is unchanged.
    tracker = layer._tracker
    store = "trainable_variables" if old.trainable else "non_trainable_variables"
    values = tracker.config[store][1]
    index = next(i for i, v in enumerate(values) if v is old)
    values[index] = new
    tracker.stored_ids[store].discard(id(old))
    tracker.stored_ids[store].add(id(new))
    object.__setattr__(layer, attr, new)


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
    """``{layer name: rank}`` of every ``SVDConv2D`` in ``model``."""
    return {layer.name: layer.rank for layer in _svd_layers(model)}


def prune_svd_ranks(
    model,
    energy: float | None = None,
    threshold: float | None = None,
    min_rank: int = 1,
):
    """One-shot pruning: a copy of ``model`` with each ``SVDConv2D`` cut by ``pruning_keep``.

    The input model is not modified. Fine-tune the result afterwards.
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


# --- from-scratch recipes ---------------------------------------------------------------


def _is_target_conv(layer) -> bool:
    return (
        type(layer) is keras.layers.Conv2D
        and math.prod(layer.kernel_size) > 1
        and getattr(layer, "groups", 1) == 1
        and layer.data_format == "channels_last"
    )


def effective_ranks(
    model, method=DeCEFConv2D, energy: float = 0.9, **method_options
) -> dict[str, int]:
    """Per ``Conv2D`` (kernel larger than 1x1): the smallest ``method`` rank keeping
    ``energy`` of its kernel's squared Frobenius norm (``method.rank_for``).

    For DeCEF this is the effective rank of the per-channel eigen-filter spectrum, pooled over
    input channels (METHODS.md section 1 leaves the rule open; this is the documented choice).
    """
    ranks = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if _is_target_conv(layer) and layer.built:
            kernel = np.asarray(ops.convert_to_numpy(layer.kernel), np.float64)
            ranks[layer.name] = method.rank_for(kernel, energy=energy, **method_options)
    return ranks


def _layer_saves(method, conv, rank: int, **method_options) -> bool:
    kh, kw = conv.kernel_size
    c = int(conv.kernel.shape[2]) if conv.built else None
    if c is None:
        return True
    probe = method(conv.filters, conv.kernel_size, rank=rank, **method_options)
    if rank > probe.max_rank(c):
        return False
    learned, fixed = probe.param_counts(c)
    return learned + fixed < kh * kw * c * conv.filters + (conv.filters if conv.use_bias else 0)


def from_scratch(
    model,
    method=DeCEFConv2D,
    ranks: dict[str, int] | int | None = None,
    batch_norm_after: bool = False,
    only_if_smaller: bool = True,
    implementation: str = "auto",
    **method_options,
):
    """A freshly initialized copy of a Functional/Sequential ``model`` whose ``Conv2D`` layers
    (kernel larger than 1x1, no groups) are ``method`` layers.

    ``ranks``: an int for every layer, or ``{conv name: rank}`` (layers not listed stay
    ``Conv2D``); ``None`` needs a built model and uses ``effective_ranks(model, method)``.
    With ``only_if_smaller`` a layer stays ``Conv2D`` when the factorized one would not have
    fewer parameters. ``batch_norm_after`` puts a ``BatchNormalization`` between each new
    layer and its activation (``Sequential([layer, BN, Activation])``), as Garipov et al.
    train TT networks. No weight is copied: this is for training from scratch.
    """
    if ranks is None:
        ranks = effective_ranks(model, method, **method_options)

    def clone(layer):
        if not _is_target_conv(layer):
            return layer.__class__.from_config(layer.get_config())
        rank = ranks if isinstance(ranks, int) else ranks.get(layer.name)
        if rank is None or (
            only_if_smaller and not _layer_saves(method, layer, rank, **method_options)
        ):
            return layer.__class__.from_config(layer.get_config())
        cfg = layer.get_config()
        activation = cfg["activation"]
        new = method(
            filters=layer.filters,
            kernel_size=layer.kernel_size,
            rank=int(rank),
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            activation=None if batch_norm_after else activation,
            use_bias=layer.use_bias,
            implementation=implementation,
            kernel_initializer=cfg["kernel_initializer"],
            bias_initializer=cfg["bias_initializer"],
            kernel_regularizer=cfg["kernel_regularizer"],
            bias_regularizer=cfg["bias_regularizer"],
            activity_regularizer=cfg.get("activity_regularizer"),
            kernel_constraint=cfg["kernel_constraint"],
            bias_constraint=cfg["bias_constraint"],
            name=layer.name if not batch_norm_after else layer.name + "_factorized",
            **method_options,
        )
        if not batch_norm_after:
            return new
        return keras.Sequential(
            [
                new,
                keras.layers.BatchNormalization(name=layer.name + "_bn"),
                keras.layers.Activation(activation, name=layer.name + "_act"),
            ],
            name=layer.name,
        )

    return keras.models.clone_model(model, clone_function=clone, recursive=True)


def _fresh_optimizer(optimizer):
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    return keras.optimizers.get(optimizer)


@dataclass
class DeCEFRecipeResult:
    """What ``train_decef_from_scratch`` returns."""

    model: Any
    ranks: dict[str, int]
    plain_history: Any = None
    history: Any = None
    plain_model: Any = None
    info: dict = field(default_factory=dict)


def train_decef_from_scratch(
    build_model: Callable[[], Any],
    train_data,
    epochs: int,
    warmup_epochs: int = 2,
    energy: float = 0.9,
    validation_data=None,
    optimizer="adam",
    loss="sparse_categorical_crossentropy",
    metrics=("accuracy",),
    implementation: str = "auto",
    callbacks=None,
    verbose: int = 0,
    **fit_kwargs,
) -> DeCEFRecipeResult:
    """The DeCEF recipe in one call (Yu et al.'s strategy as far as it is published).

    1. ``build_model()`` (a Functional/Sequential model with ``Conv2D`` layers) is trained for
       ``warmup_epochs`` (the paper: ranks settle early in training);
    2. each ``Conv2D``'s DeCEF rank is measured: the smallest keeping ``energy`` of the
       kernel's squared norm, pooled over input channels (``effective_ranks``);
    3. a second ``build_model()`` is rebuilt with ``DeCEFConv2D`` layers at those ranks
       (``from_scratch``; a layer stays ``Conv2D`` if DeCEF would not be smaller), freshly
       initialized, and trained from scratch for ``epochs``.

    ``train_data`` is what ``fit`` takes as ``x`` (a ``tf.data.Dataset`` or ``(x, y)``
    arrays); ``optimizer`` is a name, config or instance (copied for each model).
    """
    if warmup_epochs < 1 or epochs < 1:
        raise ValueError("train_decef_from_scratch: epochs and warmup_epochs must be >= 1.")

    def fit(model, n):
        model.compile(optimizer=_fresh_optimizer(optimizer), loss=loss, metrics=list(metrics))
        if isinstance(train_data, tuple):
            x, y = train_data
            return model.fit(
                x,
                y,
                epochs=n,
                validation_data=validation_data,
                callbacks=callbacks,
                verbose=verbose,
                **fit_kwargs,
            )
        return model.fit(
            train_data,
            epochs=n,
            validation_data=validation_data,
            callbacks=callbacks,
            verbose=verbose,
            **fit_kwargs,
        )

    plain = build_model()
    plain_history = fit(plain, warmup_epochs)
    ranks = effective_ranks(plain, DeCEFConv2D, energy=energy)
    fresh = build_model()
    # map by position: a second build_model() may name its layers differently
    targets = [
        la.name
        for la in fresh._flatten_layers(include_self=False, recursive=True)
        if _is_target_conv(la)
    ]
    if len(targets) != len(ranks):
        raise ValueError(
            "train_decef_from_scratch: build_model() must build the same network each call; "
            f"got {len(ranks)} then {len(targets)} Conv2D layers."
        )
    decef = from_scratch(
        fresh,
        DeCEFConv2D,
        ranks=dict(zip(targets, ranks.values())),
        implementation=implementation,
    )
    history = fit(decef, epochs)
    replaced = [
        la.name
        for la in decef._flatten_layers(include_self=False, recursive=True)
        if isinstance(la, DeCEFConv2D)
    ]
    return DeCEFRecipeResult(
        model=decef,
        ranks=ranks,
        plain_history=plain_history,
        history=history,
        plain_model=plain,
        info={"energy": energy, "replaced": replaced},
    )


def basis_from_scratch(model, ranks: dict[str, int] | int, **kwargs):
    """``from_scratch(model, BasisConv2D, ranks)``: BasisConv with a fixed random
    orthogonal basis (QR of a Gaussian matrix), only the 1x1 weights learn."""
    return from_scratch(model, BasisConv2D, ranks=ranks, **kwargs)


__all__.append("basis_from_scratch")


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    input_shape=(32, 32, 3),
    width: int = 16,
    name: str | None = None,
):
    """He et al.'s CIFAR ResNet (``depth = 6n + 2``: 20, 32, 44, 56) as a Functional model.

    3 stages of ``n`` basic blocks (3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU) with
    ``width``, ``2*width``, ``4*width`` filters; stride 2 at stages 2 and 3 with a 1x1 conv
    shortcut; global average pooling and a softmax ``Dense``. ResNet-20: 0.27 M parameters,
    about 41 M MACs on 32x32 inputs.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 (20, 32, 56, ...), got {depth}.")
    n = (depth - 2) // 6
    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(width, 3, padding="same", use_bias=False, name="conv0")(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    for stage in range(3):
        filters = width * 2**stage
        for block in range(n):
            strides = 2 if stage > 0 and block == 0 else 1
            tag = f"s{stage + 1}b{block + 1}"
            y = L.Conv2D(filters, 3, strides, padding="same", use_bias=False, name=tag + "_conv1")(
                x
            )
            y = L.ReLU()(L.BatchNormalization()(y))
            y = L.Conv2D(filters, 3, padding="same", use_bias=False, name=tag + "_conv2")(y)
            y = L.BatchNormalization()(y)
            if strides != 1 or x.shape[-1] != filters:
                x = L.Conv2D(filters, 1, strides, use_bias=False, name=tag + "_short")(x)
                x = L.BatchNormalization()(x)
            x = L.ReLU()(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


__all__.append("cifar_resnet")
