"""Matrix decompositions of the eigen-filter layers (DeCEF, BasisConv, SVD), in NumPy.

Every layer's ``from_conv2d`` calls into this module, so the maths lives in one place and
is tested once. Conventions: a ``Conv2D`` kernel ``W`` has the Keras layout
``(kh, kw, C, N)`` (``C`` input channels, ``N`` filters; activations are ``NHWC``). Each
``*_spectrum`` function returns the energy (squared singular values, descending) that a
rank keeps, so that for every method

    kept_energy(r) = sum(spectrum[:r]) / sum(spectrum) = 1 - rel_err(r) ** 2,

where ``rel_err`` is the relative Frobenius error of the rebuilt kernel. ``energy`` in the
layer API always means this share of the kernel's squared Frobenius norm.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator

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
    "spill_shared",
    "entropy_rank",
    "relative_error",
    "release_shared",
    "shared_array",
    "shared_work",
    "svd_channel_factors",
    "svd_channel_spectrum",
    "svd_spatial_factors",
    "svd_spatial_spectrum",
]


def as_float64_kernel(kernel, ndim: int = 4) -> np.ndarray:
    """Return ``kernel`` as a float64 array, checking its number of dimensions.

    Args:
        kernel: array-like kernel (a ``Conv2D`` kernel ``(kh, kw, C, N)`` by default).
        ndim: the number of dimensions ``kernel`` must have.

    Returns:
        ``kernel`` as a float64 ``np.ndarray``.

    Raises:
        ValueError: when ``kernel`` does not have ``ndim`` dimensions.
    """
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim != ndim:
        raise ValueError(f"Expected a {ndim}-D kernel, got shape {w.shape}.")
    return w


def energy_rank(spectrum: np.ndarray, energy: float) -> int:
    """Smallest rank that keeps a given share of the energy.

    The smallest ``r >= 1`` with ``sum(spectrum[:r]) / sum(spectrum) >= energy``. A zero
    spectrum (an all-zero kernel) gives rank 1.

    Args:
        spectrum: 1-D array of non-negative energies in descending order (a ``*_spectrum``
            result).
        energy: the share of the total energy to keep, in ``(0, 1]``.

    Returns:
        The rank, an int in ``[1, len(spectrum)]``.

    Raises:
        ValueError: when ``energy`` is not in ``(0, 1]``.
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
    """Roy-Vetterli effective rank ``exp(H(p))`` with ``p = s / sum(s)``.

    ``H`` is the Shannon entropy of the normalized singular values.

    Args:
        singular_values: 1-D array of singular values (their absolute values are used).

    Returns:
        The effective rank as a float, 0 for a zero matrix.
    """
    s = np.abs(np.asarray(singular_values, dtype=np.float64))
    total = s.sum()
    if total <= 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def relative_error(reference, approximation) -> float:
    """Relative Frobenius error ``||A - B||_F / ||A||_F``.

    Args:
        reference: the reference array ``A``.
        approximation: the approximation ``B``, of the same shape.

    Returns:
        The relative error as a float: 0 when both are zero, 1 when only ``A`` is zero.
    """
    a, b = np.asarray(reference), np.asarray(approximation)
    real = all(x.dtype.kind in "biuf" for x in (a, b))
    if real and a.shape == b.shape:
        # one float64 array (the inputs are cast chunk by chunk), reused for ||A||: float32
        # kernels are not copied whole to float64 first
        buf = np.subtract(a, b, dtype=np.float64)
        diff = np.linalg.norm(buf)
        buf[...] = a
        denom = np.linalg.norm(buf)
    else:  # broadcasting shapes, or other dtypes: as NumPy casts them
        a, b = a.astype(np.float64), b.astype(np.float64)
        diff, denom = np.linalg.norm(a - b), np.linalg.norm(a)
    if denom == 0.0:
        return float(np.linalg.norm(b.astype(np.float64)) > 0.0)
    return float(diff / denom)


# --- fast SVD of tall or wide matrices ----------------------------------------------------

