"""Data-aware low-rank factorizations: minimize the error of a layer's *responses* on data.

A linear layer maps input rows ``x`` (a ``kh*kw*C`` patch, or a feature vector) to responses
``y = x W`` (``W`` of shape ``(D, N)``). On calibration data ``X`` (rows ``x``) the error of
an approximation ``W_r`` is ``||X (W - W_r)||_F``; these functions minimize it from the
second moments of the data, which stream over batches (sums, never all activations):

- ``response_projection``: ``W_r = W P P^T`` with ``P`` the top-``R`` eigenvectors of the
  response Gram ``G = Y^T Y = W^T S W`` (Zhang et al. 2015, "Accelerating very deep
  convolutional networks", the linear case). Among rank-``R`` matrices it is the exact
  minimizer of ``||X W - X W_r||_F`` (the best rank-``R`` approximation of ``X W``), and it
  needs only the ``N x N`` Gram of the responses. Factors ``A = W P`` (``D x R``),
  ``B = P^T``.
- ``whitened_low_rank``: the same optimum written on the input side: with ``S = X^T X =
  L L^T``, truncate the SVD of ``L^T W`` to ``R`` and un-whiten: ``A = L^{-T} U_R``,
  ``B = diag(s_R) V_R^T``. Used where the method's structure constrains the input side
  (DeCEF per channel, spatial SVD per row of taps, Tucker-2's input channels) with the
  matching block of input statistics.
- ``least_squares_refit``: ``min ||Y - [Z 1] [K; b]||_F`` in closed form from ``Z^T Z``,
  ``Z^T Y`` and the sums: the refit of a layer's last linear factor (and its bias) on the
  responses of the original network, given the compressed network's inputs (asymmetric
  reconstruction, Zhang et al. 2015: errors do not pile up with depth).

All return the *energies* (squared singular values of the whitened matrix, descending):
``sum(e[R:]) / sum(e)`` is the squared relative response error at rank ``R``, which the
converter uses to choose ranks and spread budgets by measured output error.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "basis_data_factors",
    "decef_data_factors",
    "least_squares_refit",
    "psd_sqrt",
    "response_projection",
    "svd_channel_data_factors",
    "svd_spatial_data_factors",
    "tucker2_data_factors",
    "whitened_low_rank",
]


def _ridge(s: np.ndarray, ridge: float) -> float:
    scale = float(np.trace(s)) / max(s.shape[0], 1)
    return ridge * scale if scale > 0 else ridge


def psd_sqrt(s: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric square root of a positive semi-definite matrix and of its inverse.

    Args:
        s: a symmetric PSD matrix ``(D, D)`` (a second-moment matrix ``X^T X``).
        ridge: added to the diagonal, relative to the mean eigenvalue (so rank-deficient
            statistics stay invertible).

    Returns:
        ``(s^{1/2}, s^{-1/2})`` of ``s + ridge * mean(diag(s)) * I``.
    """
    s = np.asarray(s, np.float64)
    s = 0.5 * (s + s.T)
    lam, q = np.linalg.eigh(s + _ridge(s, ridge) * np.eye(s.shape[0]))
    lam = np.maximum(lam, 1e-300)
    root = np.sqrt(lam)
    return (q * root) @ q.T, (q / root) @ q.T


