"""DeCEF: depthwise convolutional eigen-filters (Yu et al., arXiv 1910.09359).

For input channel ``c`` the ``N`` filters ``W[:, :, c, n]`` are combinations of ``r``
eigen-filters: ``W[:, :, c, n] = sum_j A[c*r + j, n] E[:, :, c, j]``. The layer is a
depthwise conv with depth multiplier ``r`` (kernel ``E (kh, kw, C, r)``) then a 1x1 conv
(``A (1, 1, C*r, N)``), no activation between. Weights ``kh*kw*C*r + C*r*N``; MACs per
output pixel ``C*r*(kh*kw + N)``; it saves compute only when ``r < kh*kw*N / (kh*kw + N)``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .base import FactorizedConv2D, safe_depthwise_conv
from .inference import tiled_kernels

__all__ = ["DeCEFConv2D"]


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class DeCEFConv2D(FactorizedConv2D):
    """Low-rank ``Conv2D`` with ``rank`` eigen-filters per input channel (DeCEF).

    Weights: ``eigen_filters (kh, kw, C, r)``, run as a depthwise conv with depth multiplier
    ``r``, and ``combination (1, 1, C*r, N)``, a 1x1 conv. The paper (Yu et al.) reports
    about 2/3 of the parameters and FLOPs of the plain net (``k=3, r=6``) at similar or
    higher accuracy, trained from scratch. Depthwise convs with a depth multiplier above 1
    run several times slower per MAC than dense convs on CPU runtimes, so
    ``implementation="auto"`` uses the factorized form only when ``r`` is small enough to
    win anyway and otherwise rebuilds the kernel and runs one conv (same output).

    ``from_conv2d``: per-channel SVD of ``W[:, :, c, :].reshape(kh*kw, N)``; exact at full
    rank. ``energy`` is pooled over channels: the share of the whole kernel's squared norm
    kept (the paper does not define its effective-rank rule; this one equals
    ``1 - relative_error**2``).

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: int, the number ``r`` of eigen-filters per input channel, at most
            ``min(kh*kw, filters)``.
        implementation: ``"auto"`` (default), ``"factorized"`` or ``"dense"`` (see above and
            ``FactorizedConv2D``).
        **kwargs: the other arguments of ``keras.layers.Conv2D`` (channels-last, no groups):
            ``strides``, ``padding``, ``data_format``, ``dilation_rate``, ``activation``,
            ``use_bias``, the initializers, regularizers and constraints, ``seed`` and the
            base-layer arguments (``FactorizedConv2D``).

    Input shape:
        4D tensor ``(batch, H, W, C)``.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.

    Example:

    >>> conv = keras.layers.Conv2D(64, 3, padding="same")
    >>> conv.build((None, 32, 32, 16))
    >>> layer = DeCEFConv2D.from_conv2d(conv, rank=4)
    >>> layer.cost((32, 32, 16))
    Cost(params=4736, fixed_params=0, macs=4784128)
    >>> tuple(layer(np.zeros((2, 32, 32, 16), "float32")).shape)
    (2, 32, 32, 64)
    """

    _scale_factor = "combination"
    data_statistics = ("taps",)
    refittable_output = True
    _output_factor = "combination"

    def max_rank(self, in_channels: int) -> int:
        """``min(kh*kw, filters)``, whatever ``in_channels``."""
        kh, kw = self.kernel_size
        return min(kh * kw, self.filters)

    def factor_shapes(self, in_channels: int) -> dict:
        kh, kw = self.kernel_size
        r = self.rank
        return {
            "eigen_filters": (kh, kw, in_channels, r),
            "combination": (1, 1, in_channels * r, self.filters),
        }

    def kernel_from_factors(self, factors):
        e = factors["eigen_filters"]
        c, r = e.shape[2], e.shape[3]
        a = ops.reshape(factors["combination"], (c, r, self.filters))
        return ops.einsum("hwcj,cjn->hwcn", e, a)

    def factorized_call(self, inputs, training=None):
        if training is True and self.rank > 1:
            return self._tiled_call(inputs)
        y = safe_depthwise_conv(
            inputs, self.eigen_filters, self.strides, self.padding, self.dilation_rate
        )
        return ops.conv(y, self.combination, padding="valid", data_format="channels_last")

    def _tiled_call(self, inputs):
        """The same function through a multiplier-1 depthwise conv (what training runs).

        The input is tiled ``r`` times along channels and the kernels permuted to match
        (``inference.tiled_kernels``, as the LiteRT "tiled" arrangement). Same MACs, but
        TensorFlow's backward kernels for a depthwise conv with ``depth_multiplier > 1``
        are slow on CPU (``benchmarks/train_layers.py`` times the training step per
        shape). Forward alone the tiled form was not always faster, so inference keeps the
        multiplier-``r`` form.
        """
        e, a = tiled_kernels(self.eigen_filters, self.combination)
        y = ops.tile(inputs, (1, 1, 1, self.rank))
        y = safe_depthwise_conv(y, e, self.strides, self.padding, self.dilation_rate)
        return ops.conv(y, a, padding="valid", data_format="channels_last")

    def op_macs(self, input_shape):
        h, w = self.out_hw(input_shape)
        c, r = int(input_shape[-1]), self.rank
        kh, kw = self.kernel_size
        kind = "depthwise" if r == 1 else "depthwise_multiplier"
        return [(kind, h * w * kh * kw * c * r), ("pointwise", h * w * c * r * self.filters)]

    def training_op_macs(self, input_shape):
        """As ``op_macs``, with what training runs for ``r > 1``: the input tiled ``r``
        times (``("tile", H_in*W_in*C*r)`` elements, at the input's resolution, so a
        strided layer pays it on 4x its output pixels) and a multiplier-1 depthwise conv."""
        ops_ = self.op_macs(input_shape)
        if self.rank == 1:
            return ops_
        tile = int(input_shape[1]) * int(input_shape[2]) * int(input_shape[3]) * self.rank
        return [("depthwise", m) if k == "depthwise_multiplier" else (k, m) for k, m in ops_] + [
            ("tile", tile)
        ]

    @classmethod
    def spectrum(cls, kernel, **options):
        """Energy kept by each eigen-filter, pooled over channels (``decef_spectrum``).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            **options: ignored.

        Returns:
            ``min(kh*kw, N)`` energies ``sum_c s[c, j]**2``, descending.
        """
        return dec.decef_spectrum(kernel)

    @classmethod
    def decompose(cls, kernel, rank, **options):
        e, a = dec.decef_factors(kernel, rank)
        return {"eigen_filters": e, "combination": a}

    @classmethod
    def vbmf_matrices(cls, kernel, **options):
        """The ``C`` per-channel matrices ``W[:, :, c, :].reshape(kh*kw, N)``.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            **options: ignored.

        Returns:
            A list of ``C`` arrays ``(kh*kw, N)``.
        """
        kh, kw, c, n = kernel.shape
        return list(np.transpose(kernel, (2, 0, 1, 3)).reshape(c, kh * kw, n))

    @classmethod
    def decompose_with_data(cls, kernel, rank, statistics, **options):
        """Per input channel, eigen-filters whitened by that channel's patch moments
        (``decompositions.decef_data_factors``).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: ``r``.
            statistics: ``{"taps": (C, kh*kw, kh*kw)}``.
            **options: ignored.

        Returns:
            The factors by weight name.
        """
        e, a, _ = dec.decef_data_factors(kernel, statistics["taps"], rank)
        return {"eigen_filters": e, "combination": a}

    @classmethod
    def data_spectrum(cls, kernel, statistics, **options):
        """Whitened per-channel energies pooled over channels (descending).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            statistics: ``{"taps": (C, kh*kw, kh*kw)}``.
            **options: ignored.

        Returns:
            A 1-D array of ``min(kh*kw, N)`` energies.
        """
        return dec.decef_data_factors(kernel, statistics["taps"], 1)[2]

    def inference_layers(self) -> list[keras.layers.Layer]:
        """The equivalent built plain-Keras layers (inference).

        Returns:
            ``[DepthwiseConv2D, Conv2D]``: a ``DepthwiseConv2D`` with ``depth_multiplier=r``
            (kernel ``E``), then a 1x1 ``Conv2D`` (``A``, bias, activation).

        Raises:
            ValueError: when the layer is not built.
        """
        if not self.built:
            raise ValueError(f"{self._who}.inference_layers: build the layer first.")
        c = int(self.eigen_filters.shape[2])
        dw = keras.layers.DepthwiseConv2D(
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            depth_multiplier=self.rank,
            dilation_rate=self.dilation_rate,
            use_bias=False,
            name=f"{self.name}_depthwise",
            dtype=self.dtype_policy,
        )
        dw.build((None, None, None, c))
        dw.kernel.assign(ops.convert_to_numpy(self.eigen_filters))
        pw = keras.layers.Conv2D(
            self.filters,
            1,
            activation=self.activation,
            use_bias=self.use_bias,
            name=f"{self.name}_pointwise",
            dtype=self.dtype_policy,
        )
        pw.build((None, None, None, c * self.rank))
        pw.kernel.assign(ops.convert_to_numpy(self.combination))
        if self.use_bias:
            pw.bias.assign(ops.convert_to_numpy(self.bias))
        return [dw, pw]
