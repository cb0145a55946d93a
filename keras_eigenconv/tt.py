"""Tensor-train layers: ``TTDense`` (Novikov et al. 2015), ``TTConv2D`` (Garipov et al. 2016)
and the "naive" ``NaiveTTConv2D`` baseline.

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

from . import decompositions as dec
from ._base import (
    AUTO_FACTORIZED_THRESHOLD,
    FactorizedConv2D,
    check_rank,
    copied_layer_args,
    set_weight_args,
    weights_config,
)
from .cost import Cost

__all__ = ["NaiveTTConv2D", "TTConv2D", "TTDense", "resolve_modes"]


# --- shared helpers -------------------------------------------------------------------------


def resolve_modes(total: int, modes, num_modes: int, who: str, what: str) -> tuple[int, ...]:
    """``modes`` checked against ``total``, or ``balanced_modes(total, num_modes)`` for
    ``"auto"``."""
    if isinstance(modes, str):
        if modes != "auto":
            raise ValueError(f"{who}: {what} must be 'auto' or a list of ints, got {modes!r}.")
        return dec.balanced_modes(total, num_modes)
    try:
        out = tuple(int(m) for m in modes)
    except TypeError:
        raise ValueError(
            f"{who}: {what} must be 'auto' or a list of ints, got {modes!r}."
        ) from None
    if any(m < 1 for m in out) or math.prod(out) != total:
        raise ValueError(
            f"{who}: {what}={list(out)} must be positive ints whose product is {total}; "
            "pass a factorization of it, or 'auto'."
        )
    return out


def _num_modes(who, num_modes, in_modes, out_modes) -> int:
    lengths = {len(m) for m in (in_modes, out_modes) if not isinstance(m, str)}
    if len(lengths) > 1:
        raise ValueError(f"{who}: in_modes and out_modes must have the same length.")
    d = lengths.pop() if lengths else num_modes
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"{who}: num_modes must be a positive int, got {num_modes!r}.")
    return int(d)


def _rank_arg(who: str, rank, n_bonds: int | None, pad_ones: int):
    """An int, or ``n_bonds`` positive ints (the paper's lists, with their ``pad_ones``
    boundary 1s, are accepted too). Returns an int or a tuple of ``n_bonds`` ints."""
    if isinstance(rank, (list, tuple)):
        ranks = [check_rank(who, r) for r in rank]
        if n_bonds is not None and len(ranks) != n_bonds:
            if (
                len(ranks) == n_bonds + pad_ones
                and ranks[-1] == 1
                and all(r == 1 for r in ranks[: pad_ones - 1])
            ):
                ranks = ranks[pad_ones - 1 : pad_ones - 1 + n_bonds]
            else:
                raise ValueError(
                    f"{who}: rank must be an int or {n_bonds} TT-ranks, got {list(rank)}."
                )
        return tuple(ranks)
    return check_rank(who, rank)


def _bond_ranks(rank, max_ranks) -> list[int]:
    """Per-bond ranks: one int for every bond, or the list as is (``max_ranks`` gives the
    number of bonds). Ranks above the full TT-ranks are allowed (the paper's ``r0 = 22`` for
    a 3x3 spatial core is one): they add parameters, not accuracy."""
    if isinstance(rank, (list, tuple)):
        return [int(r) for r in rank]
    return [int(rank)] * len(max_ranks)


def _pad_cores(cores, ranks) -> list[np.ndarray]:
    """Zero-pad core ``i`` to ``ranks[i]`` on its first axis and ``ranks[i+1]`` on its last
    (TT-SVD stops at the full ranks; larger requested ranks get exact zero slices)."""
    out = []
    for i, g in enumerate(cores):
        pad = [(0, 0)] * g.ndim
        pad[0] = (0, ranks[i] - g.shape[0])
        pad[-1] = (0, ranks[i + 1] - g.shape[-1])
        out.append(np.pad(g, pad))
    return out


def _tt_contract(z, cores, in_modes):
    """``z (P, C*r0)`` (channel-major, then ``r0``) times the TT cores -> ``(P, N)``.

    Step ``i`` holds ``(P, S, c_i, R, r_{i-1})`` (``S`` the output modes done, ``R`` the
    input modes left) and contracts ``(c_i, r_{i-1})`` with ``G_i`` by one matmul.
    """
    s_acc, c_rest = 1, math.prod(in_modes)
    for g in cores:
        a, c, s, b = (int(x) for x in g.shape)
        c_rest //= c
        z = ops.reshape(z, (-1, s_acc, c, c_rest, a))
        if c > 1 and c_rest > 1:
            z = ops.transpose(z, (0, 1, 3, 2, 4))  # (P, S, R, c, a)
        gm = ops.reshape(ops.transpose(g, (1, 0, 2, 3)), (c * a, s * b))
        z = ops.matmul(ops.reshape(z, (-1, c * a)), gm)  # (P*S*R, s*b)
        z = ops.reshape(z, (-1, s_acc, c_rest, s, b))
        if s > 1 and c_rest > 1:
            z = ops.transpose(z, (0, 1, 3, 2, 4))  # (P, S, s, R, b)
        s_acc *= s
    return ops.reshape(z, (-1, s_acc))


def _tt_contract_macs(in_modes, out_modes, ranks_in) -> int:
    """MACs per row of ``_tt_contract``; ``ranks_in = (r_0, ..., r_d)``."""
    total, s_acc, c_rest = 0, 1, math.prod(in_modes)
    for i, (c, s) in enumerate(zip(in_modes, out_modes)):
        c_rest //= c
        total += s_acc * c_rest * c * ranks_in[i] * s * ranks_in[i + 1]
        s_acc *= s
    return total


def _tt_rebuild(first, cores):
    """``first (Q, r0)`` and cores -> ``(Q, C, N)`` (``keras.ops``)."""
    q, r0 = (int(x) for x in first.shape)
    t = ops.reshape(first, (q, 1, 1, r0))
    for g in cores:
        a, c, s, b = (int(x) for x in g.shape)
        t = ops.einsum("qxya,acsb->qxcysb", t, g)
        t = ops.reshape(t, (q, int(t.shape[1]) * c, int(t.shape[3]) * s, b))
    return t[..., 0]


def _target_variance(initializer, shape, fan_in: int, fan_out: int) -> float:
    """Variance of the kernel ``initializer`` draws (closed form for Glorot/He/LeCun)."""
    if isinstance(initializer, keras.initializers.VarianceScaling):
        n = {"fan_in": fan_in, "fan_out": fan_out}.get(initializer.mode, (fan_in + fan_out) / 2)
        return float(initializer.scale) / max(float(n), 1.0)
    drawn = ops.convert_to_numpy(initializer(shape, dtype="float32"))
    return float(np.mean(np.square(drawn, dtype=np.float64)))


def _gaussian_cores(shapes, bond_ranks, variance, seed_generator) -> list[np.ndarray]:
    """Gaussian cores whose product has ``variance`` per entry: with ``F`` factors and
    ``P = prod(bond_ranks)`` summed terms, each core has ``sigma^2 = (variance / P)^(1/F)``."""
    sigma = (variance / max(math.prod(bond_ranks), 1)) ** (0.5 / len(shapes))
    return [
        np.asarray(
            ops.convert_to_numpy(keras.random.normal(s, stddev=sigma, seed=seed_generator)),
            np.float64,
        )
        for s in shapes
    ]


# --- TTConv2D ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class TTConv2D(FactorizedConv2D):
    """``Conv2D`` in the TT-conv format of Garipov et al.: ``spatial (kh, kw, r0)`` and
    ``core_i (r_{i-1}, c_i, s_i, r_i)``, ``i = 1..d``, ``r_d = 1``.

    Args: those of ``keras.layers.Conv2D`` plus
    - ``rank``: one int (caps every TT-rank ``r_0..r_{d-1}`` at it and at the full rank) or
      ``d`` ints ``[r_0, ..., r_{d-1}]`` (the paper's ``d+1`` form ending in 1 is accepted);
    - ``in_modes``/``out_modes``: factorizations of ``C`` and ``filters`` (``"auto"``:
      ``num_modes`` balanced modes, default 3);
    - ``implementation``: ``"dense"`` (alias ``"full"``: rebuild the kernel, one conv, the
      paper's path: fewer parameters, same FLOPs), ``"factorized"`` (shared spatial filters,
      then core contractions) or ``"auto"``: dense, because the factorized form measured
      slower than the conv at every benchmarked shape, even at 0.3x its MACs.

    From scratch the cores are Gaussian (``SeedGenerator(seed)``), each with the same
    ``sigma``, so that the rebuilt kernel has the variance of ``kernel_initializer``
    (Glorot by default; Garipov et al. use Glorot-scaled Gaussian cores), then rescaled to
    the norm of a kernel drawn from it. ``from_conv2d``: TT-SVD of the trained kernel,
    exact at the full TT-ranks (``rank=None``); ``energy=e`` runs TT-SVD with relative error
    bound ``sqrt(1 - e)``, so at least ``e`` of the squared norm is kept.
    """

    _scale_factor = "spatial"

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
        return {
            "in_modes": kwargs.get("in_modes", "auto"),
            "out_modes": kwargs.get("out_modes", "auto"),
            "num_modes": kwargs.get("num_modes", 3),
        }

    def validate_rank(self, rank, in_channels=None):
        d = getattr(self, "num_modes", None)
        return _rank_arg(self._who, rank, d, pad_ones=1)

    def modes(self, in_channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(in_modes, out_modes)`` for ``in_channels`` inputs."""
        ins = resolve_modes(in_channels, self.in_modes, self.num_modes, self._who, "in_modes")
        return ins, self.out_modes

    def max_rank(self, in_channels: int) -> list[int]:
        return dec.tt_conv_max_ranks(self.kernel_size, *self.modes(in_channels))

    def tt_ranks(self, in_channels: int) -> tuple[int, ...]:
        """``(r_0, ..., r_{d-1}, 1)``, the form the paper lists."""
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
        y = ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )
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
            ("depthwise", h * w * kh * kw * c * ranks[0]),
            ("pointwise", h * w * _tt_contract_macs(ins, outs, ranks)),
        ]

    def _resolve_implementation(self, input_shape) -> str:
        # Measured (benchmarks/layers.py, batch 1, 56x56x64 to 14x14x256): the factorized
        # TT-conv ran 0.86x-3.8x the conv's forward time and 1.2x-4.9x its training step even
        # at 0.3x the MACs (depthwise multiplier r0 plus transposes), so "auto" runs dense.
        return "dense" if self.implementation == "auto" else self.implementation

    def cost(self, input_shape) -> Cost:
        """Parameters and MACs; the MACs are those of the path that runs (the resolved
        ``implementation``; before build, the cheaper by MACs): the paper's TT-conv runs the
        rebuilt dense kernel, whose factorized form often costs more MACs than the conv."""
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
        """Squared singular values at the bond with the largest full TT-rank (its length is
        the largest meaningful int ``rank``); ``bond_spectra`` gives every bond's."""
        spectra = cls.bond_spectra(kernel, in_modes, out_modes, num_modes)
        return max(spectra, key=len)

    @classmethod
    def bond_spectra(cls, kernel, in_modes="auto", out_modes="auto", num_modes=3) -> list:
        """Squared singular values at each TT-SVD bond ``r_0..r_{d-1}``."""
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
        """TT-ranks from ``rank``, or from TT-SVD with error bound ``sqrt(1 - energy)``;
        with neither, the full ranks."""
        name = cls.__name__
        if rank is not None and energy is not None:
            raise ValueError(f"{name}: pass rank or energy, not both.")
        w = np.asarray(kernel, dtype=np.float64)
        ins, outs = cls._kernel_modes(w, in_modes, out_modes, num_modes)
        full = dec.tt_conv_max_ranks(w.shape[:2], ins, outs)
        if energy is not None:
            if isinstance(energy, bool) or not (0.0 < float(energy) <= 1.0):
                raise ValueError(
                    f"{name}: energy={energy!r} must be in (0, 1], the share of the kernel's "
                    "squared Frobenius norm to keep (e.g. 0.9)."
                )
            eps = math.sqrt(max(0.0, 1.0 - float(energy)))
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
    """The "naive" TT-conv baseline of Garipov et al.: the TT of the 4-D kernel with modes
    ``(kh, kw, C, N)``, cores ``core_1 (1, kh, r1)``, ``core_2 (r1, kw, r2)``,
    ``core_3 (r2, C, r3)``, ``core_4 (r3, N, 1)``.

    ``rank``: one int (caps ``r1, r2, r3``) or three ints. It saves parameters only: the
    forward always rebuilds the kernel and runs one conv (``implementation`` is accepted
    for API symmetry; ``"factorized"`` runs the same dense path). ``from_conv2d``: TT-SVD,
    exact at full ranks; ``energy`` as in ``TTConv2D``.
    """

    _scale_factor = "core_4"

    def validate_rank(self, rank, in_channels=None):
        return _rank_arg(self._who, rank, 3, pad_ones=1)

    def max_rank(self, in_channels: int) -> list[int]:
        return dec.tt_max_ranks((*self.kernel_size, int(in_channels), self.filters))

    def tt_ranks(self, in_channels: int) -> tuple[int, ...]:
        """``(1, r1, r2, r3, 1)``."""
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

    def _resolve_implementation(self, input_shape) -> str:
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
        w = np.asarray(kernel, dtype=np.float64)
        return [
            np.linalg.svd(w.reshape(math.prod(w.shape[: i + 1]), -1), compute_uv=False) ** 2
            for i in range(3)
        ]

    @classmethod
    def rank_for(cls, kernel, rank=None, energy=None, **options):
        name = cls.__name__
        if rank is not None and energy is not None:
            raise ValueError(f"{name}: pass rank or energy, not both.")
        w = np.asarray(kernel, dtype=np.float64)
        full = dec.tt_max_ranks(w.shape)
        if energy is not None:
            if isinstance(energy, bool) or not (0.0 < float(energy) <= 1.0):
                raise ValueError(
                    f"{name}: energy={energy!r} must be in (0, 1], the share of the kernel's "
                    "squared Frobenius norm to keep (e.g. 0.9)."
                )
            cores = dec.tt_naive_conv_factors(w, eps=math.sqrt(max(0.0, 1.0 - float(energy))))
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


