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

import numpy as np

__all__ = [
    "as_float64_kernel",
    "basis_factors",
    "basis_spectrum",
    "decef_factors",
    "decef_spectrum",
    "energy_rank",
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
    return np.linalg.svd(_filter_matrix(as_float64_kernel(kernel)), compute_uv=False) ** 2


def basis_factors(kernel, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Basis ``F (kh, kw, C, M)`` and combination ``B (1, 1, M, N)``.

    ``H = W.reshape(kh*kw*C, N).T = U S V^T``; basis filters are the first ``M`` right
    singular vectors, ``F = V[:, :M]``; weights ``B = F^T H^T`` (projection of each filter on
    the basis). Exact at ``M = rank(H)``.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    wm = _filter_matrix(w)
    u, _, _ = np.linalg.svd(wm, full_matrices=False)  # left vectors of W_m = right of H
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
    u, s, vt = np.linalg.svd(_filter_matrix(w), full_matrices=False)
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
    return np.linalg.svd(_spatial_matrix(as_float64_kernel(kernel)), compute_uv=False) ** 2


def svd_spatial_factors(kernel, rank: int):
    """``(kh*C) x (kw*N)`` unfolding ``= U diag(s) V^T`` truncated to ``rank``.

    Returns ``u (kh, 1, C, R)`` (a ``kh x 1`` conv), ``s (R,)`` and ``v (1, kw, R, N)``
    (a ``1 x kw`` conv).
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    u, s, vt = np.linalg.svd(_spatial_matrix(w), full_matrices=False)
    u = u[:, :rank].reshape(kh, 1, c, rank)
    v = np.transpose(vt[:rank].reshape(rank, kw, n), (1, 0, 2)).reshape(1, kw, rank, n)
    return u, s[:rank].copy(), v
