"""The matrix decompositions (DeCEF, BasisConv, SVD) and the Gram-matrix SVD they share."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_eigenconv.decompositions import gram_svd, singular_energies
from keras_eigenconv.decompositions import matrix as mx


@pytest.fixture(autouse=True)
def _empty_gram_cache(monkeypatch):
    """Each test computes its eigendecompositions (none served from an earlier test's cache)."""
    monkeypatch.setattr(mx, "_EIGH_CACHE", {})


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    true_rank=st.integers(1, 40),
    seed=st.integers(0, 99),
)
def test_gram_svd_matches_numpy_and_is_exact_at_full_rank(m, n, true_rank, seed):
    rng = np.random.default_rng(seed)
    k = min(true_rank, m, n)
    a = rng.normal(size=(m, k)) @ rng.normal(size=(k, n))
    s_ref = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(singular_energies(a), s_ref**2, atol=1e-9 * s_ref[0] ** 2)
    u, s, vt = gram_svd(a)
    np.testing.assert_allclose(s, s_ref, atol=1e-6 * s_ref[0])
    np.testing.assert_allclose((u * s) @ vt, a, atol=1e-10 * np.abs(a).max())
    # singular vectors of the non-negligible values are orthonormal on both sides
    big = s > 1e-6 * s[0]
    np.testing.assert_allclose(vt[big] @ vt[big].T, np.eye(big.sum()), atol=1e-6)
    np.testing.assert_allclose(u[:, big].T @ u[:, big], np.eye(big.sum()), atol=1e-6)
    for r in range(1, min(m, n) + 1):  # truncation error equals the discarded energy
        u, s, vt = gram_svd(a, r)
        err = np.linalg.norm(a - (u * s) @ vt) ** 2
        assert abs(err - (s_ref[r:] ** 2).sum()) <= 1e-6 * (s_ref**2).sum()


# --- exact values on small hand-checkable inputs (what mutation testing asks of the module) --


def _kernel(kh=3, kw=2, c=3, n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(kh, kw, c, n))


def test_as_float64_kernel_checks_the_number_of_dimensions():
    w = mx.as_float64_kernel(np.ones((1, 1, 2, 3), np.float32))
    assert w.dtype == np.float64 and w.shape == (1, 1, 2, 3)
    assert mx.as_float64_kernel([[1, 2]], ndim=2).dtype == np.float64
    with pytest.raises(ValueError, match=r"Expected a 4-D kernel, got shape \(2, 3\)"):
        mx.as_float64_kernel(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"Expected a 2-D kernel"):
        mx.as_float64_kernel(np.ones((1, 2, 3)), ndim=2)


def test_energy_rank_exact_values_and_ties():
    s = np.array([4.0, 3.0, 2.0, 1.0])  # cumulative shares 0.4, 0.7, 0.9, 1.0
    assert [mx.energy_rank(s, e) for e in (0.1, 0.4, 0.41, 0.7, 0.71, 0.9, 0.95, 1.0)] == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
    ]
    # energy=1 does not ask for a numerically-zero tail
    assert mx.energy_rank(np.array([1.0, 1e-14, 1e-15]), 1.0) == 1
    assert mx.energy_rank(np.array([1.0, 0.0, 0.0]), 1.0) == 1
    assert mx.energy_rank([2.0, 2.0], 1.0) == 2  # lists are accepted
    with warnings.catch_warnings():  # an all-zero kernel: rank 1, no 0/0
        warnings.simplefilter("error")
        assert mx.energy_rank(np.zeros(5), 0.5) == 1
    for bad in (0.0, -0.1, 1.0001):
        with pytest.raises(ValueError, match=r"energy must be in \(0, 1\]"):
            mx.energy_rank(s, bad)


def test_entropy_rank_exact_values():
    assert mx.entropy_rank(np.ones(4)) == pytest.approx(4.0, rel=1e-12)
    assert mx.entropy_rank(np.array([2.0, 0.0, 0.0])) == pytest.approx(1.0, rel=1e-12)
    assert mx.entropy_rank(np.array([-1.0, 1.0])) == pytest.approx(2.0, rel=1e-12)
    p = np.array([0.75, 0.25])
    assert mx.entropy_rank(np.array([3.0, 1.0])) == pytest.approx(
        np.exp(-(p * np.log(p)).sum()), rel=1e-12
    )
    assert mx.entropy_rank(np.zeros(3)) == 0.0
    assert isinstance(mx.entropy_rank(np.ones(2)), float)


