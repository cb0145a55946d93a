"""Structured sparse convolution (SSC) patterns, in NumPy (METHODS.md section 5).

The exact SSC pattern of Verma et al. (WACV 2023) is not published; this is the documented
generalization. ``C`` input channels and ``N`` filters are split into ``G`` groups
(``G`` divides both). Channel ``c`` belongs to channel group ``j(c)`` and filter ``n`` to
filter group ``g(n)``:

- ``layout="contiguous"``: ``j(c) = c' // (C/G)`` and ``g(n) = n // (N/G)``;
- ``layout="interleaved"``: ``j(c) = c' % G`` and ``g(n) = n % G``;

with the cyclically shifted channel index ``c' = (c - shift) mod C``. With the band offset
``t = (j(c) - g(n)) mod G``, the pair ``(c, n)`` is connected by

- a full ``kh x kw`` kernel when ``t < a`` (``a = kernel_span``),
- a ``1 x 1`` kernel (the tap ``((kh-1)//2, (kw-1)//2)`` of the ``kh x kw`` window) when
  ``a <= t < a + b`` (``b = pointwise_span``),
- nothing otherwise.

Special cases: ``G=1, a=1`` is a dense conv; ``a=1, b=0`` contiguous is
``Conv2D(groups=G)``; ``G=C`` is a depthwise conv; ``a=0`` is a (grouped) 1x1 conv;
``G=P, a=1, b=P-1`` interleaved is HetConv (Singh et al. 2019: each filter has ``k x k``
kernels on every ``P``-th channel, shifted by one channel from filter to filter).

Weights, in the order the fast path runs them (``Cg = C/G``, ``Ng = N/G``):
``kernel (kh, kw, a*Cg, N)`` and ``pointwise_kernel (1, 1, b*Cg, N)``, the layout of a
grouped ``Conv2D`` over the channels ``kxk_index`` (resp. ``pointwise_index``), outputs in
the grouped filter order ``filter_perm``. Weights ``kh*kw*a*Cg*N + b*Cg*N``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .matrix import as_float64_kernel

__all__ = [
    "SSC_LAYOUTS",
    "SSCPattern",
    "center_tap_window",
    "channel_shuffle_plan",
    "ssc_best_shift",
    "ssc_dense_kernel",
    "ssc_project",
    "ssc_shift_energies",
]

SSC_LAYOUTS = ("contiguous", "interleaved")
NONE, POINTWISE, FULL = 0, 1, 2


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclass(frozen=True)
class SSCPattern:
    """A structured sparsity pattern; validated on creation (``ValueError`` saying what to do)."""

    in_channels: int
    filters: int
    kernel_size: tuple[int, int]
    groups: int = 1
    kernel_span: int = 1
    pointwise_span: int = 0
    layout: str = "contiguous"
    shift: int = 0

    def __post_init__(self):
        c, n, g = self.in_channels, self.filters, self.groups
        a, b = self.kernel_span, self.pointwise_span
        if not _is_int(g) or g < 1:
            raise ValueError(f"groups must be a positive int, got {g!r}.")
        if c % g or n % g:
            common = _divisors(math.gcd(c, n))
            raise ValueError(
                f"groups={g} must divide both the {c} input channels and the {n} filters; "
                f"choose groups among {common}."
            )
        for name, v in (("kernel_span", a), ("pointwise_span", b)):
            if not _is_int(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}.")
        if a + b < 1 or a + b > g:
            raise ValueError(
                f"kernel_span + pointwise_span = {a} + {b} must be in [1, groups={g}]: each "
                "filter group reaches that many channel groups. Lower the spans or raise groups."
            )
        if self.layout not in SSC_LAYOUTS:
            raise ValueError(f"layout must be one of {SSC_LAYOUTS}, got {self.layout!r}.")
        if not _is_int(self.shift) or not 0 <= self.shift < c:
            raise ValueError(f"shift must be an int in [0, {c}), got {self.shift!r}.")

    # ---- index maps ----------------------------------------------------------------------

    @property
    def cg(self) -> int:
        return self.in_channels // self.groups

    @property
    def ng(self) -> int:
        return self.filters // self.groups

    def _group_pos(self, index: np.ndarray, count: int):
        if self.layout == "contiguous":
            size = count // self.groups
            return index // size, index % size
        return index % self.groups, index // self.groups

    @cached_property
    def channel_group(self) -> np.ndarray:
        """``j(c)`` for every input channel."""
        c = np.arange(self.in_channels)
        return self._group_pos((c - self.shift) % self.in_channels, self.in_channels)[0]

    @cached_property
    def filter_group(self) -> np.ndarray:
        """``g(n)`` for every filter."""
        return self._group_pos(np.arange(self.filters), self.filters)[0]

    @cached_property
    def channel_perm(self) -> np.ndarray:
        """Channels ordered by group: ``channel_perm[j*Cg + i]`` is channel ``i`` of group ``j``."""
        c = np.arange(self.in_channels)
        j, pos = self._group_pos((c - self.shift) % self.in_channels, self.in_channels)
        perm = np.empty_like(c)
        perm[j * self.cg + pos] = c
        return perm

    @cached_property
    def filter_perm(self) -> np.ndarray:
        """Grouped filter order: output ``q`` of the grouped ops is filter ``filter_perm[q]``."""
        n = np.arange(self.filters)
        g, pos = self._group_pos(n, self.filters)
        perm = np.empty_like(n)
        perm[g * self.ng + pos] = n
        return perm

    def _band_index(self, first: int, span: int) -> np.ndarray:
        groups = [(g + first + i) % self.groups for g in range(self.groups) for i in range(span)]
        blocks = [self.channel_perm[j * self.cg : (j + 1) * self.cg] for j in groups]
        return np.concatenate(blocks) if blocks else np.zeros((0,), np.int64)

    @cached_property
    def kxk_index(self) -> np.ndarray:
        """Input channels of the grouped ``kh x kw`` conv, ``a*Cg`` per filter group (``a*C``)."""
        return self._band_index(0, self.kernel_span)

    @cached_property
    def pointwise_index(self) -> np.ndarray:
        """Input channels of the grouped 1x1 conv, ``b*Cg`` per filter group (``b*C``)."""
        return self._band_index(self.kernel_span, self.pointwise_span)

    @cached_property
    def connections(self) -> np.ndarray:
        """``(C, N)`` connection types: 0 none, 1 one-by-one, 2 full ``kh x kw``."""
        t = (self.channel_group[:, None] - self.filter_group[None, :]) % self.groups
        a, b = self.kernel_span, self.pointwise_span
        return np.where(t < a, FULL, np.where(t < a + b, POINTWISE, NONE)).astype(np.int8)

    @property
    def tap(self) -> tuple[int, int]:
        """Position of the 1x1 connections in the ``kh x kw`` window (the centre for odd sizes)."""
        kh, kw = self.kernel_size
        return (kh - 1) // 2, (kw - 1) // 2

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        kh, kw = self.kernel_size
        return (kh, kw, self.kernel_span * self.cg, self.filters)

    @property
    def pointwise_shape(self) -> tuple[int, int, int, int]:
        return (1, 1, self.pointwise_span * self.cg, self.filters)

    @property
    def num_weights(self) -> int:
        """Non-zero connections' weights: ``kh*kw*a*Cg*N + b*Cg*N`` (no bias)."""
        return math.prod(self.kernel_shape) + math.prod(self.pointwise_shape)

    def _coords(self, width: int, index: np.ndarray):
        """For compact weight ``[..., i, q]``: its input channel and filter, ``(width, N)`` each."""
        i, q = np.meshgrid(np.arange(width), np.arange(self.filters), indexing="ij")
        g = q // self.ng
        return index[g * width + i], self.filter_perm[q]

    def dense_index_map(self) -> np.ndarray:
        """``(kh, kw, C, N)`` int map into ``concat(kernel.ravel(), pointwise.ravel(), [0])``.

        ``take(flat, map)`` is the equivalent dense kernel (zeros where not connected).
        """
        kh, kw = self.kernel_size
        c, n = self.in_channels, self.filters
        nk, npw = math.prod(self.kernel_shape), math.prod(self.pointwise_shape)
        out = np.full((kh, kw, c, n), nk + npw, dtype=np.int64)
        wk = self.kernel_span * self.cg
        if wk:
            ch, fi = self._coords(wk, self.kxk_index)
            pos = np.arange(nk).reshape(kh, kw, wk, n)
            out[:, :, ch, fi] = pos
        wp = self.pointwise_span * self.cg
        if wp:
            ch, fi = self._coords(wp, self.pointwise_index)
            th, tw = self.tap
            out[th, tw, ch, fi] = nk + np.arange(npw).reshape(wp, n)
        return out

    def full_pointwise_index_map(self, order: str = "natural") -> np.ndarray:
        """``(1, 1, C, N)`` map into ``concat(pointwise_kernel.ravel(), [0])``: the 1x1 part
        as ONE 1x1 conv over all ``C`` channels (zeros where not 1x1-connected), columns in
        the natural filter order (``order="natural"``) or the grouped order (``"grouped"``)."""
        th, tw = self.tap
        nk, npw = math.prod(self.kernel_shape), math.prod(self.pointwise_shape)
        m = self.dense_index_map()[th, tw]
        m = np.where(self.connections == POINTWISE, m - nk, npw)
        if order == "grouped":
            m = m[:, self.filter_perm]
        return m[None, None]

    def grouped_dense_index_map(self, part: str) -> np.ndarray:
        """Map folding one part into a dense conv kernel over all ``C`` channels, outputs in
        grouped filter order; only when that part reaches every channel group."""
        span = self.kernel_span if part == "kernel" else self.pointwise_span
        if span != self.groups:
            raise ValueError("grouped_dense_index_map needs a part that reaches every group.")
        index = self.kxk_index if part == "kernel" else self.pointwise_index
        kh, kw = self.kernel_size if part == "kernel" else (1, 1)
        width = span * self.cg
        out = np.empty((kh, kw, self.in_channels, self.filters), dtype=np.int64)
        i, q = np.meshgrid(np.arange(width), np.arange(self.filters), indexing="ij")
        ch = index[(q // self.ng) * width + i]
        out[:, :, ch, q] = np.arange(kh * kw * width * self.filters).reshape(
            kh, kw, width, self.filters
        )
        return out


def channel_shuffle_plan(index) -> tuple[int, int, int]:
    """Write a static channel permutation ``y = x[..., index]`` as a roll and a transpose.

    Returns ``(s, A, B)`` with ``index[j*A + i] = (i*B + j + s) % C`` (``C = A*B =
    len(index)``): roll the channels by ``s`` (``concat(x[..., s:], x[..., :s])``), view them
    as ``(A, B)`` and transpose to ``(B, A)``. ``A = 1`` or ``B = 1`` is a pure roll,
    ``s = 0`` too the identity. Raises ``ValueError`` when ``index`` is no such permutation
    (then a general gather is needed).
    """
    index = np.asarray(index)
    c = index.size
    if c == 0 or not np.array_equal(np.sort(index), np.arange(c)):
        raise ValueError("index is not a permutation of its own length.")
    s = int(index[0])
    for a in _divisors(c):
        b = c // a
        i, j = np.meshgrid(np.arange(a), np.arange(b), indexing="ij")
        cand = np.empty(c, np.int64)
        cand[(j * a + i).ravel()] = ((i * b + j + s) % c).ravel()
        if np.array_equal(cand, index):
            return s, (1 if a == c else a), (c if a == c else b)
    raise ValueError("index is not a rolled transpose.")


def ssc_dense_kernel(pattern: SSCPattern, kernel, pointwise_kernel) -> np.ndarray:
    """The equivalent dense ``(kh, kw, C, N)`` kernel of compact weights (zeros elsewhere)."""
    k = np.asarray(kernel, np.float64).reshape(pattern.kernel_shape)
    p = np.asarray(pointwise_kernel, np.float64).reshape(pattern.pointwise_shape)
    flat = np.concatenate([k.ravel(), p.ravel(), [0.0]])
    return flat[pattern.dense_index_map()]


def ssc_project(kernel, pattern: SSCPattern) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal projection of a dense ``(kh, kw, C, N)`` kernel onto the pattern.

    Returns the compact ``kernel`` and ``pointwise_kernel``: every connected entry is kept,
    every other one dropped, which is the closest kernel (Frobenius) with that pattern.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    if (kh, kw) != tuple(pattern.kernel_size) or (c, n) != (
        pattern.in_channels,
        pattern.filters,
    ):
        raise ValueError(
            f"Kernel of shape {w.shape} does not match the pattern's "
            f"{(*pattern.kernel_size, pattern.in_channels, pattern.filters)}."
        )
    flat = np.zeros(pattern.num_weights + 1)
    index = pattern.dense_index_map()
    flat[index.ravel()] = w.ravel()  # unconnected entries all land in the last slot
    nk = math.prod(pattern.kernel_shape)
    return (
        flat[:nk].reshape(pattern.kernel_shape),
        flat[nk:-1].reshape(pattern.pointwise_shape),
    )


def ssc_shift_energies(
    kernel,
    groups: int = 1,
    kernel_span: int = 1,
    pointwise_span: int = 0,
    layout: str = "contiguous",
) -> np.ndarray:
    """Squared Frobenius norm kept by the projection at every ``shift`` in ``[0, C)``.

    ``E[s] = sum_{c,n} full[c,n] M2[n, (c-s) % C] + tap[c,n] M1[n, (c-s) % C]`` with
    ``full = sum_hw W**2``, ``tap = W[tap]**2`` and ``M`` the shift-0 connection masks: a
    circular cross-correlation along the channel axis, computed with FFTs.
    """
    w = as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    p = SSCPattern(c, n, (kh, kw), groups, kernel_span, pointwise_span, layout, 0)
    th, tw = p.tap
    full = (w**2).sum(axis=(0, 1))  # (C, N)
    tap = w[th, tw] ** 2
    conn = p.connections

    def corr_spectrum(energy, mask):
        return np.fft.rfft(energy, axis=0) * np.conj(np.fft.rfft(mask.astype(float), axis=0))

    spec = corr_spectrum(full, conn == FULL) + corr_spectrum(tap, conn == POINTWISE)
    return np.fft.irfft(spec.sum(axis=1), n=c, axis=0)


def ssc_best_shift(
    kernel,
    groups: int = 1,
    kernel_span: int = 1,
    pointwise_span: int = 0,
    layout: str = "contiguous",
) -> int:
    """The smallest ``shift`` whose projection keeps the most energy (ties within 1e-9)."""
    e = ssc_shift_energies(kernel, groups, kernel_span, pointwise_span, layout)
    return int(np.flatnonzero(e >= e.max() - 1e-9 * max(abs(e.max()), 1e-300))[0])


def center_tap_window(
    length: int | None, kernel: int, stride: int, dilation: int, padding: str, tap: int
) -> tuple[int, int, int, int]:
    """Where a 1x1 conv must read so that it equals the tap ``tap`` of a ``kernel``-wide conv.

    Returns ``(pad_lo, pad_hi, start, end_trim)``: zero-pad the axis by ``pad_lo``/``pad_hi``,
    then take ``x[start : padded_len - end_trim : stride]``. Output ``i`` of the wide conv
    reads input ``i*stride - pad_before + tap*dilation``, ``pad_before`` being the wide
    conv's ``"same"`` padding (TensorFlow puts the odd pixel after). With ``stride=1`` the
    result does not depend on ``length``, which may then be ``None``.
    """
    if length is None:
        if stride != 1:
            raise ValueError("center_tap_window needs a known length when stride > 1.")
        length = ((kernel - 1) * dilation + 1) * 4
    effective = (kernel - 1) * dilation + 1
    if padding == "same":
        out = -(-length // stride)
        pad_before = max((out - 1) * stride + effective - length, 0) // 2
    else:
        out = max(0, (length - effective) // stride + 1)
        pad_before = 0
    first = tap * dilation - pad_before
    last = first + (out - 1) * stride
    pad_lo, pad_hi = max(0, -first), max(0, last - (length - 1))
    padded = length + pad_lo + pad_hi
    return pad_lo, pad_hi, first + pad_lo, padded - (last + pad_lo + 1)