def whitened_low_rank(
    w: np.ndarray, s: np.ndarray, rank: int | None, ridge: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-``R`` factors of ``w`` minimizing ``||X (w - a b)||_F`` for ``S = X^T X``.

    Whitening: ``w~ = S^{1/2} w`` (the symmetric root), truncated SVD
    ``w~ = U diag(s) V^T``, then ``a = S^{-1/2} U_R``, ``b = diag(s_R) V_R^T``; ``X a b`` is
    the best rank-``R`` approximation of ``X w``.

    Args:
        w: the matrix ``(D, N)``.
        s: the input second moments ``(D, D)``.
        rank: ``R`` (``None``: the full rank ``min(D, N)``).
        ridge: relative diagonal regularization of ``s`` (see ``psd_sqrt``).

    Returns:
        ``(a (D, R), b (R, N), energies)``; ``energies`` are all ``min(D, N)`` squared
        singular values of the whitened matrix, descending.
    """
    w = np.asarray(w, np.float64)
    root, inv_root = psd_sqrt(s, ridge)
    u, sv, vt = np.linalg.svd(root @ w, full_matrices=False)
    r = len(sv) if rank is None else int(rank)
    return inv_root @ u[:, :r], sv[:r, None] * vt[:r], sv**2


def response_projection(
    w: np.ndarray, gram: np.ndarray, rank: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w ~ (w P) P^T`` with ``P`` the top-``R`` eigenvectors of the response Gram.

    ``gram = Y^T Y`` for the responses ``Y = X w`` (equivalently ``w^T S w``). ``X w P P^T``
    is the best rank-``R`` approximation of ``X w``: the exact minimizer of
    ``||X w - X w_r||_F`` over rank-``R`` ``w_r``.

    Args:
        w: the matrix ``(D, N)``.
        gram: the response Gram ``(N, N)``.
        rank: ``R`` (``None``: ``min(D, N)``).

    Returns:
        ``(a = w P (D, R), b = P^T (R, N), energies)``; ``energies`` are the eigenvalues of
        ``gram``, descending (at most ``min(D, N)`` of them).
    """
    w = np.asarray(w, np.float64)
    g = np.asarray(gram, np.float64)
    lam, p = np.linalg.eigh(0.5 * (g + g.T))
    order = np.argsort(lam)[::-1][: min(w.shape)]
    lam, p = np.maximum(lam[order], 0.0), p[:, order]
    r = len(lam) if rank is None else int(rank)
    return w @ p[:, :r], p[:, :r].T, lam


def least_squares_refit(
    zz: np.ndarray,
    zy: np.ndarray,
    z_sum: np.ndarray,
    y_sum: np.ndarray,
    count: float,
    ridge: float = 1e-6,
    intercept: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Closed-form ``min_{K, b} ||Y - Z K - 1 b^T||_F`` from streamed sums.

    Args:
        zz: ``Z^T Z`` ``(P, P)``.
        zy: ``Z^T Y`` ``(P, N)``.
        z_sum: ``sum of the rows of Z`` ``(P,)``.
        y_sum: ``sum of the rows of Y`` ``(N,)``.
        count: the number of rows.
        ridge: relative diagonal regularization of ``zz``.
        intercept: fit ``b`` too (else ``b = None``, ``K = (Z^T Z)^{-1} Z^T Y``).

    Returns:
        ``(K (P, N), b (N,) or None)``.
    """
    zz = np.asarray(zz, np.float64)
    zy = np.asarray(zy, np.float64)
    if intercept:
        p = zz.shape[0]
        a = np.zeros((p + 1, p + 1))
        a[:p, :p], a[:p, p], a[p, :p], a[p, p] = zz, z_sum, z_sum, count
        rhs = np.vstack([zy, np.asarray(y_sum, np.float64)[None]])
        reg = _ridge(zz, ridge) * np.eye(p + 1)
        reg[p, p] = 0.0
        sol = np.linalg.solve(a + reg, rhs)
        return sol[:p], sol[p]
    sol = np.linalg.solve(zz + _ridge(zz, ridge) * np.eye(zz.shape[0]), zy)
    return sol, None


# ---- per-method factors (kernel layout (kh, kw, C, N)) ------------------------------------


def _unit_columns(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a b = (a / n) diag(n) b`` with ``n`` the column norms of ``a``."""
    n = np.linalg.norm(a, axis=0)
    n = np.where(n > 0, n, 1.0)
    return a / n, n, b


def svd_channel_data_factors(kernel, gram, rank: int | None):
    """Channel SVD factors minimizing the response error (``response_projection``).

    Args:
        kernel: the kernel ``(kh, kw, C, N)``.
        gram: the response Gram ``Y^T Y`` ``(N, N)`` on calibration data.
        rank: ``R`` (``None``: full).

    Returns:
        ``(u (kh, kw, C, R), s (R,), v (1, 1, R, N), energies)``: ``u`` unit columns, ``s``
        their norms, ``v = P^T``; ``energies`` as in ``response_projection``.
    """
    w = np.asarray(kernel, np.float64)
    kh, kw, c, n = w.shape
    a, b, e = response_projection(w.reshape(kh * kw * c, n), gram, rank)
    u, s, v = _unit_columns(a, b)
    r = u.shape[1]
    return u.reshape(kh, kw, c, r), s, v.reshape(1, 1, r, n), e


def basis_data_factors(kernel, gram, rank: int | None):
    """BasisConv factors minimizing the response error: basis ``W P``, combination ``P^T``.

    Args:
        kernel: the kernel ``(kh, kw, C, N)``.
        gram: the response Gram ``(N, N)``.
        rank: ``M`` (``None``: full).

    Returns:
        ``(basis (kh, kw, C, M), combination (1, 1, M, N), energies)``.
    """
    w = np.asarray(kernel, np.float64)
    kh, kw, c, n = w.shape
    a, b, e = response_projection(w.reshape(kh * kw * c, n), gram, rank)
    m = a.shape[1]
    return a.reshape(kh, kw, c, m), b.reshape(1, 1, m, n), e


def svd_spatial_data_factors(kernel, row_moments, rank: int | None, ridge: float = 1e-6):
    """Spatial SVD factors of the ``(kh*C) x (kw*N)`` unfolding, whitened on its rows.

    The first factor (a ``kh x 1`` conv) reads vertical patches ``(kh*C)`` of the input;
    ``row_moments`` is their second-moment matrix. The objective is the response error when
    the ``kw`` columns of a patch are uncorrelated with each other (the cross-column terms
    are left out: an approximation of the exact objective).

    Args:
        kernel: the kernel ``(kh, kw, C, N)``.
        row_moments: ``(kh*C, kh*C)`` second moments of the ``kh x 1`` input patches.
        rank: ``R`` (``None``: full).
        ridge: relative regularization (``psd_sqrt``).

    Returns:
        ``(u (kh, 1, C, R), s (R,), v (1, kw, R, N), energies)``.
    """
    w = np.asarray(kernel, np.float64)
    kh, kw, c, n = w.shape
    m = np.transpose(w, (0, 2, 1, 3)).reshape(kh * c, kw * n)
    a, b, e = whitened_low_rank(m, row_moments, rank, ridge)
    u, s, bt = _unit_columns(a, b)
    r = u.shape[1]
    v = np.transpose(bt.reshape(r, kw, n), (1, 0, 2)).reshape(1, kw, r, n)
    return u.reshape(kh, 1, c, r), s, v, e


def decef_data_factors(kernel, tap_moments, rank: int | None, ridge: float = 1e-6):
    """DeCEF factors with each channel's eigen-filters whitened by its own patch statistics.

    For input channel ``c``: ``M_c = W[:, :, c, :].reshape(kh*kw, N)`` and ``S_c`` the
    second moments of channel ``c``'s ``kh x kw`` patches; ``whitened_low_rank(M_c, S_c,
    r)``. This minimizes the response error of each channel's contribution (the terms that
    couple channels are left out: an approximation of the exact objective).

    Args:
        kernel: the kernel ``(kh, kw, C, N)``.
        tap_moments: ``(C, kh*kw, kh*kw)`` per-channel patch second moments.
        rank: ``r`` eigen-filters per channel (``None``: ``min(kh*kw, N)``).
        ridge: relative regularization (``psd_sqrt``).

    Returns:
        ``(eigen_filters (kh, kw, C, r), combination (1, 1, C*r, N), energies)``: the
        energies are pooled over channels (the sum over ``c`` of the ``j``-th whitened
        energy), descending.
    """
    w = np.asarray(kernel, np.float64)
    kh, kw, c, n = w.shape
    full = min(kh * kw, n)
    r = full if rank is None else int(rank)
    eigen = np.zeros((kh, kw, c, r))
    comb = np.zeros((c, r, n))
    energies = np.zeros(full)
    for ch in range(c):
        a, b, e = whitened_low_rank(w[:, :, ch, :].reshape(kh * kw, n), tap_moments[ch], r, ridge)
        eigen[:, :, ch, :] = a.reshape(kh, kw, r)
        comb[ch] = b
        energies += e[:full]
    return eigen, comb.reshape(1, 1, c * r, n), energies


def tucker2_data_factors(kernel, channel_moments, gram, ranks, ridge: float = 1e-6):
    """Tucker-2 factors fitted to data on both channel modes.

    Input side: ``W_C = W`` unfolded along ``C`` ``(C, kh*kw*N)`` is whitened by the pixel
    second moments ``Sigma_C`` of the input channels: ``first = Sigma^{-1/2} U_R1``
    (``whitened_low_rank``; spatial correlations of the input are left out). Output side:
    the projection of the responses onto their top-``R2`` principal directions ``P`` of the
    response Gram (``response_projection``): ``last = P^T``, ``core = (first-projected W)
    x_N P``.

    Args:
        kernel: the kernel ``(kh, kw, C, N)``.
        channel_moments: ``(C, C)`` second moments of the input pixels.
        gram: the response Gram ``(N, N)``.
        ranks: ``(R1, R2)`` (an int for both, ``None``: full).
        ridge: relative regularization (``psd_sqrt``).

    Returns:
        ``(first (1, 1, C, R1), core (kh, kw, R1, R2), last (1, 1, R2, N), energies)``;
        ``energies``: the input-side whitened energies and the response eigenvalues, each
        normalized to sum 1, averaged over the common length (an error proxy for one int
        rank, like ``Tucker2Conv2D.spectrum``).
    """
    w = np.asarray(kernel, np.float64)
    kh, kw, c, n = w.shape
    if ranks is None:
        r1, r2 = c, n
    elif np.isscalar(ranks):
        r1 = r2 = int(ranks)
    else:
        r1, r2 = (int(x) for x in ranks)
    w_c = np.transpose(w, (2, 0, 1, 3)).reshape(c, kh * kw * n)
    a, b, e_in = whitened_low_rank(w_c, channel_moments, r1, ridge)
    w1 = np.transpose(b.reshape(r1, kh, kw, n), (1, 2, 0, 3))  # (kh, kw, R1, N)
    lam, p = np.linalg.eigh(0.5 * (gram + gram.T))
    order = np.argsort(lam)[::-1]
    lam, p = np.maximum(lam[order], 0.0), p[:, order]
    core = np.einsum("xyan,nb->xyab", w1, p[:, :r2])
    k = min(len(e_in), len(lam))
    proxy = 0.5 * (e_in[:k] / max(e_in.sum(), 1e-300) + lam[:k] / max(lam.sum(), 1e-300))
    return a[None, None], core, p[:, :r2].T[None, None], proxy
