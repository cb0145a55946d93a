"""The SSC patterns of ``decompositions.structured`` on small hand-checked cases (NumPy only).

``tests/test_ssc.py`` tests the layer; these tests pin the pattern maths itself (index maps,
connection types, projection, shift search, the 1x1 tap window) so that mutation testing of
the module runs in seconds.
"""

import numpy as np
import pytest

from keras_eigenconv.decompositions import structured as st
from keras_eigenconv.decompositions.structured import FULL, NONE, POINTWISE, SSCPattern


def _pattern(c=4, n=4, k=(3, 3), **kw):
    return SSCPattern(in_channels=c, filters=n, kernel_size=k, **kw)


def test_pattern_validation_messages():
    with pytest.raises(ValueError, match=r"^groups must be a positive int, got 0\.$"):
        _pattern(groups=0)
    with pytest.raises(ValueError, match=r"^groups must be a positive int, got True\.$"):
        _pattern(groups=True)
    with pytest.raises(ValueError, match=r"^groups must be a positive int, got 2\.0\.$"):
        _pattern(groups=2.0)
    with pytest.raises(
        ValueError,
        match=r"^groups=3 must divide both the 6 input channels and the 4 filters; choose "
        r"groups among \[1, 2\]\.$",
    ):
        _pattern(c=6, n=4, groups=3)
    with pytest.raises(ValueError, match=r"^groups=4 must divide both the 4 input channels and "):
        _pattern(c=4, n=6, groups=4)
    for name in ("kernel_span", "pointwise_span"):
        for bad in (-1, 1.0, True):
            with pytest.raises(ValueError, match=rf"^{name} must be a non-negative int, got "):
                _pattern(groups=2, **{name: bad})
    with pytest.raises(
        ValueError,
        match=r"= 0 \+ 0 must be in \[1, groups=2\]: each filter group reaches that many channel "
        r"groups\. Lower the spans or raise groups\.$",
    ):
        _pattern(groups=2, kernel_span=0, pointwise_span=0)
    with pytest.raises(ValueError, match=r"= 2 \+ 1 must be in \[1, groups=2\]"):
        _pattern(groups=2, kernel_span=2, pointwise_span=1)
    _pattern(groups=2, kernel_span=2, pointwise_span=0)  # a + b == G is allowed
    _pattern(groups=2, kernel_span=0, pointwise_span=1)  # a == 0 is allowed
    with pytest.raises(ValueError, match=r"^layout must be one of \('contiguous', 'interleaved'\)"):
        _pattern(layout="random")
    for bad in (-1, 4, 1.0):
        with pytest.raises(ValueError, match=r"^shift must be an int in \[0, 4\), got "):
            _pattern(shift=bad)
    _pattern(shift=3)
    _pattern(groups=np.int64(2), kernel_span=np.int64(1), shift=np.int64(1))


def test_index_maps_contiguous_and_interleaved():
    p = _pattern(c=6, n=4, groups=2, kernel_span=1, pointwise_span=1)
    assert (p.cg, p.ng) == (3, 2)
    assert p.channel_group.tolist() == [0, 0, 0, 1, 1, 1]
    assert p.filter_group.tolist() == [0, 0, 1, 1]
    assert p.channel_perm.tolist() == [0, 1, 2, 3, 4, 5]
    assert p.filter_perm.tolist() == [0, 1, 2, 3]
    assert p.kxk_index.tolist() == [0, 1, 2, 3, 4, 5]  # group g reads channel group g
    assert p.pointwise_index.tolist() == [3, 4, 5, 0, 1, 2]  # ... and 1x1 from group g+1
    q = _pattern(c=6, n=4, groups=2, kernel_span=1, pointwise_span=1, layout="interleaved")
    assert q.channel_group.tolist() == [0, 1, 0, 1, 0, 1]
    assert q.filter_group.tolist() == [0, 1, 0, 1]
    assert q.channel_perm.tolist() == [0, 2, 4, 1, 3, 5]
    assert q.filter_perm.tolist() == [0, 2, 1, 3]
    assert q.kxk_index.tolist() == [0, 2, 4, 1, 3, 5]
    assert q.pointwise_index.tolist() == [1, 3, 5, 0, 2, 4]
    s = _pattern(c=6, n=4, groups=2, kernel_span=1, shift=1)  # channel c' = (c - 1) mod 6
    assert s.channel_group.tolist() == [1, 0, 0, 0, 1, 1]
    assert s.channel_perm.tolist() == [1, 2, 3, 4, 5, 0]
    assert s.pointwise_index.tolist() == []  # no 1x1 part
    assert s.pointwise_index.dtype.kind == "i"
    d = _pattern(c=6, n=4, groups=1)
    assert d.channel_group.tolist() == [0] * 6 and d.filter_perm.tolist() == [0, 1, 2, 3]


