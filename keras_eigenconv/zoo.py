"""Reference networks: the CIFAR-10 networks of Garipov et al. 2016 ("Ultimate
tensorization") with their recipe, and He et al.'s CIFAR ResNet (``cifar_resnet``).

- ``cifar10_convnet``: conv64, conv64, pool, conv128, conv128, pool, conv128, conv128,
  global average pool, dense10; every conv 3x3 "same", no bias, then BatchNorm and ReLU
  (557k parameters). ``conv="tt"`` makes every conv but the first a ``TTConv2D`` at the
  paper's modes and ranks (``PAPER_TT_CONV``): about 3.2x fewer parameters.
- ``cifar10_conv_fc_net``: the same convs, then flatten (8192 features at 32x32 input),
  FC 1536, FC 512 (ReLU) and dense10 (about 14M parameters). ``conv="tt"`` uses TT-rank 16
  everywhere; ``fc="tt"`` makes the two hidden FC layers ``TTDense`` at the paper's modes,
  ranks 40 and 30 (``PAPER_TT_FC``): about 42x fewer parameters with both.

Choices the paper leaves open (documented, configurable): no BatchNorm after the FC layers
(it would add 8k parameters), max pooling, initial learning rate 0.1 and weight decay 5e-4
in ``paper_recipe``. Other widths or input sizes (``filters``, ``input_shape``) give the
reduced networks used in the tests; TT modes are then ``"auto"``. ``bn_momentum`` is that
of the BatchNorm moving statistics (Keras' 0.99 by default; 0.9 suits short runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from .layers import TTConv2D, TTDense

__all__ = [
    "PAPER_TT_CONV",
    "PAPER_TT_CONV_FC_RANK",
    "PAPER_TT_FC",
    "cifar10_conv_fc_net",
    "cifar_resnet",
    "cifar10_convnet",
    "paper_lr_schedule",
    "paper_recipe",
]

PAPER_FILTERS = (64, 64, 128, 128, 128, 128)
# (C, N) -> (in_modes, out_modes, TT-ranks [r0, ..., r_d]) of the conv-only net (3.2x)
PAPER_TT_CONV = {
    (64, 64): ((4, 4, 4), (4, 4, 4), (22, 20, 20, 1)),
    (64, 128): ((4, 4, 4), (4, 8, 4), (27, 22, 22, 1)),
    (128, 128): ((4, 8, 4), (4, 8, 4), (23, 23, 23, 1)),
}
# TT-conv ranks of the conv+FC nets
PAPER_TT_CONV_FC_RANK = (16, 16, 16, 1)
# (M, N) -> (in_modes, out_modes, rank) of the TT-FC layers
PAPER_TT_FC = {
    (8192, 1536): ((8, 8, 8, 16), (4, 6, 8, 8), 40),
    (1536, 512): ((4, 6, 8, 8), (4, 4, 4, 8), 30),
}


def _check_kind(name: str, value: str) -> None:
    if value not in ("plain", "tt"):
        raise ValueError(f"zoo: {name} must be 'plain' or 'tt', got {value!r}.")


def _conv_block(x, c: int, n: int, kind: str, first: bool, ranks, name: str, bn_momentum):
    if kind == "plain" or first:  # the paper keeps the first conv dense
        x = keras.layers.Conv2D(n, 3, padding="same", use_bias=False, name=name)(x)
    else:
        modes, r = ("auto", "auto"), ranks
        if ranks == "paper" and (c, n) in PAPER_TT_CONV:
            *modes, r = PAPER_TT_CONV[(c, n)]
        elif ranks == "paper":
            r = PAPER_TT_CONV_FC_RANK
        elif isinstance(ranks, str):
            raise ValueError(f"zoo: tt_ranks must be 'paper', an int or a list, got {ranks!r}.")
        if (c, n) in PAPER_TT_CONV and modes[0] == "auto":
            modes = PAPER_TT_CONV[(c, n)][:2]
        x = TTConv2D(
            n,
            3,
            rank=list(r) if isinstance(r, (list, tuple)) else r,
            in_modes=modes[0],
            out_modes=modes[1],
            padding="same",
            use_bias=False,
            kernel_initializer="glorot_normal",
            implementation="dense",  # the paper's path (rebuild, one conv)
            name=name,
        )(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _features(inputs, conv: str, filters: Sequence[int], ranks, bn_momentum: float):
    if len(filters) != 6:
        raise ValueError(f"zoo: filters must list the 6 conv widths, got {list(filters)}.")
    x, c = inputs, int(inputs.shape[-1])
    for i, n in enumerate(filters):
        x = _conv_block(x, c, n, conv, i == 0, ranks, f"conv{i + 1}", bn_momentum)
        c = n
        if i in (1, 3):
            x = keras.layers.MaxPooling2D(2, name=f"pool{(i + 1) // 2}")(x)
    return x


def cifar10_convnet(
    conv: str = "plain",
    tt_ranks="paper",
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    filters: Sequence[int] = PAPER_FILTERS,
    bn_momentum: float = 0.99,
    name: str | None = None,
) -> keras.Model:
    """Build Garipov et al.'s 6-conv CIFAR-10 net.

    conv64, conv64, pool, conv128, conv128, pool, conv128, conv128, global average pool,
    dense10; every conv 3x3 "same", no bias, then BatchNorm and ReLU (557k parameters).
    ``conv="tt"`` makes every conv but the first a ``TTConv2D`` (about 3.2x fewer parameters
    at the paper's modes and ranks).

    Args:
        conv: ``"plain"`` (``Conv2D``) or ``"tt"`` (``TTConv2D``, the first conv kept
            dense).
        tt_ranks: ``"paper"`` (the per-layer modes and ranks of ``PAPER_TT_CONV``), one
            int, or one list for every TT layer.
        input_shape: The input shape ``(H, W, C)``.
        num_classes: The number of classes of the softmax output.
        filters: The 6 conv widths; other widths give reduced networks (TT modes are then
            ``"auto"``).
        bn_momentum: The momentum of the BatchNorm moving statistics (Keras' 0.99 by
            default; 0.9 suits short runs).
        name: The model's name; ``cifar10_convnet_<conv>`` when None.

    Returns:
        The Functional model.

    Raises:
        ValueError: When ``conv`` is not ``"plain"`` or ``"tt"``, ``filters`` does not list
            6 widths, or ``tt_ranks`` is a string other than ``"paper"``.
    """
    _check_kind("conv", conv)
    inputs = keras.Input(input_shape)
    x = _features(inputs, conv, filters, tt_ranks, bn_momentum)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="dense10")(x)
    return keras.Model(inputs, outputs, name=name or f"cifar10_convnet_{conv}")


def cifar10_conv_fc_net(
    conv: str = "plain",
    fc: str = "plain",
    tt_ranks="paper",
    fc_ranks=(40, 30),
    fc_units: Sequence[int] = (1536, 512),
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    filters: Sequence[int] = PAPER_FILTERS,
    fc_num_modes: int = 4,
    bn_momentum: float = 0.99,
    name: str | None = None,
) -> keras.Model:
    """Build Garipov et al.'s conv+FC CIFAR-10 net.

    The 6 convs of ``cifar10_convnet``, flatten (8192 features at 32x32 input), FC
    ``fc_units`` (ReLU) and dense10 (about 14M parameters); no BatchNorm after the FC
    layers (the paper leaves it open; it would add 8k parameters). With both ``conv="tt"``
    and ``fc="tt"``: about 42x fewer parameters.

    Args:
        conv: ``"plain"`` or ``"tt"`` (TT-convs, the first conv kept dense).
        fc: ``"plain"`` or ``"tt"`` (the hidden FC layers become ``TTDense``).
        tt_ranks: The TT-conv ranks: ``"paper"`` is rank 16 (``[16, 16, 16, 1]``), else one
            int or one list for every TT layer.
        fc_ranks: One TT-FC rank per hidden FC layer (the paper: 40 and 30).
        fc_units: The widths of the hidden FC layers.
        input_shape: The input shape ``(H, W, C)``.
        num_classes: The number of classes of the softmax output.
        filters: The 6 conv widths.
        fc_num_modes: The number of balanced modes of a ``TTDense`` whose sizes are not the
            paper's (the paper's modes, ``PAPER_TT_FC``, where they are).
        bn_momentum: The momentum of the BatchNorm moving statistics.
        name: The model's name; ``cifar10_conv_fc_net_<conv>_<fc>`` when None.

    Returns:
        The Functional model.

    Raises:
        ValueError: When ``conv`` or ``fc`` is not ``"plain"`` or ``"tt"``, ``fc_ranks`` and
            ``fc_units`` differ in length, or ``filters`` does not list 6 widths.
    """
    _check_kind("conv", conv)
    _check_kind("fc", fc)
    if len(fc_ranks) != len(fc_units):
        raise ValueError(f"zoo: give one TT-FC rank per FC layer, got {fc_ranks} / {fc_units}.")
    inputs = keras.Input(input_shape)
    ranks = PAPER_TT_CONV_FC_RANK if tt_ranks == "paper" else tt_ranks
    x = _features(inputs, conv, filters, ranks, bn_momentum)
    x = keras.layers.Flatten(name="flatten")(x)
    m = int(x.shape[-1])
    for i, (units, rank) in enumerate(zip(fc_units, fc_ranks)):
        fc_name = f"fc{i + 1}"
        if fc == "plain":
            x = keras.layers.Dense(units, activation="relu", name=fc_name)(x)
        else:
            in_modes, out_modes, _ = PAPER_TT_FC.get((m, units), ("auto", "auto", None))
            x = TTDense(
                units,
                rank=rank,
                in_modes=in_modes,
                out_modes=out_modes,
                num_modes=fc_num_modes,
                activation="relu",
                kernel_initializer="glorot_normal",
                name=fc_name,
            )(x)
        m = units
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="dense10")(x)
    return keras.Model(inputs, outputs, name=name or f"cifar10_conv_fc_net_{conv}_{fc}")


def paper_lr_schedule(initial_lr: float = 0.1, drop_every: int = 30, factor: float = 0.1):
    """Make the step learning-rate schedule of Garipov et al. (LR /10 every 30 epochs).

    ``lr(epoch) = initial_lr * factor ** (epoch // drop_every)``.

    Args:
        initial_lr: The learning rate of the first epochs.
        drop_every: The epochs between drops.
        factor: The factor of each drop.

    Returns:
        A function ``schedule(epoch, lr=None)`` for ``keras.callbacks.LearningRateScheduler``.
    """

    def schedule(epoch, lr=None):
        return float(initial_lr * factor ** (epoch // drop_every))

    return schedule


def paper_recipe(
    model: keras.Model,
    x,
    y=None,
    validation_data=None,
    epochs: int = 100,
    batch_size: int = 100,
    initial_lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float | None = 5e-4,
    verbose: int = 2,
):
    """Compile and train ``model`` like Garipov et al.

    SGD momentum 0.9, batch 100, 100 epochs, LR /10 every 30 epochs
    (``paper_lr_schedule``), sparse categorical cross-entropy, accuracy. For CIFAR-10:
    ``(x, y), val = keras.datasets.cifar10.load_data()``, scale ``x`` to ``[0, 1]``.

    Args:
        model: The model to compile and train.
        x: Input arrays, or a ``tf.data.Dataset`` (already batched).
        y: Label arrays; None when ``x`` is a dataset.
        validation_data: ``fit``'s ``validation_data``.
        epochs: The number of epochs.
        batch_size: The batch size (ignored for a dataset).
        initial_lr: The initial learning rate (not given by the paper).
        momentum: The SGD momentum.
        weight_decay: ``SGD(weight_decay=...)`` (not given by the paper), or None.
        verbose: ``fit``'s verbosity.

    Returns:
        The ``History`` of ``fit``.
    """
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=initial_lr, momentum=momentum, weight_decay=weight_decay
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks = [keras.callbacks.LearningRateScheduler(paper_lr_schedule(initial_lr))]
    return model.fit(
        x,
        y,
        batch_size=None if y is None else batch_size,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=callbacks,
        verbose=verbose,
    )


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    input_shape=(32, 32, 3),
    width: int = 16,
    name: str | None = None,
):
    """Build He et al.'s CIFAR ResNet as a Functional model.

    3 stages of ``n`` basic blocks (3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU) with
    ``width``, ``2*width``, ``4*width`` filters; stride 2 at stages 2 and 3 with a 1x1 conv
    shortcut; global average pooling and a softmax ``Dense``. ResNet-20: 0.27 M parameters,
    about 41 M MACs on 32x32 inputs.

    Args:
        depth: ``6n + 2``: 20, 32, 44, 56, ...
        num_classes: The number of classes of the softmax output.
        input_shape: The input shape ``(H, W, C)``.
        width: The filters of the first stage.
        name: The model's name; ``resnet<depth>`` when None.

    Returns:
        The Functional model.

    Raises:
        ValueError: When ``depth`` is not ``6n + 2`` with ``n >= 1``.
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