# Singular directions whose value is below this share of the largest carry no energy that
# float32 weights can hold; their left vectors are set to zero (the product stays exact).
_GRAM_RTOL = 1e-7


_EIGH_CACHE: dict = {}
_EIGH_CACHE_BYTES = 256 * 2**20  # whole-model conversions choose ranks for all layers first

# Work shared between the spectrum and the factors of one kernel inside ``shared_work()``:
# a _Shared per block; None outside one.
_SHARED: contextvars.ContextVar[_Shared | None] = contextvars.ContextVar(
    "keras_eigenconv_shared_work", default=None
)
_SHARED_BYTES = 512 * 2**20  # at most this much kept per block (beyond it: computed as usual)


class _Shared:
    """What one ``shared_work()`` block keeps: per array id ``(array, {kind: result})``,
    per owner id ``(owner, array)`` (``array`` None once spilled) and per spilled owner id
    its ``{kind: result}``."""

    def __init__(self):
        self.arrays: dict[int, tuple[np.ndarray, dict]] = {}
        self.owners: dict[int, tuple[object, np.ndarray | None]] = {}
        self.spilled: dict[int, dict] = {}
        self.nbytes = 0
        self.depth = 0  # blocks nested inside the one that made it

    def room(self, nbytes: int) -> bool:
        return self.nbytes + nbytes <= _SHARED_BYTES


def _nbytes(result) -> int:
    return sum(p.nbytes for p in (result if isinstance(result, tuple) else (result,)))


@contextlib.contextmanager
def shared_work() -> Iterator[None]:
    """A block in which the spectrum and the factors of one kernel share their work.

    Rank selection asks for a kernel's spectrum (e.g. the eigenvalues of its Gram matrix,
    or DeCEF's per-channel SVDs) and the decomposition then needs the same Gram matrix or
    SVD again. Inside the block, a read-only array that owns its data (``writeable``
    False, ``base`` None: its values cannot change; ``shared_array`` makes them) keeps
    these intermediate results, keyed by the array object, so the second function reuses
    them: the results are bit-identical to computing them again. Writeable arrays (and
    everything outside a block) are computed as usual. At most 512 MiB is kept per block
    (beyond it, results are computed as usual); ``release_shared`` drops an owner's
    results early, ``spill_shared`` its array only (its results stay). Blocks nest (the
    outermost one holds the results); the results are dropped when it ends.

    Returns:
        A context manager (use ``with shared_work(): ...``).
    """
    outer = _SHARED.get()
    if outer is not None:  # nested: the outer block holds the results
        outer.depth += 1
        try:
            yield
        finally:
            outer.depth -= 1
        return
    token = _SHARED.set(_Shared())
    try:
        yield
    finally:
        _SHARED.reset(token)


