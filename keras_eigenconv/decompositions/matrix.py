"""Matrix decompositions of the eigen-filter layers (DeCEF, BasisConv, SVD), in NumPy.

Every layer's ``from_conv2d`` calls into this module, so the maths lives in one place and
is tested once. Conventions (``../shared/METHODS.md``): a ``Conv2D`` kernel ``W`` has the
Keras layout ``(kh, kw, C, N)``. Each ``*_spectrum`` function returns the energy (squared
singular values, descending) that a rank keeps, so that for every method

    kept_energy(r) = sum(spectrum[:r]) / sum(spectrum) = 1 - rel_err(r) ** 2,

where ``rel_err`` is the relative Frobenius error of the rebuilt kernel. ``energy`` in the
layer API always means this share of the kernel's squared Frobenius norm.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = [
    "as_float64_kernel",
    "basis_factors",
    "basis_spectrum",
    "decef_factors",
    "decef_spectrum",
    "energy_rank",
    "gram_svd",
    "singular_energies",
    "entropy_rank",
    "relative_error",
    "svd_channel_factors",
    "svd_channel_spectrum",
    "svd_spatial_factors",
    "svd_spatial_spectrum",
]


def as_float64_kernel(kernel, ndim: int = 4) -> np.ndarray:
    """Return ``kernel`` as a float64 array, checking its rank."""
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim != ndim:
        raise ValueError(f"Expected a {ndim}-D kernel, got shape {w.shape}.")
    return w


def energy_rank(spectrum: np.ndarray, energy: float) -> int:
    """Smallest ``r >= 1`` with ``sum(spectrum[:r]) / sum(spectrum) >= energy``.

    ``spectrum`` holds non-negative energies in descending order. A zero spectrum (an
    all-zero kernel) gives rank 1.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}.")
    e = np.asarray(spectrum, dtype=np.float64)
    total = e.sum()
    if total <= 0.0:
        return 1
    kept = np.cumsum(e) / total
    # A relative slack of 1e-12 keeps energy=1.0 from demanding the numerically-zero tail.
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, e.size))


