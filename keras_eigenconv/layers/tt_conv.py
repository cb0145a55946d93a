"""Tensor-train convolutions: ``TTConv2D`` (Garipov et al. 2016) and the "naive"
``NaiveTTConv2D`` baseline (``TTDense`` is in ``tt_dense``).

TT-matrix: ``M = prod m_i``, ``N = prod n_i``,
``W[(i1..id), (j1..jd)] = G_1[:, i1, j1, :] ... G_d[:, id, jd, :]``, cores
``G_i (r_{i-1}, m_i, n_i, r_i)``, ``r_0 = r_d = 1``; weights ``sum r_{i-1} m_i n_i r_i``.

TT-conv: ``C = prod c_i``, ``N = prod s_i``,
``W[x, y, c, s] = G0[x, y, :] G_1[:, c1, s1, :] ... G_d[:, cd, sd, :]``: one spatial core
``G0 (kh, kw, r0)`` shared by all channels, ``r_d = 1``. Its factorized forward runs the
``r0`` spatial filters on every channel (a depthwise conv, multiplier ``r0``), then
contracts the cores one by one (reshape, transpose, matmul: built-in TFLite ops, static
shapes). MACs per output pixel ``kh*kw*C*r0 + sum_i (prod_{j<i} s_j) r_{i-1} c_i s_i r_i
(prod_{j>i} c_j)``.

Mode factorizations are C-order (``c1`` most significant). ``"auto"`` modes factor ``C``
and ``N`` into ``num_modes`` balanced modes (``decompositions.balanced_modes``).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from ..cost import Cost
from ._tt import (
    _bond_ranks,
    _gaussian_cores,
    _num_modes,
    _pad_cores,
    _rank_arg,
    _tt_contract,
    _tt_contract_macs,
    _tt_rebuild,
    check_tt_size,
    resolve_modes,
)
from .base import FactorizedConv2D, check_energy, check_rank_or_energy, safe_depthwise_conv

__all__ = ["NaiveTTConv2D", "TTConv2D"]


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class TTConv2D(FactorizedConv2D):
    """``Conv2D`` in the TT-conv format of Garipov et al. (2016).

    Weights: ``spatial (kh, kw, r0)`` and ``core_i (r_{i-1}, c_i, s_i, r_i)``, ``i = 1..d``,
    ``r_d = 1``, with ``W[x, y, c, s] = G0[x, y, :] G_1[:, c1, s1, :] ... G_d[:, cd, sd, :]``.

    From scratch the cores are Gaussian (``SeedGenerator(seed)``), each with the same
    ``sigma``, so that the rebuilt kernel has the variance of ``kernel_initializer``
    (Glorot by default; Garipov et al. use Glorot-scaled Gaussian cores), then rescaled to
    the norm of a kernel drawn from it. ``from_conv2d``: TT-SVD of the trained kernel,
    exact at the full TT-ranks (``rank=None``); ``energy=e`` runs TT-SVD with relative error
    bound ``sqrt(1 - e)``, so at least ``e`` of the squared norm is kept.

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: one int (caps every TT-rank ``r_0..r_{d-1}`` at it and at the full rank) or
            ``d`` ints ``[r_0, ..., r_{d-1}]`` (the paper's ``d+1`` form ending in 1 is
            accepted). Ranks above the full TT-ranks add parameters, not accuracy; they
            are accepted while the factors hold at most ``max(kh*kw*C*N, 65536)``
            parameters (``build`` raises otherwise, before allocating anything).
        in_modes: ``"auto"`` or a factorization ``(c_1, ..., c_d)`` of the input channels
            ``C`` (C-order, ``c1`` most significant).
        out_modes: ``"auto"`` or a factorization ``(s_1, ..., s_d)`` of ``filters``.
        num_modes: int, the number ``d`` of modes for ``"auto"`` (balanced modes,
            default 3); explicit mode lists set it.
        implementation: ``"dense"`` (alias ``"full"``: rebuild the kernel, one conv, the
            paper's path: fewer parameters, same FLOPs), ``"factorized"`` (shared spatial
            filters, then core contractions) or ``"auto"``: dense, because the factorized
            form measured slower than the conv at every benchmarked shape, even at 0.3x its
            MACs.
        **kwargs: the other arguments of ``keras.layers.Conv2D`` and ``FactorizedConv2D``:
            ``strides``, ``padding``, ``data_format``, ``dilation_rate``, ``activation``,
            ``use_bias``, the initializers, regularizers and constraints, ``seed`` and the
            base-layer arguments.

    Input shape:
        4D tensor ``(batch, H, W, C)``.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.

    Raises:
        ValueError: when the modes, ``num_modes`` or ``rank`` are invalid, or another
            argument is.

    Example:

    >>> conv = keras.layers.Conv2D(64, 3, padding="same")
    >>> conv.build((None, 16, 16, 64))
    >>> layer = TTConv2D.from_conv2d(conv, rank=8)
    >>> layer.modes(64), layer.tt_ranks(64)
    (((4, 4, 4), (4, 4, 4)), (8, 8, 8, 1))
    >>> layer.cost((16, 16, 64)).params
    2312
    """

    _scale_factor = "spatial"
    rank_selection = "layer"

    def __init__(
        self,
        filters,
        kernel_size,
        rank,
        in_modes="auto",
        out_modes="auto",
        num_modes: int = 3,
        implementation: str = "auto",
        **kwargs,
    ):
        implementation = "dense" if implementation == "full" else implementation
        super().__init__(filters, kernel_size, rank, implementation=implementation, **kwargs)
        self.num_modes = _num_modes(self._who, num_modes, in_modes, out_modes)
        self.in_modes = in_modes if isinstance(in_modes, str) else tuple(int(m) for m in in_modes)
        self.out_modes = resolve_modes(
            self.filters, out_modes, self.num_modes, self._who, "out_modes"
        )
        self._out_modes_arg = out_modes if isinstance(out_modes, str) else self.out_modes
        if isinstance(in_modes, str):
            resolve_modes(1, in_modes, 1, self._who, "in_modes")  # checks the string
        self.rank = self.validate_rank(rank)

    @classmethod
    def method_options(cls, **kwargs):
        """The mode options out of the constructor arguments.

        Args:
            **kwargs: constructor keyword arguments.

        Returns:
            A dict with ``in_modes``, ``out_modes`` and ``num_modes`` (defaults filled in).
        """
        return {
            "in_modes": kwargs.get("in_modes", "auto"),
            "out_modes": kwargs.get("out_modes", "auto"),
            "num_modes": kwargs.get("num_modes", 3),
        }

    def validate_rank(self, rank, in_channels=None):
        d = getattr(self, "num_modes", None)
        rank = _rank_arg(self._who, rank, d, pad_ones=1)
        if in_channels is not None:
            full = self.max_rank(in_channels)
            bonds = _bond_ranks(rank, full)
            kh, kw = self.kernel_size
            ins, outs = self.modes(in_channels)
            params = kh * kw * bonds[0] + sum(
                a * c * s * b for a, c, s, b in zip(bonds, ins, outs, [*bonds[1:], 1])
            )
            dense = kh * kw * int(in_channels) * self.filters
            check_tt_size(self._who, bonds, full, params, dense)
        return rank

    def modes(self, in_channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The mode factorizations for ``in_channels`` inputs.

        Args:
            in_channels: the number ``C`` of input channels.

        Returns:
            ``(in_modes, out_modes)`` as tuples of ints.
        """
        ins = resolve_modes(in_channels, self.in_modes, self.num_modes, self._who, "in_modes")
        return ins, self.out_modes

    def max_rank(self, in_channels: int) -> list[int]:
        """The full TT-ranks ``[r_0, ..., r_{d-1}]`` (``tt_conv_max_ranks``)."""
        return dec.tt_conv_max_ranks(self.kernel_size, *self.modes(in_channels))

    def tt_ranks(self, in_channels: int) -> tuple[int, ...]:
        """The layer's TT-ranks in the form the paper lists.

        Args:
            in_channels: the number ``C`` of input channels.

        Returns:
            ``(r_0, ..., r_{d-1}, 1)``.
        """
        return tuple(_bond_ranks(self.rank, self.max_rank(in_channels))) + (1,)

    def factor_shapes(self, in_channels: int) -> dict:
        kh, kw = self.kernel_size
        ranks = self.tt_ranks(in_channels)
        ins, outs = self.modes(in_channels)
        shapes = {"spatial": (kh, kw, ranks[0])}
        for i, (c, s) in enumerate(zip(ins, outs)):
            shapes[f"core_{i + 1}"] = (ranks[i], c, s, ranks[i + 1])
        return shapes

    def _cores(self, factors):
        return [factors[f"core_{i + 1}"] for i in range(self.num_modes)]

    def kernel_from_factors(self, factors):
        kh, kw = self.kernel_size
        sp = factors["spatial"]
        k = _tt_rebuild(ops.reshape(sp, (kh * kw, int(sp.shape[-1]))), self._cores(factors))
        return ops.reshape(k, (kh, kw, int(k.shape[1]), self.filters))

    def factorized_call(self, inputs, training=None):
        c = int(inputs.shape[-1])
        r0 = int(self.spatial.shape[-1])
        # the r0 shared spatial filters on every channel: output channel c*r0 + a
        kernel = ops.tile(ops.expand_dims(self.spatial, 2), (1, 1, c, 1))
        y = safe_depthwise_conv(inputs, kernel, self.strides, self.padding, self.dilation_rate)
        shape = ops.shape(y)
        z = _tt_contract(
            ops.reshape(y, (-1, c * r0)), self._cores(self.factors()), self.modes(c)[0]
        )
        return ops.reshape(z, (-1, shape[1], shape[2], self.filters))

    def op_macs(self, input_shape):
        h, w = self.out_hw(input_shape)
        c = int(input_shape[-1])
        kh, kw = self.kernel_size
        ranks = self.tt_ranks(c)
        ins, outs = self.modes(c)
        return [
            (
                "depthwise" if ranks[0] == 1 else "depthwise_multiplier",
                h * w * kh * kw * c * ranks[0],
            ),
            ("pointwise", h * w * _tt_contract_macs(ins, outs, ranks)),
        ]

    def _resolve_implementation(self, input_shape, training: bool = False) -> str:
        # Measured (benchmarks/layers.py, batch 1, 56x56x64 to 14x14x256): the factorized
        # TT-conv ran 0.86x-3.8x the conv's forward time and 1.2x-4.9x its training step even
        # at 0.3x the MACs (depthwise multiplier r0 plus transposes), so "auto" runs dense.
        if training and self.training_implementation is not None:
            return self.training_implementation
        return "dense" if self.implementation == "auto" else self.implementation

    def cost(self, input_shape) -> Cost:
        """Parameters and MACs of one call on ``input_shape``.

        The MACs are those of the path that runs (the resolved ``implementation``; before
        build, the cheaper by MACs): the paper's TT-conv runs the rebuilt dense kernel, whose
        factorized form often costs more MACs than the conv.

        Args:
            input_shape: ``(H, W, C)`` or ``(batch, H, W, C)``, known spatial dims.

        Returns:
            The layer's ``Cost``.

        Raises:
            ValueError: when the spatial dims are unknown.
        """
        c = super().cost(input_shape)
        shape = tuple(input_shape) if len(tuple(input_shape)) == 4 else (None, *input_shape)
        dense = self.dense_macs(shape)
        impl = self._resolved_implementation
        if impl == "dense" or (impl is None and dense < c.macs):
            return Cost(c.params, c.fixed_params, int(dense))
        return c

    def rebuild_macs(self, in_channels: int) -> int:
        kh, kw = self.kernel_size
        ranks = self.tt_ranks(in_channels)
        total, x, y = 0, 1, 1
        for i, (c, s) in enumerate(zip(*self.modes(in_channels))):
            x, y = x * c, y * s
            total += kh * kw * x * y * ranks[i] * ranks[i + 1]
        return total

    def initial_factors(self, drawn_kernel):
        c = drawn_kernel.shape[2]
        shapes = self.factor_shapes(c)
        variance = float(np.mean(np.square(drawn_kernel)))
        values = _gaussian_cores(
            list(shapes.values()), self.tt_ranks(c)[:-1], variance, self.seed_generator
        )
        return dict(zip(shapes, values))

    @classmethod
    def _kernel_modes(cls, kernel, in_modes, out_modes, num_modes):
        _, _, c, n = kernel.shape
        d = _num_modes(cls.__name__, num_modes, in_modes, out_modes)
        return (
            resolve_modes(c, in_modes, d, cls.__name__, "in_modes"),
            resolve_modes(n, out_modes, d, cls.__name__, "out_modes"),
        )

    @classmethod
    def spectrum(cls, kernel, in_modes="auto", out_modes="auto", num_modes=3, **options):
        """Squared singular values at the bond with the largest full TT-rank.

        Its length is the largest meaningful int ``rank``; ``bond_spectra`` gives every
        bond's.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            in_modes: ``"auto"`` or a factorization of ``C``.
            out_modes: ``"auto"`` or a factorization of ``N``.
            num_modes: the number of modes for ``"auto"``.
            **options: ignored.

        Returns:
            A 1-D array of energies, descending.
        """
        spectra = cls.bond_spectra(kernel, in_modes, out_modes, num_modes)
        return max(spectra, key=len)

    @classmethod
    def bond_spectra(cls, kernel, in_modes="auto", out_modes="auto", num_modes=3) -> list:
        """Squared singular values at each TT-SVD bond ``r_0..r_{d-1}``.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            in_modes: ``"auto"`` or a factorization of ``C``.
            out_modes: ``"auto"`` or a factorization of ``N``.
            num_modes: the number of modes for ``"auto"``.

        Returns:
            A list of ``d`` 1-D arrays, one per bond.
        """
        w = np.asarray(kernel, dtype=np.float64)
        ins, outs = cls._kernel_modes(w, in_modes, out_modes, num_modes)
        spatial, cores = dec.tt_conv_factors(w, ins, outs)
        t = dec.tt_full(
            [spatial.reshape(1, -1, spatial.shape[-1])]
            + [g.reshape(g.shape[0], -1, g.shape[3]) for g in cores]
        )
        return [
            np.linalg.svd(t.reshape(math.prod(t.shape[: i + 1]), -1), compute_uv=False) ** 2
            for i in range(len(cores))
        ]

    @classmethod
    def rank_for(
        cls,
        kernel,
        rank=None,
        energy=None,
        in_modes="auto",
        out_modes="auto",
        num_modes=3,
        **options,
    ):
        """The TT-ranks that ``from_conv2d`` uses.

        From ``rank``, or from TT-SVD with relative error bound ``sqrt(1 - energy)``; with
        neither, the full ranks.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: an int, ``d`` ints, or ``None``.
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None``.
            in_modes: ``"auto"`` or a factorization of ``C``.
            out_modes: ``"auto"`` or a factorization of ``N``.
            num_modes: the number of modes for ``"auto"``.
            **options: ignored.

        Returns:
            An int (one cap for every bond) or a tuple ``(r_0, ..., r_{d-1})``.

        Raises:
            ValueError: when both ``rank`` and ``energy`` are given, or an argument is
                invalid.
        """
        name = cls.__name__
        check_rank_or_energy(name, rank, energy)
        w = np.asarray(kernel, dtype=np.float64)
        ins, outs = cls._kernel_modes(w, in_modes, out_modes, num_modes)
        full = dec.tt_conv_max_ranks(w.shape[:2], ins, outs)
        if energy is not None:
            eps = math.sqrt(max(0.0, 1.0 - check_energy(name, energy)))
            spatial, cores = dec.tt_conv_factors(w, ins, outs, eps=eps)
            return (spatial.shape[-1],) + tuple(g.shape[-1] for g in cores[:-1])
        if rank is None:
            return tuple(full)
        r = _rank_arg(name, rank, len(full), pad_ones=1)
        return r

    @classmethod
    def decompose(cls, kernel, rank, in_modes="auto", out_modes="auto", num_modes=3, **opts):
        w = np.asarray(kernel, dtype=np.float64)
        ins, outs = cls._kernel_modes(w, in_modes, out_modes, num_modes)
        caps = _bond_ranks(rank, dec.tt_conv_max_ranks(w.shape[:2], ins, outs))
        spatial, cores = dec.tt_conv_factors(w, ins, outs, ranks=caps)
        spatial = np.pad(spatial, ((0, 0), (0, 0), (0, caps[0] - spatial.shape[-1])))
        cores = _pad_cores(cores, caps + [1])
        return {"spatial": spatial, **{f"core_{i + 1}": g for i, g in enumerate(cores)}}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "in_modes": self.in_modes
                if isinstance(self.in_modes, str)
                else list(self.in_modes),
                "out_modes": self._out_modes_arg
                if isinstance(self._out_modes_arg, str)
                else list(self._out_modes_arg),
                "num_modes": self.num_modes,
            }
        )
        return config