def test_relative_error_exact_values():
    assert mx.relative_error([3.0, 4.0], [3.0, 0.0]) == pytest.approx(0.8, rel=1e-12)
    assert mx.relative_error([3.0, 4.0], [0.0, 0.0]) == pytest.approx(1.0, rel=1e-12)
    assert mx.relative_error([3.0, 4.0], [3.0, 4.0]) == 0.0
    assert mx.relative_error([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert mx.relative_error([0.0, 0.0], [0.0, 1e-9]) == 1.0
    assert isinstance(mx.relative_error([1.0], [0.5]), float)


def test_gram_svd_exact_on_a_diagonal_matrix_and_zero_directions():
    a = np.zeros((4, 3))
    a[0, 0], a[1, 1], a[2, 2] = 2.0, 5.0, 1e-9  # the last one is below 1e-7 * s_max
    u, s, vt = mx.gram_svd(a)
    np.testing.assert_allclose(s, [5.0, 2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(np.abs(u[:, :2]), [[0, 1], [1, 0], [0, 0], [0, 0]], atol=1e-12)
    assert np.all(u[:, 2] == 0.0)  # a numerically-zero direction has no left vector
    np.testing.assert_allclose(np.abs(vt[:2]), [[0, 1, 0], [1, 0, 0]], atol=1e-12)
    assert u.shape == (4, 3) and s.shape == (3,) and vt.shape == (3, 3)
    # the wide case returns the transposed factors, with the same zero-direction rule
    u2, s2, vt2 = mx.gram_svd(a.T, 2)
    assert u2.shape == (3, 2) and s2.shape == (2,) and vt2.shape == (2, 4)
    np.testing.assert_allclose(s2, [5.0, 2.0], atol=1e-12)
    np.testing.assert_allclose((u2 * s2) @ vt2, a.T * (a.T > 1e-3), atol=1e-12)
    u3, s3, vt3 = mx.gram_svd(a.T)
    assert np.all(vt3[2] == 0.0) and s3[2] == 0.0
    np.testing.assert_allclose(np.abs(u3[:, :2]), [[0, 1], [1, 0], [0, 0]], atol=1e-12)
    # rank 1 keeps only the largest direction
    u1, s1, vt1 = mx.gram_svd(a, 1)
    only_5 = np.zeros((4, 3))
    only_5[1, 1] = 5.0
    np.testing.assert_allclose((u1 * s1) @ vt1, only_5, atol=1e-12)


def test_gram_svd_of_a_zero_matrix_is_zero_without_nans():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u, s, vt = mx.gram_svd(np.zeros((3, 2)))
    assert np.all(u == 0.0) and np.all(s == 0.0)
    assert np.all(np.isfinite(vt))


def test_singular_energies_exact_and_cache_safe():
    a = np.array([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(mx.singular_energies(a), [16.0, 9.0], atol=1e-12)
    np.testing.assert_allclose(mx.singular_energies(a.T), [16.0, 9.0], atol=1e-12)
    e = mx.singular_energies(a)
    e[:] = -1.0  # the caller's copy: the cached eigenvalues must not change
    np.testing.assert_allclose(mx.singular_energies(a), [16.0, 9.0], atol=1e-12)
    u, s, vt = mx.gram_svd(a)
    u[:] = 0.0
    s[:] = 0.0
    vt[:] = 0.0
    np.testing.assert_allclose(mx.gram_svd(a)[1], [4.0, 3.0], atol=1e-12)
    # the same bytes in another shape are another matrix (the cache key has the shape)
    data = np.arange(12.0) ** 1.5
    for shape in ((6, 2), (4, 3), (12, 1)):
        ref = np.linalg.svd(data.reshape(shape), compute_uv=False) ** 2
        np.testing.assert_allclose(mx.singular_energies(data.reshape(shape)), ref, rtol=1e-9)


def test_gram_cache_is_bounded_and_drops_the_oldest(monkeypatch):
    monkeypatch.setattr(mx, "_EIGH_CACHE", {})
    monkeypatch.setattr(mx, "_EIGH_CACHE_BYTES", 3 * 8 * 4)  # room for three 2x2 V's
    rng = np.random.default_rng(0)
    mats = [rng.normal(size=(3, 2)) for _ in range(5)]
    for m in mats:
        mx.gram_svd(m)
    assert len(mx._EIGH_CACHE) == 3
    kept = [v[1] for v in mx._EIGH_CACHE.values()]
    for m in mats[2:]:  # the three newest are the ones kept (served from the cache)
        assert any(mx._gram_eigh(m)[1] is k for k in kept)
    assert sum(v[1].nbytes for v in mx._EIGH_CACHE.values()) <= mx._EIGH_CACHE_BYTES


def test_singular_energies_are_values_only(monkeypatch):
    monkeypatch.setattr(mx, "_EIGH_CACHE", {})
    m = np.random.default_rng(1).normal(size=(7, 4))
    want = np.linalg.svd(m, compute_uv=False) ** 2
    np.testing.assert_allclose(mx.singular_energies(m), want, rtol=1e-10)
    np.testing.assert_allclose(mx.singular_energies(m.T), want, rtol=1e-10)  # wide: same
    assert mx._EIGH_CACHE == {}  # no eigenvectors computed or kept
    np.testing.assert_allclose(mx.gram_svd(m)[1] ** 2, want, rtol=1e-10)
    assert len(mx._EIGH_CACHE) == 1  # the decomposition caches eigh(M^T M)
    bad = m.copy()
    bad[0, 0] = np.nan  # non-finite weights: NaN energies, not a LinAlgError
    got = mx.singular_energies(bad)
    assert got.shape == (4,) and np.isnan(got).all()


def _counting(monkeypatch, name):
    """Count the calls of ``np.linalg.<name>`` (the real function runs)."""
    calls = []
    real = getattr(np.linalg, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(np.linalg, name, counted)
    return calls


@pytest.mark.parametrize("unfolding", ["channel", "spatial"])
def test_shared_work_reuses_the_gram_matrix_bit_identically(monkeypatch, unfolding):
    spectrum = mx.svd_channel_spectrum if unfolding == "channel" else mx.svd_spatial_spectrum
    factors = mx.svd_channel_factors if unfolding == "channel" else mx.svd_spatial_factors
    kernel = np.random.default_rng(3).normal(size=(3, 3, 5, 7)).astype(np.float32)
    plain_s, plain_f = spectrum(kernel), factors(kernel, 4)
    mx._EIGH_CACHE.clear()
    owner = object()
    with mx.shared_work():
        k = mx.shared_array(owner, lambda: np.asarray(kernel, np.float64))
        assert mx.shared_array(owner, lambda: 1 / 0) is k and not k.flags.writeable
        grams = []
        real_gram = mx._tall_gram
        monkeypatch.setattr(mx, "_tall_gram", lambda m: grams.append(1) or real_gram(m))
        s, f = spectrum(k), factors(k, 4)
        assert grams == [1]  # one Gram matrix for the spectrum and the factors
        np.testing.assert_array_equal(s, plain_s)  # bit-identical
        for got, want in zip(f, plain_f):
            np.testing.assert_array_equal(got, want)
        mx.release_shared(owner)
        assert mx._SHARED.get().nbytes == 0 and not mx._SHARED.get().owners
    assert mx._SHARED.get() is None
    assert mx.shared_array(owner, lambda: np.ones(2)).flags.writeable  # outside: as computed


def test_a_spilled_kernel_is_read_again_and_finds_its_results(monkeypatch):
    # whole-model rank choice keeps one kernel at a time: spilled after its spectrum, read
    # again for the factors, which still reuse the spectrum's Gram matrix
    kernel = np.random.default_rng(4).normal(size=(3, 3, 5, 7))
    plain_f = mx.svd_channel_factors(kernel, 4)
    mx._EIGH_CACHE.clear()
    reads, grams = [], []
    real_gram = mx._tall_gram
    monkeypatch.setattr(mx, "_tall_gram", lambda m: grams.append(1) or real_gram(m))

    def read():
        reads.append(1)
        return kernel.copy()

    with mx.shared_work():
        memo = mx._SHARED.get()
        s = mx.svd_channel_spectrum(mx.shared_array("layer", read))
        mx.spill_shared("layer")
        assert memo.nbytes == s.nbytes + memo.spilled[id("layer")]["filter_gram"].nbytes
        assert not memo.arrays  # the kernel itself is no longer held
        mx.spill_shared("layer")  # twice: nothing more to drop
        k = mx.shared_array("layer", read)
        assert reads == [1, 1] and not k.flags.writeable
        f = mx.svd_channel_factors(k, 4)
        assert grams == [1]  # the Gram matrix came back with the kernel
        for got, want in zip(f, plain_f):
            np.testing.assert_array_equal(got, want)
        mx.spill_shared("layer")
        mx.release_shared("layer")  # a spilled owner is released with its results
        assert memo.nbytes == 0 and not memo.owners and not memo.spilled
    mx.spill_shared("layer")  # outside a block: nothing to do


@pytest.mark.parametrize("shape", [(6, 40), (40, 6), (9, 9)])
def test_left_vectors_are_gram_svds_left_vectors(shape):
    # wide: the Gram matrix's eigenvectors, without the long side's product
    m = np.random.default_rng(6).normal(size=shape)
    for r in (1, 3, min(shape)):
        np.testing.assert_array_equal(mx._left_vectors(m, r), mx._gram_svd(m, r)[0][:, :r])
        u = np.linalg.svd(m)[0][:, :r]
        np.testing.assert_allclose(np.abs(mx._left_vectors(m, r)), np.abs(u), atol=1e-8)


@pytest.mark.parametrize("filters", [7, 8, 9, 16])  # 9 taps: the Gram path from 9 filters on
def test_decef_factors_are_exact_at_full_rank_and_optimal_below(filters):
    w = np.random.default_rng(5).normal(size=(3, 3, 6, filters))
    q = min(9, filters)
    e, a = mx.decef_factors(w, q)
    rebuilt = np.einsum("xycr,crn->xycn", e, a[0, 0].reshape(6, q, filters))
    np.testing.assert_allclose(rebuilt, w, atol=1e-10)
    # rank 2: each channel's best rank-2 approximation (Eckart-Young), its error the tail
    e, a = mx.decef_factors(w, 2)
    rebuilt = np.einsum("xycr,crn->xycn", e, a[0, 0].reshape(6, 2, filters))
    spectrum = mx.decef_spectrum(w)
    assert np.sum((w - rebuilt) ** 2) == pytest.approx(spectrum[2:].sum(), rel=1e-9)
    assert spectrum.sum() == pytest.approx(np.sum(w**2), rel=1e-12)


def test_shared_work_reuses_the_decef_svd_and_its_results_are_read_only(monkeypatch):
    kernel = np.random.default_rng(4).normal(size=(3, 3, 6, 12))
    plain_s, plain_f = mx.decef_spectrum(kernel), mx.decef_factors(kernel, 3)
    calls = _counting(monkeypatch, "eigh")  # of the 9 x 9 per-channel Gram matrices
    with mx.shared_work():
        k = mx.shared_array("layer", lambda: kernel)
        with mx.shared_work():  # nested: the outer block keeps the results
            s = mx.decef_spectrum(k)
        f = mx.decef_factors(k, 3)
        assert calls == ["eigh"]
        np.testing.assert_array_equal(s, plain_s)
        for got, want in zip(f, plain_f):
            np.testing.assert_array_equal(got, want)
        kept = mx._SHARED.get().arrays[id(k)][1]["decef_svd"]
        assert all(not part.flags.writeable for part in kept)
        writable = kernel.copy()  # not made by shared_array: computed every time
        mx.decef_spectrum(writable)
        mx.decef_spectrum(writable)
        assert calls == ["eigh"] * 3


def test_shared_work_keeps_at_most_its_memory_limit(monkeypatch):
    monkeypatch.setattr(mx, "_SHARED_BYTES", 3 * 4 * 8 * 8 + 4 * 4 * 8)  # 3 kernels + 1 Gram
    calls = _counting(monkeypatch, "eigvalsh")
    rng = np.random.default_rng(5)
    kernels = [rng.normal(size=(1, 1, 4, 8)) for _ in range(4)]
    with mx.shared_work():
        ks = [mx.shared_array(i, lambda k=k: k) for i, k in enumerate(kernels)]
        assert [k.flags.writeable for k in ks] == [False, False, False, True]  # 4th: no room
        for k in ks:
            mx.svd_channel_spectrum(k)
        memo = mx._SHARED.get()
        assert memo.nbytes <= mx._SHARED_BYTES
        assert sum(bool(e[1]) for e in memo.arrays.values()) == 1  # one Gram had room
    assert calls == ["eigvalsh"] * 4


def _decef_rebuild(eigen, comb):
    kh, kw, c, r = eigen.shape
    n = comb.shape[-1]
    a = comb.reshape(c, r, n)  # row c*r + j: TensorFlow's depthwise output order
    return np.einsum("hwcj,cjn->hwcn", eigen, a)


def test_decef_exact_values_and_layout():
    w = np.zeros((2, 1, 1, 2))
    w[:, 0, 0, :] = [[3.0, 0.0], [0.0, 4.0]]
    np.testing.assert_allclose(mx.decef_spectrum(w), [16.0, 9.0], atol=1e-12)
    eigen, comb = mx.decef_factors(w, 1)
    assert eigen.shape == (2, 1, 1, 1) and comb.shape == (1, 1, 1, 2)
    np.testing.assert_allclose(np.abs(eigen[:, 0, 0, 0]), [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(np.abs(comb[0, 0, 0]), [0.0, 4.0], atol=1e-12)
    with pytest.raises(ValueError, match="4-D"):
        mx.decef_spectrum(np.ones((3, 3)))


def test_decef_factors_rebuild_and_truncation_error():
    w = _kernel(3, 2, 3, 4)
    spec = mx.decef_spectrum(w)
    assert spec.shape == (4,) and np.all(np.diff(spec) <= 0)
    np.testing.assert_allclose(spec.sum(), (w**2).sum(), rtol=1e-12)
    for r in range(1, 5):
        eigen, comb = mx.decef_factors(w, r)
        assert eigen.shape == (3, 2, 3, r) and comb.shape == (1, 1, 3 * r, 4)
        err = ((w - _decef_rebuild(eigen, comb)) ** 2).sum()
        np.testing.assert_allclose(err, spec[r:].sum(), atol=1e-10)
        # eigen-filters of one channel are orthonormal
        e = eigen[:, :, 1, :].reshape(6, r)
        np.testing.assert_allclose(e.T @ e, np.eye(r), atol=1e-10)
    # per input channel, the filters come from that channel's slice only
    w2 = w.copy()
    w2[:, :, 0, :] = 0.0
    eigen, comb = mx.decef_factors(w2, 4)
    np.testing.assert_allclose(comb.reshape(3, 4, 4)[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(_decef_rebuild(eigen, comb), w2, atol=1e-10)


def test_basis_and_channel_svd_exact_values_and_rebuild():
    w = np.zeros((1, 1, 2, 2))
    w[0, 0] = [[3.0, 0.0], [0.0, 4.0]]
    np.testing.assert_allclose(mx.basis_spectrum(w), [16.0, 9.0], atol=1e-12)
    np.testing.assert_allclose(mx.svd_channel_spectrum(w), [16.0, 9.0], atol=1e-12)
    w = _kernel(3, 2, 2, 5)  # filter matrix 12 x 5
    spec = mx.basis_spectrum(w)
    ref = np.linalg.svd(w.reshape(12, 5), compute_uv=False) ** 2
    np.testing.assert_allclose(spec, ref, rtol=1e-9)
    np.testing.assert_allclose(mx.svd_channel_spectrum(w), ref, rtol=1e-9)
    for r in range(1, 6):
        f, b = mx.basis_factors(w, r)
        assert f.shape == (3, 2, 2, r) and b.shape == (1, 1, r, 5)
        rebuilt = np.einsum("hwcm,mn->hwcn", f, b[0, 0])
        np.testing.assert_allclose(((w - rebuilt) ** 2).sum(), ref[r:].sum(), atol=1e-10)
        fm = f.reshape(12, r)
        np.testing.assert_allclose(fm.T @ fm, np.eye(r), atol=1e-10)
        u, s, v = mx.svd_channel_factors(w, r)
        assert u.shape == (3, 2, 2, r) and s.shape == (r,) and v.shape == (1, 1, r, 5)
        np.testing.assert_allclose(s, np.sqrt(ref[:r]), rtol=1e-9)
        rebuilt = np.einsum("hwcr,r,rn->hwcn", u, s, v[0, 0])
        np.testing.assert_allclose(((w - rebuilt) ** 2).sum(), ref[r:].sum(), atol=1e-10)
    # a wide filter matrix (more filters than taps): exact at full rank 4
    w = _kernel(1, 2, 2, 7)
    f, b = mx.basis_factors(w, 4)
    np.testing.assert_allclose(np.einsum("hwcm,mn->hwcn", f, b[0, 0]), w, atol=1e-10)


def test_spatial_svd_exact_values_layout_and_rebuild():
    w = np.zeros((2, 1, 1, 1))
    w[:, 0, 0, 0] = [3.0, 4.0]  # unfolding (kh*C) x (kw*N) = 2 x 1, one singular value 5
    np.testing.assert_allclose(mx.svd_spatial_spectrum(w), [25.0], atol=1e-12)
    w = _kernel(3, 2, 2, 4)
    m = np.zeros((3 * 2, 2 * 4))  # built by hand: M[(h, c), (w, n)] = W[h, w, c, n]
    for h, x, c, n in np.ndindex(w.shape):
        m[h * 2 + c, x * 4 + n] = w[h, x, c, n]
    ref = np.linalg.svd(m, compute_uv=False) ** 2
    np.testing.assert_allclose(mx.svd_spatial_spectrum(w), ref, rtol=1e-9)
    for r in range(1, 7):
        u, s, v = mx.svd_spatial_factors(w, r)
        assert u.shape == (3, 1, 2, r) and s.shape == (r,) and v.shape == (1, 2, r, 4)
        np.testing.assert_allclose(s, np.sqrt(ref[:r]), rtol=1e-9)
        rebuilt = np.einsum("hcr,r,xrn->hxcn", u[:, 0], s, v[0])
        np.testing.assert_allclose(((w - rebuilt) ** 2).sum(), ref[r:].sum(), atol=1e-10)
    with pytest.raises(ValueError, match="4-D"):
        mx.svd_spatial_factors(np.ones((2, 2, 2)), 1)


def test_small_totals_and_float32_inputs_are_computed_in_float64():
    # totals below 1 are ordinary spectra (not "zero")
    assert mx.energy_rank(np.array([0.4, 0.3, 0.2, 0.1]), 0.95) == 4
    assert mx.entropy_rank(np.full(4, 0.25)) == pytest.approx(4.0, rel=1e-12)
    # float32 values whose squares or sums leave float32's range
    big = np.float32([3e38, 3e38])
    assert mx.energy_rank(big, 0.5) == 1
    assert mx.entropy_rank(big) == pytest.approx(2.0, rel=1e-12)
    tiny, zero = np.float32([1e-30, 0.0]), np.zeros(2, np.float32)
    assert mx.relative_error(tiny, zero) == pytest.approx(1.0, rel=1e-12)
    assert mx.relative_error(zero, tiny) == 1.0
    assert mx.relative_error(tiny, tiny * 0.5) == pytest.approx(0.5, rel=1e-12)
    # a float32 matrix: energies and factors to float64 accuracy, not float32's
    a32 = np.random.default_rng(3).normal(size=(9, 5)).astype(np.float32)
    a = a32.astype(np.float64)
    ref = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(mx.singular_energies(a32), ref**2, rtol=1e-11)
    np.testing.assert_allclose(mx.singular_energies(a32.T), ref**2, rtol=1e-11)
    u, s, vt = mx.gram_svd(a32)
    assert u.dtype == s.dtype == vt.dtype == np.float64
    np.testing.assert_allclose(s, ref, rtol=1e-11)
    np.testing.assert_allclose((u * s) @ vt, a, atol=1e-12)


def test_singular_energies_are_never_negative():
    # a rank-1 matrix: the Gram matrix's zero eigenvalues come out as -1e-15 or so
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a = rng.normal(size=(12, 1)) @ rng.normal(size=(1, 6))
        e = mx.singular_energies(a)
        assert np.all(e >= 0.0)
        np.testing.assert_allclose(e[1:], 0.0, atol=1e-12)
        with warnings.catch_warnings():  # the SVD takes no square root of a negative value
            warnings.simplefilter("error")
            u, s, vt = mx.gram_svd(a)
        assert np.all(s[1:] == 0.0) and np.all(u[:, 1:] == 0.0)
        assert np.all(mx._gram_eigh(a)[0] >= 0.0)  # nor does the cache hold one


def test_gram_svd_of_an_empty_matrix():
    u, s, vt = mx.gram_svd(np.zeros((3, 0)))
    assert u.shape == (3, 0) and s.shape == (0,) and vt.shape == (0, 0)


@pytest.mark.parametrize(
    "spectrum, factors, shape",
    [
        ("svd_channel_spectrum", "svd_channel_factors", (3, 3, 5, 7)),  # wide filter matrix
        ("svd_channel_spectrum", "svd_channel_factors", (3, 3, 2, 30)),  # tall one
        ("svd_spatial_spectrum", "svd_spatial_factors", (3, 3, 5, 7)),
        ("basis_spectrum", "basis_factors", (3, 3, 4, 6)),
    ],
)
def test_inside_shared_work_the_factors_reuse_the_spectrums_gram_matrix(
    monkeypatch, spectrum, factors, shape
):
    # every eigendecomposition the factors need is handed the Gram matrix the spectrum
    # computed (the same object), in either orientation of the unfolding; no second one
    kernel = np.random.default_rng(6).normal(size=shape)
    mx._EIGH_CACHE.clear()
    grams, real = [], mx._gram_eigh
    monkeypatch.setattr(mx, "_gram_eigh", lambda m, gram=None: grams.append(gram) or real(m, gram))
    with mx.shared_work():
        k = mx.shared_array("layer", lambda: kernel)
        getattr(mx, spectrum)(k)
        kept = {
            id(v) for v in mx._SHARED.get().arrays[id(k)][1].values() if isinstance(v, np.ndarray)
        }
        getattr(mx, factors)(k, 2)
        assert grams and all(g is not None and id(g) in kept for g in grams), grams
        # the spectrum itself is kept too: asking again computes nothing
        calls = _counting(monkeypatch, "eigvalsh")
        getattr(mx, spectrum)(k)
        assert calls == []


def test_shared_work_bookkeeping_on_views_unknown_owners_and_kept_results():
    big = np.random.default_rng(7).normal(size=(2, 3, 3, 4, 6))
    assert mx.release_shared("anything") is None  # outside a block: nothing to do
    with mx.shared_work():
        k = mx.shared_array("view", lambda: big[1])  # a view: kept as a copy of its own
        assert k.flags.owndata and k.base is None and not k.flags.writeable
        assert big.flags.writeable  # the caller's array is not frozen
        np.testing.assert_array_equal(k, big[1])
        mx.release_shared("never seen")  # an unknown owner: nothing to do
        mx.svd_channel_spectrum(k)
        kept = mx._SHARED.get().arrays[id(k)][1]
        assert kept and all(
            not part.flags.writeable
            for v in kept.values()
            for part in (v if isinstance(v, tuple) else (v,))
        )
        mx.release_shared("view")
        assert mx._SHARED.get().nbytes == 0


@pytest.mark.parametrize("shape", [(3, 3, 5, 7), (3, 3, 2, 30)])
def test_nan_kernels_give_nan_spectra_of_the_full_length(shape):
    kernel = np.random.default_rng(8).normal(size=shape)
    kernel[0, 0, 0, 0] = np.nan
    s = mx.svd_channel_spectrum(kernel)
    assert s.shape == (min(9 * shape[2], shape[3]),) and np.isnan(s).all()


def test_a_square_unfolding_is_decomposed_exactly():
    # a square filter matrix (kh*kw*C == N): its Gram matrix must be M^T M, not M M^T
    w = np.random.default_rng(9).normal(size=(3, 3, 2, 18))
    for r in (18, 5):
        ref = np.linalg.svd(w.reshape(18, 18), compute_uv=False)
        u, s, v = mx.svd_channel_factors(w, r)
        np.testing.assert_allclose(s, ref[:r], rtol=1e-9)
        rebuilt = np.einsum("hwcr,r,rn->hwcn", u, s, v[0, 0])
        np.testing.assert_allclose(((w - rebuilt) ** 2).sum(), (ref[r:] ** 2).sum(), atol=1e-8)
        f, b = mx.basis_factors(w, r)
        rebuilt = np.einsum("hwcm,mn->hwcn", f, b[0, 0])
        np.testing.assert_allclose(((w - rebuilt) ** 2).sum(), (ref[r:] ** 2).sum(), atol=1e-8)


def test_release_inside_a_nested_block_keeps_the_outer_blocks_results():
    kernel = np.random.default_rng(10).normal(size=(3, 3, 4, 6))
    with mx.shared_work():
        k = mx.shared_array("layer", lambda: kernel)
        with mx.shared_work():  # e.g. one conversion of several in a latency plan
            mx.svd_channel_spectrum(k)
            mx.release_shared("layer")  # the outer block still holds it
        memo = mx._SHARED.get()
        assert memo.depth == 0 and id(k) in memo.arrays and memo.arrays[id(k)][1]
        mx.release_shared("layer")  # in the outer block itself: dropped
        assert id(k) not in memo.arrays and memo.nbytes == 0
