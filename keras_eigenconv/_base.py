"""The base of every factorized convolution: arguments, shapes, init, folding, costs.

A subclass keeps only its own maths: the shapes of its factors, how to rebuild the full
``(kh, kw, C, N)`` kernel from them, its factorized forward, its decomposition of a trained
kernel, and its cost per output pixel.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from . import decompositions as dec
from .cost import Cost, conv_output_length

IMPLEMENTATIONS = ("auto", "factorized", "dense")

# Relative time per MAC of the primitive ops in TensorFlow on CPU (oneDNN), fitted to
# benchmarks/layers.py on the reference machine (2 cores): a depthwise conv with
# depth_multiplier > 1 costs about 10 dense-conv MACs per MAC (DeCEF at rank 5 is slower
# than the dense conv at 56x56x64 and 28x28x128, faster at 14x14x256 and 7x7x512).
# LiteRT export re-chooses per layer by measurement (keras_eigenconv.inference).
OP_TIME_PER_MAC = {"conv": 1.0, "pointwise": 1.0, "depthwise": 10.0}
# "auto" keeps the factorized form only when its estimated time is below this share of the
# dense path's (each extra op also costs a memory round trip of its activations).
AUTO_FACTORIZED_THRESHOLD = 0.9


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
    """Validate a rank: a positive int, at most ``max_rank`` when known."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"{layer}: rank must be a positive int, got {rank!r}.")
    if rank < 1 or (max_rank is not None and rank > max_rank):
        bound = f"[1, {max_rank}]" if max_rank is not None else ">= 1"
        raise ValueError(
            f"{layer}: rank={rank} is outside {bound}. Pass a rank in that range, or "
            "energy=... to choose it from the spectrum."
        )
    return int(rank)


def check_conv2d(conv, layer: str) -> np.ndarray:
    """Check that ``conv`` is a built, channels-last, ungrouped ``Conv2D`` with finite weights.

    Returns its kernel as a float64 array.
    """
    if not isinstance(conv, keras.layers.Conv2D):
        raise ValueError(
            f"{layer}.from_conv2d needs a keras.layers.Conv2D, got {type(conv).__name__} "
            f"'{getattr(conv, 'name', '?')}'."
        )
    if not conv.built:
        raise ValueError(
            f"{layer}.from_conv2d: Conv2D '{conv.name}' is not built, so it has no weights. "
            "Build it first (call it on an input or conv.build(input_shape))."
        )
    if conv.data_format != "channels_last":
        raise ValueError(
            f"{layer}.from_conv2d: Conv2D '{conv.name}' uses data_format='channels_first'; "
            "only channels_last is supported. Rebuild the model with channels_last."
        )
    if getattr(conv, "groups", 1) != 1:
        raise ValueError(
            f"{layer}.from_conv2d: Conv2D '{conv.name}' has groups={conv.groups}; only "
            "groups=1 is supported. Leave grouped convolutions as they are."
        )
    kernel = np.asarray(ops.convert_to_numpy(conv.kernel), dtype=np.float64)
    if not np.all(np.isfinite(kernel)):
        raise ValueError(
            f"{layer}.from_conv2d: the kernel of Conv2D '{conv.name}' contains NaN or Inf. "
            "Fix the trained weights before decomposing them."
        )
    if conv.use_bias and not np.all(np.isfinite(ops.convert_to_numpy(conv.bias))):
        raise ValueError(
            f"{layer}.from_conv2d: the bias of Conv2D '{conv.name}' contains NaN or Inf."
        )
    return kernel


def conv_geometry(
    layer, who: str, filters, kernel_size, strides, padding, data_format, dilation_rate
) -> None:
    """Validate ``Conv2D``-style geometry arguments and set them on ``layer``."""
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
    """Validate ``implementation`` and set the activation, bias, initializer, regularizer,
    constraint and seed attributes every layer of the package shares."""
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
    """Constructor arguments copied from a ``Conv2D`` or ``Dense`` being replaced: activation,
    bias, initializers, regularizers, constraints, name, dtype policy and trainability."""
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
    """The ``Conv2D`` geometry entries of a layer's config."""
    return {
        "filters": layer.filters,
        "kernel_size": layer.kernel_size,
        "strides": layer.strides,
        "padding": layer.padding,
        "data_format": layer.data_format,
        "dilation_rate": layer.dilation_rate,
    }


def weights_config(layer) -> dict:
    """The activation, bias, implementation, initializer, regularizer, constraint and seed
    entries of a layer's config (shared by every layer of the package)."""
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
    """A built ``keras.layers.Conv2D`` with ``layer``'s geometry, activation, initializers,
    regularizers and constraints, holding ``kernel`` and ``bias``."""
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