def test_connections_of_the_special_cases():
    dense = _pattern(groups=1, kernel_span=1)
    assert (dense.connections == FULL).all() and dense.connections.dtype == np.int8
    grouped = _pattern(groups=2, kernel_span=1)  # Conv2D(groups=2): block diagonal
    blocks = np.kron(np.eye(2, dtype=int), np.ones((2, 2), int)) * FULL
    np.testing.assert_array_equal(grouped.connections, blocks)
    pw = _pattern(groups=2, kernel_span=0, pointwise_span=1)
    np.testing.assert_array_equal(pw.connections, blocks // FULL * POINTWISE)
    band = _pattern(groups=4, kernel_span=1, pointwise_span=2)  # t = (j - g) mod 4
    t = (np.arange(4)[:, None] - np.arange(4)[None, :]) % 4
    np.testing.assert_array_equal(
        band.connections, np.where(t < 1, FULL, np.where(t < 3, POINTWISE, NONE))
    )
    het = _pattern(c=4, n=4, groups=2, kernel_span=1, pointwise_span=1, layout="interleaved")
    # HetConv: each filter has k x k kernels on every 2nd channel, shifted filter to filter
    np.testing.assert_array_equal(
        het.connections.T, [[2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2]]
    )


def test_shapes_tap_and_weight_count():
    p = _pattern(c=8, n=8, k=(3, 5), groups=4, kernel_span=1, pointwise_span=2)
    assert p.tap == (1, 2)
    assert _pattern(k=(2, 4)).tap == (0, 1)
    assert p.kernel_shape == (3, 5, 2, 8) and p.pointwise_shape == (1, 1, 4, 8)
    assert p.num_weights == 3 * 5 * 2 * 8 + 4 * 8


@pytest.mark.parametrize(
    "kw",
    [
        dict(groups=2, kernel_span=1, pointwise_span=1),
        dict(groups=2, kernel_span=1, pointwise_span=1, layout="interleaved", shift=1),
        dict(groups=3, kernel_span=1, pointwise_span=1, shift=2),
        dict(groups=3, kernel_span=0, pointwise_span=2),
        dict(groups=1, kernel_span=1),
    ],
)
def test_dense_kernel_matches_the_connections_and_projection_inverts_it(kw):
    p = _pattern(c=6, n=6, k=(3, 2), **kw)
    rng = np.random.default_rng(0)
    k = rng.normal(size=p.kernel_shape)
    pw = rng.normal(size=p.pointwise_shape)
    dense = st.ssc_dense_kernel(p, k, pw)
    assert dense.shape == (3, 2, 6, 6) and dense.dtype == np.float64
    conn = p.connections
    th, tw = p.tap
    for c in range(6):
        for n in range(6):
            window = dense[:, :, c, n]
            if conn[c, n] == FULL:
                assert np.all(window != 0.0)
            elif conn[c, n] == POINTWISE:
                assert window[th, tw] != 0.0 and np.count_nonzero(window) == 1
            else:
                assert not window.any()
    # each compact weight appears exactly once in the dense kernel
    assert np.count_nonzero(dense) == p.num_weights
    assert sorted(dense[dense != 0].tolist()) == sorted(np.r_[k.ravel(), pw.ravel()].tolist())
    # the projection is the inverse on the pattern and drops everything else
    k2, pw2 = st.ssc_project(dense + 5.0 * (dense == 0), p)
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(pw2, pw)
    # the closest kernel with the pattern: the residual lives off the pattern
    w = rng.normal(size=dense.shape)
    proj = st.ssc_dense_kernel(p, *st.ssc_project(w, p))
    assert np.all((w - proj)[dense != 0] == 0.0)
    assert np.all(proj[dense == 0] == 0.0)


def test_grouped_layout_of_the_compact_weights():
    # the compact kernel is a grouped conv's: filter group g reads kxk_index[g*a*Cg:...]
    p = _pattern(c=4, n=4, k=(1, 1), groups=2, kernel_span=1)
    k = np.arange(1.0, 9.0).reshape(1, 1, 2, 4)
    dense = st.ssc_dense_kernel(p, k, np.zeros(p.pointwise_shape))
    want = np.zeros((4, 4))
    want[0:2, 0:2] = k[0, 0, :, 0:2]  # filters 0, 1 (group 0) read channels 0, 1
    want[2:4, 2:4] = k[0, 0, :, 2:4]  # filters 2, 3 (group 1) read channels 2, 3
    np.testing.assert_array_equal(dense[0, 0], want)
    q = _pattern(c=4, n=4, k=(1, 1), groups=2, kernel_span=1, layout="interleaved")
    dense = st.ssc_dense_kernel(q, k, np.zeros(q.pointwise_shape))
    want = np.zeros((4, 4))
    # grouped output q is filter filter_perm[q] = [0, 2, 1, 3]; group 0 = channels 0, 2
    for out, filt in enumerate(q.filter_perm):
        chans = q.kxk_index[(out // 2) * 2 : (out // 2) * 2 + 2]
        want[chans, filt] = k[0, 0, :, out]
    np.testing.assert_array_equal(dense[0, 0], want)


@pytest.mark.parametrize("layout", ["contiguous", "interleaved"])
def test_full_pointwise_and_grouped_dense_index_maps(layout):
    p = _pattern(c=4, n=4, k=(3, 3), groups=2, kernel_span=1, pointwise_span=1, layout=layout)
    pw = np.arange(1.0, 1.0 + np.prod(p.pointwise_shape)).reshape(p.pointwise_shape)
    flat = np.r_[pw.ravel(), 0.0]
    m = p.full_pointwise_index_map()
    assert m.shape == (1, 1, 4, 4) and m.dtype == np.int64
    dense = st.ssc_dense_kernel(p, np.zeros(p.kernel_shape), pw)
    np.testing.assert_array_equal(flat[m][0, 0], dense[1, 1])
    np.testing.assert_array_equal(p.full_pointwise_index_map("natural"), m)
    g = p.full_pointwise_index_map("grouped")
    np.testing.assert_array_equal(flat[g][0, 0], dense[1, 1][:, p.filter_perm])
    with pytest.raises(
        ValueError, match=r"^grouped_dense_index_map needs a part that reaches every group\.$"
    ):
        p.grouped_dense_index_map("kernel")
    full = _pattern(c=4, n=4, k=(3, 3), groups=2, kernel_span=2, layout="interleaved")
    k = np.arange(1.0, 1.0 + np.prod(full.kernel_shape)).reshape(full.kernel_shape)
    gm = full.grouped_dense_index_map("kernel")
    assert gm.shape == (3, 3, 4, 4)
    dense = st.ssc_dense_kernel(full, k, np.zeros(full.pointwise_shape))
    np.testing.assert_array_equal(k.ravel()[gm], dense[:, :, :, full.filter_perm])
    pwf = _pattern(c=4, n=4, k=(3, 3), groups=2, kernel_span=0, pointwise_span=2)
    pw = np.arange(1.0, 1.0 + np.prod(pwf.pointwise_shape)).reshape(pwf.pointwise_shape)
    gm = pwf.grouped_dense_index_map("pointwise")
    assert gm.shape == (1, 1, 4, 4)
    dense = st.ssc_dense_kernel(pwf, np.zeros(pwf.kernel_shape), pw)
    np.testing.assert_array_equal(pw.ravel()[gm][0, 0], dense[1, 1][:, pwf.filter_perm])


def test_dense_kernel_checks_the_sizes_of_the_compact_weights():
    p = _pattern(c=4, n=4, k=(3, 3), groups=2, kernel_span=1, pointwise_span=1)
    k, pw = np.ones(p.kernel_shape), np.ones(p.pointwise_shape)
    assert st.ssc_dense_kernel(p, k.ravel(), pw.ravel()).shape == (3, 3, 4, 4)  # flat is fine
    with pytest.raises(ValueError):
        st.ssc_dense_kernel(p, np.ones(5), pw)
    with pytest.raises(ValueError):
        st.ssc_dense_kernel(p, k, np.ones(5))


def test_project_checks_the_shape():
    p = _pattern(c=4, n=4, k=(3, 3), groups=2)
    with pytest.raises(ValueError, match=r"^Kernel of shape \(3, 3, 4, 2\) does not match the "):
        st.ssc_project(np.zeros((3, 3, 4, 2)), p)
    with pytest.raises(ValueError, match=r"does not match the pattern's \(3, 3, 4, 4\)"):
        st.ssc_project(np.zeros((3, 1, 4, 4)), p)
    with pytest.raises(ValueError, match=r"does not match"):
        st.ssc_project(np.zeros((3, 3, 2, 4)), p)


def test_shift_energies_by_brute_force_and_best_shift():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 3, 6, 4))
    for kw in (
        dict(groups=2, kernel_span=1, pointwise_span=1),
        dict(groups=2, kernel_span=1, pointwise_span=0, layout="interleaved"),
    ):
        e = st.ssc_shift_energies(w, **kw)
        brute = [
            (st.ssc_dense_kernel(p, *st.ssc_project(w, p)) ** 2).sum()
            for p in (_pattern(c=6, n=4, k=(3, 3), shift=s, **kw) for s in range(6))
        ]
        np.testing.assert_allclose(e, brute, rtol=1e-10)
        assert st.ssc_best_shift(w, **kw) == int(np.argmax(brute))
    # the defaults (G=1, a=1, b=0) are the dense conv: every shift keeps everything
    np.testing.assert_allclose(st.ssc_shift_energies(w), np.full(6, (w**2).sum()), rtol=1e-12)
    assert st.ssc_best_shift(w) == 0
    # an odd number of channels (the inverse FFT's length)
    w5 = rng.normal(size=(3, 3, 5, 5))
    e = st.ssc_shift_energies(w5, groups=5, kernel_span=1, pointwise_span=1)
    brute = [
        (st.ssc_dense_kernel(p, *st.ssc_project(w5, p)) ** 2).sum()
        for p in (
            _pattern(c=5, n=5, k=(3, 3), groups=5, kernel_span=1, pointwise_span=1, shift=s)
            for s in range(5)
        )
    ]
    assert e.shape == (5,)
    np.testing.assert_allclose(e, brute, rtol=1e-10)
    # ties: the smallest shift; a kernel living on channels 2-3 wants shift 2 for G=3
    w = np.zeros((1, 1, 6, 3))
    w[0, 0, 2:4, 0] = 1.0
    assert st.ssc_best_shift(w, groups=3, kernel_span=1) == 2
    assert st.ssc_best_shift(1e-7 * w, groups=3, kernel_span=1) == 2  # tie test is relative
    assert st.ssc_best_shift(np.zeros((1, 1, 4, 2)), groups=2) == 0  # all equal: the first
    w = np.ones((1, 1, 4, 2))  # every shift keeps the same energy
    assert st.ssc_best_shift(w, groups=2) == 0


def test_channel_shuffle_plan_exact_values():
    assert st.channel_shuffle_plan([0, 1, 2, 3]) == (0, 1, 4)
    assert st.channel_shuffle_plan([2, 3, 0, 1]) == (2, 1, 4)
    # index[j*A + i] = (i*B + j + s) % C
    assert st.channel_shuffle_plan([0, 2, 4, 1, 3, 5]) == (0, 3, 2)
    assert st.channel_shuffle_plan([0, 3, 1, 4, 2, 5]) == (0, 2, 3)
    assert st.channel_shuffle_plan([1, 3, 5, 2, 4, 0]) == (1, 3, 2)
    assert st.channel_shuffle_plan(np.array([3, 0, 1, 2])) == (3, 1, 4)
    assert all(type(v) is int for v in st.channel_shuffle_plan(np.array([1, 0])))
    with pytest.raises(ValueError, match=r"^index is not a permutation of its own length\.$"):
        st.channel_shuffle_plan([0, 0, 1])
    with pytest.raises(ValueError, match="not a permutation"):
        st.channel_shuffle_plan([])
    with pytest.raises(ValueError, match=r"^index is not a rolled transpose\.$"):
        st.channel_shuffle_plan([0, 2, 1, 3, 5, 4])


def _taps_read(length, kernel, stride, dilation, padding, tap):
    """The input index each output of the wide conv reads at ``tap`` (-1: padding)."""
    effective = (kernel - 1) * dilation + 1
    if padding == "same":
        out = -(-length // stride)
        pad = max((out - 1) * stride + effective - length, 0) // 2
    else:
        out, pad = (length - effective) // stride + 1, 0
    idx = [o * stride - pad + tap * dilation for o in range(max(out, 0))]
    return [i if 0 <= i < length else -1 for i in idx]


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_center_tap_window_reads_the_tap(padding):
    for length, kernel, stride, dilation, tap in [
        (7, 3, 1, 1, 1),
        (8, 3, 2, 1, 1),
        (9, 5, 2, 2, 2),
        (6, 4, 3, 1, 1),
        (5, 3, 1, 2, 0),
        (10, 3, 3, 1, 2),
        (7, 3, 1, 1, 2),
        (7, 3, 1, 1, 0),
        (2, 3, 1, 1, 1),
        (1, 5, 2, 1, 4),
    ]:
        lo, hi, start, trim = st.center_tap_window(length, kernel, stride, dilation, padding, tap)
        assert min(lo, hi, start, trim) >= 0  # pads and trims are amounts
        x = np.arange(length)
        padded = np.r_[np.full(lo, -1), x, np.full(hi, -1)]
        got = padded[start : len(padded) - trim : stride].tolist()
        assert got == _taps_read(length, kernel, stride, dilation, padding, tap), (
            length, kernel, stride, dilation, tap,
        )  # fmt: skip
    # stride 1: independent of the length (at least the window), which may be unknown
    for kernel in (1, 2, 3, 4):
        for dilation in (1, 2, 3):
            for tap in range(kernel):
                want = st.center_tap_window(64, kernel, 1, dilation, padding, tap)
                assert st.center_tap_window(None, kernel, 1, dilation, padding, tap) == want
    with pytest.raises(
        ValueError, match=r"^center_tap_window needs a known length when stride > 1\.$"
    ):
        st.center_tap_window(None, 3, 2, 1, padding, 1)
