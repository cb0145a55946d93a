"""Tensor decompositions of the TT, Tucker-2 and CP layers (NumPy, float64).

Conventions: a ``Conv2D`` kernel ``W`` has the Keras layout ``(kh, kw, C, N)`` (``C`` input
channels, ``N`` filters); a ``Dense`` kernel is ``(M, N)``. Mode factorizations are
C-order: ``c = (c1, ..., cd)`` with ``c1`` the most significant digit.

- TT-SVD (Oseledets 2011) with fixed maximal ranks or a relative error bound ``eps``
  (each of the ``d-1`` truncations drops at most ``eps/sqrt(d-1) * ||A||``, so the result is
  within ``eps * ||A||``). TensorLy's ``tensor_train`` has fixed ranks only, hence our own.
- TT-matrix (Novikov et al. 2015) and TT-conv (Garipov et al. 2016) cores by TT-SVD of the
  reshaped kernel; the "naive" TT of the 4-D kernel with modes ``(kh, kw, C, N)``.
- Tucker-2 (Kim et al. 2016) by HOSVD of the two channel unfoldings (closed form, exact at
  full ranks).
- CP (Lebedev et al. 2015) by TensorLy's ``parafac`` (ALS, SVD init), and by an exact
  construction at the rank ``kh*kw*min(C, N)``, which always suffices.
- Empirical VBMF rank (Nakajima et al. 2013, analytic solution), as Kim et al. use it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .matrix import (
    _energies,
    _left_vectors,
    _shared,
    _tall,
    _tall_gram,
    as_float64_kernel,
    energy_rank,
    relative_error,
)

__all__ = [
    "balanced_modes",
    "cp_factors",
    "cp_full",
    "cp_max_rank",
    "energy_ranks_tucker2",
    "tt_conv_factors",
    "tt_conv_full",
    "tt_conv_max_ranks",
    "tt_full",
    "tt_matrix_factors",
    "tt_matrix_full",
    "tt_matrix_max_ranks",
    "tt_max_ranks",
    "tt_naive_conv_factors",
    "tt_naive_conv_full",
    "tt_svd",
    "tucker2_factors",
    "tucker2_full",
    "tucker2_spectra",
    "vbmf_rank",
]


# --- mode factorizations -----------------------------------------------------------------


def balanced_modes(n: int, d: int) -> tuple[int, ...]:
    """Factor ``n`` into ``d`` modes as equal as possible.

    Greedy: each prime factor, largest first, multiplies the currently smallest mode.

    Args:
        n: the number to factor, ``>= 1``.
        d: the number of modes, ``>= 1``.

    Returns:
        A tuple of ``d`` ints, largest first, with ``prod(result) == n`` (1s if ``n`` has
        fewer than ``d`` prime factors).

    Raises:
        ValueError: when ``n < 1`` or ``d < 1``.
    """
    n, d = int(n), int(d)
    if n < 1 or d < 1:
        raise ValueError(f"balanced_modes needs n >= 1 and d >= 1, got n={n}, d={d}.")
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    modes = [1] * d
    for q in sorted(primes, reverse=True):
        modes[int(np.argmin(modes))] *= q
    return tuple(sorted(modes, reverse=True))


# --- TT-SVD --------------------------------------------------------------------------------


def tt_max_ranks(dims: Sequence[int]) -> list[int]:
    """Full (exact) TT-ranks of a tensor of shape ``dims``.

    Inner bond ``i`` (``i = 1..d-1``) has the full rank ``min(prod dims[:i], prod dims[i:])``.

    Args:
        dims: the tensor's shape ``(n_1, ..., n_d)``.

    Returns:
        A list of the ``d-1`` inner TT-ranks.
    """
    dims = [int(x) for x in dims]
    return [min(math.prod(dims[: i + 1]), math.prod(dims[i + 1 :])) for i in range(len(dims) - 1)]


def tt_svd(tensor, ranks: Sequence[int] | None = None, eps: float | None = None) -> list:
    """TT-SVD (Oseledets 2011) of a tensor into tensor-train cores.

    Cores ``G_i (r_{i-1}, n_i, r_i)``, ``r_0 = r_d = 1``, with
    ``A[i1, ..., id] = G_1[:, i1] G_2[:, i2] ... G_d[:, id]``. ``ranks`` caps the ``d-1``
    inner ranks; ``eps`` truncates each SVD so the relative Frobenius error is at most
    ``eps`` (each of the ``d-1`` truncations drops at most ``eps/sqrt(d-1) * ||A||``); both
    may be given (the smaller rank wins). With neither the decomposition is exact at the
    full ranks ``tt_max_ranks(shape)``.

    Args:
        tensor: array-like with at least 2 modes, shape ``(n_1, ..., n_d)``.
        ranks: ``d-1`` ints capping the inner TT-ranks, or ``None``.
        eps: relative Frobenius error bound, or ``None``.

    Returns:
        A list of ``d`` float64 cores ``(r_{i-1}, n_i, r_i)``.

    Raises:
        ValueError: when ``tensor`` has fewer than 2 modes, or ``ranks`` does not have
            ``d-1`` entries.
    """
    a = np.asarray(tensor, dtype=np.float64)
    dims, d = a.shape, a.ndim
    if d < 2:
        raise ValueError(f"tt_svd needs a tensor with at least 2 modes, got shape {dims}.")
    if ranks is not None and len(ranks) != d - 1:
        raise ValueError(f"tt_svd: {d}-way tensor needs {d - 1} ranks, got {list(ranks)}.")
    delta = None
    if eps is not None:
        delta = float(eps) / math.sqrt(d - 1) * np.linalg.norm(a)
    cores, r_prev, rest = [], 1, a
    for i in range(d - 1):
        u, s, vt = np.linalg.svd(rest.reshape(r_prev * dims[i], -1), full_matrices=False)
        r = len(s)
        if delta is not None:
            tail = np.sqrt(np.cumsum((s**2)[::-1]))[::-1]  # tail[j] = ||s[j:]||
            r = max(1, int(np.sum(tail > delta)))
        if ranks is not None:
            r = max(1, min(r, int(ranks[i])))
        cores.append(u[:, :r].reshape(r_prev, dims[i], r))
        rest = s[:r, None] * vt[:r]
        r_prev = r
    cores.append(rest.reshape(r_prev, dims[-1], 1))
    return cores


def tt_full(cores) -> np.ndarray:
    """Rebuild a tensor from its TT cores.

    Args:
        cores: a list of cores ``(r_{i-1}, n_i, r_i)`` with ``r_0 = r_d = 1``.

    Returns:
        The float64 tensor of shape ``(n_1, ..., n_d)``.
    """
    out = np.asarray(cores[0], dtype=np.float64)  # (1, n1, r1)
    dims = [out.shape[1]]
    for g in cores[1:]:
        g = np.asarray(g, dtype=np.float64)
        out = np.tensordot(out, g, axes=([out.ndim - 1], [0]))
        dims.append(g.shape[1])
    return out.reshape(dims)


def _check_modes(total: int, modes: Sequence[int], what: str) -> tuple[int, ...]:
    modes = tuple(int(m) for m in modes)
    if any(m < 1 for m in modes) or math.prod(modes) != total:
        raise ValueError(
            f"{what} modes {modes} must be positive with product {total} (got product "
            f"{math.prod(modes)})."
        )
    return modes


# --- TT-matrix (TT-FC, Novikov et al. 2015) ----------------------------------------------


def tt_matrix_max_ranks(in_modes, out_modes) -> list[int]:
    """Full TT-ranks ``r_1..r_{d-1}`` of an ``(M, N)`` TT-matrix with these modes.

    Args:
        in_modes: the factorization ``(m_1, ..., m_d)`` of ``M``.
        out_modes: the factorization ``(n_1, ..., n_d)`` of ``N``.

    Returns:
        A list of the ``d-1`` inner TT-ranks.
    """
    return tt_max_ranks([m * n for m, n in zip(in_modes, out_modes)])


def tt_matrix_factors(matrix, in_modes, out_modes, ranks=None, eps=None) -> list:
    """TT-matrix (TT-FC, Novikov et al. 2015) cores of a ``Dense`` kernel by TT-SVD.

    ``W[(i1..id), (j1..jd)] = G_1[:, i1, j1] ... G_d[:, id, jd]`` with cores
    ``G_i (r_{i-1}, m_i, n_i, r_i)``, ``r_0 = r_d = 1``; exact at ``tt_matrix_max_ranks``.

    Args:
        matrix: the kernel ``W (M, N)``.
        in_modes: factorization of ``M`` (C-order, ``i1`` the most significant digit).
        out_modes: factorization of ``N``, the same length as ``in_modes``.
        ranks: the ``d-1`` inner ranks (caps), or ``None``.
        eps: relative Frobenius error bound (as in ``tt_svd``), or ``None``.

    Returns:
        A list of ``d`` float64 cores ``(r_{i-1}, m_i, n_i, r_i)``.

    Raises:
        ValueError: when ``matrix`` is not 2-D, a mode list is not a positive factorization
            of its dimension, or the mode lists differ in length.
    """
    w = as_float64_kernel(matrix, ndim=2)
    in_modes = _check_modes(w.shape[0], in_modes, "input")
    out_modes = _check_modes(w.shape[1], out_modes, "output")
    if len(in_modes) != len(out_modes):
        raise ValueError(f"in_modes {in_modes} and out_modes {out_modes} differ in length.")
    d = len(in_modes)
    t = w.reshape(in_modes + out_modes)
    t = np.transpose(t, [p for i in range(d) for p in (i, d + i)])
    t = t.reshape([m * n for m, n in zip(in_modes, out_modes)])
    cores = tt_svd(t, ranks=ranks, eps=eps) if d > 1 else [t.reshape(1, -1, 1)]
    return [g.reshape(g.shape[0], m, n, g.shape[2]) for g, m, n in zip(cores, in_modes, out_modes)]


def tt_matrix_full(cores) -> np.ndarray:
    """Rebuild a ``Dense`` kernel ``W (M, N)`` from TT-matrix cores.

    Args:
        cores: a list of cores ``(r_{i-1}, m_i, n_i, r_i)``.

    Returns:
        The float64 matrix ``(prod m_i, prod n_i)``.
    """
    in_modes = [g.shape[1] for g in cores]
    out_modes = [g.shape[2] for g in cores]
    d = len(cores)
    t = tt_full([np.asarray(g).reshape(g.shape[0], -1, g.shape[3]) for g in cores])
    t = t.reshape([x for m, n in zip(in_modes, out_modes) for x in (m, n)])
    t = np.transpose(t, list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2)))
    return t.reshape(math.prod(in_modes), math.prod(out_modes))


# --- TT-conv (Garipov et al. 2016) and the naive 4-D TT ----------------------------------


def tt_conv_max_ranks(kernel_size, in_modes, out_modes) -> list[int]:
    """Full TT-ranks ``r_0..r_{d-1}`` of a TT-conv kernel (``r_d = 1``).

    Args:
        kernel_size: ``(kh, kw)``.
        in_modes: the factorization ``(c_1, ..., c_d)`` of ``C``.
        out_modes: the factorization ``(s_1, ..., s_d)`` of ``N``.

    Returns:
        A list of the ``d`` TT-ranks ``r_0..r_{d-1}``.
    """
    kh, kw = kernel_size
    return tt_max_ranks([kh * kw] + [c * s for c, s in zip(in_modes, out_modes)])


def tt_conv_factors(kernel, in_modes, out_modes, ranks=None, eps=None):
    """TT-conv (Garipov et al. 2016) factors of a ``Conv2D`` kernel.

    ``W[x, y, c, s] = G0[x, y, :] G1[:, c1, s1, :] ... Gd[:, cd, sd, :]``: one spatial core
    shared by all channels, by TT-SVD of the tensor with modes
    ``(kh*kw, c1*s1, ..., cd*sd)``; exact at ``tt_conv_max_ranks``.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        in_modes: factorization of ``C`` (C-order, ``c1`` the most significant digit).
        out_modes: factorization of ``N``, the same length as ``in_modes``.
        ranks: the ``d`` caps ``r_0..r_{d-1}``, or ``None``.
        eps: relative Frobenius error bound (as in ``tt_svd``), or ``None``.

    Returns:
        A tuple ``(G0, cores)``: the spatial core ``G0 (kh, kw, r0)`` and the list of cores
        ``G_i (r_{i-1}, c_i, s_i, r_i)``, ``r_d = 1``.

    Raises:
        ValueError: when ``kernel`` is not 4-D, a mode list is not a positive factorization
            of its dimension, or the mode lists differ in length.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    in_modes = _check_modes(c, in_modes, "input-channel")
    out_modes = _check_modes(n, out_modes, "filter")
    if len(in_modes) != len(out_modes):
        raise ValueError(f"in_modes {in_modes} and out_modes {out_modes} differ in length.")
    d = len(in_modes)
    t = w.reshape((kh * kw,) + in_modes + out_modes)
    t = np.transpose(t, [0] + [p for i in range(d) for p in (1 + i, 1 + d + i)])
    t = t.reshape([kh * kw] + [a * b for a, b in zip(in_modes, out_modes)])
    cores = tt_svd(t, ranks=ranks, eps=eps)
    spatial = cores[0].reshape(kh, kw, -1)
    rest = [
        g.reshape(g.shape[0], a, b, g.shape[2]) for g, a, b in zip(cores[1:], in_modes, out_modes)
    ]
    return spatial, rest