class FactorizedConv2D(keras.layers.Layer):
    """Base class of the factorized ``Conv2D`` replacements (not used directly).

    Arguments mirror ``keras.layers.Conv2D`` (channels-last, ``groups=1``) plus ``rank`` and
    ``implementation``:

    - ``"factorized"`` runs the cheap factor ops;
    - ``"dense"`` rebuilds the full kernel from the factors and runs one ``conv`` (same
      result, the dense conv's speed, the factors' parameter count);
    - ``"auto"`` picks per layer, at build time, from a cost model of the ops on CPU
      runtimes (``OP_TIME_PER_MAC``).

    ``kernel_initializer`` is the initializer of the equivalent full kernel: ``build`` draws
    a kernel from it and initializes the factors by the layer's own rank-``rank``
    decomposition, rescaled so the rebuilt kernel keeps the drawn kernel's norm (and so its
    variance). ``kernel_regularizer`` and ``kernel_constraint`` apply to every trainable
    factor.
    """

    # name of the factor that scales the rebuilt kernel linearly (used to keep its norm)
    _scale_factor: str = ""

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
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        who = f"{type(self).__name__} '{self.name}'"
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

    # ---- what subclasses provide -------------------------------------------------------

    def max_rank(self, in_channels: int) -> int:
        """Largest meaningful rank for ``in_channels`` inputs."""
        raise NotImplementedError

    def validate_rank(self, rank, in_channels: int | None = None):
        """Check ``rank`` (against ``max_rank`` once ``in_channels`` is known); return it.

        Layers whose rank is not one int (Tucker-2 pairs, TT-rank lists) override this.
        """
        bound = None if in_channels is None else self.max_rank(in_channels)
        return check_rank(self._who, rank, bound)

    def factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the trainable factors, by weight name."""
        raise NotImplementedError

    def kernel_from_factors(self, factors: dict[str, Any]):
        """Rebuild the ``(kh, kw, C, N)`` kernel (``keras.ops``) from the factors."""
        raise NotImplementedError

    def factorized_call(self, inputs):
        """The factorized forward, without bias and activation."""
        raise NotImplementedError

    def op_macs(self, input_shape) -> list[tuple[str, int]]:
        """MACs of each factor op on ``(batch, H, W, C)`` inputs (batch ignored), as
        ``(op kind, macs)`` pairs; kinds are keys of ``OP_TIME_PER_MAC``."""
        raise NotImplementedError

    @classmethod
    def spectrum(cls, kernel: np.ndarray, **options) -> np.ndarray:
        """Energies (descending) that each additional rank keeps; see ``decompositions``."""
        raise NotImplementedError

    @classmethod
    def decompose(cls, kernel: np.ndarray, rank: int, **options) -> dict[str, np.ndarray]:
        """Factors of a trained kernel at ``rank``, by weight name."""
        raise NotImplementedError

    @classmethod
    def method_options(cls, **kwargs) -> dict:
        """The subclass's own constructor options that change the decomposition."""
        return {}

    # ---- Keras plumbing ----------------------------------------------------------------

    @property
    def _who(self) -> str:
        return f"{type(self).__name__} '{self.name}'"

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
        if not getattr(self, "_factors_from_kernel", False):  # from_conv2d sets them itself
            self._initialize_factors(c)
        self._resolved_implementation = self._resolve_implementation(input_shape)

    def _build_extra(self, in_channels: int) -> None:
        """Hook for sub-layers (BasisConv's BatchNorm)."""

    def _initialize_factors(self, in_channels: int) -> None:
        kh, kw = self.kernel_size
        shape = (kh, kw, in_channels, self.filters)
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
        """From-scratch factors: the rank-``rank`` decomposition of a drawn kernel."""
        return self.decompose(drawn_kernel, self.rank, **self.method_options(**self.get_config()))

    def out_hw(self, input_shape) -> tuple[int, int]:
        """Output height and width (known spatial dims required)."""
        out = self.compute_output_shape(tuple(input_shape))
        return int(out[1]), int(out[2])

    def set_factors(self, factors: dict[str, np.ndarray]) -> None:
        """Assign factor values (by weight name), checking shapes."""
        for name, value in factors.items():
            var = getattr(self, name)
            value = np.asarray(value)
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"{self._who}: factor '{name}' has shape {tuple(var.shape)}, got {value.shape}."
                )
            var.assign(value.astype(var.dtype))

    def factors(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._factor_names}

    @property
    def resolved_implementation(self) -> str | None:
        """``"factorized"`` or ``"dense"``: what ``call`` runs (``None`` before build)."""
        return self._resolved_implementation

    def _resolve_implementation(self, input_shape) -> str:
        if self.implementation != "auto":
            return self.implementation
        # Unknown spatial dims: a nominal 56x56 (the ratio barely depends on it).
        shape = (None, input_shape[1] or 56, input_shape[2] or 56, int(input_shape[-1]))
        return (
            "factorized" if self.time_ratio_estimate(shape) < AUTO_FACTORIZED_THRESHOLD else "dense"
        )

    def dense_macs(self, input_shape) -> int:
        """MACs of the equivalent dense ``Conv2D`` on ``input_shape``."""
        out = self.compute_output_shape(input_shape)
        return int(
            out[1] * out[2] * math.prod(self.kernel_size) * int(input_shape[-1]) * self.filters
        )

    def rebuild_macs(self, in_channels: int) -> int:
        """MACs of ``kernel_from_factors`` (paid once per call by ``"dense"``)."""
        return math.prod(self.kernel_size) * in_channels * self.filters * self.rank

    def time_ratio_estimate(self, input_shape) -> float:
        """Cost-model estimate of factorized time / ``"dense"`` time for one image.

        Factorized: the ops' MACs weighted by ``OP_TIME_PER_MAC``. Dense: the dense conv's
        MACs plus rebuilding the kernel, which is paid per call (per batch), so batch 1 is
        the conservative case for inference.
        """
        est = sum(OP_TIME_PER_MAC[kind] * m for kind, m in self.op_macs(input_shape))
        dense = self.dense_macs(input_shape) + self.rebuild_macs(int(input_shape[-1]))
        return est / max(dense, 1)

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
        if self._resolved_implementation == "dense":
            outputs = self._conv(inputs, self.full_kernel())
        else:
            outputs = self.factorized_call(inputs, training=training)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        return (
            b,
            conv_output_length(h, kh, sh, self.padding, dh),
            conv_output_length(w, kw, sw, self.padding, dw),
            self.filters,
        )

    # ---- costs -------------------------------------------------------------------------

    def param_counts(self, in_channels: int) -> tuple[int, int]:
        """``(learned, fixed)`` parameter counts for ``in_channels`` inputs."""
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
        """Parameters and MACs of one call on ``input_shape`` (``(H, W, C)`` or with batch).

        MACs are those of the factorized form (the method's arithmetic), whatever
        ``implementation`` runs; spatial dims must be known.
        """
        shape = tuple(input_shape)
        if len(shape) == 3:
            shape = (None, *shape)
        c = int(shape[-1])
        out = self.compute_output_shape(shape)
        if out[1] is None or out[2] is None:
            raise ValueError(f"{self._who}.cost needs known spatial dims, got {shape}.")
        learned, fixed = self.param_counts(c)
        macs = sum(m for _, m in self.op_macs(shape))
        return Cost(int(learned), int(fixed), int(macs))

    # ---- from and to Conv2D ------------------------------------------------------------

    @classmethod
    def rank_for(cls, kernel, rank=None, energy=None, **options) -> int:
        """The rank ``from_conv2d`` uses: ``rank``, or the smallest keeping ``energy``.

        With neither, the full (exact) rank.
        """
        name = cls.__name__
        if rank is not None and energy is not None:
            raise ValueError(f"{name}: pass rank or energy, not both.")
        if energy is not None:
            if isinstance(energy, bool) or not (0.0 < float(energy) <= 1.0):
                raise ValueError(
                    f"{name}: energy={energy!r} must be in (0, 1], the share of the kernel's "
                    "squared Frobenius norm to keep (e.g. 0.9)."
                )
            return dec.energy_rank(cls.spectrum(kernel, **options), float(energy))
        if rank is not None:  # no SVD: build() checks the upper bound (max_rank)
            return check_rank(name, rank)
        return int(len(cls.spectrum(kernel, **options)))

    @classmethod
    def from_conv2d(
        cls,
        conv,
        rank: int | None = None,
        energy: float | None = None,
        implementation: str = "auto",
        name: str | None = None,
        **kwargs,
    ):
        """Build this layer from a built ``Conv2D`` by decomposing its kernel.

        ``rank`` fixes the rank; ``energy`` picks the smallest rank keeping that share of
        the kernel's squared Frobenius norm; neither gives the exact, full-rank layer. The
        bias, activation, strides, padding, dilation, regularizers and constraints are
        copied. Extra ``kwargs`` go to the constructor (method options).
        """
        kernel = check_conv2d(conv, cls.__name__)
        options = cls.method_options(**kwargs)
        r = cls.rank_for(kernel, rank=rank, energy=energy, **options)
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
        layer.set_factors(cls.decompose(kernel, r, **options))
        if conv.use_bias:
            layer.bias.assign(ops.convert_to_numpy(conv.bias))
        return layer

    def relative_error(self, conv) -> float:
        """Relative Frobenius error of this layer's kernel against ``conv``'s."""
        return dec.relative_error(
            ops.convert_to_numpy(conv.kernel), ops.convert_to_numpy(self.full_kernel())
        )

    def folded_kernel_and_bias(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The equivalent dense kernel and bias as NumPy arrays (inference semantics)."""
        kernel = ops.convert_to_numpy(self.full_kernel())
        bias = ops.convert_to_numpy(self.bias) if self.use_bias else None
        return kernel, bias

    def to_conv2d(self, name: str | None = None) -> keras.layers.Conv2D:
        """The equivalent, built ``keras.layers.Conv2D`` (factors folded into one kernel)."""
        if not self.built:
            raise ValueError(f"{self._who}.to_conv2d: build the layer first.")
        kernel, bias = self.folded_kernel_and_bias()
        return folded_conv2d(self, kernel, bias, name)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(geometry_config(self))
        config["rank"] = self.rank
        config.update(weights_config(self))
        return config
