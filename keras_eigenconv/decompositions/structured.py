"""Structured sparse convolution (SSC) patterns, in NumPy (Verma et al., arXiv 2210.12818).

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
    """A structured sparsity pattern of a ``(kh, kw, C, N)`` kernel.

    The pattern is validated on creation. Index maps (``channel_perm``, ``filter_perm``,
    ``kxk_index``, ``pointwise_index``, ``connections``) are computed once, on first use.

    Attributes:
        in_channels: ``C``, the number of input channels.
        filters: ``N``, the number of filters.
        kernel_size: ``(kh, kw)``.
        groups: ``G``, the number of channel and filter groups; divides ``C`` and ``N``.
        kernel_span: ``a``, the channel groups each filter group reaches with full
            ``kh x kw`` kernels.
        pointwise_span: ``b``, the next channel groups, reached with ``1 x 1`` kernels;
            ``1 <= a + b <= G``.
        layout: ``"contiguous"`` (groups are runs of channels) or ``"interleaved"`` (group =
            index mod ``G``).
        shift: the cyclic shift of the channel index before grouping, in ``[0, C)``.

    Raises:
        ValueError: when a field is out of range (the message says what to choose).

    Example:

    >>> p = SSCPattern(in_channels=8, filters=8, kernel_size=(3, 3), groups=4,
    ...                kernel_span=1, pointwise_span=1)
    >>> p.kernel_shape, p.pointwise_shape, p.num_weights
    ((3, 3, 2, 8), (1, 1, 2, 8), 160)
    """

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
        """``Cg = C/G``, the input channels per group."""
        return self.in_channels // self.groups

    @property
    def ng(self) -> int:
        """``Ng = N/G``, the filters per group."""
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
        """Shape of the compact ``kh x kw`` weights: ``(kh, kw, a*Cg, N)``."""
        kh, kw = self.kernel_size
        return (kh, kw, self.kernel_span * self.cg, self.filters)

    @property
    def pointwise_shape(self) -> tuple[int, int, int, int]:
        """Shape of the compact 1x1 weights: ``(1, 1, b*Cg, N)``."""
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
        """Map of the dense kernel's entries into the flat compact weights.

        ``take(flat, map)`` with ``flat = concat(kernel.ravel(), pointwise.ravel(), [0])`` is
        the equivalent dense kernel (zeros where not connected).

        Returns:
            An int64 array ``(kh, kw, C, N)`` of indices into ``flat``.
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
        """Map folding the 1x1 part into ONE 1x1 conv over all ``C`` channels.

        The map indexes ``concat(pointwise_kernel.ravel(), [0])``: zeros where a pair is not
        1x1-connected.

        Args:
            order: ``"natural"`` (columns in the natural filter order) or ``"grouped"`` (the
                grouped filter order ``filter_perm``).

        Returns:
            An int64 array ``(1, 1, C, N)``.
        """
        th, tw = self.tap
        nk, npw = math.prod(self.kernel_shape), math.prod(self.pointwise_shape)
        m = self.dense_index_map()[th, tw]
        m = np.where(self.connections == POINTWISE, m - nk, npw)
        if order == "grouped":
            m = m[:, self.filter_perm]
        return m[None, None]

    def grouped_dense_index_map(self, part: str) -> np.ndarray:
        """Map folding one part into a dense conv kernel over all ``C`` channels.

        Only for a part that reaches every channel group; outputs are in the grouped filter
        order ``filter_perm``.

        Args:
            part: ``"kernel"`` (the ``kh x kw`` part) or any other value for the 1x1 part.

        Returns:
            An int64 array ``(kh, kw, C, N)`` (``(1, 1, C, N)`` for the 1x1 part) of indices
            into that part's flat weights.

        Raises:
            ValueError: when the part's span is not ``groups``.
        """
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

    The plan ``(s, A, B)`` satisfies ``index[j*A + i] = (i*B + j + s) % C`` (``C = A*B =
    len(index)``): roll the channels by ``s`` (``concat(x[..., s:], x[..., :s])``), view them
    as ``(A, B)`` and transpose to ``(B, A)``. ``A = 1`` or ``B = 1`` is a pure roll,
    ``s = 0`` too the identity.

    Args:
        index: a 1-D permutation of ``range(C)``.

    Returns:
        The plan ``(s, A, B)`` as ints.

    Raises:
        ValueError: when ``index`` is no such permutation (then a general gather is needed).
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
    """The equivalent dense kernel of compact SSC weights.

    Args:
        pattern: the ``SSCPattern``.
        kernel: the compact ``kh x kw`` weights, ``pattern.kernel_shape``.
        pointwise_kernel: the compact 1x1 weights, ``pattern.pointwise_shape``.

    Returns:
        The float64 kernel ``(kh, kw, C, N)``, zeros where not connected.
    """
    k = np.asarray(kernel, np.float64).reshape(pattern.kernel_shape)
    p = np.asarray(pointwise_kernel, np.float64).reshape(pattern.pointwise_shape)
    flat = np.concatenate([k.ravel(), p.ravel(), [0.0]])
    return flat[pattern.dense_index_map()]


