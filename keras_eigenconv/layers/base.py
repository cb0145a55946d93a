"""The layer contract (``CompressedLayer``) and the base of the factorized convolutions.

``CompressedLayer`` declares, once, what every compressed layer of the package offers and
what the rest of the package relies on (model surgery, the inference rewrite, rank pruning,
cost counting): building from a trained source layer (``from_conv2d`` / ``from_dense``, both
reachable as ``from_source``), folding back (``to_conv2d`` / ``to_dense`` = ``to_source``),
``cost``, ``spectrum`` and ``rank_for`` (how ranks are chosen), ``vbmf_matrices``,
``max_rank``, ``inference_layers`` and ``resolved_implementation``. Callers test
``isinstance(layer, CompressedLayer)`` and call these; they never probe with ``hasattr``.

``FactorizedConv2D`` implements the contract for every low-rank ``Conv2D`` replacement: a
subclass keeps only its own maths (the shapes of its factors, how to rebuild the full
``(kh, kw, C, N)`` kernel from them, its factorized forward, its decomposition of a trained
kernel, and its cost per output pixel). The argument plumbing and validation shared with
``SSConv2D`` and ``TTDense`` (``Conv2D`` geometry, weight arguments, rank and energy checks)
are the helpers below.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .. import graph
from ..cost import OP_TIME, Cost, CostedLayer, conv_output_length

__all__ = [
    "AUTO_FACTORIZED_THRESHOLD",
    "AUTO_TRAINING_THRESHOLD",
    "IMPLEMENTATIONS",
    "OP_TIME_PER_MAC",
    "OP_TIME_PER_MAC_TRAINING",
    "TRAINING_BATCH",
    "CompressedLayer",
    "FactorizedConv2D",
    "check_conv2d",
    "check_energy",
    "check_rank",
    "check_rank_or_energy",
    "check_source",
    "conv_output_hw",
    "safe_depthwise_conv",
    "source_kernel",
]

IMPLEMENTATIONS = ("auto", "factorized", "dense")

# Relative time per MAC of the primitive ops in TensorFlow on CPU (oneDNN): see
# ``cost.OP_TIME``. LiteRT export re-chooses per layer by measurement (``deploy``).
OP_TIME_PER_MAC = OP_TIME["tensorflow"]
# "auto" keeps the factorized form only when its estimated time is below this share of the
# dense path's (each extra op also costs a memory round trip of its activations).
AUTO_FACTORIZED_THRESHOLD = 0.9
# Training (``call(..., training=True)``, what ``fit`` runs) is chosen separately, on the
# forward + backward time: ``cost.OP_TIME["tensorflow_train"]``. The threshold is lower
# because the model misses a per-op overhead that grows at small channel counts (at
# ResNet-20's 16-64 channels, batch 128, an SVD layer it estimates at 0.73 measured 0.99 of
# the dense step): below 0.7 no measured layer was slower than dense.
OP_TIME_PER_MAC_TRAINING = OP_TIME["tensorflow_train"]
AUTO_TRAINING_THRESHOLD = 0.7
# The batch the training estimate spreads the dense path's per-step kernel rebuild over.
TRAINING_BATCH = 32


def _tuple2(value, name: str, layer: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(
            f"{layer}: {name} must be an int or a pair of ints, got {value!r}."
        ) from None
    if len(out) != 2 or any(v < 1 for v in out):
        raise ValueError(f"{layer}: {name} must be one or two positive ints, got {value!r}.")
    return out


def check_rank(layer: str, rank, max_rank: int | None = None) -> int:
    """Validate a rank: a positive int, at most ``max_rank`` when known.

    Args:
        layer: the name used in the error message (e.g. ``"SVDConv2D 'conv1'"``).
        rank: the value to check.
        max_rank: the largest valid rank, or ``None`` when unknown.

    Returns:
        ``rank`` as an int.

    Raises:
        ValueError: when ``rank`` is not a positive int, or exceeds ``max_rank``.
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"{layer}: rank must be a positive int, got {rank!r}.")
    if rank < 1 or (max_rank is not None and rank > max_rank):
        bound = f"[1, {max_rank}]" if max_rank is not None else ">= 1"
        raise ValueError(
            f"{layer}: rank={rank} is outside {bound}. Pass a rank in that range, or "
            "energy=... to choose it from the spectrum."
        )
    return int(rank)


def _cost_input_shape(who: str, input_shape, spatial: bool = True) -> tuple:
    """Validate the ``input_shape`` of a layer's ``cost``.

    Args:
        who: the name used in the error message.
        input_shape: ``(H, W, C)`` or ``(batch, H, W, C)`` when ``spatial``; else
            ``(..., M)`` with at least the feature axis.
        spatial: whether the layer is a 2-D conv (4-D inputs).

    Returns:
        The shape as a tuple (``(None, H, W, C)`` for a conv), dims as ints or ``None``.

    Raises:
        ValueError: when ``input_shape`` is not a sequence of positive ints (or ``None``
            for unknown dims), has the wrong length, or its last axis is unknown.
    """
    want = "(H, W, C) or (batch, H, W, C)" if spatial else "(batch, ..., features)"
    bad = ValueError(
        f"{who}.cost: input_shape must be {want} of positive ints (None for an unknown "
        f"batch or spatial size), got {input_shape!r}."
    )
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (tuple, list)):
        try:
            input_shape = tuple(input_shape)  # a TensorShape
        except TypeError:
            raise bad from None
    shape = tuple(input_shape)
    if spatial and len(shape) == 3:
        shape = (None, *shape)
    if (spatial and len(shape) != 4) or not shape:
        raise bad
    dims = []
    for d in shape:
        if d is None:
            dims.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1:
            dims.append(int(d))
        else:
            raise bad
    if dims[-1] is None:
        raise bad
    return tuple(dims)


def check_energy(who: str, energy) -> float:
    """Validate an ``energy`` argument.

    ``energy`` is the share of the kernel's squared Frobenius norm to keep.

    Args:
        who: the name used in the error message.
        energy: the value to check: a number in ``(0, 1]`` (not a bool).

    Returns:
        ``energy`` as a float.

    Raises:
        ValueError: when ``energy`` is not a number in ``(0, 1]`` (the message names ``who``
            and the accepted range).
    """
    try:
        value = float(energy)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(energy, bool) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"{who}: energy={energy!r} must be in (0, 1], the share of the kernel's squared "
            "Frobenius norm to keep (e.g. 0.9)."
        )
    return value


def check_rank_or_energy(who: str, rank, energy) -> None:
    """Check that at most one of ``rank`` and ``energy`` is given.

    Args:
        who: the name used in the error message.
        rank: the ``rank`` argument, or ``None``.
        energy: the ``energy`` argument, or ``None``.

    Raises:
        ValueError: when both ``rank`` and ``energy`` are given.
    """
    if rank is not None and energy is not None:
        raise ValueError(f"{who}: pass rank or energy, not both.")


def source_kernel(layer) -> np.ndarray:
    """A source layer's kernel as a float64 array.

    Inside ``decompositions.shared_work()`` it is one read-only array per kernel variable
    (``decompositions.shared_array``), so that choosing the rank and decomposing share their
    work (the layer's weights must not change inside the block).

    Args:
        layer: a built layer with a ``kernel``.

    Returns:
        The kernel as a float64 ``np.ndarray``.
    """
    return dec.shared_array(
        layer.kernel,
        lambda: np.asarray(ops.convert_to_numpy(layer.kernel), dtype=np.float64),
    )