def tt_conv_full(spatial, cores) -> np.ndarray:
    """Rebuild a ``Conv2D`` kernel from TT-conv factors.

    Args:
        spatial: the spatial core ``G0 (kh, kw, r0)``.
        cores: the list of cores ``G_i (r_{i-1}, c_i, s_i, r_i)``.

    Returns:
        The float64 kernel ``W (kh, kw, C, N)``.
    """
    spatial = np.asarray(spatial, dtype=np.float64)
    kh, kw, r0 = spatial.shape
    in_modes = [g.shape[1] for g in cores]
    out_modes = [g.shape[2] for g in cores]
    d = len(cores)
    t = tt_full(
        [spatial.reshape(1, kh * kw, r0)]
        + [np.asarray(g).reshape(g.shape[0], -1, g.shape[3]) for g in cores]
    )
    t = t.reshape([kh * kw] + [x for a, b in zip(in_modes, out_modes) for x in (a, b)])
    t = np.transpose(t, [0] + list(range(1, 2 * d + 1, 2)) + list(range(2, 2 * d + 1, 2)))
    return t.reshape(kh, kw, math.prod(in_modes), math.prod(out_modes))


def tt_naive_conv_factors(kernel, ranks=None, eps=None) -> list:
    """The "naive" TT of a ``Conv2D`` kernel with modes ``(kh, kw, C, N)``.

    The baseline of Garipov et al.: plain TT-SVD of the 4-D kernel.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        ranks: the 3 caps ``(r1, r2, r3)``, or ``None``.
        eps: relative Frobenius error bound (as in ``tt_svd``), or ``None``.

    Returns:
        A list of 4 cores ``(1, kh, r1), (r1, kw, r2), (r2, C, r3), (r3, N, 1)``.

    Raises:
        ValueError: when ``kernel`` is not 4-D, or ``ranks`` does not have 3 entries.
    """
    return tt_svd(as_float64_kernel(kernel), ranks=ranks, eps=eps)