def ssc_project(kernel, pattern: SSCPattern) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal projection of a dense ``(kh, kw, C, N)`` kernel onto the pattern.

    Every connected entry is kept, every other one dropped, which is the closest kernel
    (Frobenius) with that pattern.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        pattern: the ``SSCPattern`` (its ``kernel_size``, ``in_channels`` and ``filters``
            must match the kernel).

    Returns:
        A tuple ``(kernel, pointwise_kernel)`` of the compact weights, shapes
        ``pattern.kernel_shape`` and ``pattern.pointwise_shape``.

    Raises:
        ValueError: when the kernel's shape does not match the pattern.
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

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        groups: ``G`` of the pattern.
        kernel_span: ``a`` of the pattern.
        pointwise_span: ``b`` of the pattern.
        layout: ``"contiguous"`` or ``"interleaved"``.

    Returns:
        A float64 array ``(C,)``: the kept energy ``E[s]`` for each shift ``s``.

    Raises:
        ValueError: when the pattern arguments are invalid for the kernel.
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
    """The smallest ``shift`` whose projection keeps the most energy.

    Ties are taken within a relative ``1e-9`` of the best energy.

    Args:
        kernel: a ``Conv2D`` kernel ``(kh, kw, C, N)``.
        groups: ``G`` of the pattern.
        kernel_span: ``a`` of the pattern.
        pointwise_span: ``b`` of the pattern.
        layout: ``"contiguous"`` or ``"interleaved"``.

    Returns:
        The shift, an int in ``[0, C)``.

    Raises:
        ValueError: when the pattern arguments are invalid for the kernel.
    """
    e = ssc_shift_energies(kernel, groups, kernel_span, pointwise_span, layout)
    return int(np.flatnonzero(e >= e.max() - 1e-9 * max(abs(e.max()), 1e-300))[0])


def center_tap_window(
    length: int | None, kernel: int, stride: int, dilation: int, padding: str, tap: int
) -> tuple[int, int, int, int]:
    """Where a 1x1 conv must read so that it equals the tap ``tap`` of a ``kernel``-wide conv.

    Output ``i`` of the wide conv reads input ``i*stride - pad_before + tap*dilation``,
    ``pad_before`` being the wide conv's ``"same"`` padding (TensorFlow puts the odd pixel
    after). With ``stride=1`` the result does not depend on ``length``, which may then be
    ``None``.

    Args:
        length: the input length along the axis, or ``None`` (only with ``stride=1``).
        kernel: the wide conv's kernel size along the axis.
        stride: its stride.
        dilation: its dilation rate.
        padding: ``"same"`` or ``"valid"``.
        tap: the tap's position in the kernel window, in ``[0, kernel)``.

    Returns:
        ``(pad_lo, pad_hi, start, end_trim)``: zero-pad the axis by ``pad_lo``/``pad_hi``,
        then take ``x[start : padded_len - end_trim : stride]``.

    Raises:
        ValueError: when ``length`` is ``None`` and ``stride > 1``.
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