def check_source(layer, source_type: type, who: str) -> np.ndarray:
    """Check a source layer and return its kernel.

    ``layer`` must be a built ``source_type`` (not a compressed layer) with finite weights;
    a ``Conv2D`` must also be channels-last and ungrouped.

    Args:
        layer: the layer to check.
        source_type: ``keras.layers.Conv2D`` or ``keras.layers.Dense``.
        who: the name used in error messages (e.g. ``"TTDense.from_dense"``).

    Returns:
        The layer's kernel as a float64 ``np.ndarray``.

    Raises:
        ValueError: when the layer is of another type, not built, channels-first, grouped,
            or has non-finite weights (the message names the layer and the fix).
    """
    kind = source_type.__name__
    if not isinstance(layer, source_type) or isinstance(layer, CompressedLayer):
        raise ValueError(
            f"{who} needs a keras.layers.{kind}, got {type(layer).__name__} "
            f"'{getattr(layer, 'name', '?')}'."
        )
    if not layer.built:
        raise ValueError(
            f"{who}: {kind} '{layer.name}' is not built, so it has no weights. "
            "Build it first (call it on an input or layer.build(input_shape))."
        )
    if source_type is keras.layers.Conv2D:
        if layer.data_format != "channels_last":
            raise ValueError(
                f"{who}: Conv2D '{layer.name}' uses data_format='channels_first'; "
                "only channels_last is supported. Rebuild the model with channels_last."
            )
        if layer.groups != 1:
            raise ValueError(
                f"{who}: Conv2D '{layer.name}' has groups={layer.groups}; only "
                "groups=1 is supported. Leave grouped convolutions as they are."
            )
    kernel = source_kernel(layer)
    if not np.all(np.isfinite(kernel)):
        raise ValueError(
            f"{who}: the kernel of {kind} '{layer.name}' contains NaN or Inf. "
            "Fix the trained weights before decomposing them."
        )
    if layer.use_bias and not np.all(np.isfinite(ops.convert_to_numpy(layer.bias))):
        raise ValueError(f"{who}: the bias of {kind} '{layer.name}' contains NaN or Inf.")
    return kernel


def check_conv2d(conv, layer: str) -> np.ndarray:
    """Check a ``Conv2D`` source: ``check_source(conv, Conv2D, f"{layer}.from_conv2d")``.

    Args:
        conv: the layer to check (a built, channels-last, ungrouped ``Conv2D``).
        layer: the name of the calling class, used in error messages.

    Returns:
        The kernel ``(kh, kw, C, N)`` as a float64 ``np.ndarray``.

    Raises:
        ValueError: when ``conv`` is not a valid source (see ``check_source``).
    """
    return check_source(conv, keras.layers.Conv2D, f"{layer}.from_conv2d")


def conv_geometry(
    layer, who: str, filters, kernel_size, strides, padding, data_format, dilation_rate
) -> None:
    """Validate ``Conv2D``-style geometry arguments and set them on ``layer``.

    Args:
        layer: the layer whose attributes are set.
        who: the name used in error messages.
        filters: a positive int.
        kernel_size: an int or a pair of positive ints.
        strides: an int or a pair of positive ints.
        padding: ``"valid"`` or ``"same"`` (case-insensitive).
        data_format: ``None`` or ``"channels_last"``.
        dilation_rate: an int or a pair of positive ints.

    Raises:
        ValueError: when an argument is invalid, or strides and dilation are both above 1.
    """
    if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
        raise ValueError(f"{who}: filters must be a positive int, got {filters!r}.")
    layer.filters = int(filters)
    layer.kernel_size = _tuple2(kernel_size, "kernel_size", who)
    layer.strides = _tuple2(strides, "strides", who)
    layer.dilation_rate = _tuple2(dilation_rate, "dilation_rate", who)
    if max(layer.strides) > 1 and max(layer.dilation_rate) > 1:
        raise ValueError(
            f"{who}: strides > 1 together with dilation_rate > 1 is not supported "
            "(as in keras.layers.Conv2D)."
        )
    padding = str(padding).lower()
    if padding not in ("valid", "same"):
        raise ValueError(f"{who}: padding must be 'valid' or 'same', got {padding!r}.")
    layer.padding = padding
    data_format = data_format or keras.config.image_data_format()
    if data_format != "channels_last":
        raise ValueError(
            f"{who}: data_format={data_format!r} is not supported; use 'channels_last' "
            "(NHWC), which every CPU and mobile runtime prefers."
        )
    layer.data_format = "channels_last"