def tt_naive_conv_full(cores) -> np.ndarray:
    """Rebuild a ``Conv2D`` kernel from naive TT cores.

    Args:
        cores: the 4 cores of ``tt_naive_conv_factors``.

    Returns:
        The float64 kernel ``W (kh, kw, C, N)``.
    """
    return tt_full(cores)


# --- Tucker-2 (Kim et al. 2016) ----------------------------------------------------------


def _unfoldings(w: np.ndarray):
    kh, kw, c, n = w.shape
    return (
        np.transpose(w, (2, 0, 1, 3)).reshape(c, -1),  # input-channel unfolding (C, kh*kw*N)
        np.transpose(w, (3, 0, 1, 2)).reshape(n, -1),  # filter unfolding (N, kh*kw*C)
    )


def tucker2_spectra(kernel) -> tuple[np.ndarray, np.ndarray]:
    """Squared singular values of the two channel unfoldings of a ``Conv2D`` kernel.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.

    Returns:
        A tuple ``(s_in, s_out)``: the energies (descending) of the input-channel unfolding
        ``(C, kh*kw*N)`` and of the filter unfolding ``(N, kh*kw*C)``.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    # inside shared_work() the spectra and the factors share the Gram matrices
    return _shared(
        "tucker2_spectra",
        w,
        lambda: tuple(_energies(_tall(m), gram) for m, gram in _tucker2_grams(w)),
    )


def _tucker2_grams(w: np.ndarray) -> tuple:
    """``((A, G_A), (B, G_B))``: the two channel unfoldings and the Gram matrices of their
    tall orientations (``M^T M`` for the tall ``M`` of ``A`` or ``A^T``; shared inside
    ``shared_work()``)."""
    a, b = _unfoldings(w)
    grams = _shared("tucker2_grams", w, lambda: (_tall_gram(a)[1], _tall_gram(b)[1]))
    return (a, grams[0]), (b, grams[1])


def tucker2_factors(kernel, ranks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 (Kim et al. 2016) of a ``Conv2D`` kernel by HOSVD.

    ``W[x, y, c, n] = sum U[c, a] G[x, y, a, b] V[n, b]`` with ``U``, ``V`` the leading left
    singular vectors of the channel unfoldings and ``G = W x_3 U^T x_4 V^T`` (closed form;
    exact when ``R1``, ``R2`` reach the unfoldings' ranks).

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        ranks: an int (``R1 = R2``) or a pair ``(R1, R2)``.

    Returns:
        A tuple of conv kernels ``(first, core, last)``: ``first (1, 1, C, R1)``,
        ``core (kh, kw, R1, R2)`` and ``last (1, 1, R2, N)``.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    r1, r2 = (int(ranks), int(ranks)) if np.isscalar(ranks) else (int(x) for x in ranks)
    (a, gram_a), (b, gram_b) = _tucker2_grams(w)
    # left singular vectors of the channel unfoldings, from their Gram matrices
    u = _left_vectors(a, r1, gram_a)
    v = _left_vectors(b, r2, gram_b)
    core = np.einsum("xycn,ca,nb->xyab", w, u, v, optimize=True)
    return u[None, None], core, v.T[None, None]


def tucker2_full(first, core, last) -> np.ndarray:
    """Rebuild a ``Conv2D`` kernel from Tucker-2 conv kernels.

    Args:
        first: the 1x1 kernel ``(1, 1, C, R1)``.
        core: the ``kh x kw`` kernel ``(kh, kw, R1, R2)``.
        last: the 1x1 kernel ``(1, 1, R2, N)``.

    Returns:
        The kernel ``W (kh, kw, C, N)``.
    """
    return np.einsum("ca,xyab,bn->xycn", first[0, 0], core, last[0, 0])


# --- CP (Lebedev et al. 2015) ------------------------------------------------------------


def cp_max_rank(kernel_shape) -> int:
    """A CP rank that always suffices for a kernel of this shape: ``kh*kw*min(C, N)``.

    Args:
        kernel_shape: ``(kh, kw, C, N)``.

    Returns:
        The rank as an int.
    """
    kh, kw, c, n = kernel_shape
    return int(kh * kw * min(c, n))


def _cp_exact(w: np.ndarray):
    """Exact CP at rank ``kh*kw*min(C, N)``: one term per ``(x, y, c)`` (or ``(x, y, n)``)."""
    kh, kw, c, n = w.shape
    swap = n < c
    if swap:
        w = np.transpose(w, (0, 1, 3, 2))
        c, n = n, c
    r = kh * kw * c
    idx = np.arange(r)
    x, y, ch = np.unravel_index(idx, (kh, kw, c))
    fx = np.zeros((kh, r))
    fy = np.zeros((kw, r))
    fc = np.zeros((c, r))
    fx[x, idx] = 1.0
    fy[y, idx] = 1.0
    fc[ch, idx] = 1.0
    fn = w.reshape(r, n).T  # (N, r): term (x, y, c) carries W[x, y, c, :]
    return (fx, fy, fn, fc) if swap else (fx, fy, fc, fn)


def cp_factors(kernel, rank: int, n_iter_max: int = 300, tol: float = 1e-10, seed: int = 0):
    """CP (Lebedev et al. 2015) of a ``Conv2D`` kernel, as conv kernels.

    ``W[x, y, c, n] = sum_r Kx[x, r] Ky[y, r] Kc[c, r] Kn[n, r]``. At
    ``rank >= cp_max_rank`` an exact construction is used (one term per ``(x, y, c)``, or
    per ``(x, y, n)`` when ``N < C``, padded with zero terms); below it, TensorLy's
    ``parafac`` (ALS, SVD init, ``seed``), with the weights spread evenly over the four
    factors. CP is not exact in general: check the returned error.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        rank: the CP rank ``R >= 1``.
        n_iter_max: the maximal number of ALS iterations.
        tol: the ALS convergence tolerance.
        seed: the random state of ``parafac``.

    Returns:
        A tuple ``(first, vertical, horizontal, last, error)``: ``first (1, 1, C, R)``,
        the depthwise kernels ``vertical (kh, 1, R, 1)`` and ``horizontal (1, kw, R, 1)``,
        ``last (1, 1, R, N)`` and the relative Frobenius error of the rebuilt kernel.

    Raises:
        ValueError: when ``kernel`` is not 4-D or ``rank < 1``.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"cp_factors: rank must be >= 1, got {rank}.")
    full = cp_max_rank(w.shape)
    if rank >= full:
        fx, fy, fc, fn = (np.pad(f, ((0, 0), (0, rank - full))) for f in _cp_exact(w))
    else:
        import tensorly as tl
        from tensorly.decomposition import parafac

        with tl.backend_context("numpy"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # SVD init padded at small modes
            cp = parafac(
                w,
                rank,
                n_iter_max=n_iter_max,
                init="svd",
                tol=tol,
                random_state=seed,
                normalize_factors=True,
            )
        weights, (fx, fy, fc, fn) = cp
        # spread the weights evenly over the four factors (balanced scales train better)
        scale = np.abs(weights) ** 0.25
        sign = np.sign(weights)
        fx, fy, fc, fn = fx * scale * sign, fy * scale, fc * scale, fn * scale
    factors = (
        fc[None, None],
        fx[:, None, :, None],
        fy[None, :, :, None],
        fn.T[None, None],
    )
    err = relative_error(w, cp_full(*factors))
    return (*factors, err)


def cp_full(first, vertical, horizontal, last) -> np.ndarray:
    """Rebuild a ``Conv2D`` kernel from the CP conv kernels.

    Args:
        first: the 1x1 kernel ``(1, 1, C, R)``.
        vertical: the depthwise kernel ``(kh, 1, R, 1)``.
        horizontal: the depthwise kernel ``(1, kw, R, 1)``.
        last: the 1x1 kernel ``(1, 1, R, N)``.

    Returns:
        The kernel ``W (kh, kw, C, N)``.
    """
    return np.einsum(
        "cr,xr,yr,rn->xycn", first[0, 0], vertical[:, 0, :, 0], horizontal[0, :, :, 0], last[0, 0]
    )


# --- VBMF rank (Nakajima et al. 2013) ----------------------------------------------------


def _tau(x, alpha):
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_objective(sigma2, big_l, big_m, s, residual, xubar):
    h = len(s)
    alpha = big_l / big_m
    x = s**2 / (big_m * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    # a zero singular value adds z - log z = log(M sigma^2) - log(0): the infinite part does
    # not depend on sigma^2, so it is dropped (the minimizer is the same, without log(0))
    zero = z2 <= 0
    return (
        np.sum(z2[~zero] - np.log(z2[~zero]))
        + np.count_nonzero(zero) * np.log(big_m * sigma2)
        + np.sum(z1 - tau_z1)
        + np.sum(np.log((tau_z1 + 1) / z1))
        + alpha * np.sum(np.log(tau_z1 / alpha + 1))
        + residual / (big_m * sigma2)
        + (big_l - h) * np.log(sigma2)
    )


def vbmf_rank(matrix) -> int:
    """Rank estimated by empirical variational Bayes matrix factorization (EVBMF).

    The analytic global solution of Nakajima, Sugiyama, Babacan and Tomioka (JMLR 2013) with
    the noise variance ``sigma^2`` estimated by minimizing the free energy (bounded scalar
    search); a singular value survives when ``s > sqrt(M sigma^2 (1 + tau)(1 + alpha / tau))``
    with ``alpha = L/M`` (``L <= M``) and ``tau = 2.5129 sqrt(alpha)``. Kim et al. 2016 apply
    it to the two channel unfoldings of a conv kernel to pick Tucker-2 ranks.

    Args:
        matrix: a finite 2-D array ``(L, M)`` (either orientation).

    Returns:
        The number of surviving components (0 for pure noise).

    Raises:
        ValueError: when ``matrix`` is not a finite, non-empty 2-D array.
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(matrix, dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 1 or not np.all(np.isfinite(y)):
        raise ValueError(f"vbmf_rank needs a finite 2-D matrix, got shape {y.shape}.")
    if y.shape[0] > y.shape[1]:
        y = y.T
    big_l, big_m = y.shape
    s = np.linalg.svd(y, compute_uv=False)
    if s[0] == 0.0:
        return 0
    h = big_l
    alpha = big_l / big_m
    tauubar = 2.5129 * np.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    residual = 0.0  # H = L: every singular value is kept in the model
    eh_ub = int(min(np.ceil(big_l / (1 + alpha)) - 1, h)) - 1
    upper = (np.sum(s**2) + residual) / (big_l * big_m)
    tail = s[eh_ub + 1 :] if eh_ub + 1 < h else s[-1:]
    lower = max(tail[0] ** 2 / (big_m * xubar), np.mean(tail**2) / big_m)
    lower = max(lower, upper * 1e-12)
    if lower >= upper:
        sigma2 = upper
    else:
        res = minimize_scalar(
            _evb_objective,
            args=(big_l, big_m, s, residual, xubar),
            bounds=(lower, upper),
            method="bounded",
            # relative to sigma^2 (>= lower): the default absolute 1e-5 stopped the search at
            # once for matrices with entries ~1e-3 (sigma^2 ~ 1e-6), so the rank of c * Y
            # depended on c
            options={"xatol": 1e-6 * lower},
        )
        sigma2 = float(res.x)
    threshold = np.sqrt(big_m * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(np.sum(s > threshold))


def energy_ranks_tucker2(kernel, energy: float) -> tuple[int, int]:
    """Tucker-2 ranks that keep a share of each channel unfolding's energy.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        energy: the share of each unfolding's squared Frobenius norm to keep, in ``(0, 1]``.

    Returns:
        ``(R1, R2)``: the smallest ranks keeping ``energy`` of the input-channel and of the
        filter unfolding.

    Raises:
        ValueError: when ``kernel`` is not 4-D or ``energy`` is not in ``(0, 1]``.
    """
    s_in, s_out = tucker2_spectra(kernel)
    return energy_rank(s_in, energy), energy_rank(s_out, energy)
