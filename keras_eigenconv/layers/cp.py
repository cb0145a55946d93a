"""CP-decomposed convolution (Lebedev et al. 2015, "Speeding-up CNNs using fine-tuned
CP-decomposition").

``W[x, y, c, n] = sum_r Kx[x, r] Ky[y, r] Kc[c, r] Kn[n, r]``: a 1x1 conv ``C -> R``
(``Kc``), the spatial part, a 1x1 conv ``R -> N`` (``Kn``). At stride 1 the spatial part is a
depthwise ``kh x 1`` conv (``Kx``) then a depthwise ``1 x kw`` conv (``Ky``); with strides it
is one rank-1 ``kh x kw`` depthwise conv (kernel ``Kx[x, r] Ky[y, r]``) with the layer's
strides (TensorFlow's GPU kernels refuse the unequal ``(s, 1)``/``(1, s)`` depthwise
strides of the separable form; at stride 2 both forms cost the same for a 3x3 kernel).
Weights ``R*(C + kh + kw + N)``; MACs ``H_in*W_in*C*R + H_out*W_in*kh*R +
H_out*W_out*(kw*R + R*N)`` at stride 1, ``H_in*W_in*C*R + H_out*W_out*(kh*kw*R + R*N)``
with strides.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .base import (
    FactorizedConv2D,
    check_conv2d,
    check_energy,
    check_rank,
    check_rank_or_energy,
    safe_depthwise_conv,
)

__all__ = ["CPConv2D"]


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class CPConv2D(FactorizedConv2D):
    """``Conv2D`` as rank-``R`` CP factors (Lebedev et al. 2015).

    Weights: ``first (1, 1, C, R)``, ``vertical (kh, 1, R, 1)`` and
    ``horizontal (1, kw, R, 1)`` (depthwise kernels), ``last (1, 1, R, N)``.

    ``from_conv2d``: CP is not exact in general. Below ``kh*kw*min(C, N)`` the factors come
    from TensorLy's ALS ``parafac`` (SVD init, fixed seed); at that rank (the default,
    ``rank=None``) an exact construction is used. The returned layer has
    ``decomposition_error``, the relative Frobenius error of its kernel (also
    ``relative_error(conv)``). ``energy=e`` picks the smallest rank whose ALS error is at most
    ``sqrt(1 - e)`` (doubling, then bisection; several ALS runs). From scratch the factors
    are Gaussian (``SeedGenerator(seed)``) rescaled to the norm of a kernel drawn from
    ``kernel_initializer``.

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: int, the CP rank ``R <= kh*kw*min(C, N)`` (a rank that always suffices).
        **kwargs: the other arguments of ``keras.layers.Conv2D`` and ``FactorizedConv2D``:
            ``strides``, ``padding``, ``data_format``, ``dilation_rate``, ``activation``,
            ``use_bias``, ``implementation``, the initializers, regularizers and
            constraints, ``seed`` and the base-layer arguments.

    Input shape:
        4D tensor ``(batch, H, W, C)``.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.

    Example:

    >>> conv = keras.layers.Conv2D(16, 3, padding="same")
    >>> conv.build((None, 32, 32, 8))
    >>> layer = CPConv2D.from_conv2d(conv)  # the exact rank kh*kw*min(C, N)
    >>> layer.rank, layer.decomposition_error < 1e-6
    (72, True)
    """

    _scale_factor = "last"
    rank_selection = "layer"

    def max_rank(self, in_channels: int) -> int:
        """``kh*kw*min(C, N)``, a CP rank that always suffices."""
        kh, kw = self.kernel_size
        return kh * kw * min(int(in_channels), self.filters)

    def factor_shapes(self, in_channels: int) -> dict:
        kh, kw = self.kernel_size
        r = self.rank
        return {
            "first": (1, 1, in_channels, r),
            "vertical": (kh, 1, r, 1),
            "horizontal": (1, kw, r, 1),
            "last": (1, 1, r, self.filters),
        }

    def initial_factors(self, drawn_kernel):
        shapes = self.factor_shapes(drawn_kernel.shape[2])
        return {
            name: np.asarray(
                ops.convert_to_numpy(keras.random.normal(shape, seed=self.seed_generator)),
                np.float64,
            )
            for name, shape in shapes.items()
        }

    def kernel_from_factors(self, factors):
        return ops.einsum(
            "cr,xr,yr,rn->xycn",
            factors["first"][0, 0],
            factors["vertical"][:, 0, :, 0],
            factors["horizontal"][0, :, :, 0],
            factors["last"][0, 0],
        )

    def factorized_call(self, inputs, training=None):
        (dh, dw) = self.dilation_rate
        y = ops.conv(inputs, self.first, padding="valid", data_format="channels_last")
        if self._separable:
            # stride 1: the kh x 1 and 1 x kw depthwise convs (fewer MACs than kh x kw)
            y = ops.depthwise_conv(
                y, self.vertical, strides=1, padding=self.padding, dilation_rate=(dh, 1)
            )
            y = ops.depthwise_conv(
                y, self.horizontal, strides=1, padding=self.padding, dilation_rate=(1, dw)
            )
        else:
            # strided: one rank-1 kh x kw depthwise conv with the layer's own strides (GPU
            # kernels refuse the (s, 1) / (1, s) depthwise strides of the separable form)
            spatial = ops.einsum(
                "xr,yr->xyr", self.vertical[:, 0, :, 0], self.horizontal[0, :, :, 0]
            )
            y = safe_depthwise_conv(
                y, ops.expand_dims(spatial, -1), self.strides, self.padding, self.dilation_rate
            )
        return ops.conv(y, self.last, padding="valid", data_format="channels_last")

    @property
    def _separable(self) -> bool:
        return tuple(self.strides) == (1, 1)

    def op_macs(self, input_shape):
        h, w = self.out_hw(input_shape)
        hi, wi, c = int(input_shape[1]), int(input_shape[2]), int(input_shape[3])
        kh, kw = self.kernel_size
        r = self.rank
        if self._separable:
            spatial = [("depthwise", h * wi * kh * r), ("depthwise", h * w * kw * r)]
        else:
            spatial = [("depthwise", h * w * kh * kw * r)]
        return [
            ("pointwise", hi * wi * c * r),
            *spatial,
            ("pointwise", h * w * r * self.filters),
        ]

    @classmethod
    def rank_for(cls, kernel, rank=None, energy=None, **options):
        """The CP rank that ``from_conv2d`` uses.

        ``rank`` itself; or the smallest rank whose ALS error is ``<= sqrt(1 - energy)``
        (doubling, then bisection: several ALS runs); or, with neither, the exact rank
        ``kh*kw*min(C, N)``.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: int or ``None``.
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None``.
            **options: ignored.

        Returns:
            The rank as an int.

        Raises:
            ValueError: when both ``rank`` and ``energy`` are given, or either is invalid.
        """
        name = cls.__name__
        check_rank_or_energy(name, rank, energy)
        w = np.asarray(kernel, dtype=np.float64)
        full = dec.cp_max_rank(w.shape)
        if energy is None:
            return full if rank is None else check_rank(name, rank, full)
        target = np.sqrt(max(0.0, 1.0 - check_energy(name, energy))) + 1e-9

        def ok(r):
            return dec.cp_factors(w, r)[-1] <= target

        lo, hi = 0, 1  # invariant: ranks <= lo fail, hi passes (or is the exact rank)
        while hi < full and not ok(hi):
            lo, hi = hi, min(2 * hi, full)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi

    @classmethod
    def decompose(cls, kernel, rank, **options):
        first, vertical, horizontal, last, _ = dec.cp_factors(kernel, rank)
        return {"first": first, "vertical": vertical, "horizontal": horizontal, "last": last}

    @classmethod
    def from_conv2d(cls, conv, rank=None, energy=None, implementation="auto", name=None, **kw):
        """Build a ``CPConv2D`` from a built ``Conv2D`` (as ``FactorizedConv2D.from_conv2d``).

        Also sets ``decomposition_error``, the relative Frobenius error of the CP kernel (0
        only where the CP rank suffices).

        Args:
            conv: a built, channels-last, ungrouped ``keras.layers.Conv2D``.
            rank: the CP rank, or ``None`` (the exact rank ``kh*kw*min(C, N)``).
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None``.
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).
            **kw: other constructor arguments.

        Returns:
            The new, built layer.

        Raises:
            ValueError: when ``conv`` is not a valid source or an argument is invalid.
        """
        layer = super().from_conv2d(
            conv, rank=rank, energy=energy, implementation=implementation, name=name, **kw
        )
        layer.decomposition_error = dec.relative_error(
            check_conv2d(conv, name or cls.__name__), ops.convert_to_numpy(layer.full_kernel())
        )
        return layer