def set_weight_args(
    layer,
    who: str,
    implementation: str,
    activation,
    use_bias: bool,
    kernel_initializer,
    bias_initializer,
    kernel_regularizer,
    bias_regularizer,
    kernel_constraint,
    bias_constraint,
    seed,
) -> None:
    """Validate ``implementation`` and set the weight attributes every layer shares.

    Sets the activation, bias, initializer, regularizer, constraint and seed attributes of
    ``layer`` from the constructor arguments of the same names (resolved by
    ``keras.activations.get``, ``keras.initializers.get`` and so on).

    Args:
        layer: the layer whose attributes are set.
        who: the name used in error messages.
        implementation: one of ``IMPLEMENTATIONS``.
        activation: the activation.
        use_bias: whether the layer has a bias.
        kernel_initializer: the kernel initializer.
        bias_initializer: the bias initializer.
        kernel_regularizer: the kernel regularizer.
        bias_regularizer: the bias regularizer.
        kernel_constraint: the kernel constraint.
        bias_constraint: the bias constraint.
        seed: the seed (an int or ``None``).

    Raises:
        ValueError: when ``implementation`` is not one of ``IMPLEMENTATIONS``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{who}: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}."
        )
    layer.implementation = implementation
    layer.activation = keras.activations.get(activation)
    layer.use_bias = bool(use_bias)
    layer.kernel_initializer = keras.initializers.get(kernel_initializer)
    layer.bias_initializer = keras.initializers.get(bias_initializer)
    layer.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    layer.bias_regularizer = keras.regularizers.get(bias_regularizer)
    layer.kernel_constraint = keras.constraints.get(kernel_constraint)
    layer.bias_constraint = keras.constraints.get(bias_constraint)
    layer.seed = seed


def copied_layer_args(source, name: str | None = None) -> dict:
    """Constructor arguments copied from a ``Conv2D`` or ``Dense`` being replaced.

    Args:
        source: the layer being replaced.
        name: the new layer's name; ``None`` keeps the source's.

    Returns:
        A dict of keyword arguments: activation, bias, initializers, regularizers,
        constraints, name, dtype policy and trainability.
    """
    config = source.get_config()
    return {
        "activation": config["activation"],
        "use_bias": source.use_bias,
        "kernel_initializer": config["kernel_initializer"],
        "bias_initializer": config["bias_initializer"],
        "kernel_regularizer": config["kernel_regularizer"],
        "bias_regularizer": config["bias_regularizer"],
        "activity_regularizer": config.get("activity_regularizer"),
        "kernel_constraint": config["kernel_constraint"],
        "bias_constraint": config["bias_constraint"],
        "name": name or source.name,
        "dtype": source.dtype_policy,
        "trainable": source.trainable,
    }


def geometry_config(layer) -> dict:
    """The ``Conv2D`` geometry entries of a layer's config.

    Args:
        layer: a layer set up by ``conv_geometry``.

    Returns:
        A dict with ``filters``, ``kernel_size``, ``strides``, ``padding``, ``data_format``
        and ``dilation_rate``.
    """
    return {
        "filters": layer.filters,
        "kernel_size": layer.kernel_size,
        "strides": layer.strides,
        "padding": layer.padding,
        "data_format": layer.data_format,
        "dilation_rate": layer.dilation_rate,
    }


def weights_config(layer) -> dict:
    """The weight entries of a layer's config (shared by every layer of the package).

    Args:
        layer: a layer set up by ``set_weight_args``.

    Returns:
        A dict with the activation, bias, implementation, initializer, regularizer,
        constraint and seed entries, serialized.
    """
    ser = keras.saving.serialize_keras_object
    return {
        "activation": keras.activations.serialize(layer.activation)
        if layer.activation is not None
        else None,
        "use_bias": layer.use_bias,
        "implementation": layer.implementation,
        "kernel_initializer": ser(layer.kernel_initializer),
        "bias_initializer": ser(layer.bias_initializer),
        "kernel_regularizer": ser(layer.kernel_regularizer),
        "bias_regularizer": ser(layer.bias_regularizer),
        "activity_regularizer": ser(layer.activity_regularizer),
        "kernel_constraint": ser(layer.kernel_constraint),
        "bias_constraint": ser(layer.bias_constraint),
        "seed": layer.seed,
    }


def folded_conv2d(layer, kernel: np.ndarray, bias, name: str | None = None):
    """A built ``keras.layers.Conv2D`` holding a folded kernel and bias.

    Args:
        layer: the compressed layer whose geometry, activation, initializers, regularizers,
            constraints and dtype policy the new layer takes.
        kernel: the kernel ``(kh, kw, C, N)``.
        bias: the bias ``(N,)``, or ``None`` for no bias.
        name: the new layer's name; ``None`` keeps ``layer``'s.

    Returns:
        The built ``Conv2D``.
    """
    conv = keras.layers.Conv2D(
        filters=layer.filters,
        kernel_size=layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        activation=layer.activation,
        use_bias=bias is not None,
        kernel_initializer=layer.kernel_initializer,
        bias_initializer=layer.bias_initializer,
        kernel_regularizer=layer.kernel_regularizer,
        bias_regularizer=layer.bias_regularizer,
        kernel_constraint=layer.kernel_constraint,
        bias_constraint=layer.bias_constraint,
        name=name or layer.name,
        dtype=layer.dtype_policy,
    )
    conv.build((None, None, None, kernel.shape[2]))
    conv.kernel.assign(kernel)
    if bias is not None:
        conv.bias.assign(bias)
    return conv


def _same_pads(length, kernel: int, stride: int, dilation: int):
    """TensorFlow's ``"same"`` padding of one axis: ``(before, after)``; ``length`` may be a
    tensor (an unknown static dim)."""
    effective = (kernel - 1) * dilation + 1
    out = (length + stride - 1) // stride
    total = (out - 1) * stride + effective - length
    total = max(total, 0) if isinstance(total, int) else ops.maximum(total, 0)
    return total // 2, total - total // 2


def safe_depthwise_conv(inputs, kernel, strides, padding: str, dilation_rate=(1, 1)):
    """``keras.ops.depthwise_conv`` (channels-last) that runs on every backend's kernels.

    TensorFlow's non-oneDNN depthwise kernels (those a GPU build runs; on CPU,
    ``TF_ENABLE_ONEDNN_OPTS=0``) refuse unequal strides. Equal strides run the op as is.
    Unequal strides ``(sh, sw)`` (dilation is then 1: Keras forbids strides above 1 with
    dilation above 1) pad the input as ``"same"`` would for ``(sh, sw)``, run a ``"valid"``
    depthwise conv at the equal stride ``g = gcd(sh, sw)``, and keep every ``sh/g``-th row
    and ``sw/g``-th column: the output of the strided conv exactly (pad, depthwise and
    strided slice are LiteRT built-in ops).

    Args:
        inputs: a tensor ``(batch, H, W, C)``.
        kernel: the depthwise kernel ``(kh, kw, C, multiplier)``.
        strides: a pair of ints ``(sh, sw)``.
        padding: ``"valid"`` or ``"same"``.
        dilation_rate: a pair of ints ``(dh, dw)``.

    Returns:
        The tensor ``(batch, H_out, W_out, C*multiplier)``, as ``Conv2D`` computes
        ``H_out`` and ``W_out``.
    """
    sh, sw = (int(s) for s in strides)
    dilation_rate = tuple(int(d) for d in dilation_rate)
    if sh == sw:
        return ops.depthwise_conv(
            inputs,
            kernel,
            strides=(sh, sw),
            padding=padding,
            data_format="channels_last",
            dilation_rate=dilation_rate,
        )
    g = math.gcd(sh, sw)
    x = inputs
    if padding == "same":
        shape = ops.shape(inputs)
        kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
        pads = [
            (0, 0),
            _same_pads(shape[1], kh, sh, dilation_rate[0]),
            _same_pads(shape[2], kw, sw, dilation_rate[1]),
            (0, 0),
        ]
        x = ops.pad(x, pads)
    y = ops.depthwise_conv(
        x, kernel, strides=(g, g), padding="valid", data_format="channels_last", dilation_rate=1
    )
    return y[:, :: sh // g, :: sw // g, :]


def conv_output_hw(who: str, input_shape, kernel_size, strides, padding, dilation_rate):
    """Output height and width of a ``Conv2D`` geometry, raising where ``Conv2D`` raises.

    Args:
        who: the layer named in the error message.
        input_shape: ``(batch, H, W, C)``; ``H``/``W`` may be ``None``.
        kernel_size: ``(kh, kw)``.
        strides: ``(sh, sw)``.
        padding: ``"valid"`` or ``"same"``.
        dilation_rate: ``(dh, dw)``.

    Returns:
        ``(H_out, W_out)``, each an int or ``None`` where the input's is unknown.

    Raises:
        ValueError: when a known output size would be zero or negative (a ``"valid"``
            kernel larger than the input), as ``keras.layers.Conv2D`` raises.
    """
    out = tuple(
        conv_output_length(
            None if input_shape[1 + i] is None else int(input_shape[1 + i]),
            kernel_size[i],
            strides[i],
            padding,
            dilation_rate[i],
        )
        for i in range(2)
    )
    if any(o is not None and o <= 0 for o in out):
        raise ValueError(
            f"{who}: computed output size would be zero or negative. Received inputs "
            f"shape={tuple(input_shape)}, kernel_size={tuple(kernel_size)}, "
            f"dilation_rate={tuple(dilation_rate)}, strides={tuple(strides)}, "
            f"padding={padding}: the input is smaller than the (dilated) kernel; use "
            "padding='same' or a larger input (as keras.layers.Conv2D requires)."
        )
    return out


class CompressedLayer(CostedLayer, keras.layers.Layer):
    """The contract of every compressed layer: what the rest of the package may rely on.

    A compressed layer replaces one trained Keras layer, its *source* (``source_type``:
    ``keras.layers.Conv2D`` or ``keras.layers.Dense``), by a cheaper equivalent. Subclasses
    implement the methods that raise ``NotImplementedError`` here; the others have a
    generic implementation in terms of those.

    Rank selection (class attributes, read by ``compress``):

    - ``rank_selection = "spectrum"``: the rank is one int and ``spectrum(kernel)`` holds
      the energy that each extra rank keeps (``sum(s[:r]) / sum(s) = 1 - rel_err(r)**2``),
      so callers can choose ranks themselves (energy, effective rank, VBMF, budgets);
    - ``rank_selection = "layer"``: the rank is the layer's own business (pairs, lists, an
      ALS search); callers pass ``rank``/``energy`` through to ``from_source``.
      ``budget_spectrum = True`` says its ``spectrum`` (an int rank) is still a usable
      error proxy for whole-model budgets.

    Attributes:
        source_type: the Keras layer class this layer replaces (a class attribute).
        rank_selection: ``"spectrum"`` or ``"layer"`` (a class attribute, above).
        budget_spectrum: whether a ``"layer"`` method's ``spectrum`` is a usable error
            proxy for whole-model budgets (a class attribute).
        rank: the layer's rank (an int, or the method's own form).
        implementation: ``"auto"``, ``"factorized"`` or ``"dense"`` (what was asked).
    """

    source_type: ClassVar[type] = keras.layers.Conv2D
    rank_selection: ClassVar[str] = "spectrum"
    budget_spectrum: ClassVar[bool] = False
    # Data-aware conversion: the kinds of calibration statistics ``decompose_with_data`` uses
    # (``()``: the layer cannot use data; it decomposes its kernel). Kinds, all second
    # moments over the calibration inputs of the source layer:
    # "response": ``(N, N)`` Gram of the source's responses ``Y = conv(X, W)`` (no bias);
    # "taps": ``(C, kh*kw, kh*kw)`` per-input-channel patch moments;
    # "rows": ``(kh*C, kh*C)`` moments of the ``kh x 1`` vertical patches;
    # "channels": ``(C, C)`` moments of the input pixels.
    data_statistics: ClassVar[tuple[str, ...]] = ()
    # Whether ``set_output_projection`` can replace the last linear map of
    # ``inference_layers()`` (the closed-form refit of data-aware conversion).
    refittable_output: ClassVar[bool] = False

    @property
    def _who(self) -> str:
        return f"{type(self).__name__} '{self.name}'"

    # ---- from and to the source layer -----------------------------------------------------

    @classmethod
    def from_source(
        cls,
        source,
        rank=None,
        energy: float | None = None,
        implementation: str = "auto",
        name: str | None = None,
        statistics=None,
        **options,
    ):
        """Build the layer from a built source layer by decomposing its kernel.

        ``from_conv2d`` or ``from_dense`` by ``source_type``. With ``statistics`` (a
        mapping of the kinds in ``data_statistics`` to arrays, collected on calibration
        data), layers that can use them minimize the error of the source's *responses* on
        that data instead of the kernel's error, and ``energy`` is then the share of the
        response energy kept; layers with ``data_statistics == ()`` ignore them.

        Args:
            source: a built ``keras.layers.Conv2D`` (or ``Dense``) with trained weights.
            rank: the rank (the method's form); ``None`` with ``energy=None``: the full,
                exact rank (as good as the method can be).
            energy: instead of ``rank``, keep this share of the kernel's squared Frobenius
                norm (in ``(0, 1]``).
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).
            statistics: calibration statistics (see ``data_statistics``), or ``None``.
            **options: the method's own constructor options.

        Returns:
            The new, built layer; its bias, activation, geometry, regularizers and
            constraints are the source's. The source is not modified.

        Raises:
            ValueError: a bad argument or source layer, named with the fix.
        """
        make = cls.from_dense if cls.source_type is keras.layers.Dense else cls.from_conv2d
        if statistics is not None and cls.data_statistics:
            options["statistics"] = statistics
        return make(
            source, rank=rank, energy=energy, implementation=implementation, name=name, **options
        )

    @classmethod
    def from_conv2d(cls, conv, rank=None, energy=None, implementation="auto", name=None, **kw):
        """``from_source`` for a ``Conv2D`` source.

        Layers that replace ``Conv2D`` override this; here it only rejects the call.

        Args:
            conv: a built ``keras.layers.Conv2D`` with trained weights.
            rank: the rank (the method's form), or ``None``.
            energy: instead of ``rank``, the share of the kernel's squared Frobenius norm to
                keep, in ``(0, 1]``.
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).
            **kw: the method's own constructor options.

        Returns:
            The new, built layer (see ``from_source``).

        Raises:
            ValueError: when this layer does not replace ``Conv2D`` layers.
        """
        raise ValueError(f"{cls.__name__} replaces {cls.source_type.__name__} layers, not Conv2D.")

    @classmethod
    def from_dense(cls, dense, rank=None, energy=None, implementation="auto", name=None, **kw):
        """``from_source`` for a ``Dense`` source.

        Layers that replace ``Dense`` override this; here it only rejects the call.

        Args:
            dense: a built ``keras.layers.Dense`` with trained weights.
            rank: the rank (the method's form), or ``None``.
            energy: instead of ``rank``, the share of the kernel's squared Frobenius norm to
                keep, in ``(0, 1]``.
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).
            **kw: the method's own constructor options.

        Returns:
            The new, built layer (see ``from_source``).

        Raises:
            ValueError: when this layer does not replace ``Dense`` layers.
        """
        raise ValueError(f"{cls.__name__} replaces {cls.source_type.__name__} layers, not Dense.")

    def to_source(self, name: str | None = None):
        """The equivalent, built source layer (``to_conv2d`` or ``to_dense``).

        Args:
            name: the new layer's name; ``None`` keeps this layer's.

        Returns:
            A built ``keras.layers.Conv2D`` or ``keras.layers.Dense`` (``source_type``).

        Raises:
            ValueError: when the layer is not built.
        """
        if self.source_type is keras.layers.Dense:
            return self.to_dense(name)
        return self.to_conv2d(name)

    def to_conv2d(self, name: str | None = None) -> keras.layers.Conv2D:
        """The equivalent, built ``keras.layers.Conv2D`` (the factors folded into one kernel).

        Args:
            name: the new layer's name; ``None`` keeps this layer's.

        Returns:
            A built ``keras.layers.Conv2D`` with this layer's geometry, activation, bias,
            initializers, regularizers and constraints.

        Raises:
            ValueError: when the layer replaces another type or is not built.
        """
        if self.source_type is not keras.layers.Conv2D:
            raise ValueError(f"{self._who} replaces {self.source_type.__name__}; use to_source.")
        if not self.built:
            raise ValueError(f"{self._who}.to_conv2d: build the layer first.")
        kernel, bias = self.folded_kernel_and_bias()
        return folded_conv2d(self, kernel, bias, name)

    def to_dense(self, name: str | None = None) -> keras.layers.Dense:
        """The equivalent, built ``keras.layers.Dense`` (``Dense``-replacing layers only).

        Args:
            name: the new layer's name; ``None`` keeps this layer's.

        Returns:
            A built ``keras.layers.Dense``.

        Raises:
            ValueError: when the layer does not replace ``Dense`` layers (here, always).
        """
        raise ValueError(f"{self._who} replaces {self.source_type.__name__}; use to_source.")

    def folded_kernel_and_bias(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The equivalent source kernel and bias as NumPy arrays (inference semantics).

        Returns:
            A tuple ``(kernel, bias)``; ``bias`` is ``None`` without a bias.
        """
        raise NotImplementedError

    def relative_error(self, source) -> float:
        """Relative Frobenius error ``||W - W_r|| / ||W||`` of the folded kernel.

        Args:
            source: the layer with the reference kernel ``W`` (typically the replaced one).

        Returns:
            The relative error of this layer's folded kernel ``W_r`` as a float.
        """
        return dec.relative_error(
            ops.convert_to_numpy(source.kernel), self.folded_kernel_and_bias()[0]
        )

    # ---- ranks ------------------------------------------------------------------------------

    @classmethod
    def method_options(cls, **kwargs) -> dict:
        """The constructor options that change the decomposition.

        Args:
            **kwargs: constructor keyword arguments.

        Returns:
            The subset of ``kwargs`` (with defaults filled in) that ``spectrum``,
            ``rank_for`` and ``decompose`` take; empty for most methods.
        """
        return {}

    @classmethod
    def spectrum(cls, kernel: np.ndarray, **options) -> np.ndarray:
        """Energies (descending) that each additional rank keeps.

        Defined when ``rank_selection == "spectrum"`` (then
        ``sum(s[:r]) / sum(s) = 1 - rel_err(r)**2``), or as an error proxy when
        ``budget_spectrum``.

        Args:
            kernel: the source kernel (``(kh, kw, C, N)`` for a ``Conv2D``).
            **options: the method's options (``method_options``).

        Returns:
            A 1-D array of energies; its length is the full (exact) rank.

        Raises:
            NotImplementedError: when the method chooses its own ranks (no spectrum).
        """
        raise NotImplementedError(f"{cls.__name__} chooses its own ranks (no spectrum).")

    @classmethod
    def vbmf_matrices(cls, kernel: np.ndarray, **options) -> list[np.ndarray] | None:
        """The matrices whose empirical-VBMF ranks give ``rank="vbmf"``.

        The rank is the rounded-up mean of their VBMF ranks.

        Args:
            kernel: the source kernel.
            **options: the method's options (``method_options``).

        Returns:
            A list of 2-D arrays, or ``None`` when the method has no VBMF rule of that kind.
        """
        return None

    @classmethod
    def rank_for(cls, kernel: np.ndarray, rank=None, energy=None, statistics=None, **options):
        """The rank ``from_source`` uses.

        ``rank`` itself, or the smallest rank keeping ``energy`` (by ``spectrum``); with
        neither, the full (exact) rank.

        Args:
            kernel: the source kernel.
            rank: the rank, or ``None``.
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None`` (of the response energy with ``statistics``).
            statistics: calibration statistics (``data_statistics``), or ``None``.
            **options: the method's options (``method_options``).

        Returns:
            The rank (an int here; the method's form in subclasses).

        Raises:
            ValueError: when both ``rank`` and ``energy`` are given, or either is invalid.
        """
        name = cls.__name__
        check_rank_or_energy(name, rank, energy)
        if rank is not None:  # no SVD: build() checks the upper bound (max_rank)
            return check_rank(name, rank)
        if statistics is not None and cls.needed_statistics(**options):
            spectrum = cls.data_spectrum(kernel, statistics, **options)
        else:
            spectrum = cls.spectrum(kernel, **options)
        if energy is not None:
            return dec.energy_rank(spectrum, check_energy(name, energy))
        return int(len(spectrum))

    @classmethod
    def needed_statistics(cls, **options) -> tuple[str, ...]:
        """The kinds of calibration statistics ``decompose_with_data`` needs for these
        method options (a subset of ``data_statistics``; ``()``: none).

        Args:
            **options: the method's options.

        Returns:
            A tuple of kinds.
        """
        return cls.data_statistics

    @classmethod
    def decompose_with_data(cls, kernel: np.ndarray, rank, statistics, **options) -> dict:
        """Factors of a trained kernel at ``rank`` that minimize the response error on the
        calibration data summarized by ``statistics`` (layers with ``data_statistics``).

        Args:
            kernel: the source kernel.
            rank: the rank (the method's form).
            statistics: a mapping of the kinds in ``data_statistics`` to arrays.
            **options: the method's options.

        Returns:
            The factors by weight name.
        """
        raise NotImplementedError(f"{cls.__name__} cannot use calibration statistics.")

    @classmethod
    def data_spectrum(cls, kernel: np.ndarray, statistics, **options) -> np.ndarray:
        """Response energies (descending) that each extra rank keeps on the calibration
        data: ``sum(e[r:]) / sum(e)`` is the squared relative response error at rank ``r``.

        Args:
            kernel: the source kernel.
            statistics: a mapping of the kinds in ``data_statistics`` to arrays.
            **options: the method's options.

        Returns:
            A 1-D array of energies, descending.
        """
        raise NotImplementedError(f"{cls.__name__} cannot use calibration statistics.")

    def set_output_projection(self, kernel: np.ndarray, bias: np.ndarray | None) -> None:
        """Replace the last linear map of the layer (the kernel and bias of the last layer
        of ``inference_layers()``), keeping the other factors: the closed-form refit of
        data-aware conversion. Layers without it raise ``NotImplementedError``.

        Args:
            kernel: the new kernel, shaped like the last inference layer's.
            bias: the new bias ``(filters,)``, or ``None`` to keep the bias.
        """
        raise NotImplementedError(f"{type(self).__name__} has no refittable output map.")

    def max_rank(self, in_channels: int):
        """The largest meaningful rank for ``in_channels`` inputs.

        Args:
            in_channels: the number of input channels (input features for ``Dense``).

        Returns:
            The rank bound, in the method's form (an int, a pair or a list).
        """
        raise NotImplementedError

    # ---- running --------------------------------------------------------------------------

    # what ``call(..., training=True)`` runs, when a layer chooses it apart from inference
    _resolved_training_implementation: str | None = None

    @property
    def resolved_implementation(self) -> str | None:
        """``"factorized"`` or ``"dense"``: what ``call`` runs in inference (``None``
        before build)."""
        return self._resolved_implementation

    @property
    def resolved_training_implementation(self) -> str | None:
        """``"factorized"`` or ``"dense"``: what ``call(..., training=True)`` (``fit``)
        runs; the inference choice for layers that do not choose apart (``None`` before
        build)."""
        if self._resolved_training_implementation is not None:
            return self._resolved_training_implementation
        return self._resolved_implementation

    def inference_layers(self) -> list[keras.layers.Layer] | None:
        """Equivalent built plain-Keras layers for inference export.

        Returns:
            A list of built layers to run in sequence, or ``None`` when the layer has no
            such arrangement (the export then runs the layer itself with
            ``implementation="factorized"``, or its folded source layer).
        """
        return None


