"""Tucker-2 convolution (Kim et al. 2016, "Compression of deep CNNs for fast and low power
mobile applications").

``W[x, y, c, n] = sum_{a, b} U[c, a] G[x, y, a, b] V[n, b]``: a 1x1 conv ``C -> R1``
(``U``), a ``kh x kw`` conv ``R1 -> R2`` (``G``, with the strides, padding and dilation), a
1x1 conv ``R2 -> N`` (``V^T``). Weights ``C*R1 + kh*kw*R1*R2 + R2*N``; MACs
``H_in*W_in*C*R1 + H_out*W_out*(kh*kw*R1*R2 + R2*N)``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .base import FactorizedConv2D, check_energy, check_rank, check_rank_or_energy

__all__ = ["Tucker2Conv2D"]


def _rank_pair(who: str, rank, bound=None) -> tuple[int, int]:
    if isinstance(rank, (list, tuple)):
        if len(rank) != 2:
            raise ValueError(
                f"{who}: rank must be an int or a pair (R1, R2) of ints, got {rank!r}."
            )
        pair = tuple(rank)
    else:
        pair = (rank, rank)
    b = bound or (None, None)
    return (check_rank(who, pair[0], b[0]), check_rank(who, pair[1], b[1]))


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class Tucker2Conv2D(FactorizedConv2D):
    """``Conv2D`` as Tucker-2 factors (Kim et al. 2016).

    Weights: ``first (1, 1, C, R1)``, ``core (kh, kw, R1, R2)`` (with the strides, padding
    and dilation) and ``last (1, 1, R2, N)``, run as three convs.

    ``from_conv2d(conv, rank=None, energy=None)``: HOSVD of the two channel unfoldings
    (exact at full ranks). ``rank="vbmf"`` picks each rank by empirical VBMF
    (``decompositions.vbmf_rank``) on its unfolding, as Kim et al. do (at least 1);
    ``energy=e`` picks each rank as the smallest keeping ``e`` of its unfolding's squared
    norm (so the kernel's relative error is at most ``sqrt(2 (1 - e))``).

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: an int (``R1 = R2``) or a pair ``(R1, R2)`` with ``R1 <= C``, ``R2 <= N``.
        **kwargs: the other arguments of ``keras.layers.Conv2D`` and ``FactorizedConv2D``:
            ``strides``, ``padding``, ``data_format``, ``dilation_rate``, ``activation``,
            ``use_bias``, ``implementation``, the initializers, regularizers and
            constraints, ``seed`` and the base-layer arguments.

    Input shape:
        4D tensor ``(batch, H, W, C)``.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.

    Example:

    >>> conv = keras.layers.Conv2D(64, 3, padding="same")
    >>> conv.build((None, 32, 32, 32))
    >>> layer = Tucker2Conv2D.from_conv2d(conv, rank=(16, 32))
    >>> layer.ranks
    (16, 32)
    >>> layer.cost((32, 32, 32))
    Cost(params=7232, fixed_params=0, macs=7340032)
    """

    _scale_factor = "core"
    rank_selection = "layer"
    budget_spectrum = True
    data_statistics = ("channels", "response")
    refittable_output = True
    _output_factor = "last"

    def validate_rank(self, rank, in_channels=None):
        bound = None if in_channels is None else self.max_rank(in_channels)
        pair = _rank_pair(self._who, rank, bound)
        return pair[0] if pair[0] == pair[1] and not isinstance(rank, (list, tuple)) else pair

    @property
    def ranks(self) -> tuple[int, int]:
        """``(R1, R2)``."""
        return _rank_pair(self._who, self.rank)

    def max_rank(self, in_channels: int):
        """``(C, N)``: the bounds of ``(R1, R2)``."""
        return (int(in_channels), self.filters)

    def factor_shapes(self, in_channels: int) -> dict:
        kh, kw = self.kernel_size
        r1, r2 = self.ranks
        return {
            "first": (1, 1, in_channels, r1),
            "core": (kh, kw, r1, r2),
            "last": (1, 1, r2, self.filters),
        }

    def kernel_from_factors(self, factors):
        return ops.einsum(
            "ca,xyab,bn->xycn", factors["first"][0, 0], factors["core"], factors["last"][0, 0]
        )

    def factorized_call(self, inputs, training=None):
        y = ops.conv(inputs, self.first, padding="valid", data_format="channels_last")
        y = self._conv(y, self.core)
        return ops.conv(y, self.last, padding="valid", data_format="channels_last")

    def op_macs(self, input_shape):
        h, w = self.out_hw(input_shape)
        hi, wi, c = int(input_shape[1]), int(input_shape[2]), int(input_shape[3])
        r1, r2 = self.ranks
        kh, kw = self.kernel_size
        return [
            ("pointwise", hi * wi * c * r1),
            ("conv", h * w * kh * kw * r1 * r2),
            ("pointwise", h * w * r2 * self.filters),
        ]

    def rebuild_macs(self, in_channels: int) -> int:
        kh, kw = self.kernel_size
        r1, r2 = self.ranks
        return kh * kw * r2 * (r1 * in_channels + in_channels * self.filters)

    @classmethod
    def spectra(cls, kernel) -> tuple[np.ndarray, np.ndarray]:
        """The spectra of both channel unfoldings.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.

        Returns:
            ``(s_in, s_out)``: squared singular values of the input-channel unfolding
            ``(C, kh*kw*N)`` and of the filter unfolding ``(N, kh*kw*C)``.
        """
        return dec.tucker2_spectra(kernel)

    @classmethod
    def spectrum(cls, kernel, **options):
        """One 1-D spectrum for an int rank (``R1 = R2 = r``), an error proxy for budgets.

        The mean of the two channel unfoldings' energies, cut to the largest such rank
        ``min(len(s_in), len(s_out))`` (see ``spectra`` for both). HOSVD's error obeys
        ``||W - W_r||^2 <= tail_in(r) + tail_out(r)``, so ``1 - kept(r)`` is half that bound:
        a proxy of the squared relative error (not exact, unlike the matrix methods), used
        to spread a budget across layers.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            **options: ignored.

        Returns:
            ``min(C, N)`` energies ``(s_in[:r] + s_out[:r]) / 2``.
        """
        s_in, s_out = dec.tucker2_spectra(kernel)
        r = min(len(s_in), len(s_out))
        return 0.5 * (s_in[:r] + s_out[:r])

    @classmethod
    def rank_for(cls, kernel, rank=None, energy=None, statistics=None, **options):
        """The ranks ``(R1, R2)`` that ``from_conv2d`` uses.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: an int, a pair ``(R1, R2)``, ``"vbmf"`` (empirical VBMF on each
                unfolding, at least 1) or ``None``.
            energy: the share of each channel unfolding's squared norm to keep, in
                ``(0, 1]``, or ``None``. With neither, the full ranks. With
                ``statistics``, the share of the whitened input-channel energy (``R1``)
                and of the response energy (``R2``).
            statistics: calibration statistics (``data_statistics``), or ``None``.
            **options: ignored.

        Returns:
            The pair ``(R1, R2)``.

        Raises:
            ValueError: when both ``rank`` and ``energy`` are given, or either is invalid.
        """
        name = cls.__name__
        check_rank_or_energy(name, rank, energy)
        s_in, s_out = dec.tucker2_spectra(kernel)
        if energy is not None and statistics is not None:
            s_in, s_out = cls._data_spectra(kernel, statistics)
        if energy is not None:
            e = check_energy(name, energy)  # kept of each channel unfolding's squared norm
            return (dec.energy_rank(s_in, e), dec.energy_rank(s_out, e))
        if rank is None:
            return (len(s_in), len(s_out))
        if isinstance(rank, str):
            if rank != "vbmf":
                raise ValueError(
                    f"{name}: rank={rank!r} is not understood; pass an int, a pair (R1, R2), "
                    "or 'vbmf'."
                )
            u_in, u_out = cls.vbmf_matrices(np.asarray(kernel, dtype=np.float64))
            return (max(1, dec.vbmf_rank(u_in)), max(1, dec.vbmf_rank(u_out)))
        return _rank_pair(name, rank, (len(s_in), len(s_out)))

    @classmethod
    def vbmf_matrices(cls, kernel, **options):
        """The input-channel and filter unfoldings; ``rank="vbmf"`` takes one rank from each.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            **options: ignored.

        Returns:
            ``[(C, kh*kw*N) unfolding, (N, kh*kw*C) unfolding]`` (Kim et al.).
        """
        kh, kw, c, n = kernel.shape
        return [
            np.transpose(kernel, (2, 0, 1, 3)).reshape(c, -1),
            np.transpose(kernel, (3, 0, 1, 2)).reshape(n, -1),
        ]

    @classmethod
    def _data_spectra(cls, kernel, statistics):
        w = np.asarray(kernel, np.float64)
        kh, kw, c, n = w.shape
        w_c = np.transpose(w, (2, 0, 1, 3)).reshape(c, kh * kw * n)
        e_in = dec.whitened_low_rank(w_c, statistics["channels"], 1)[2]
        g = np.asarray(statistics["response"], np.float64)
        e_out = np.sort(np.maximum(np.linalg.eigvalsh(0.5 * (g + g.T)), 0.0))[::-1]
        return e_in, e_out[: min(n, kh * kw * c)]

    @classmethod
    def decompose_with_data(cls, kernel, rank, statistics, **options):
        """Tucker-2 factors fitted to data: input channels whitened by their pixel moments,
        output channels projected on the responses' principal directions
        (``decompositions.tucker2_data_factors``).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: ``(R1, R2)`` or an int.
            statistics: ``{"channels": (C, C), "response": (N, N)}``.
            **options: ignored.

        Returns:
            The factors by weight name.
        """
        pair = _rank_pair(cls.__name__, rank)
        first, core, last, _ = dec.tucker2_data_factors(
            kernel, statistics["channels"], statistics["response"], pair
        )
        return {"first": first, "core": core, "last": last}

    @classmethod
    def data_spectrum(cls, kernel, statistics, **options):
        """An error proxy for one int rank, as ``spectrum`` but on data: the whitened
        input-channel energies and the response energies, each normalized, averaged.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            statistics: ``{"channels": (C, C), "response": (N, N)}``.
            **options: ignored.

        Returns:
            A 1-D array of ``min(C, N)`` energies.
        """
        return dec.tucker2_data_factors(
            kernel, statistics["channels"], statistics["response"], 1
        )[3]

    def inference_layers(self) -> list[keras.layers.Layer]:
        """The equivalent built plain-Keras layers: 1x1 ``Conv2D`` ``C -> R1``, the
        ``kh x kw`` ``Conv2D`` ``R1 -> R2`` (strides, padding, dilation), 1x1 ``Conv2D``
        ``R2 -> N`` (bias, activation).

        Returns:
            The three built layers, weights set.
        """
        if not self.built:
            raise ValueError(f"{self._who}.inference_layers: build the layer first.")
        r1, r2 = self.ranks
        c = int(self.first.shape[2])
        common = dict(dtype=self.dtype_policy)
        first = keras.layers.Conv2D(r1, 1, use_bias=False, name=f"{self.name}_first", **common)
        first.build((None, None, None, c))
        first.kernel.assign(ops.convert_to_numpy(self.first))
        core = keras.layers.Conv2D(
            r2,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            use_bias=False,
            name=f"{self.name}_core",
            **common,
        )
        core.build((None, None, None, r1))
        core.kernel.assign(ops.convert_to_numpy(self.core))
        last = keras.layers.Conv2D(
            self.filters,
            1,
            activation=self.activation,
            use_bias=self.use_bias,
            name=f"{self.name}_last",
            **common,
        )
        last.build((None, None, None, r2))
        last.kernel.assign(ops.convert_to_numpy(self.last))
        if self.use_bias:
            last.bias.assign(ops.convert_to_numpy(self.bias))
        return [first, core, last]

    @classmethod
    def decompose(cls, kernel, rank, **options):
        first, core, last = dec.tucker2_factors(kernel, _rank_pair(cls.__name__, rank))
        return {"first": first, "core": core, "last": last}