def entropy_rank(singular_values: np.ndarray) -> float:
    """Roy-Vetterli effective rank ``exp(H(p))`` with ``p = s / sum(s)``; 0 for a zero matrix."""
    s = np.abs(np.asarray(singular_values, dtype=np.float64))
    total = s.sum()
    if total <= 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def relative_error(reference, approximation) -> float:
    """``||A - B||_F / ||A||_F`` (0 when both are zero)."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(approximation, dtype=np.float64)
    denom = np.linalg.norm(a)
    if denom == 0.0:
        return float(np.linalg.norm(b) > 0.0)
    return float(np.linalg.norm(a - b) / denom)


# --- fast SVD of tall or wide matrices ----------------------------------------------------

# Singular directions whose value is below this share of the largest carry no energy that
# float32 weights can hold; their left vectors are set to zero (the product stays exact).
_GRAM_RTOL = 1e-7


_EIGH_CACHE: dict = {}
_EIGH_CACHE_BYTES = 256 * 2**20  # whole-model conversions choose ranks for all layers first


def _gram_eigh(m: np.ndarray):
    """``eigh(M^T M)`` for a tall float64 ``M``, descending; recent ones are cached (keyed by
    the matrix bytes, 256 MiB at most) because rank selection and decomposition ask for the
    same one."""
    key = (m.shape, hashlib.blake2b(np.ascontiguousarray(m).data, digest_size=16).digest())
    hit = _EIGH_CACHE.get(key)
    if hit is None:
        lam, v = np.linalg.eigh(m.T @ m)
        hit = (np.clip(lam[::-1], 0.0, None), v[:, ::-1])
        _EIGH_CACHE[key] = hit
        while sum(e[1].nbytes for e in _EIGH_CACHE.values()) > _EIGH_CACHE_BYTES:
            _EIGH_CACHE.pop(next(iter(_EIGH_CACHE)))  # oldest first
    return hit


def singular_energies(matrix: np.ndarray) -> np.ndarray:
    """Squared singular values (descending) of ``matrix``, via the eigenvalues of its
    smaller Gram matrix: ``min(m, n)^2`` memory and several times faster than an SVD."""
    m = np.asarray(matrix, dtype=np.float64)
    return _gram_eigh(m if m.shape[0] >= m.shape[1] else m.T)[0].copy()


def gram_svd(matrix: np.ndarray, rank: int | None = None):
    """Truncated SVD ``matrix ~= U diag(s) V^T`` through the eigendecomposition of the
    smaller Gram matrix (for ``m >= n``: ``M^T M = V diag(s^2) V^T``, ``U = M V / s``).

    ``U diag(s) = M V`` holds exactly, so the rank-``r`` product is ``M V_r V_r^T``, the best
    rank-``r`` approximation, and at full rank it is ``M`` to float64 round-off. Singular
    vectors of the larger side for ``s < 1e-7 * s_max`` are zero (``U``'s columns for a tall
    matrix, ``V``'s rows for a wide one). Returns ``u (m, r)``, ``s (r,)``, ``vt (r, n)``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[0] < m.shape[1]:
        v, s, ut = gram_svd(m.T, rank)
        return ut.T, s, v.T
    lam, v = _gram_eigh(m)
    r = rank or m.shape[1]
    v = v[:, :r]
    s = np.sqrt(lam[:r])
    u = m @ v
    keep = s > _GRAM_RTOL * (s[0] if s.size else 0.0)
    u[:, keep] /= s[keep]
    u[:, ~keep] = 0.0
    s = np.where(keep, s, 0.0)
    return u, s, v.T.copy()


# --- DeCEF: per-input-channel eigen-filters (METHODS.md section 1) -----------------------


def _decef_svd(w: np.ndarray):
    kh, kw, c, n = w.shape
    # (C, kh*kw, N): one matrix per input channel, rows are the k*k taps.
    per_channel = np.transpose(w, (2, 0, 1, 3)).reshape(c, kh * kw, n)
    return np.linalg.svd(per_channel, full_matrices=False)  # u (C,kk,q) s (C,q) vt (C,q,N)


def decef_spectrum(kernel) -> np.ndarray:
    """Energy kept by eigen-filter ``j``, pooled over input channels: ``sum_c s[c, j]**2``."""
    _, s, _ = _decef_svd(as_float64_kernel(kernel))
    return (s**2).sum(axis=0)


def decef_factors(kernel, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-filters ``E (kh, kw, C, r)`` and combination ``A (1, 1, C*r, N)``.

    Per channel ``c``: ``W[:, :, c, :].reshape(kh*kw, N) = U S V^T``;
    ``E[:, :, c, j] = U[:, j]`` and ``A[c*r + j, :] = S[j] V^T[j, :]`` (TensorFlow's depthwise
    output order). Exact for ``rank = min(kh*kw, N)``.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    u, s, vt = _decef_svd(w)
    u, s, vt = u[:, :, :rank], s[:, :rank], vt[:, :rank, :]
    eigen = np.transpose(u.reshape(c, kh, kw, rank), (1, 2, 0, 3))
    comb = (s[:, :, None] * vt).reshape(1, 1, c * rank, n)
    return eigen, comb


# --- BasisConv: M whole-filter basis filters (METHODS.md section 2) ----------------------


def _filter_matrix(w: np.ndarray) -> np.ndarray:
    kh, kw, c, n = w.shape
    return w.reshape(kh * kw * c, n)  # column n is filter n, vectorized


def basis_spectrum(kernel) -> np.ndarray:
    """Squared singular values of ``H = W.reshape(kh*kw*C, N).T`` (uncentered)."""
    return singular_energies(_filter_matrix(as_float64_kernel(kernel)))


def basis_factors(kernel, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Basis ``F (kh, kw, C, M)`` and combination ``B (1, 1, M, N)``.

    ``H = W.reshape(kh*kw*C, N).T = U S V^T``; basis filters are the first ``M`` right
    singular vectors, ``F = V[:, :M]``; weights ``B = F^T H^T`` (projection of each filter on
    the basis). Exact at ``M = rank(H)``.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    wm = _filter_matrix(w)
    u, _, _ = gram_svd(wm, rank)  # left vectors of W_m = right of H
    basis = u[:, :rank]
    comb = basis.T @ wm
    return basis.reshape(kh, kw, c, rank), comb.reshape(1, 1, rank, n)


# --- SVD conv, channel and spatial (METHODS.md section 3) --------------------------------


def svd_channel_spectrum(kernel) -> np.ndarray:
    """Squared singular values of ``W.reshape(kh*kw*C, N)``."""
    return basis_spectrum(kernel)


def svd_channel_factors(kernel, rank: int):
    """``W.reshape(kh*kw*C, N) = U diag(s) V^T`` truncated to ``rank``.

    Returns ``u (kh, kw, C, R)``, ``s (R,)``, ``v (1, 1, R, N)``.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    u, s, vt = gram_svd(_filter_matrix(w), rank)
    return (
        u[:, :rank].reshape(kh, kw, c, rank),
        s[:rank].copy(),
        vt[:rank].reshape(1, 1, rank, n),
    )


def _spatial_matrix(w: np.ndarray) -> np.ndarray:
    kh, kw, c, n = w.shape
    # M[(h, c), (w, n)] = W[h, w, c, n]
    return np.transpose(w, (0, 2, 1, 3)).reshape(kh * c, kw * n)


def svd_spatial_spectrum(kernel) -> np.ndarray:
    """Squared singular values of the ``(kh*C) x (kw*N)`` unfolding."""
    return singular_energies(_spatial_matrix(as_float64_kernel(kernel)))


def svd_spatial_factors(kernel, rank: int):
    """``(kh*C) x (kw*N)`` unfolding ``= U diag(s) V^T`` truncated to ``rank``.

    Returns ``u (kh, 1, C, R)`` (a ``kh x 1`` conv), ``s (R,)`` and ``v (1, kw, R, N)``
    (a ``1 x kw`` conv).
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    u, s, vt = gram_svd(_spatial_matrix(w), rank)
    u = u[:, :rank].reshape(kh, 1, c, rank)
    v = np.transpose(vt[:rank].reshape(rank, kw, n), (1, 0, 2)).reshape(1, kw, rank, n)
    return u, s[:rank].copy(), v