class FactorizedConv2D(CompressedLayer):
    """Base class of the factorized ``Conv2D`` replacements (not used directly).

    Arguments mirror ``keras.layers.Conv2D`` (channels-last, ``groups=1``) plus ``rank`` and
    ``implementation``. A subclass keeps only its own maths: ``factor_shapes``,
    ``kernel_from_factors``, ``factorized_call``, ``op_macs``, ``decompose``, ``max_rank``
    and ``spectrum``.

    ``kernel_initializer`` is the initializer of the equivalent full kernel: ``build`` draws
    a kernel from it and initializes the factors by the layer's own rank-``rank``
    decomposition, rescaled so the rebuilt kernel keeps the drawn kernel's norm (and so its
    variance). ``kernel_regularizer`` and ``kernel_constraint`` apply to every trainable
    factor.

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: the rank of the factorization (a positive int; some subclasses also take a
            pair or a list), at most ``max_rank(C)``.
        strides: int or pair of ints; strides above 1 cannot be combined with a
            ``dilation_rate`` above 1.
        padding: ``"valid"`` or ``"same"``.
        data_format: ``"channels_last"`` or ``None`` (``keras.config.image_data_format()``,
            which must then be ``"channels_last"``); channels-first is not supported.
        dilation_rate: int or pair of ints.
        activation: activation applied after the bias (``None``: linear).
        use_bias: whether the layer adds a bias of shape ``(filters,)``.
        implementation: what ``call`` runs:

            - ``"factorized"`` runs the cheap factor ops;
            - ``"dense"`` rebuilds the full kernel from the factors and runs one ``conv``
              (same result, the dense conv's speed, the factors' parameter count);
            - ``"auto"`` picks per layer, at build time, from cost models of the ops in
              TensorFlow on CPU, twice: for inference (``OP_TIME_PER_MAC``, the forward
              time) factorized when its estimate is below ``AUTO_FACTORIZED_THRESHOLD``
              (0.9) of the dense path's; for training (``call(..., training=True)``, as
              ``fit`` runs it; ``OP_TIME_PER_MAC_TRAINING``, forward + backward)
              factorized when below ``AUTO_TRAINING_THRESHOLD`` (0.7). Both paths
              compute the same function of the same weights.
        training_implementation: what ``call(..., training=True)`` (``fit``) runs:
            ``None`` (default) follows ``implementation`` (for ``"auto"``, the training
            cost model above); ``"factorized"`` or ``"dense"`` fixes it, e.g. to a choice
            measured on the machine that trains (``training.tune_implementations``).
        kernel_initializer: initializer of the equivalent full kernel (see above).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of every trainable factor.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the layer's output.
        kernel_constraint: constraint of every trainable factor.
        bias_constraint: constraint of the bias.
        seed: int or ``None``, the seed of the layer's ``SeedGenerator`` (random draws of
            from-scratch factors).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``,
            ``trainable``).

    Input shape:
        4D tensor ``(batch, H, W, C)``; ``C`` must be known.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``, as ``keras.layers.Conv2D`` computes it.

    Raises:
        ValueError: when an argument is invalid (the message names the layer and the fix).
    """

    # name of the factor that scales the rebuilt kernel linearly (used to keep its norm)
    _scale_factor: str = ""
    # False when the "factorized" call is itself the dense conv of the rebuilt kernel (one
    # training path only: training.tune_implementations has nothing to choose)
    _factor_ops: bool = True
    # name of the factor that is the kernel of the last layer of inference_layers() (what
    # set_output_projection replaces; "" when there is none)
    _output_factor: str = ""

    def set_output_projection(self, kernel, bias) -> None:
        """Set the factor ``_output_factor`` (the kernel of the last inference layer) and,
        when given, the bias.

        Args:
            kernel: the new kernel, shaped like the last inference layer's.
            bias: the new bias ``(filters,)``, or ``None`` to keep the bias.
        """
        if not self._output_factor:
            super().set_output_projection(kernel, bias)
        self.set_factors({self._output_factor: np.asarray(kernel)})
        if bias is not None and self.use_bias:
            self.bias.assign(np.asarray(bias, np.float32))

    def __init__(
        self,
        filters: int,
        kernel_size,
        rank: int,
        strides=(1, 1),
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate=(1, 1),
        activation=None,
        use_bias: bool = True,
        implementation: str = "auto",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed: int | None = None,
        training_implementation: str | None = None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        who = f"{type(self).__name__} '{self.name}'"
        if training_implementation not in (None, "factorized", "dense"):
            raise ValueError(
                f"{who}: training_implementation must be None (follow implementation), "
                f"'factorized' or 'dense', got {training_implementation!r}."
            )
        self.training_implementation = training_implementation
        conv_geometry(self, who, filters, kernel_size, strides, padding, data_format, dilation_rate)
        self.rank = self.validate_rank(rank)
        set_weight_args(
            self,
            who,
            implementation,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
            seed,
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self._resolved_implementation: str | None = None
        self._factors_from_kernel = False

    # ---- what subclasses provide (besides max_rank and spectrum) -------------------------

    def validate_rank(self, rank, in_channels: int | None = None):
        """Check ``rank``, against ``max_rank`` once ``in_channels`` is known.

        Layers whose rank is not one int (Tucker-2 pairs, TT-rank lists) override this.

        Args:
            rank: the rank to check.
            in_channels: the number of input channels, or ``None`` before build.

        Returns:
            The validated rank.

        Raises:
            ValueError: when the rank is invalid or above ``max_rank(in_channels)``.
        """
        bound = None if in_channels is None else self.max_rank(in_channels)
        return check_rank(self._who, rank, bound)

    def factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the factors, by weight name.

        Args:
            in_channels: the number ``C`` of input channels.

        Returns:
            A dict ``{weight name: shape tuple}``, in creation order.
        """
        raise NotImplementedError

    def kernel_from_factors(self, factors: dict[str, Any]):
        """Rebuild the ``(kh, kw, C, N)`` kernel from the factors (with ``keras.ops``).

        Args:
            factors: a dict ``{weight name: tensor}`` (as ``factors()`` returns).

        Returns:
            The kernel tensor ``(kh, kw, C, N)``.
        """
        raise NotImplementedError

    def factorized_call(self, inputs):
        """The factorized forward, without bias and activation.

        ``call`` also passes ``training=``; subclasses accept it (BasisConv's BatchNorm
        uses it).

        Args:
            inputs: a tensor ``(batch, H, W, C)``.

        Returns:
            The tensor ``(batch, H_out, W_out, filters)``.
        """
        raise NotImplementedError

    def op_macs(self, input_shape) -> list[tuple[str, int]]:
        """MACs of each factor op for one image.

        Args:
            input_shape: ``(batch, H, W, C)`` with known spatial dims (batch ignored).

        Returns:
            A list of ``(op kind, macs)`` pairs; kinds are keys of ``OP_TIME_PER_MAC``
            (``"conv"``, ``"pointwise"``, ``"depthwise"``, and ``"depthwise_multiplier"`` for
            a depthwise conv with ``depth_multiplier > 1``).
        """
        raise NotImplementedError

    def training_op_macs(self, input_shape) -> list[tuple[str, int]]:
        """MACs of each op the factorized path runs when training (``call(...,
        training=True)``), for one image: ``op_macs`` unless the layer trains through
        other ops (DeCEF: a multiplier-1 depthwise conv on the tiled input).

        Args:
            input_shape: ``(batch, H, W, C)`` with known spatial dims (batch ignored).

        Returns:
            A list of ``(op kind, macs)`` pairs, as ``op_macs``.
        """
        return self.op_macs(input_shape)

    @classmethod
    def decompose(cls, kernel: np.ndarray, rank: int, **options) -> dict[str, np.ndarray]:
        """Factors of a trained kernel at ``rank``.

        Args:
            kernel: the kernel ``(kh, kw, C, N)`` (float64).
            rank: the rank, in the method's form.
            **options: the method's options (``method_options``).

        Returns:
            A dict ``{weight name: np.ndarray}`` with the shapes of ``factor_shapes``.
        """
        raise NotImplementedError

    # ---- Keras plumbing ----------------------------------------------------------------

    def _factor_trainable(self, name: str) -> bool:
        return True

    def _factor_regularizer(self, name: str):
        return self.kernel_regularizer

    def _factor_constraint(self, name: str):
        return self.kernel_constraint

    def build(self, input_shape):
        c = input_shape[-1]
        if c is None:
            raise ValueError(f"{self._who}: the channel axis of the input must be known.")
        c = int(c)
        self.validate_rank(self.rank, c)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: c})
        self._factor_names = []
        for name, shape in self.factor_shapes(c).items():
            trainable = self._factor_trainable(name)
            w = self.add_weight(
                name=name,
                shape=shape,
                initializer="zeros",
                regularizer=self._factor_regularizer(name) if trainable else None,
                constraint=self._factor_constraint(name) if trainable else None,
                trainable=trainable,
            )
            setattr(self, name, w)
            self._factor_names.append(name)
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self._build_extra(c)
        if not self._factors_from_kernel:  # from_conv2d sets them itself
            self._initialize_factors(c)
        self.resolve_implementations(input_shape)

    def _build_extra(self, in_channels: int) -> None:
        """Hook for sub-layers (BasisConv's BatchNorm)."""

    def _initialize_factors(self, in_channels: int) -> None:
        kh, kw = self.kernel_size
        shape = (kh, kw, in_channels, self.filters)
        # eager even when built inside a symbolic call (a subclassed model's build): the
        # drawn kernel is decomposed in NumPy
        with graph.eager_scope():
            drawn = np.asarray(
                ops.convert_to_numpy(self.kernel_initializer(shape, dtype="float32")), np.float64
            )
            factors = self.initial_factors(drawn)
            if self._scale_factor:
                rebuilt = ops.convert_to_numpy(self.kernel_from_factors(factors))
                norm = np.linalg.norm(rebuilt)
                if norm > 0:
                    factors[self._scale_factor] = factors[self._scale_factor] * (
                        np.linalg.norm(drawn) / norm
                    )
            self.set_factors(factors)

    def initial_factors(self, drawn_kernel: np.ndarray) -> dict[str, np.ndarray]:
        """From-scratch factors: the rank-``rank`` decomposition of a drawn kernel.

        Args:
            drawn_kernel: a kernel ``(kh, kw, C, N)`` drawn from ``kernel_initializer``.

        Returns:
            A dict ``{weight name: np.ndarray}``.
        """
        return self.decompose(drawn_kernel, self.rank, **self.method_options(**self.get_config()))

    def out_hw(self, input_shape) -> tuple[int, int]:
        """Output height and width.

        Args:
            input_shape: ``(batch, H, W, C)`` with known ``H`` and ``W``.

        Returns:
            ``(H_out, W_out)`` as ints.
        """
        out = self.compute_output_shape(tuple(input_shape))
        return int(out[1]), int(out[2])

    def set_factors(self, factors: dict[str, np.ndarray]) -> None:
        """Assign factor values, checking their shapes.

        Args:
            factors: a dict ``{weight name: array}``.

        Raises:
            ValueError: when a value's shape differs from its weight's.
        """
        for name, value in factors.items():
            var = getattr(self, name)
            value = np.asarray(value)
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"{self._who}: factor '{name}' has shape {tuple(var.shape)}, got {value.shape}."
                )
            var.assign(value.astype(var.dtype))

    def factors(self) -> dict[str, Any]:
        """The factor weights of the built layer, as a dict ``{weight name: variable}``."""
        return {name: getattr(self, name) for name in self._factor_names}

    def resolve_implementations(self, input_shape) -> None:
        """Choose what ``call`` runs in inference and in training (``implementation``).

        Called by ``build``; call it again after changing the rank in place.

        Args:
            input_shape: ``(batch, H, W, C)``; unknown spatial dims count as 56x56.
        """
        self._resolved_implementation = self._resolve_implementation(input_shape)
        self._resolved_training_implementation = self._resolve_implementation(
            input_shape, training=True
        )

    def implementation_for(self, input_shape, training: bool = False) -> str:
        """What ``call`` would run on ``input_shape`` (the layer need not be built).

        Args:
            input_shape: ``(batch, H, W, C)``; unknown spatial dims count as 56x56.
            training: the path of ``call(..., training=True)`` (``fit``) instead of
                inference.

        Returns:
            ``"factorized"`` or ``"dense"``.
        """
        return self._resolve_implementation(input_shape, training)

    def _resolve_implementation(self, input_shape, training: bool = False) -> str:
        if training and self.training_implementation is not None:
            return self.training_implementation
        if self.implementation != "auto":
            return self.implementation
        # Unknown spatial dims: a nominal 56x56 (the ratio barely depends on it).
        shape = (None, input_shape[1] or 56, input_shape[2] or 56, int(input_shape[-1]))
        if training:
            ratio, threshold = self.training_time_ratio_estimate(shape), AUTO_TRAINING_THRESHOLD
        else:
            ratio, threshold = self.time_ratio_estimate(shape), AUTO_FACTORIZED_THRESHOLD
        return "factorized" if ratio < threshold else "dense"

    def dense_macs(self, input_shape) -> int:
        """MACs of the equivalent dense ``Conv2D``.

        Args:
            input_shape: ``(batch, H, W, C)`` with known spatial dims.

        Returns:
            ``H_out*W_out*kh*kw*C*N``.
        """
        out = self.compute_output_shape(input_shape)
        return int(
            out[1] * out[2] * math.prod(self.kernel_size) * int(input_shape[-1]) * self.filters
        )

    def rebuild_macs(self, in_channels: int) -> int:
        """MACs of ``kernel_from_factors`` (paid once per call by ``"dense"``).

        Args:
            in_channels: the number ``C`` of input channels.

        Returns:
            The MACs as an int (``kh*kw*C*N*rank`` unless a subclass counts otherwise).
        """
        return math.prod(self.kernel_size) * in_channels * self.filters * self.rank

    def time_ratio_estimate(self, input_shape) -> float:
        """Cost-model estimate of factorized time / ``"dense"`` time for one image.

        Factorized: the ops' MACs weighted by ``OP_TIME_PER_MAC``. Dense: the dense conv's
        MACs plus rebuilding the kernel, which is paid per call (per batch), so batch 1 is
        the conservative case for inference.

        Args:
            input_shape: ``(batch, H, W, C)`` with known spatial dims.

        Returns:
            The ratio as a float (below 1: the factorized form is estimated faster).
        """
        est = sum(OP_TIME_PER_MAC[kind] * m for kind, m in self.op_macs(input_shape))
        dense = self.dense_macs(input_shape) + self.rebuild_macs(int(input_shape[-1]))
        return est / max(dense, 1)

    def training_time_ratio_estimate(self, input_shape, batch: int = TRAINING_BATCH) -> float:
        """Cost-model estimate of factorized / ``"dense"`` time of a training step.

        Forward + backward (gradients of the input and of every factor), per image, in
        units of one dense-conv MAC's forward + backward: the ops' MACs weighted by
        ``OP_TIME_PER_MAC_TRAINING`` (fitted to layers timed as a training step in
        TensorFlow on CPU, 8x8 to 56x56, 16 to 256 channels, batch 8 and 128: a 1x1 conv
        MAC costs 2, a depthwise MAC 4, a depthwise MAC with ``depth_multiplier > 1`` 15,
        because its backward kernels are slow). The dense path pays the conv's MACs plus
        the kernel rebuild and its backward once per step, ``rebuild_macs / batch`` per
        image.

        Args:
            input_shape: ``(batch, H, W, C)`` with known spatial dims.
            batch: The batch size the rebuild is spread over.

        Returns:
            The ratio as a float (below 1: the factorized form is estimated faster).
        """
        est = sum(
            OP_TIME_PER_MAC_TRAINING[kind] * m for kind, m in self.training_op_macs(input_shape)
        )
        rebuild = self.rebuild_macs(int(input_shape[-1])) / max(int(batch), 1)
        return est / max(self.dense_macs(input_shape) + rebuild, 1)

    def full_kernel(self):
        """The equivalent ``(kh, kw, C, N)`` kernel as a tensor."""
        return self.kernel_from_factors(self.factors())

    def _conv(self, x, kernel, strides=None, dilation_rate=None):
        return ops.conv(
            x,
            kernel,
            strides=strides or self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=dilation_rate or self.dilation_rate,
        )

    def call(self, inputs, training=None):
        conv_output_hw(  # static check: a too-small "valid" input raises as in Conv2D
            self._who,
            tuple(inputs.shape),
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation_rate,
        )
        # fit (training=True) runs the path chosen for the training step; both compute the
        # same function of the same weights
        impl = (
            self.resolved_training_implementation
            if training is True
            else self._resolved_implementation
        )
        if impl == "dense":
            outputs = self._conv(inputs, self.full_kernel())
        else:
            outputs = self.factorized_call(inputs, training=training)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        h, w = conv_output_hw(
            self._who,
            tuple(input_shape),
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation_rate,
        )
        return (input_shape[0], h, w, self.filters)

    # ---- costs -------------------------------------------------------------------------

    def param_counts(self, in_channels: int) -> tuple[int, int]:
        """Parameter counts for ``in_channels`` inputs.

        Args:
            in_channels: the number ``C`` of input channels.

        Returns:
            ``(learned, fixed)``: trainable weights (bias included) and stored,
            non-trainable ones.
        """
        learned = sum(
            math.prod(s)
            for n, s in self.factor_shapes(in_channels).items()
            if self._factor_trainable(n)
        )
        fixed = sum(
            math.prod(s)
            for n, s in self.factor_shapes(in_channels).items()
            if not self._factor_trainable(n)
        )
        return learned + (self.filters if self.use_bias else 0), fixed

    def cost(self, input_shape) -> Cost:
        """Parameters and MACs of one call on ``input_shape``.

        MACs are those of the factorized form (the method's arithmetic), whatever
        ``implementation`` runs.

        Args:
            input_shape: ``(H, W, C)`` or ``(batch, H, W, C)``, known spatial dims.

        Returns:
            The layer's ``Cost`` (learned and fixed parameters, MACs).

        Raises:
            ValueError: when ``input_shape`` is not ``(H, W, C)`` or ``(batch, H, W, C)``
                of positive ints, or the spatial dims are unknown.
        """
        shape = _cost_input_shape(self._who, input_shape)
        c = shape[-1]
        out = self.compute_output_shape(shape)
        if out[1] is None or out[2] is None:
            raise ValueError(f"{self._who}.cost needs known spatial dims, got {shape}.")
        learned, fixed = self.param_counts(c)
        macs = sum(m for _, m in self.op_macs(shape))
        return Cost(int(learned), int(fixed), int(macs))

    # ---- from and to Conv2D ------------------------------------------------------------

    @classmethod
    def from_conv2d(
        cls,
        conv,
        rank: int | None = None,
        energy: float | None = None,
        implementation: str = "auto",
        name: str | None = None,
        statistics=None,
        **kwargs,
    ):
        """Build this layer from a built ``Conv2D`` by decomposing its kernel.

        ``rank`` fixes the rank; ``energy`` picks the smallest rank keeping that share of
        the kernel's squared Frobenius norm; neither gives the exact, full-rank layer. The
        bias, activation, strides, padding, dilation, regularizers and constraints are
        copied; ``conv`` is not modified.

        Args:
            conv: a built, channels-last, ungrouped ``keras.layers.Conv2D``.
            rank: the rank, or ``None``.
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None``.
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).
            statistics: calibration statistics (``data_statistics``): decompose to minimize
                the response error on that data (``decompose_with_data``), or ``None``.
            **kwargs: the method's constructor options (e.g. ``decomposition`` for
                ``SVDConv2D``).

        Returns:
            The new, built layer.

        Raises:
            ValueError: when ``conv`` is not a valid source, both ``rank`` and ``energy``
                are given, or an argument is invalid.
        """
        kernel = check_conv2d(conv, cls.__name__)
        options = cls.method_options(**kwargs)
        if not cls.needed_statistics(**options):
            statistics = None
        r = cls.rank_for(kernel, rank=rank, energy=energy, statistics=statistics, **options)
        layer = cls(
            filters=conv.filters,
            kernel_size=conv.kernel_size,
            rank=r,
            strides=conv.strides,
            padding=conv.padding,
            dilation_rate=conv.dilation_rate,
            implementation=implementation,
            **copied_layer_args(conv, name),
            **kwargs,
        )
        layer._factors_from_kernel = True  # skip the random init: decompose() sets every factor
        layer.build((None, None, None, kernel.shape[2]))
        if statistics is not None:
            layer.set_factors(cls.decompose_with_data(kernel, r, statistics, **options))
        else:
            layer.set_factors(cls.decompose(kernel, r, **options))
        if conv.use_bias:
            layer.bias.assign(ops.convert_to_numpy(conv.bias))
        return layer

    def folded_kernel_and_bias(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The equivalent dense kernel and bias as NumPy arrays (inference semantics).

        Returns:
            A tuple ``(kernel (kh, kw, C, N), bias (N,) or None)``.
        """
        kernel = ops.convert_to_numpy(self.full_kernel())
        bias = ops.convert_to_numpy(self.bias) if self.use_bias else None
        return kernel, bias

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(geometry_config(self))
        config["rank"] = self.rank
        config.update(weights_config(self))
        config["training_implementation"] = self.training_implementation
        return config