def shared_array(owner, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """One read-only array per ``owner`` inside ``shared_work()``.

    Inside a block, the first call for ``owner`` (any object, e.g. a layer's kernel
    variable; compared by identity and kept alive until the block ends or
    ``release_shared(owner)``) keeps ``compute()`` (which must return a new array: it is
    made read-only; a view is copied) and later calls return that same array, so the
    spectrum and the factors computed from it share their work (``shared_work``). After
    ``spill_shared(owner)`` the next call computes the array again and attaches the results
    kept from the first one. The owner's value must not change inside the block. Outside a
    block (or when the block's memory limit is reached): ``compute()`` itself.

    Args:
        owner: the object the array belongs to.
        compute: a function returning the array.

    Returns:
        The array (read-only and owning its data when it is kept).
    """
    memo = _SHARED.get()
    if memo is None:
        return compute()
    hit = memo.owners.get(id(owner))
    if hit is not None and hit[0] is not owner:
        hit = None  # a dead owner's id, reused
    if hit is not None and hit[1] is not None:
        return hit[1]
    value = compute()
    if not memo.room(value.nbytes):
        return value
    if value.base is not None or not value.flags.owndata:
        value = np.array(value)  # owns its data
    value.setflags(write=False)
    results = memo.spilled.pop(id(owner), {}) if hit is not None else {}
    memo.owners[id(owner)] = (owner, value)
    memo.arrays[id(value)] = (value, results)
    memo.nbytes += value.nbytes
    return value


def spill_shared(owner) -> None:
    """Drop the array ``shared_work()`` keeps for ``owner`` but keep the results computed
    from it: the next ``shared_array(owner, compute)`` computes the array again and finds
    them. Choosing ranks for a whole model reads every kernel once and decomposes a few of
    them; spilling each kernel once its spectrum is known keeps one kernel in memory at a
    time instead of all of them (ResNet50: 200 MB of fresh float64 pages per conversion,
    whose first touch cost up to 0.5 s on a loaded machine). Unlike ``release_shared`` it
    acts inside nested blocks too: it only costs a second read. The owner's value must not
    change before that read (the results would be those of the old value). Nothing happens
    outside a block.

    Args:
        owner: an object passed to ``shared_array``.
    """
    memo = _SHARED.get()
    hit = None if memo is None else memo.owners.get(id(owner))
    if hit is None or hit[0] is not owner or hit[1] is None:
        return
    _, results = memo.arrays.pop(id(hit[1]))
    memo.owners[id(owner)] = (owner, None)
    memo.spilled[id(owner)] = results
    memo.nbytes -= hit[1].nbytes


def release_shared(owner) -> None:
    """Drop what ``shared_work()`` keeps for ``owner`` (its array and the results computed
    from it), e.g. once a layer is decomposed; nothing happens outside a block, nor inside a
    nested one (its outer block, e.g. a latency plan building several conversions of one
    model, keeps the results until it ends).

    Args:
        owner: an object passed to ``shared_array``.
    """
    memo = _SHARED.get()
    hit = None if memo is None or memo.depth else memo.owners.get(id(owner))
    if hit is None or hit[0] is not owner:
        return
    del memo.owners[id(owner)]
    if hit[1] is None:  # spilled: only its results are kept
        results = memo.spilled.pop(id(owner), {})
    else:
        results = memo.arrays.pop(id(hit[1]), (None, {}))[1]
        memo.nbytes -= hit[1].nbytes
    memo.nbytes -= sum(_nbytes(r) for r in results.values())


def _shared(kind: str, array: np.ndarray, compute: Callable[[], object]):
    """``compute()``, kept for ``array`` (by identity) inside ``shared_work()`` when the
    array was made by ``shared_array`` (read-only, owning its data)."""
    memo = _SHARED.get()
    entry = None if memo is None else memo.arrays.get(id(array))
    if entry is None or entry[0] is not array or array.flags.writeable:
        return compute()
    if kind not in entry[1]:
        result = compute()
        if not memo.room(_nbytes(result)):
            return result
        for part in result if isinstance(result, tuple) else (result,):
            part.setflags(write=False)  # shared: nobody may change it in place
        entry[1][kind] = result
        memo.nbytes += _nbytes(result)
    return entry[1][kind]


def _gram_key(m: np.ndarray) -> tuple:
    return (m.shape, hashlib.blake2b(np.ascontiguousarray(m).data, digest_size=16).digest())


def _tall(m: np.ndarray) -> np.ndarray:
    """The tall orientation of a matrix: itself, or its transpose when it is wide."""
    return m if m.shape[0] >= m.shape[1] else m.T


def _tall_gram(matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(M, M^T M)`` for the tall orientation ``M`` of ``matrix`` (float64)."""
    m = _tall(np.asarray(matrix, dtype=np.float64))
    return m, m.T @ m


def _gram_eigh(m: np.ndarray, gram: np.ndarray | None = None):
    """``eigh(M^T M)`` for a tall float64 ``M``, descending (``gram``: ``M^T M`` when it is
    already known); recent ones are cached, keyed by the Gram matrix's bytes (256 MiB at
    most), because repeated conversions of one model decompose the same kernels."""
    gram = m.T @ m if gram is None else gram
    key = _gram_key(gram)
    hit = _EIGH_CACHE.get(key)
    if hit is None:
        lam, v = np.linalg.eigh(gram)
        hit = (np.clip(lam[::-1], 0.0, None), v[:, ::-1])
        _EIGH_CACHE[key] = hit
        while sum(e[1].nbytes for e in _EIGH_CACHE.values()) > _EIGH_CACHE_BYTES:
            _EIGH_CACHE.pop(next(iter(_EIGH_CACHE)))  # oldest first
    return hit


def _energies(m: np.ndarray, gram: np.ndarray) -> np.ndarray:
    if not np.isfinite(gram).all():  # NaN/Inf weights: NaN energies (callers name the layer)
        return np.full(m.shape[1], np.nan)
    return np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)


def singular_energies(matrix: np.ndarray) -> np.ndarray:
    """Squared singular values (descending) of a matrix.

    Computed from the eigenvalues of its smaller Gram matrix: ``min(m, n)^2`` memory and
    several times faster than an SVD. Only the eigenvalues are computed (``eigvalsh``, 3-6x
    faster than ``eigh`` at 512-1024 columns), and the eigendecomposition cache is not
    touched: rank selection asks for every layer's spectrum, the decomposition only for
    the layers it replaces (inside ``shared_work()`` a kernel's spectrum and factors share
    the Gram matrix).

    Args:
        matrix: a 2-D array ``(m, n)``.

    Returns:
        A float64 array of ``min(m, n)`` squared singular values, descending.
    """
    return _energies(*_tall_gram(matrix))


def gram_svd(matrix: np.ndarray, rank: int | None = None):
    """Truncated SVD ``matrix ~= U diag(s) V^T`` from the smaller Gram matrix.

    Uses the eigendecomposition of the smaller Gram matrix (for ``m >= n``:
    ``M^T M = V diag(s^2) V^T``, ``U = M V / s``). ``U diag(s) = M V`` holds exactly, so the
    rank-``r`` product is ``M V_r V_r^T``, the best rank-``r`` approximation, and at full rank
    it is ``M`` to float64 round-off. Singular vectors of the larger side for
    ``s < 1e-7 * s_max`` are zero (``U``'s columns for a tall matrix, ``V``'s rows for a wide
    one).

    Args:
        matrix: a 2-D array ``(m, n)``.
        rank: the number ``r`` of singular triplets to keep; ``None`` keeps ``min(m, n)``.

    Returns:
        A tuple ``(u, s, vt)``: ``u (m, r)``, ``s (r,)`` (descending) and ``vt (r, n)``.
    """
    return _gram_svd(matrix, rank)


def _gram_svd(matrix, rank: int | None, gram: np.ndarray | None = None):
    """``gram_svd``; ``gram``: the tall orientation's Gram matrix when already known."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[0] < m.shape[1]:
        v, s, ut = _gram_svd(m.T, rank, gram)
        return ut.T, s, v.T
    lam, v = _gram_eigh(m, gram)
    r = rank or m.shape[1]
    v = v[:, :r]
    s = np.sqrt(lam[:r])
    u = m @ v
    keep = s > _GRAM_RTOL * (s[0] if s.size else 0.0)
    u[:, keep] /= s[keep]
    u[:, ~keep] = 0.0
    s = np.where(keep, s, 0.0)
    return u, s, v.T.copy()


def _left_vectors(matrix, rank: int, gram: np.ndarray | None = None) -> np.ndarray:
    """``gram_svd(matrix, rank)[0]`` (the leading left singular vectors) without the right
    ones: for a wide matrix they are the eigenvectors of its Gram matrix ``M M^T`` (the
    long side's ``M^T U / s`` is not computed); ``gram``: that Gram matrix when known."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[0] < m.shape[1]:
        return _gram_eigh(m.T, gram)[1][:, :rank].copy()
    return _gram_svd(m, rank, gram)[0]


# --- DeCEF: per-input-channel eigen-filters (Yu et al., arXiv 1910.09359) ---------------


def _decef_svd(w: np.ndarray):
    """Per input channel ``c``, the SVD of ``M_c = W[:, :, c, :].reshape(kh*kw, N)`` as
    ``(U (C, kk, q), s (C, q), S V^T (C, q, N))``, ``q = min(kk, N)``, descending; the
    spectrum and the factors share it (``shared_work``)."""
    kh, kw, c, n = w.shape
    # (C, kh*kw, N): one matrix per input channel, rows are the k*k taps.
    per_channel = np.transpose(w, (2, 0, 1, 3)).reshape(c, kh * kw, n)
    return _shared("decef_svd", w, lambda: _batched_row_svd(per_channel))


def _batched_row_svd(m: np.ndarray):
    """``(U, s, S V^T)`` of each ``m[c]`` (``k x N``) from the ``k x k`` Gram matrices.

    For ``k <= N`` (a 3x3 kernel's 9 taps against N filters): ``M M^T = U diag(s^2) U^T``
    (a batched ``eigh`` of ``k x k`` matrices, many times faster than the SVD of each
    ``k x N`` matrix) and ``S V^T = U^T M`` exactly, so ``U_r U_r^T M`` is the best rank-``r``
    approximation and full rank gives ``M`` to float64 round-off. For ``k > N``: the SVD.
    """
    k, n = m.shape[1:]
    if k > n:
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        return u, s, s[..., None] * vt
    lam, u = np.linalg.eigh(m @ m.transpose(0, 2, 1))  # ascending
    u = np.ascontiguousarray(u[..., ::-1])
    s = np.sqrt(np.clip(lam[..., ::-1], 0.0, None))
    return u, s, u.transpose(0, 2, 1) @ m


def decef_spectrum(kernel) -> np.ndarray:
    """Energy kept by each DeCEF eigen-filter, pooled over input channels.

    For every input channel ``c``, ``W[:, :, c, :].reshape(kh*kw, N)`` has singular values
    ``s[c, :]``; eigen-filter ``j`` keeps ``sum_c s[c, j]**2``.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.

    Returns:
        A float64 array of ``min(kh*kw, N)`` energies, descending.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    _, s, _ = _decef_svd(as_float64_kernel(kernel))
    return (s**2).sum(axis=0)


def decef_factors(kernel, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """DeCEF factors: per-channel eigen-filters and their combination weights.

    Per channel ``c``: ``W[:, :, c, :].reshape(kh*kw, N) = U S V^T``;
    ``E[:, :, c, j] = U[:, j]`` and ``A[c*r + j, :] = S[j] V^T[j, :]`` (TensorFlow's depthwise
    output order). Exact for ``rank = min(kh*kw, N)``.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        rank: the number ``r`` of eigen-filters per input channel.

    Returns:
        A tuple ``(E, A)``: the eigen-filters ``E (kh, kw, C, r)`` (a depthwise kernel with
        depth multiplier ``r``) and the combination ``A (1, 1, C*r, N)`` (a 1x1 kernel).

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    u, _, svt = _decef_svd(w)
    u, svt = u[:, :, :rank], svt[:, :rank, :]
    eigen = np.transpose(u.reshape(c, kh, kw, rank), (1, 2, 0, 3))
    comb = svt.reshape(1, 1, c * rank, n)
    return eigen, comb


# --- BasisConv: M whole-filter basis filters (Tayyab & Mahalanobis, arXiv 1906.04509) ---


def _filter_matrix(w: np.ndarray) -> np.ndarray:
    kh, kw, c, n = w.shape
    return w.reshape(kh * kw * c, n)  # column n is filter n, vectorized


def basis_spectrum(kernel) -> np.ndarray:
    """Squared singular values of the BasisConv filter matrix.

    The filter matrix is ``H = W.reshape(kh*kw*C, N).T`` (one row per filter, uncentered).

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.

    Returns:
        A float64 array of ``min(kh*kw*C, N)`` energies, descending.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    return _shared("filter_energies", w, lambda: _energies(*_kernel_gram(w, "filter")))


def basis_factors(kernel, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """BasisConv factors: ``M`` basis filters and the combination weights.

    ``H = W.reshape(kh*kw*C, N).T = U S V^T``; basis filters are the first ``M`` right
    singular vectors, ``F = V[:, :M]``; weights ``B = F^T H^T`` (projection of each filter on
    the basis). Exact at ``M = rank(H)``.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        rank: the number ``M`` of basis filters.

    Returns:
        A tuple ``(F, B)``: the basis ``F (kh, kw, C, M)`` and the combination
        ``B (1, 1, M, N)``.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    wm = _filter_matrix(w)
    u = _left_vectors(wm, rank, _kernel_gram(w, "filter")[1])
    basis = u[:, :rank]
    comb = basis.T @ wm
    return basis.reshape(kh, kw, c, rank), comb.reshape(1, 1, rank, n)


# --- SVD conv, channel and spatial (Sharma et al., arXiv 2401.08014) ---------------------


def svd_channel_spectrum(kernel) -> np.ndarray:
    """Squared singular values of the channel unfolding ``W.reshape(kh*kw*C, N)``.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.

    Returns:
        A float64 array of ``min(kh*kw*C, N)`` energies, descending.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    return basis_spectrum(kernel)


def svd_channel_factors(kernel, rank: int):
    """Channel SVD ``W.reshape(kh*kw*C, N) = U diag(s) V^T``, truncated to ``rank``.

    ``U`` runs as a ``kh x kw`` conv ``C -> R`` and ``diag(s) V^T`` as a 1x1 conv ``R -> N``.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        rank: the rank ``R``.

    Returns:
        A tuple ``(u, s, v)``: ``u (kh, kw, C, R)``, ``s (R,)`` and ``v (1, 1, R, N)``.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    u, s, vt = _gram_svd(_filter_matrix(w), rank, _kernel_gram(w, "filter")[1])
    return (
        u[:, :rank].reshape(kh, kw, c, rank),
        s[:rank].copy(),
        vt[:rank].reshape(1, 1, rank, n),
    )


def _kernel_gram(w: np.ndarray, unfolding: str) -> tuple[np.ndarray, np.ndarray]:
    """``(M, M^T M)`` of the tall orientation ``M`` of the kernel's ``"filter"`` or
    ``"spatial"`` unfolding; the Gram matrix is shared inside ``shared_work()``."""
    m = _filter_matrix(w) if unfolding == "filter" else _spatial_matrix(w)
    tall = _tall(m)
    return tall, _shared(unfolding + "_gram", w, lambda: _tall_gram(m)[1])


def _spatial_matrix(w: np.ndarray) -> np.ndarray:
    kh, kw, c, n = w.shape
    # M[(h, c), (w, n)] = W[h, w, c, n]
    return np.transpose(w, (0, 2, 1, 3)).reshape(kh * c, kw * n)


def svd_spatial_spectrum(kernel) -> np.ndarray:
    """Squared singular values of the spatial unfolding ``(kh*C) x (kw*N)``.

    The unfolding is ``M[(h, c), (w, n)] = W[h, w, c, n]``.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.

    Returns:
        A float64 array of ``min(kh*C, kw*N)`` energies, descending.

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    return _shared("spatial_energies", w, lambda: _energies(*_kernel_gram(w, "spatial")))


def svd_spatial_factors(kernel, rank: int):
    """Spatial SVD: the ``(kh*C) x (kw*N)`` unfolding ``= U diag(s) V^T``, truncated.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        rank: the rank ``R``.

    Returns:
        A tuple ``(u, s, v)``: ``u (kh, 1, C, R)`` (a ``kh x 1`` conv), ``s (R,)`` and
        ``v (1, kw, R, N)`` (a ``1 x kw`` conv).

    Raises:
        ValueError: when ``kernel`` is not 4-D.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    u, s, vt = _gram_svd(_spatial_matrix(w), rank, _kernel_gram(w, "spatial")[1])
    u = u[:, :rank].reshape(kh, 1, c, rank)
    v = np.transpose(vt[:rank].reshape(rank, kw, n), (1, 0, 2)).reshape(1, kw, rank, n)
    return u, s[:rank].copy(), v