# --- NaiveTTConv2D ----------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class NaiveTTConv2D(FactorizedConv2D):
    """The "naive" TT-conv baseline of Garipov et al.: the TT of the 4-D kernel.

    The modes are ``(kh, kw, C, N)``, with cores ``core_1 (1, kh, r1)``,
    ``core_2 (r1, kw, r2)``, ``core_3 (r2, C, r3)``, ``core_4 (r3, N, 1)``. It saves
    parameters only: the forward always rebuilds the kernel and runs one conv
    (``implementation`` and ``training_implementation`` are accepted for API symmetry;
    ``"factorized"`` runs the same dense path, and ``training.tune_implementations`` leaves
    the layer as it is). ``from_conv2d``: TT-SVD, exact at full ranks; ``energy`` as in
    ``TTConv2D``.

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: one int (caps ``r1, r2, r3``) or three ints.
        **kwargs: the other arguments of ``keras.layers.Conv2D`` and ``FactorizedConv2D``:
            ``strides``, ``padding``, ``data_format``, ``dilation_rate``, ``activation``,
            ``use_bias``, ``implementation``, the initializers, regularizers and
            constraints, ``seed`` and the base-layer arguments.

    Input shape:
        4D tensor ``(batch, H, W, C)``.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.
    """

    _scale_factor = "core_4"
    _factor_ops = False
    rank_selection = "layer"

    def validate_rank(self, rank, in_channels=None):
        rank = _rank_arg(self._who, rank, 3, pad_ones=1)
        if in_channels is not None:
            full = self.max_rank(in_channels)
            r = [1, *_bond_ranks(rank, full), 1]
            dims = (*self.kernel_size, int(in_channels), self.filters)
            params = sum(r[i] * dims[i] * r[i + 1] for i in range(4))
            check_tt_size(self._who, r[1:-1], full, params, math.prod(dims))
        return rank

    def max_rank(self, in_channels: int) -> list[int]:
        """The full TT-ranks ``[r1, r2, r3]`` of the ``(kh, kw, C, N)`` kernel."""
        return dec.tt_max_ranks((*self.kernel_size, int(in_channels), self.filters))

    def tt_ranks(self, in_channels: int) -> tuple[int, ...]:
        """The layer's TT-ranks.

        Args:
            in_channels: the number ``C`` of input channels.

        Returns:
            ``(1, r1, r2, r3, 1)``.
        """
        return (1, *_bond_ranks(self.rank, self.max_rank(in_channels)), 1)

    def factor_shapes(self, in_channels: int) -> dict:
        r = self.tt_ranks(in_channels)
        dims = (*self.kernel_size, int(in_channels), self.filters)
        return {f"core_{i + 1}": (r[i], dims[i], r[i + 1]) for i in range(4)}

    def kernel_from_factors(self, factors):
        f = [factors[f"core_{i + 1}"] for i in range(4)]
        return ops.einsum("xa,ayb,bce,en->xycn", f[0][0], f[1], f[2], f[3][..., 0])

    def factorized_call(self, inputs, training=None):
        return self._conv(inputs, self.full_kernel())

    def _resolve_implementation(self, input_shape, training: bool = False) -> str:
        return "dense"

    def op_macs(self, input_shape):
        return [("conv", self.dense_macs(input_shape))]

    def rebuild_macs(self, in_channels: int) -> int:
        kh, kw = self.kernel_size
        _, r1, r2, r3, _ = self.tt_ranks(in_channels)
        return kh * kw * (r1 * r2 + r2 * in_channels * r3 + in_channels * r3 * self.filters)

    def initial_factors(self, drawn_kernel):
        shapes = self.factor_shapes(drawn_kernel.shape[2])
        variance = float(np.mean(np.square(drawn_kernel)))
        bonds = self.tt_ranks(drawn_kernel.shape[2])[1:-1]
        values = _gaussian_cores(list(shapes.values()), bonds, variance, self.seed_generator)
        return dict(zip(shapes, values))

    @classmethod
    def spectrum(cls, kernel, **options):
        """Squared singular values at each of the three bonds of the 4-D kernel.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            **options: ignored.

        Returns:
            A list of three 1-D arrays (unfoldings after ``kh``, ``kh*kw``, ``kh*kw*C``).
        """
        w = np.asarray(kernel, dtype=np.float64)
        return [
            np.linalg.svd(w.reshape(math.prod(w.shape[: i + 1]), -1), compute_uv=False) ** 2
            for i in range(3)
        ]

    @classmethod
    def rank_for(cls, kernel, rank=None, energy=None, **options):
        """The TT-ranks that ``from_conv2d`` uses (as ``TTConv2D.rank_for``).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: an int, three ints, or ``None`` (the full ranks).
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``
                (TT-SVD error bound ``sqrt(1 - energy)``), or ``None``.
            **options: ignored.

        Returns:
            An int (one cap for every bond) or a tuple ``(r1, r2, r3)``.

        Raises:
            ValueError: when both ``rank`` and ``energy`` are given, or either is invalid.
        """
        name = cls.__name__
        check_rank_or_energy(name, rank, energy)
        w = np.asarray(kernel, dtype=np.float64)
        full = dec.tt_max_ranks(w.shape)
        if energy is not None:
            eps = math.sqrt(max(0.0, 1.0 - check_energy(name, energy)))
            cores = dec.tt_naive_conv_factors(w, eps=eps)
            return tuple(g.shape[-1] for g in cores[:-1])
        if rank is None:
            return tuple(full)
        r = _rank_arg(name, rank, 3, pad_ones=1)
        return r

    @classmethod
    def decompose(cls, kernel, rank, **options):
        w = np.asarray(kernel, dtype=np.float64)
        caps = _bond_ranks(rank, dec.tt_max_ranks(w.shape))
        cores = _pad_cores(dec.tt_naive_conv_factors(w, ranks=caps), [1, *caps, 1])
        return {f"core_{i + 1}": g for i, g in enumerate(cores)}
