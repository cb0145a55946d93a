"""From-scratch recipes: measure ranks on a briefly trained plain network, then train a
factorized network of those ranks from a fresh initialization.

``effective_ranks`` measures, per ``Conv2D``, the rank that keeps an energy share;
``from_scratch`` rebuilds a plain network with factorized layers freshly initialized at those
ranks (optionally a BatchNorm after each, as the TT papers train); ``train_decef_from_scratch``
runs the whole DeCEF recipe (train plain briefly, measure ranks, build DeCEF, train from
scratch); ``basis_from_scratch`` gives BasisConv with a fixed random orthogonal basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import graph
from ..layers import BasisConv2D, DeCEFConv2D

__all__ = [
    "DeCEFRecipeResult",
    "basis_from_scratch",
    "effective_ranks",
    "from_scratch",
    "train_decef_from_scratch",
]


def _is_target_conv(layer) -> bool:
    return (
        type(layer) is keras.layers.Conv2D
        and math.prod(layer.kernel_size) > 1
        and layer.groups == 1
        and layer.data_format == "channels_last"
    )


def effective_ranks(
    model, method=DeCEFConv2D, energy: float = 0.9, **method_options
) -> dict[str, int]:
    """Measure, per ``Conv2D``, the rank that keeps a share of its kernel's energy.

    For each built ``Conv2D`` with a kernel larger than 1x1 (no groups, channels last), the
    rank is the smallest ``method`` rank keeping ``energy`` of its kernel's squared Frobenius
    norm (``method.rank_for``). For DeCEF this is the effective rank of the per-channel
    eigen-filter spectrum, pooled over input channels (the DeCEF paper leaves its
    effective-rank rule open; this is our choice).

    Args:
        model: A Keras model (nested models included).
        method: The compressed layer class whose ranks to measure.
        energy: The share of each kernel's squared Frobenius norm to keep.
        **method_options: Options of ``method.rank_for``.

    Returns:
        ``{conv name: rank}``.
    """
    ranks = {}
    for layer in graph.flatten_layers(model):
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
    """Rebuild a network with freshly initialized factorized layers.

    The copy of a Functional/Sequential ``model`` has its ``Conv2D`` layers (kernel larger
    than 1x1, no groups) as ``method`` layers. No weight is copied: this is for training
    from scratch.

    Args:
        model: A Functional or Sequential model.
        method: The compressed layer class to use (``DeCEFConv2D`` by default).
        ranks: An int for every layer, or ``{conv name: rank}`` (layers not listed stay
            ``Conv2D``); ``None`` needs a built model and uses
            ``effective_ranks(model, method)``.
        batch_norm_after: Put a ``BatchNormalization`` between each new layer and its
            activation (``Sequential([layer, BN, Activation])``), as Garipov et al. train
            TT networks.
        only_if_smaller: Keep a layer ``Conv2D`` when the factorized one would not have
            fewer parameters.
        implementation: The ``implementation`` of every new layer.
        **method_options: Extra constructor options of ``method`` (also passed to
            ``effective_ranks`` when ``ranks`` is None).

    Returns:
        The new, freshly initialized model.
    """
    if ranks is None:
        ranks = effective_ranks(model, method, **method_options)

    def clone(layer):
        if not _is_target_conv(layer):
            return None
        rank = ranks if isinstance(ranks, int) else ranks.get(layer.name)
        if rank is None or (
            only_if_smaller and not _layer_saves(method, layer, rank, **method_options)
        ):
            return None
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

    return graph.clone_model(model, replace=clone, copy_weights_=False)


def _fresh_optimizer(optimizer):
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    return keras.optimizers.get(optimizer)


@dataclass
class DeCEFRecipeResult:
    """What ``train_decef_from_scratch`` returns.

    Attributes:
        model: The trained DeCEF model.
        ranks: The measured ``{conv name: rank}`` (names of the plain model).
        plain_history: The ``History`` of the plain model's warm-up training.
        history: The ``History`` of the DeCEF model's training.
        plain_model: The briefly trained plain model.
        info: ``{"energy": ..., "replaced": [names of the DeCEFConv2D layers]}``.
    """

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

    Args:
        build_model: A function building a fresh Functional/Sequential model with
            ``Conv2D`` layers; it must build the same network each call.
        train_data: What ``fit`` takes as ``x``: a ``tf.data.Dataset``, or an ``(x, y)``
            tuple of arrays.
        epochs: The epochs of the DeCEF model's training from scratch.
        warmup_epochs: The epochs of the plain model's brief training.
        energy: The share of each kernel's squared norm the ranks keep.
        validation_data: ``fit``'s ``validation_data``.
        optimizer: A name, config or instance (copied for each model).
        loss: The loss both models compile with.
        metrics: The metrics both models compile with.
        implementation: The ``implementation`` of the ``DeCEFConv2D`` layers.
        callbacks: ``fit``'s callbacks, for both trainings.
        verbose: ``fit``'s verbosity.
        **fit_kwargs: Other arguments of ``fit``, for both trainings.

    Returns:
        A ``DeCEFRecipeResult``.

    Raises:
        ValueError: When ``epochs`` or ``warmup_epochs`` is below 1, or ``build_model()``
            builds different numbers of ``Conv2D`` layers.
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
    targets = [la.name for la in graph.flatten_layers(fresh) if _is_target_conv(la)]
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
    replaced = [la.name for la in graph.flatten_layers(decef) if isinstance(la, DeCEFConv2D)]
    return DeCEFRecipeResult(
        model=decef,
        ranks=ranks,
        plain_history=plain_history,
        history=history,
        plain_model=plain,
        info={"energy": energy, "replaced": replaced},
    )


def basis_from_scratch(model, ranks: dict[str, int] | int, **kwargs):
    """Rebuild a network with freshly initialized ``BasisConv2D`` layers.

    This is ``from_scratch(model, BasisConv2D, ranks)``: BasisConv with a fixed random
    orthogonal basis (QR of a Gaussian matrix), only the 1x1 weights learn.

    Args:
        model: A Functional or Sequential model.
        ranks: The number of basis filters: an int for every layer, or
            ``{conv name: rank}`` (layers not listed stay ``Conv2D``).
        **kwargs: Other arguments of ``from_scratch``.

    Returns:
        The new, freshly initialized model.
    """
    return from_scratch(model, BasisConv2D, ranks=ranks, **kwargs)
