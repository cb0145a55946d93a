"""Tensor-train helpers shared by ``TTConv2D``, ``NaiveTTConv2D`` and ``TTDense``: mode
factorizations, rank arguments, core padding, contraction and rebuild (``keras.ops``), and
from-scratch Gaussian cores.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .base import check_rank


def resolve_modes(total: int, modes, num_modes: int, who: str, what: str) -> tuple[int, ...]:
    """Resolve a mode-factorization argument.

    Args:
        total: the dimension to factor (``C``, ``N``, ``M`` or ``units``).
        modes: ``"auto"`` or a list of positive ints whose product is ``total``.
        num_modes: the number of modes for ``"auto"``.
        who: the name used in error messages.
        what: the argument's name used in error messages (``"in_modes"``, ``"out_modes"``).

    Returns:
        ``modes`` as a tuple of ints, or ``balanced_modes(total, num_modes)`` for
        ``"auto"``.

    Raises:
        ValueError: when ``modes`` is another string, not a list of ints, or not a
            factorization of ``total``.
    """
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


# Ranks above a bond's full TT-rank add parameters, not accuracy (over-parameterization,
# as the paper's r0 = 22 for a 3x3 spatial core): accepted while the layer's factors hold at
# most max(the dense kernel's parameters, TT_PARAM_FLOOR), so a huge rank fails at once
# instead of allocating gigabytes.
TT_PARAM_FLOOR = 2**16


def check_tt_size(who: str, bond_ranks, full_ranks, factor_params: int, dense_params: int) -> None:
    """Refuse TT-ranks above what the layer can use.

    Ranks up to each bond's full TT-rank are always accepted. Above it they only add
    parameters, so they are accepted while the factors hold at most
    ``max(dense_params, TT_PARAM_FLOOR)`` parameters.

    Args:
        who: the layer named in the error message.
        bond_ranks: the requested per-bond ranks.
        full_ranks: the full (exact) TT-ranks of those bonds.
        factor_params: the parameter count of the factors at ``bond_ranks``.
        dense_params: the parameter count of the dense kernel the layer stands for.

    Raises:
        ValueError: when a rank exceeds its full rank and the factors would be larger than
            that limit (the message gives the full ranks to pass instead).
    """
    over = [i for i, (r, f) in enumerate(zip(bond_ranks, full_ranks)) if r > f]
    limit = max(int(dense_params), TT_PARAM_FLOOR)
    if over and factor_params > limit:
        raise ValueError(
            f"{who}: TT-ranks {list(bond_ranks)} exceed the full TT-ranks "
            f"{list(full_ranks)} (the most this layer can use) at bond(s) {over}, and would "
            f"hold {factor_params:,} parameters, more than the {dense_params:,} of the "
            f"dense kernel (limit {limit:,}). Pass ranks at most {list(full_ranks)}, or "
            "energy=... to choose them."
        )


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
