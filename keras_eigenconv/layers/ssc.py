"""SSConv2D: structured sparse convolution that runs as dense grouped ops.

A generalization of SSC (Verma et al., WACV 2023, whose exact pattern is unpublished) and of
HetConv (Singh et al. 2019), depthwise, grouped and pointwise convolutions.

The kernel ``W (kh, kw, C, N)`` follows a fixed, cyclically shifted block pattern
(``decompositions.structured``): with ``G`` groups, filter group ``g`` reaches channel groups
``g, ..., g+a-1 (mod G)`` with full ``kh x kw`` kernels (``a = kernel_span``), the next
``b = pointwise_span`` channel groups with ``1 x 1`` kernels, and nothing else. It runs as

    y = take(conv_G(take(x, kxk_index), kernel) + conv1x1_G(take(window(x), pw_index),
             pointwise_kernel), inverse filter order) + bias

a grouped ``kh x kw`` conv and a 1x1 conv, never a masked dense kernel. Channel
reorders are static: a roll (two ``STRIDED_SLICE`` + ``CONCATENATION``) and/or a
reshape-transpose when the index is one (``channel_shuffle_plan``: span-1 contiguous bands,
the interleaved ``k x k`` band and filter order), else ``GATHER`` (not run by XNNPACK).
``arrangement`` lays out the 1x1 part: ``"grouped"`` (a grouped 1x1 over the ``b*C``
gathered channels, ``b*Cg*N`` MACs per pixel) or ``"full_pointwise"`` (ONE 1x1 conv over
all ``C`` channels with zeros where there is no 1x1 connection, ``C*N`` MACs, no channel
moves); ``"auto"`` takes the cheaper by the LiteRT cost model ``LITERT_COST``. Weights
``kh*kw*a*Cg*N + b*Cg*N`` (``Cg = C/G``); ``cost()`` reports those MACs per output pixel,
``executed_macs()`` what the chosen ops compute.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .. import graph
from ..cost import OP_TIME, Cost, conv_output_length
from .base import (
    IMPLEMENTATIONS,
    CompressedLayer,
    _cost_input_shape,
    check_conv2d,
    check_energy,
    check_rank,
    check_rank_or_energy,
    conv_geometry,
    copied_layer_args,
    geometry_config,
    set_weight_args,
    weights_config,
)

__all__ = ["ARRANGEMENTS", "LITERT_COST", "SSConv2D", "set_ssc_implementation"]

ARRANGEMENTS = ("auto", "grouped", "full_pointwise")
# LiteRT (XNNPACK, 1 thread) time per unit, in dense 3x3 conv MACs (``cost.OP_TIME``).
LITERT_COST = OP_TIME["litert_relative"]


def _is_identity(index: np.ndarray) -> bool:
    return bool(np.array_equal(index, np.arange(index.size)))


def _shuffle_kinds(index: np.ndarray) -> list[tuple[str, int]]:
    """The channel moves ``_shuffle`` runs for ``index``: ``(kind, values moved)`` pairs."""
    try:
        s, a, b = dec.channel_shuffle_plan(index)
    except ValueError:
        return [("gather", index.size)]
    kinds = [("roll", index.size)] if s else []
    if a > 1 and b > 1:
        kinds.append(("transpose", index.size))
    return kinds


def _shuffle(x, index: np.ndarray):
    """``x[..., index]`` for a static index: nothing for the identity, a roll (two slices +
    concat) and/or a reshape-transpose when ``index`` is one (``channel_shuffle_plan``),
    else a gather (LiteRT ``GATHER``, which XNNPACK does not run)."""
    try:
        s, a, b = dec.channel_shuffle_plan(index)
    except ValueError:
        return ops.take(x, np.asarray(index, "int32"), axis=-1)
    if s:
        x = ops.concatenate([x[..., s:], x[..., :s]], axis=-1)
    if a > 1 and b > 1:
        lead = tuple(x.shape[1:-1])
        if any(d is None for d in lead):
            lead = tuple(ops.shape(x)[1:-1])
        x = ops.reshape(x, (-1, *lead, a, b))
        x = ops.transpose(x, (0, *range(1, len(lead) + 1), len(lead) + 2, len(lead) + 1))
        x = ops.reshape(x, (-1, *lead, a * b))
    return x


def _with_seed(initializer, seed):
    """A copy of ``initializer`` seeded with ``seed`` (when it takes a seed and has none)."""
    if seed is None:
        return initializer
    config = initializer.get_config()
    if "seed" not in config or config["seed"] is not None:
        return initializer
    return type(initializer).from_config({**config, "seed": seed})


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class SSConv2D(CompressedLayer):
    """Structured sparse ``Conv2D``: grouped ``kh x kw`` + grouped 1x1 over a fixed pattern.

    Weights: ``kernel (kh, kw, a*Cg, N)`` (absent when ``a = 0``) and
    ``pointwise_kernel (1, 1, b*Cg, N)`` (absent when ``b = 0``), ``Cg = C/G``, plus the
    bias. Configurations: ``G=1`` dense conv; ``a=1, b=0`` ``Conv2D(groups=G)``; ``G=C=N``
    depthwise (``G=C, N=M*C``: depth multiplier ``M``); ``a=0`` (grouped) pointwise;
    ``G=P, a=1, b=P-1, layout="interleaved"`` HetConv-``P``. Each part is initialized by
    ``kernel_initializer`` on its compact shape (the fan-in Keras uses for a grouped conv).

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        groups: ``G``, the number of channel/filter groups; divides ``C`` and ``filters``.
        kernel_span: ``a`` (default 1): the channel groups each filter reaches with full
            ``kh x kw`` kernels.
        pointwise_span: ``b`` (default 0): the next channel groups, reached with ``1 x 1``
            kernels (the tap ``((kh-1)//2, (kw-1)//2)``, the centre for odd sizes);
            ``1 <= a + b <= G``.
        layout: ``"contiguous"`` (groups are runs of channels, as ``Conv2D(groups=)``) or
            ``"interleaved"`` (group = index mod ``G``, HetConv's one-channel shift per
            filter).
        shift: the cyclic shift of the channel index before grouping, in ``[0, C)``.
        strides: int or pair of ints, as in ``keras.layers.Conv2D``.
        padding: ``"valid"`` or ``"same"``.
        data_format: ``"channels_last"`` or ``None`` (channels-first is not supported).
        dilation_rate: int or pair of ints.
        activation: activation applied after the bias (``None``: linear).
        use_bias: whether the layer adds a bias of shape ``(filters,)``.
        implementation: ``"factorized"`` runs the grouped ops (what a LiteRT export runs);
            ``"dense"`` scatters the weights into the ``(kh, kw, C, N)`` kernel and runs one
            conv (same output and weights; faster for TensorFlow CPU training, where grouped
            convs are slow); ``"auto"`` = dense in Keras (TensorFlow's CPU grouped convs are
            17-200x slower to train than a dense conv), while ``export_tflite`` still
            exports the grouped ops.
        arrangement: how the factorized path lays out the 1x1 part: ``"grouped"`` (a
            grouped 1x1 over the ``b*C`` gathered channels, ``b*Cg*N`` MACs per pixel),
            ``"full_pointwise"`` (ONE 1x1 conv over all ``C`` channels with zeros where
            there is no 1x1 connection, ``C*N`` MACs, no channel moves) or ``"auto"`` (the
            cheaper by the LiteRT cost model ``LITERT_COST``).
        kernel_initializer: initializer of each compact weight.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the compact weights.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the layer's output.
        kernel_constraint: constraint of the compact weights.
        bias_constraint: constraint of the bias.
        seed: int or ``None``; seeds ``kernel_initializer`` when it takes a seed and has
            none.
        rank: alias of ``kernel_span``, for the uniform ``from_conv2d(rank=)`` API; pass one
            of them, not both.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``,
            ``trainable``).

    Input shape:
        4D tensor ``(batch, H, W, C)``; ``C`` must be known (and ``H``, ``W`` too for 1x1
        connections with strides above 1 on the factorized path).

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.

    Raises:
        ValueError: when the pattern or another argument is invalid (the message says what
            to choose).

    Example:

    >>> layer = SSConv2D(64, 3, groups=4, kernel_span=1, pointwise_span=1, padding="same")
    >>> layer.build((None, 32, 32, 64))
    >>> layer.cost((32, 32, 64))
    Cost(params=10304, fixed_params=0, macs=10485760)
    >>> round(layer.mac_ratio(), 3)
    0.278
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        groups: int = 1,
        kernel_span: int | None = None,
        pointwise_span: int = 0,
        layout: str = "contiguous",
        shift: int = 0,
        strides=(1, 1),
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate=(1, 1),
        activation=None,
        use_bias: bool = True,
        implementation: str = "auto",
        arrangement: str = "auto",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed: int | None = None,
        rank: int | None = None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        who = self._who
        conv_geometry(self, who, filters, kernel_size, strides, padding, data_format, dilation_rate)
        if rank is not None and kernel_span is not None and rank != kernel_span:
            raise ValueError(f"{who}: rank is an alias of kernel_span; pass one of them, not both.")
        kernel_span = rank if kernel_span is None else kernel_span
        self.groups = groups
        self.kernel_span = 1 if kernel_span is None else kernel_span
        self.pointwise_span = pointwise_span
        self.layout = layout
        self.shift = shift
        # Validate what does not depend on the input channels now (filters stand in for C).
        self._pattern_for(self.filters, shift=0)
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
        if arrangement not in ARRANGEMENTS:
            raise ValueError(
                f"{who}: arrangement must be one of {ARRANGEMENTS}, got {arrangement!r}."
            )
        self.arrangement = arrangement
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.pattern: dec.SSCPattern | None = None
        self._resolved_implementation: str | None = None
        self._resolved_arrangement: str | None = None

    @property
    def rank(self) -> int:
        """Alias of ``kernel_span`` (the width of the ``kh x kw`` block band)."""
        return self.kernel_span

    def _pattern_for(self, in_channels: int, shift=None) -> dec.SSCPattern:
        try:
            return dec.SSCPattern(
                int(in_channels),
                self.filters,
                self.kernel_size,
                self.groups,
                self.kernel_span,
                self.pointwise_span,
                self.layout,
                self.shift if shift is None else shift,
            )
        except ValueError as err:
            raise ValueError(f"{self._who}: {err}") from None

    # ---- build and call ------------------------------------------------------------------

    def build(self, input_shape):
        c = input_shape[-1]
        if c is None:
            raise ValueError(f"{self._who}: the channel axis of the input must be known.")
        p = self._pattern_for(c)
        self.pattern = p
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: int(c)})
        init = _with_seed(self.kernel_initializer, self.seed)
        self.kernel = self.pointwise_kernel = None
        if p.kernel_span:
            self.kernel = self.add_weight(
                name="kernel",
                shape=p.kernel_shape,
                initializer=init,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            )
        if p.pointwise_span:
            self.pointwise_kernel = self.add_weight(
                name="pointwise_kernel",
                shape=p.pointwise_shape,
                initializer=init,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self._inverse_filter_perm = np.argsort(p.filter_perm).astype("int32")
        self._dense_map = None
        self._resolved_arrangement = self._resolve_arrangement(self.arrangement)
        self._resolved_implementation = self._resolve(self.implementation)

    def _resolve(self, implementation: str) -> str:
        if implementation != "auto":
            return implementation
        # TensorFlow's CPU grouped conv is far slower than a dense conv: benchmarks/layers.py
        # measured the factorized path at 1.2-10x the Conv2D's forward time and 17-200x its
        # training step (56x56x64 .. 14x14x256, G=8), the dense path at 1.3-2.6x. So "auto"
        # runs dense in Keras; LiteRT export (prepare_for_inference) runs the grouped ops,
        # which XNNPACK executes fast.
        return "dense"

    def _resolve_arrangement(self, arrangement: str) -> str:
        if arrangement != "auto":
            return arrangement
        times = {a: self.estimated_time(a) for a in ARRANGEMENTS[1:]}
        return min(times, key=times.get)

    def mac_ratio(self) -> float:
        """Structural MACs over those of the dense conv.

        Returns:
            ``(a*kh*kw + b) / (G*kh*kw)`` as a float.
        """
        kk = math.prod(self.kernel_size)
        return (self.kernel_span * kk + self.pointwise_span) / (self.groups * kk)

    @property
    def resolved_arrangement(self) -> str | None:
        """``"grouped"`` or ``"full_pointwise"``: how the factorized path lays out its ops."""
        return self._resolved_arrangement

    # ---- the factorized path's ops and their cost ------------------------------------------

    def _plan(self, arrangement: str) -> list[tuple[str, float]]:
        """``(kind, count per output pixel)`` of the factorized path's ops (built layer).

        Kinds are keys of ``LITERT_COST``: conv MACs (``"conv"`` dense ``kh x kw``,
        ``"pointwise"`` dense 1x1, ``"grouped"``, ``"depthwise"``) and channel moves
        (``"gather"``, ``"roll"``, ``"transpose"``: values moved per output pixel; the
        stride's extra input pixels are counted).
        """
        p = self.pattern
        kk = math.prod(self.kernel_size)
        c, n = p.in_channels, self.filters
        px_in = math.prod(self.strides)  # input pixels per output pixel (approximately)
        plan: list[tuple[str, float]] = []
        grouped_out = False

        def moves(index, per_px):
            for kind, count in _shuffle_kinds(index):
                plan.append((kind, count * per_px))

        if p.kernel_span:
            if p.kernel_span == p.groups:
                plan.append(("conv", kk * c * n))
            else:
                moves(p.kxk_index, px_in)
                kind = "depthwise" if p.kernel_span * p.cg == 1 else "grouped"
                plan.append((kind, kk * p.kernel_span * p.cg * n))
                grouped_out = True
        if p.pointwise_span:
            if p.pointwise_span == p.groups or arrangement == "full_pointwise":
                plan.append(("pointwise", c * n))
            else:
                moves(p.pointwise_index, 1)
                kind = "depthwise" if p.pointwise_span * p.cg == 1 else "grouped"
                plan.append((kind, p.pointwise_span * p.cg * n))
                grouped_out = True
        if grouped_out:
            moves(self._inverse_filter_perm, 1)
        return plan

    def estimated_time(self, arrangement: str | None = None) -> float:
        """LiteRT time per output pixel of the factorized path, in dense-conv MACs.

        The ``LITERT_COST``-weighted sum of the path's conv MACs and channel moves; the dense
        conv costs ``kh*kw*C*N``. Needs a built layer.

        Args:
            arrangement: ``"grouped"`` or ``"full_pointwise"``; ``None``: the resolved one.

        Returns:
            The estimated time as a float.
        """
        arrangement = arrangement or self._resolved_arrangement
        return float(sum(LITERT_COST[k] * v for k, v in self._plan(arrangement)))

    def executed_macs(self, input_shape) -> int:
        """MACs of one call as the resolved path runs them (``cost()`` counts the structure's).

        ``"dense"``: ``kh*kw*C*N`` per output pixel; ``"factorized"`` with
        ``arrangement="full_pointwise"``: the 1x1 conv runs over all ``C`` channels.

        Args:
            input_shape: ``(H, W, C)`` or ``(batch, H, W, C)``, known spatial dims.

        Returns:
            The MACs as an int.

        Raises:
            ValueError: when the layer is not built.
        """
        if not self.built:
            raise ValueError(f"{self._who}: build the layer first.")
        shape = tuple(input_shape)
        if len(shape) == 3:
            shape = (None, *shape)
        out = self.compute_output_shape(shape)
        if self._resolved_implementation == "dense":
            per_px = math.prod(self.kernel_size) * self.pattern.in_channels * self.filters
        else:
            plan = self._plan(self._resolved_arrangement)
            per_px = sum(v for k, v in plan if k in ("conv", "pointwise", "grouped", "depthwise"))
        return int(out[1] * out[2] * per_px)

    def _flat_weights(self):
        parts = [
            ops.reshape(w, (-1,)) for w in (self.kernel, self.pointwise_kernel) if w is not None
        ]
        parts.append(ops.zeros((1,), dtype=parts[0].dtype))
        return ops.concatenate(parts, axis=0)

    def dense_kernel(self):
        """The equivalent ``(kh, kw, C, N)`` kernel as a tensor (zeros where not connected)."""
        if self._dense_map is None:
            self._dense_map = self.pattern.dense_index_map().astype("int32")
        return ops.take(self._flat_weights(), self._dense_map)

    def _window(self, x):
        """The input pixels that the 1x1 connections (the window's tap) read, per output."""
        th, tw = self.pattern.tap
        pads, slices = [(0, 0)], [slice(None)]
        for axis, tap in ((1, th), (2, tw)):
            k, s = self.kernel_size[axis - 1], self.strides[axis - 1]
            d = self.dilation_rate[axis - 1]
            if x.shape[axis] is None and s > 1:
                raise ValueError(
                    f"{self._who}: 1x1 connections with strides > 1 need known spatial dims "
                    "(the centre tap's offset depends on them). Give the model a fixed input "
                    "size, or use strides=1 or implementation='dense'."
                )
            lo, hi, start, trim = dec.center_tap_window(x.shape[axis], k, s, d, self.padding, tap)
            pads.append((lo, hi))
            slices.append(slice(start or None, -trim if trim else None, s if s > 1 else None))
        pads.append((0, 0))
        slices.append(slice(None))
        if any(lo or hi for lo, hi in pads):
            x = ops.pad(x, pads)
        if any(sl != slice(None) for sl in slices):
            x = x[tuple(slices)]
        return x

    def _part(self, x, weight, index, span, kernel_size, out_order, **conv_args):
        """One part as a conv; outputs in ``out_order`` (``"grouped"`` for a grouped conv)."""
        p = self.pattern
        if span == p.groups:  # reaches every channel: one dense conv, permutation folded in
            part = "kernel" if weight is self.kernel else "pointwise"
            fold = p.grouped_dense_index_map(part)
            if out_order == "natural":
                fold = fold[..., self._inverse_filter_perm]
            fold = fold.astype("int32")
            return ops.conv(x, ops.take(ops.reshape(weight, (-1,)), fold), **conv_args)
        x = _shuffle(x, index)
        if span * p.cg == 1:  # one channel per group: a depthwise conv
            w = ops.reshape(weight, (*kernel_size, p.groups, p.ng))
            return ops.depthwise_conv(x, w, **conv_args)
        return ops.conv(x, weight, **conv_args)

    def factorized_call(self, inputs):
        """The factorized forward, without bias and activation.

        Grouped ``kh x kw`` conv + the 1x1 part (grouped, or one conv over all channels with
        zeros when ``arrangement="full_pointwise"``), summed, filters reordered once.

        Args:
            inputs: a tensor ``(batch, H, W, C)``.

        Returns:
            The tensor ``(batch, H_out, W_out, filters)``.
        """
        p = self.pattern
        full_pw = self._resolved_arrangement == "full_pointwise"
        grouped = (0 < p.kernel_span < p.groups) or (
            0 < p.pointwise_span < p.groups and not full_pw
        )
        order = "grouped" if grouped else "natural"
        y = None
        if p.kernel_span:
            y = self._part(
                inputs,
                self.kernel,
                p.kxk_index,
                p.kernel_span,
                self.kernel_size,
                order,
                strides=self.strides,
                padding=self.padding,
                data_format="channels_last",
                dilation_rate=self.dilation_rate,
            )
        if p.pointwise_span:
            window = self._window(inputs)
            if full_pw and p.pointwise_span < p.groups:
                w = ops.concatenate(
                    [ops.reshape(self.pointwise_kernel, (-1,)), ops.zeros((1,), window.dtype)]
                )
                index = p.full_pointwise_index_map(order).astype("int32")
                z = ops.conv(
                    window, ops.take(w, index), padding="valid", data_format="channels_last"
                )
            else:
                z = self._part(
                    window,
                    self.pointwise_kernel,
                    p.pointwise_index,
                    p.pointwise_span,
                    (1, 1),
                    order,
                    padding="valid",
                    data_format="channels_last",
                )
            y = z if y is None else ops.add(y, z)
        if grouped:
            y = _shuffle(y, self._inverse_filter_perm)
        return y

    def call(self, inputs):
        if self._resolved_implementation == "dense":
            y = ops.conv(
                inputs,
                self.dense_kernel(),
                strides=self.strides,
                padding=self.padding,
                data_format="channels_last",
                dilation_rate=self.dilation_rate,
            )
        else:
            y = self.factorized_call(inputs)
        if self.use_bias:
            y = ops.add(y, self.bias)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        return (
            b,
            conv_output_length(h, kh, sh, self.padding, dh),
            conv_output_length(w, kw, sw, self.padding, dw),
            self.filters,
        )

    # ---- costs ---------------------------------------------------------------------------

    def cost(self, input_shape) -> Cost:
        """Parameters and MACs of one call, counted from the structure (non-zero connections).

        ``params = kh*kw*a*Cg*N + b*Cg*N (+ N bias)``; ``MACs = H_out*W_out*(kh*kw*a*Cg*N +
        b*Cg*N)``, whatever ``implementation`` runs (``executed_macs`` counts those).

        Args:
            input_shape: ``(H, W, C)`` or ``(batch, H, W, C)``, known spatial dims.

        Returns:
            The layer's ``Cost``.

        Raises:
            ValueError: when ``input_shape`` is not ``(H, W, C)`` or ``(batch, H, W, C)``
                of positive ints, the spatial dims are unknown, or the pattern does not fit
                ``C``.
        """
        shape = _cost_input_shape(self._who, input_shape)
        p = self._pattern_for(shape[-1])
        out = self.compute_output_shape(shape)
        if out[1] is None or out[2] is None:
            raise ValueError(f"{self._who}.cost needs known spatial dims, got {shape}.")
        params = p.num_weights + (self.filters if self.use_bias else 0)
        return Cost(int(params), 0, int(out[1] * out[2] * p.num_weights))

    # ---- from and to Conv2D --------------------------------------------------------------

    @classmethod
    def spectrum(
        cls, kernel, groups: int = 1, pointwise_span: int = 0, layout: str = "contiguous", **_
    ) -> np.ndarray:
        """Energy that each extra ``kernel_span`` (``rank``) keeps, at its best shift.

        ``spectrum[r-1] = kept(r) - kept(r-1)``, ``kept(r)`` the squared norm of the best-shift
        projection with ``kernel_span=r`` (``kept(0) = 0``), ``r`` up to ``groups -
        pointwise_span``. Sums to the kernel's energy when ``pointwise_span=0``.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            groups: ``G`` of the pattern.
            pointwise_span: ``b`` of the pattern.
            layout: ``"contiguous"`` or ``"interleaved"``.
            **_: ignored.

        Returns:
            A 1-D array of ``groups - pointwise_span`` energies.
        """
        kept = [0.0]
        for r in range(1, groups - pointwise_span + 1):
            kept.append(
                float(dec.ssc_shift_energies(kernel, groups, r, pointwise_span, layout).max())
            )
        return np.diff(np.asarray(kept))

    @classmethod
    def from_conv2d(
        cls,
        conv,
        rank: int | None = None,
        energy: float | None = None,
        implementation: str = "auto",
        name: str | None = None,
        groups: int = 1,
        kernel_span: int | None = None,
        pointwise_span: int = 0,
        layout: str = "contiguous",
        shift="best",
        **kwargs,
    ) -> SSConv2D:
        """Project a built ``Conv2D``'s kernel onto the pattern (nearest in Frobenius norm).

        With ``groups=1`` the layer is exact. Bias, activation, strides, padding, dilation,
        regularizers and constraints are copied; ``conv`` is not modified.

        Args:
            conv: a built, channels-last, ungrouped ``keras.layers.Conv2D``.
            rank: alias of ``kernel_span``.
            energy: instead of a span, the smallest ``kernel_span`` in
                ``[1, groups - pointwise_span]`` whose projection keeps this share of the
                kernel's squared Frobenius norm (the largest if none does), in ``(0, 1]``.
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).
            groups: ``G`` of the pattern.
            kernel_span: ``a`` of the pattern (default 1).
            pointwise_span: ``b`` of the pattern.
            layout: ``"contiguous"`` or ``"interleaved"``.
            shift: ``"best"`` (default) picks the cyclic shift whose pattern keeps the most
                kernel energy (``decompositions.ssc_best_shift``); an int fixes it.
            **kwargs: other constructor arguments (e.g. ``arrangement``).

        Returns:
            The new, built ``SSConv2D``.

        Raises:
            ValueError: when more than one of ``rank``, ``kernel_span`` and ``energy`` is
                given, ``rank`` is not a positive int, ``conv`` is not a valid source, or
                the pattern is invalid.
        """
        who = "SSConv2D.from_conv2d"
        w = check_conv2d(conv, "SSConv2D")
        check_rank_or_energy(who, rank, energy)
        n_set = sum(v is not None for v in (rank, energy, kernel_span))
        if n_set > 1:
            raise ValueError(f"{who}: pass one of rank (= kernel_span), kernel_span or energy.")
        span = check_rank(who, rank) if rank is not None else kernel_span
        if energy is not None:
            energy = check_energy(who, energy)
            # validate the pattern arguments before searching
            dec.SSCPattern(w.shape[2], w.shape[3], w.shape[:2], groups, 1, pointwise_span, layout)
            kept = np.cumsum(cls.spectrum(w, groups, pointwise_span, layout))
            total = float((w**2).sum())
            ok = np.flatnonzero(kept >= (float(energy) - 1e-12) * total)
            span = int(ok[0]) + 1 if ok.size else len(kept)
        span = 1 if span is None else span
        if shift == "best":
            try:
                shift = dec.ssc_best_shift(w, groups, span, pointwise_span, layout)
            except ValueError as err:
                raise ValueError(f"{who} ('{conv.name}'): {err}") from None
        layer = cls(
            filters=conv.filters,
            kernel_size=conv.kernel_size,
            groups=groups,
            kernel_span=span,
            pointwise_span=pointwise_span,
            layout=layout,
            shift=shift,
            strides=conv.strides,
            padding=conv.padding,
            dilation_rate=conv.dilation_rate,
            implementation=implementation,
            **copied_layer_args(conv, name),
            **kwargs,
        )
        layer.build((None, None, None, w.shape[2]))
        k, p = dec.ssc_project(w, layer.pattern)
        layer.set_compact_weights(k, p)
        if conv.use_bias:
            layer.bias.assign(ops.convert_to_numpy(conv.bias))
        return layer

    def set_compact_weights(self, kernel, pointwise_kernel) -> None:
        """Assign the compact weights, checking their shapes.

        Args:
            kernel: the ``kh x kw`` weights, shape ``pattern.kernel_shape`` (ignored when the
                layer has none).
            pointwise_kernel: the 1x1 weights, shape ``pattern.pointwise_shape`` (ignored
                when the layer has none).

        Raises:
            ValueError: when a value's shape differs from its weight's.
        """
        for var, value in ((self.kernel, kernel), (self.pointwise_kernel, pointwise_kernel)):
            if var is None:
                continue
            value = np.asarray(value)
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"{self._who}: weight '{var.name}' has shape {tuple(var.shape)}, got "
                    f"{value.shape}."
                )
            var.assign(value.astype(var.dtype))

    def folded_kernel_and_bias(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The equivalent dense kernel and bias, as NumPy arrays.

        Returns:
            A tuple ``(kernel (kh, kw, C, N), bias (N,) or None)``; the kernel is zero where
            not connected.

        Raises:
            ValueError: when the layer is not built.
        """
        if not self.built:
            raise ValueError(f"{self._who}: build the layer first.")
        p = self.pattern
        k = ops.convert_to_numpy(self.kernel) if self.kernel is not None else np.zeros(0)
        pw = (
            ops.convert_to_numpy(self.pointwise_kernel)
            if self.pointwise_kernel is not None
            else np.zeros(0)
        )
        kernel = dec.ssc_dense_kernel(p, k, pw).astype(np.float32)
        bias = ops.convert_to_numpy(self.bias) if self.use_bias else None
        return kernel, bias

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(geometry_config(self))
        config.update(
            {
                "groups": self.groups,
                "kernel_span": self.kernel_span,
                "pointwise_span": self.pointwise_span,
                "layout": self.layout,
                "shift": self.shift,
                "arrangement": self.arrangement,
            }
        )
        config.update(weights_config(self))
        return config


def set_ssc_implementation(model, implementation: str, arrangement: str | None = None) -> int:
    """Set ``implementation`` (and ``arrangement``) on every ``SSConv2D`` of a model.

    For example ``"dense"`` before training in TensorFlow, ``"factorized"`` before export;
    the weights are the same. Compile again (or convert) after it: Keras caches traced
    functions.

    Args:
        model: a ``keras.Model`` (nested models included) or one ``SSConv2D``.
        implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
        arrangement: ``"auto"``, ``"grouped"``, ``"full_pointwise"``, or ``None`` to keep
            each layer's.

    Returns:
        The number of layers changed.

    Raises:
        ValueError: when ``implementation`` or ``arrangement`` is not a valid value.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"set_ssc_implementation: implementation must be one of {IMPLEMENTATIONS}, "
            f"got {implementation!r}."
        )
    if arrangement is not None and arrangement not in ARRANGEMENTS:
        raise ValueError(
            f"set_ssc_implementation: arrangement must be one of {ARRANGEMENTS}, "
            f"got {arrangement!r}."
        )
    layers = [model] if isinstance(model, SSConv2D) else graph.flatten_layers(model)
    count = 0
    for layer in layers:
        if isinstance(layer, SSConv2D):
            layer.implementation = implementation
            if arrangement is not None:
                layer.arrangement = arrangement
            if layer.built:
                layer._resolved_arrangement = layer._resolve_arrangement(layer.arrangement)
                layer._resolved_implementation = layer._resolve(implementation)
            count += 1
    return count