# --- TTDense ----------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class TTDense(keras.layers.Layer):
    """``Dense`` whose ``(M, N)`` kernel is a TT-matrix (Novikov et al. 2015): cores
    ``core_i (r_{i-1}, m_i, n_i, r_i)``, ``r_0 = r_d = 1``.

    Args: those of ``keras.layers.Dense`` plus ``rank`` (one int capping every inner
    TT-rank, or ``d-1`` ints; the paper's ``[1, r, ..., r, 1]`` form is accepted),
    ``in_modes``/``out_modes`` (``"auto"``: ``num_modes`` balanced modes of ``M`` and
    ``units``), ``implementation`` (``"factorized"``: core contractions,
    ``sum_i (prod_{j<i} n_j) r_{i-1} m_i n_i r_i (prod_{j>i} m_j)`` MACs per row;
    ``"dense"``: rebuild ``W`` and one matmul; ``"auto"``: the fewer MACs, factorized
    only below 0.9 of ``M*N``) and ``seed``.

    From scratch the cores are Gaussian with one ``sigma`` chosen so that the rebuilt
    kernel has the variance of ``kernel_initializer`` (Glorot: ``2 / (M + N)``).
    ``from_dense``: TT-SVD, exact at the full TT-ranks; ``energy=e`` bounds the relative
    error by ``sqrt(1 - e)``.
    """

    def __init__(
        self,
        units: int,
        rank,
        in_modes="auto",
        out_modes="auto",
        num_modes: int = 3,
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
        who = self._who
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{who}: units must be a positive int, got {units!r}.")
        self.units = int(units)
        self.num_modes = _num_modes(who, num_modes, in_modes, out_modes)
        self.in_modes = in_modes if isinstance(in_modes, str) else tuple(int(m) for m in in_modes)
        if isinstance(in_modes, str):
            resolve_modes(1, in_modes, 1, who, "in_modes")
        self._out_modes_arg = out_modes if isinstance(out_modes, str) else tuple(out_modes)
        self.out_modes = resolve_modes(self.units, out_modes, self.num_modes, who, "out_modes")
        self.rank = _rank_arg(who, rank, self.num_modes - 1, pad_ones=2)
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
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self._resolved_implementation = None

    @property
    def _who(self) -> str:
        return f"{type(self).__name__} '{self.name}'"

    def modes(self, in_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ins = resolve_modes(in_features, self.in_modes, self.num_modes, self._who, "in_modes")
        return ins, self.out_modes

    def max_rank(self, in_features: int) -> list[int]:
        return dec.tt_matrix_max_ranks(*self.modes(in_features))

    def tt_ranks(self, in_features: int) -> tuple[int, ...]:
        """``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1, *_bond_ranks(self.rank, self.max_rank(in_features)), 1)

    def core_shapes(self, in_features: int) -> list[tuple[int, int, int, int]]:
        r = self.tt_ranks(in_features)
        ins, outs = self.modes(in_features)
        return [(r[i], m, n, r[i + 1]) for i, (m, n) in enumerate(zip(ins, outs))]

    def build(self, input_shape):
        m = input_shape[-1]
        if m is None:
            raise ValueError(f"{self._who}: the last axis of the input must be known.")
        m = int(m)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: m})
        self.cores = []
        for i, shape in enumerate(self.core_shapes(m)):
            self.cores.append(
                self.add_weight(
                    name=f"core_{i + 1}",
                    shape=shape,
                    initializer="zeros",
                    regularizer=self.kernel_regularizer,
                    constraint=self.kernel_constraint,
                )
            )
        self.bias = (
            self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
            if self.use_bias
            else None
        )
        variance = _target_variance(self.kernel_initializer, (m, self.units), m, self.units)
        values = _gaussian_cores(
            self.core_shapes(m), self.tt_ranks(m)[1:-1], variance, self.seed_generator
        )
        self.set_cores(values)
        factorized = self.factorized_macs(m) < AUTO_FACTORIZED_THRESHOLD * m * self.units
        self._resolved_implementation = (
            self.implementation
            if self.implementation != "auto"
            else ("factorized" if factorized else "dense")
        )

    @property
    def resolved_implementation(self) -> str | None:
        return self._resolved_implementation

    def set_cores(self, values) -> None:
        for var, v in zip(self.cores, values):
            v = np.asarray(v)
            if tuple(v.shape) != tuple(var.shape):
                raise ValueError(f"{self._who}: core shape {tuple(var.shape)}, got {v.shape}.")
            var.assign(v.astype(var.dtype))

    def factorized_macs(self, in_features: int) -> int:
        ins, outs = self.modes(in_features)
        return _tt_contract_macs(ins, outs, self.tt_ranks(in_features))

    def full_kernel(self):
        """The ``(M, N)`` kernel as a tensor."""
        return _tt_rebuild(ops.ones((1, 1)), self.cores)[0]

    def call(self, inputs):
        m = int(inputs.shape[-1])
        if self._resolved_implementation == "dense":
            outputs = ops.matmul(inputs, self.full_kernel())
        else:
            lead = ops.shape(inputs)[:-1]
            z = _tt_contract(ops.reshape(inputs, (-1, m)), self.cores, self.modes(m)[0])
            outputs = ops.reshape(z, (*lead, self.units)) if len(lead) > 1 else z
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.units)

    def cost(self, input_shape) -> Cost:
        """Parameters and MACs of one call on ``input_shape``: the core contractions, or
        ``M*N`` per row where the dense path runs (the resolved ``implementation``)."""
        shape = tuple(input_shape)
        m = int(shape[-1])
        rows = math.prod(d for d in shape[1:-1] if d is not None) if len(shape) > 2 else 1
        params = sum(math.prod(s) for s in self.core_shapes(m)) + (
            self.units if self.use_bias else 0
        )
        macs = self.factorized_macs(m)
        impl = self._resolved_implementation
        if impl == "dense" or (impl is None and m * self.units < macs):
            macs = m * self.units  # the path that runs (rebuild not counted, as for convs)
        return Cost(int(params), 0, int(rows * macs))

    # ---- from and to Dense ---------------------------------------------------------------

    @classmethod
    def rank_for(
        cls, kernel, rank=None, energy=None, in_modes="auto", out_modes="auto", num_modes=3
    ):
        """Inner TT-ranks from ``rank`` or ``energy`` (TT-SVD error ``sqrt(1 - energy)``);
        with neither, the full ranks."""
        name = cls.__name__
        if rank is not None and energy is not None:
            raise ValueError(f"{name}: pass rank or energy, not both.")
        w = np.asarray(kernel, dtype=np.float64)
        d = _num_modes(name, num_modes, in_modes, out_modes)
        ins = resolve_modes(w.shape[0], in_modes, d, name, "in_modes")
        outs = resolve_modes(w.shape[1], out_modes, d, name, "out_modes")
        full = dec.tt_matrix_max_ranks(ins, outs)
        if energy is not None:
            if isinstance(energy, bool) or not (0.0 < float(energy) <= 1.0):
                raise ValueError(
                    f"{name}: energy={energy!r} must be in (0, 1], the share of the kernel's "
                    "squared Frobenius norm to keep (e.g. 0.9)."
                )
            eps = math.sqrt(max(0.0, 1.0 - float(energy)))
            cores = dec.tt_matrix_factors(w, ins, outs, eps=eps)
            return tuple(g.shape[-1] for g in cores[:-1]) or 1
        if rank is None:
            return tuple(full) or 1
        r = _rank_arg(name, rank, d - 1, pad_ones=2)
        return r

    @classmethod
    def from_dense(
        cls,
        dense,
        rank=None,
        energy=None,
        in_modes="auto",
        out_modes="auto",
        num_modes: int = 3,
        implementation: str = "auto",
        name: str | None = None,
    ):
        """A ``TTDense`` from a built ``keras.layers.Dense`` by TT-SVD of its kernel (exact at
        the full TT-ranks, ``rank=None``); bias, activation, regularizers come along."""
        if not isinstance(dense, keras.layers.Dense) or isinstance(dense, TTDense):
            raise ValueError(
                f"{cls.__name__}.from_dense needs a keras.layers.Dense, got "
                f"{type(dense).__name__} '{getattr(dense, 'name', '?')}'."
            )
        if not dense.built:
            raise ValueError(
                f"{cls.__name__}.from_dense: Dense '{dense.name}' is not built; call it on an "
                "input or dense.build(input_shape) first."
            )
        w = np.asarray(ops.convert_to_numpy(dense.kernel), np.float64)
        if not np.all(np.isfinite(w)):
            raise ValueError(
                f"{cls.__name__}.from_dense: the kernel of Dense '{dense.name}' has NaN or Inf."
            )
        r = cls.rank_for(w, rank, energy, in_modes, out_modes, num_modes)
        d = _num_modes(cls.__name__, num_modes, in_modes, out_modes)
        ins = resolve_modes(w.shape[0], in_modes, d, cls.__name__, "in_modes")
        outs = resolve_modes(w.shape[1], out_modes, d, cls.__name__, "out_modes")
        layer = cls(
            units=dense.units,
            rank=r,
            in_modes=in_modes,
            out_modes=out_modes,
            num_modes=d,
            implementation=implementation,
            **copied_layer_args(dense, name),
        )
        layer.build((None, w.shape[0]))
        caps = _bond_ranks(r, dec.tt_matrix_max_ranks(ins, outs))
        cores = dec.tt_matrix_factors(w, ins, outs, ranks=caps or None)
        layer.set_cores(_pad_cores(cores, [1, *caps, 1]))
        if dense.use_bias:
            layer.bias.assign(ops.convert_to_numpy(dense.bias))
        return layer

    def relative_error(self, dense) -> float:
        """Relative Frobenius error of this layer's kernel against ``dense``'s."""
        return dec.relative_error(
            ops.convert_to_numpy(dense.kernel), ops.convert_to_numpy(self.full_kernel())
        )

    def to_dense(self, name: str | None = None) -> keras.layers.Dense:
        """The equivalent, built ``keras.layers.Dense``."""
        if not self.built:
            raise ValueError(f"{self._who}.to_dense: build the layer first.")
        kernel = ops.convert_to_numpy(self.full_kernel())
        dense = keras.layers.Dense(
            self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            name=name or self.name,
            dtype=self.dtype_policy,
        )
        dense.build((None, kernel.shape[0]))
        dense.kernel.assign(kernel)
        if self.use_bias:
            dense.bias.assign(ops.convert_to_numpy(self.bias))
        return dense

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "rank": list(self.rank) if isinstance(self.rank, tuple) else self.rank,
                "in_modes": self.in_modes
                if isinstance(self.in_modes, str)
                else list(self.in_modes),
                "out_modes": self._out_modes_arg
                if isinstance(self._out_modes_arg, str)
                else list(self._out_modes_arg),
                "num_modes": self.num_modes,
            }
        )
        config.update(weights_config(self))
        return config
