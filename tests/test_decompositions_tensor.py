"""The tensor decompositions (TT-SVD, TT-matrix, TT-conv, naive TT, Tucker-2, CP, VBMF)."""

import math
import warnings

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import tensor_train

from keras_eigenconv import decompositions as dec


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 5000), d=st.integers(1, 5))
def test_balanced_modes_factor_exactly_and_evenly(n, d):
    modes = dec.balanced_modes(n, d)
    assert len(modes) == d and math.prod(modes) == n
    assert list(modes) == sorted(modes, reverse=True)
    if n == 2 ** (3 * d):  # powers of two split evenly
        assert set(modes) == {8}


def test_balanced_modes_known_values():
    assert dec.balanced_modes(64, 3) == (4, 4, 4)
    assert dec.balanced_modes(8192, 4) == (16, 8, 8, 8)
    assert dec.balanced_modes(7, 2) == (7, 1)
    with pytest.raises(ValueError):
        dec.balanced_modes(0, 2)


@settings(max_examples=10, deadline=None)
@given(dims=st.lists(st.integers(1, 5), min_size=2, max_size=5), seed=st.integers(0, 99))
def test_tt_svd_is_exact_at_full_ranks_with_the_full_rank_shapes(dims, seed):
    a = np.random.default_rng(seed).normal(size=dims)
    cores = dec.tt_svd(a)
    assert [g.shape[2] for g in cores[:-1]] == dec.tt_max_ranks(dims)
    assert dec.relative_error(a, dec.tt_full(cores)) < 1e-12


def test_tt_svd_matches_tensorly_at_fixed_ranks_and_eps_bounds_the_error():
    a = np.random.default_rng(0).normal(size=(4, 5, 6, 3))
    ours = dec.tt_full(dec.tt_svd(a, ranks=[2, 3, 2]))
    theirs = tl.tt_to_tensor(tensor_train(a, [1, 2, 3, 2, 1]))
    assert dec.relative_error(theirs, ours) < 1e-10
    for eps in (0.05, 0.3, 0.7):
        cores = dec.tt_svd(a, eps=eps)
        assert dec.relative_error(a, dec.tt_full(cores)) <= eps + 1e-12
    sizes = [sum(g.size for g in dec.tt_svd(a, eps=e)) for e in (0.05, 0.3, 0.7)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_tt_matrix_and_tt_conv_orderings_and_error_falling():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(24, 36))
    cores = dec.tt_matrix_factors(w, (2, 3, 4), (3, 3, 4))
    assert [g.shape[1:3] for g in cores] == [(2, 3), (3, 3), (4, 4)]
    np.testing.assert_allclose(dec.tt_matrix_full(cores), w, atol=1e-12)
    # the row index is C-order: i = i1 * 12 + i2 * 4 + i3 (i1 most significant)
    rank1 = [rng.normal(size=(1, m, n, 1)) for m, n in ((2, 3), (3, 3), (4, 4))]
    full = dec.tt_matrix_full(rank1)
    i, j = (1, 2, 3), (2, 0, 1)
    expected = np.prod([g[0, a, b, 0] for g, a, b in zip(rank1, i, j)])
    assert full[i[0] * 12 + i[1] * 4 + i[2], j[0] * 12 + j[1] * 4 + j[2]] == pytest.approx(expected)
    k = rng.normal(size=(3, 3, 8, 16))
    spatial, cores = dec.tt_conv_factors(k, (2, 4), (4, 4))
    assert spatial.shape == (3, 3, 9) and cores[-1].shape[-1] == 1
    np.testing.assert_allclose(dec.tt_conv_full(spatial, cores), k, atol=1e-12)
    errs = [
        dec.relative_error(k, dec.tt_conv_full(*dec.tt_conv_factors(k, (2, 4), (4, 4), [r, r])))
        for r in (1, 2, 4, 8)
    ]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    naive = dec.tt_naive_conv_factors(k)
    assert [g.shape for g in naive][0] == (1, 3, 3)
    np.testing.assert_allclose(dec.tt_naive_conv_full(naive), k, atol=1e-12)
    with pytest.raises(ValueError, match="product 8"):
        dec.tt_conv_factors(k, (2, 2), (4, 4))


def test_tucker2_hosvd_exact_and_spectra():
    k = np.random.default_rng(2).normal(size=(3, 3, 6, 10))
    first, core, last = dec.tucker2_factors(k, (6, 10))
    assert first.shape == (1, 1, 6, 6) and core.shape == (3, 3, 6, 10)
    np.testing.assert_allclose(dec.tucker2_full(first, core, last), k, atol=1e-12)
    s_in, s_out = dec.tucker2_spectra(k)
    assert s_in.sum() == pytest.approx(np.sum(k**2)) == s_out.sum()
    # truncating one mode keeps exactly the kept energy of that unfolding
    first, core, last = dec.tucker2_factors(k, (3, 10))
    kept = np.sum(dec.tucker2_full(first, core, last) ** 2) / np.sum(k**2)
    assert kept == pytest.approx(s_in[:3].sum() / s_in.sum())
    assert dec.energy_ranks_tucker2(k, 1.0) == (6, 10)


def test_cp_exact_construction_and_als():
    rng = np.random.default_rng(3)
    k = rng.normal(size=(3, 3, 4, 5))
    assert dec.cp_max_rank(k.shape) == 36
    *factors, err = dec.cp_factors(k, 36)
    assert err < 1e-12
    np.testing.assert_allclose(dec.cp_full(*factors), k, atol=1e-12)
    *factors, err = dec.cp_factors(k, 40)  # above the sufficient rank: zero terms
    assert err < 1e-12 and factors[0].shape == (1, 1, 4, 40)
    # a rank-2 tensor is recovered by ALS at rank 2
    low = np.einsum("xr,yr,cr,nr->xycn", *(rng.normal(size=(d, 2)) for d in (3, 3, 4, 5)))
    assert dec.cp_factors(low, 2)[-1] < 1e-6


def test_vbmf_rank_on_noisy_low_rank_matrices():
    rng = np.random.default_rng(4)
    for true in (2, 6):
        y = rng.normal(size=(50, true)) @ rng.normal(size=(true, 120)) + 0.3 * rng.normal(
            size=(50, 120)
        )
        assert dec.vbmf_rank(y) == true == dec.vbmf_rank(y.T)
    assert dec.vbmf_rank(np.zeros((4, 6))) == 0


# --- exact values, dtypes and error messages (what mutation testing asks of tensor.py) -----


def test_balanced_modes_exact_factorizations():
    cases = {(4, 2): (2, 2), (9, 2): (3, 3), (12, 2): (4, 3), (30, 3): (5, 3, 2), (49, 2): (7, 7)}
    for (n, d), want in cases.items():
        got = dec.balanced_modes(n, d)
        assert got == want and all(type(m) is int for m in got), (n, d, got)
    assert dec.balanced_modes(1, 3) == (1, 1, 1)
    assert dec.balanced_modes(2, 2) == (2, 1) and dec.balanced_modes(2, 1) == (2,)
    with pytest.raises(ValueError, match=r"balanced_modes needs n >= 1 and d >= 1, got n=4, d=0"):
        dec.balanced_modes(4, 0)


def test_tt_svd_picks_the_smallest_rank_within_eps():
    # a matrix (2 modes, one truncation): the singular values are the diagonal
    three = np.diag([3.0, 2.0, 1.0])  # ||A|| = sqrt(14); tails sqrt(14), sqrt(5), 1
    for eps, rank in ((0.9, 1), (0.62, 1), (0.3, 2), (0.2, 3), (1e-9, 3)):
        cores = dec.tt_svd(three, eps=eps)
        assert cores[0].shape == (1, 3, rank), eps
        assert dec.relative_error(three, dec.tt_full(cores)) <= eps
    # a tail exactly at the bound is dropped (error 3/5 = eps exactly)
    cores = dec.tt_svd(np.diag([4.0, 3.0]), eps=0.6)
    assert cores[0].shape == (1, 2, 1)
    # 3 modes: each of the 2 truncations may drop eps / sqrt(2) of the norm
    a = np.zeros((2, 2, 2))
    a[0, 0, 0], a[1, 1, 1] = 3.0, 1.0  # TT ranks 2, 2; dropping the 1 costs 1/sqrt(10)
    assert [g.shape[2] for g in dec.tt_svd(a, eps=0.4)[:-1]] == [2, 2]  # 0.316 > 0.4/sqrt2
    assert [g.shape[2] for g in dec.tt_svd(a, eps=0.5)[:-1]] == [1, 1]  # 0.316 <= 0.5/sqrt2
    # ranks cap, eps and ranks together (the smaller wins), at least rank 1
    assert dec.tt_svd(three, ranks=[2])[0].shape == (1, 3, 2)
    assert dec.tt_svd(three, ranks=[2], eps=0.9)[0].shape == (1, 3, 1)
    assert dec.tt_svd(three, ranks=[0])[0].shape == (1, 3, 1)


def test_tt_svd_messages_and_float64():
    with pytest.raises(
        ValueError, match=r"^tt_svd needs a tensor with at least 2 modes, got shape \(5,\)\.$"
    ):
        dec.tt_svd(np.ones(5))
    with pytest.raises(ValueError, match=r"^tt_svd: 3-way tensor needs 2 ranks, got \[1\]\.$"):
        dec.tt_svd(np.ones((2, 2, 2)), ranks=[1])
    a32 = np.random.default_rng(5).normal(size=(3, 4, 5)).astype(np.float32)
    cores = dec.tt_svd(a32)
    assert all(g.dtype == np.float64 for g in cores)
    assert dec.relative_error(a32.astype(np.float64), dec.tt_full(cores)) < 1e-13
    ints = [np.ones((1, 2, 1), int), np.full((1, 3, 1), 2, int)]
    full = dec.tt_full(ints)
    assert full.dtype == np.float64 and full.shape == (2, 3) and np.all(full == 2.0)
    assert dec.tt_full([g.astype(np.float32) for g in ints]).dtype == np.float64
    assert dec.tt_full([np.ones((1, 3, 1), int)]).dtype == np.float64  # one core


def test_tt_max_ranks_of_matrix_and_conv_layouts():
    assert dec.tt_max_ranks([2, 3, 4]) == [2, 4]
    assert dec.tt_matrix_max_ranks((2, 3, 4), (3, 3, 4)) == [6, 16]  # modes 6, 9, 16
    assert dec.tt_conv_max_ranks((3, 3), (2, 4), (4, 4)) == [9, 16]  # modes 9, 8, 16
    assert dec.tt_conv_max_ranks((1, 3), (2,), (3,)) == [3]  # modes 3, 6
    w = np.random.default_rng(6).normal(size=(24, 36))
    cores = dec.tt_matrix_factors(w, (2, 3, 4), (3, 3, 4))
    assert [g.shape[3] for g in cores[:-1]] == dec.tt_matrix_max_ranks((2, 3, 4), (3, 3, 4))
    k = np.random.default_rng(7).normal(size=(1, 3, 2, 3))
    spatial, cores = dec.tt_conv_factors(k, (2,), (3,))
    assert [spatial.shape[2]] == dec.tt_conv_max_ranks((1, 3), (2,), (3,))


def test_tt_matrix_and_conv_pass_ranks_eps_and_check_modes():
    rng = np.random.default_rng(8)
    w = rng.normal(size=(6, 4))
    # one mode: the whole matrix is the single core
    (core,) = dec.tt_matrix_factors(w, (6,), (4,))
    assert core.shape == (1, 6, 4, 1)
    np.testing.assert_allclose(core[0, :, :, 0], w)
    np.testing.assert_allclose(dec.tt_matrix_full([core]), w)
    # modes of 1 are allowed
    cores = dec.tt_matrix_factors(w, (3, 2, 1), (2, 1, 2))
    np.testing.assert_allclose(dec.tt_matrix_full(cores), w, atol=1e-12)
    cores = dec.tt_matrix_factors(w, (3, 2), (2, 2), ranks=[1])
    assert cores[0].shape == (1, 3, 2, 1)
    big = dec.tt_matrix_factors(w, (3, 2), (2, 2), eps=0.5)
    assert big[0].shape[3] < 4
    assert dec.relative_error(w, dec.tt_matrix_full(big)) <= 0.5
    with pytest.raises(
        ValueError,
        match=r"^input modes \(2, 2\) must be positive with product 6 \(got product 4\)\.$",
    ):
        dec.tt_matrix_factors(w, (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"^output modes \(4, 0\) must be positive"):
        dec.tt_matrix_factors(w, (3, 2), (4, 0))
    with pytest.raises(
        ValueError, match=r"^in_modes \(3, 2\) and out_modes \(4,\) differ in length\.$"
    ):
        dec.tt_matrix_factors(w, (3, 2), (4,))
    k = rng.normal(size=(3, 3, 4, 6))
    spatial, cores = dec.tt_conv_factors(k, (2, 2), (3, 2), ranks=[2, 1])
    assert spatial.shape == (3, 3, 2) and cores[0].shape == (2, 2, 3, 1)
    spatial, cores = dec.tt_conv_factors(k, (2, 2), (3, 2), eps=0.6)
    assert spatial.shape[2] < 9
    assert dec.relative_error(k, dec.tt_conv_full(spatial, cores)) <= 0.6
    with pytest.raises(
        ValueError, match=r"^input-channel modes \(3,\) must be positive with product 4"
    ):
        dec.tt_conv_factors(k, (3,), (6,))
    with pytest.raises(ValueError, match=r"^filter modes \(5,\) must be positive with product 6"):
        dec.tt_conv_factors(k, (4,), (5,))
    with pytest.raises(
        ValueError, match=r"^in_modes \(4,\) and out_modes \(3, 2\) differ in length\.$"
    ):
        dec.tt_conv_factors(k, (4,), (3, 2))
    full = dec.tt_conv_full(np.ones((1, 1, 1), int), [np.ones((1, 1, 1, 1), int)])
    assert full.dtype == np.float64 and full.shape == (1, 1, 1, 1)
    naive = dec.tt_naive_conv_factors(k, ranks=[2, 2, 2])
    assert [g.shape for g in naive] == [(1, 3, 2), (2, 3, 2), (2, 4, 2), (2, 6, 1)]
    naive = dec.tt_naive_conv_factors(k, eps=0.6)
    assert naive[1].shape[2] < 9 and dec.relative_error(k, dec.tt_naive_conv_full(naive)) <= 0.6


def test_tucker2_ranks_and_layout():
    k = np.random.default_rng(9).normal(size=(3, 2, 5, 7))
    first, core, last = dec.tucker2_factors(k, 3)  # one int: both ranks
    assert first.shape == (1, 1, 5, 3) and core.shape == (3, 2, 3, 3) and last.shape == (1, 1, 3, 7)
    first, core, last = dec.tucker2_factors(k, (2, 4))
    assert first.shape == (1, 1, 5, 2) and core.shape == (3, 2, 2, 4) and last.shape == (1, 1, 4, 7)
    # the factors are orthonormal and the core is the projection of W on them
    u, v = first[0, 0], last[0, 0].T
    np.testing.assert_allclose(u.T @ u, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(v.T @ v, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(core, np.einsum("xycn,ca,nb->xyab", k, u, v), atol=1e-12)
    # the two spectra: the input-channel and filter unfoldings, by hand
    s_in, s_out = dec.tucker2_spectra(k)
    a = np.stack([k[:, :, c, :].ravel() for c in range(5)])
    b = np.stack([k[:, :, :, n].ravel() for n in range(7)])
    np.testing.assert_allclose(s_in, np.linalg.svd(a, compute_uv=False) ** 2, rtol=1e-10)
    np.testing.assert_allclose(s_out, np.linalg.svd(b, compute_uv=False) ** 2, rtol=1e-10)
    assert dec.energy_ranks_tucker2(k, 0.5) == (
        dec.energy_rank(s_in, 0.5),
        dec.energy_rank(s_out, 0.5),
    )


def _spiked(big_l, big_m, spikes, seed):
    """A matrix whose singular values are a pure-noise bulk (unit variance) with its top
    values replaced by ``spikes`` times the EVBMF threshold for unit noise."""
    rng = np.random.default_rng(seed)
    bulk = np.linalg.svd(rng.normal(size=(big_l, big_m)), compute_uv=False)
    alpha = big_l / big_m
    tau = 2.5129 * np.sqrt(alpha)
    threshold = np.sqrt(big_m * (1 + tau) * (1 + alpha / tau))
    s = np.sort(np.concatenate([np.array(spikes) * threshold, bulk[len(spikes) :]]))[::-1]
    u = np.linalg.qr(rng.normal(size=(big_l, big_l)))[0]
    v = np.linalg.qr(rng.normal(size=(big_m, big_l)))[0]
    return (u * s) @ v.T


@pytest.mark.parametrize("shape", [(40, 100), (60, 60), (20, 200)])
def test_vbmf_rank_threshold_within_6_percent_at_any_scale(shape):
    # the noise variance is estimated from the bulk: components 6% above the threshold for
    # the true variance survive, 6% below do not, whatever the matrix's scale or orientation
    for spikes, want in (
        ([3.0, 1.5, 1.06], 3),
        ([3.0, 1.5, 0.94], 2),
        ([1.06], 1),
        ([0.94], 0),
        ([2.0] * 5 + [1.06], 6),
    ):
        y = _spiked(*shape, spikes, seed=1)
        for scale in (1e-6, 1.0, 1e6):
            assert dec.vbmf_rank(scale * y) == want, (spikes, scale)
            assert dec.vbmf_rank(scale * y.T) == want, (spikes, scale)


def test_vbmf_rank_inputs():
    assert dec.vbmf_rank(np.ones((1, 5))) == 0  # one row: allowed
    assert dec.vbmf_rank(np.zeros((3, 1))) == 0
    one = np.zeros((5, 8))
    one[0, 0] = 1.0  # largest singular value exactly 1, no noise: one component
    assert dec.vbmf_rank(one) == 1
    for bad in (np.ones(4), np.ones((2, 2, 2)), np.zeros((0, 3)), np.array([[1.0, np.nan]])):
        with pytest.raises(ValueError, match=r"^vbmf_rank needs a finite 2-D matrix, got shape"):
            dec.vbmf_rank(bad)


def test_cp_exact_when_filters_are_fewer_than_channels_and_balanced_factors():
    rng = np.random.default_rng(10)
    k = rng.normal(size=(2, 3, 5, 3))  # N < C: one term per (x, y, n)
    assert dec.cp_max_rank(k.shape) == 18
    first, vertical, horizontal, last, err = dec.cp_factors(k, 18)
    assert err < 1e-12
    assert first.shape == (1, 1, 5, 18) and last.shape == (1, 1, 18, 3)
    assert vertical.shape == (2, 1, 18, 1) and horizontal.shape == (1, 3, 18, 1)
    np.testing.assert_allclose(dec.cp_full(first, vertical, horizontal, last), k, atol=1e-12)
    # ALS below the full rank: rank 1 is allowed, and the scale is spread evenly, so each
    # term's four factor columns have the same norm
    *factors, err = dec.cp_factors(k, 1)
    assert factors[0].shape == (1, 1, 5, 1) and 0.0 < err < 1.0
    *factors, err = dec.cp_factors(k, 4)
    cols = [factors[0][0, 0], factors[1][:, 0, :, 0], factors[2][0, :, :, 0], factors[3][0, 0].T]
    norms = np.array([np.linalg.norm(c, axis=0) for c in cols])  # (4 factors, 4 terms)
    np.testing.assert_allclose(norms, np.broadcast_to(norms[:1], norms.shape), rtol=1e-4)
    assert err == pytest.approx(dec.relative_error(k, dec.cp_full(*factors)))
    with pytest.raises(ValueError, match=r"^cp_factors: rank must be >= 1, got 0\.$"):
        dec.cp_factors(k, 0)


@pytest.mark.parametrize(
    "matrix, rank",
    [
        (np.diag([5.0, 0.0, 0.0, 0.0]), 1),
        (np.diag([5.0, 3.0, 0.0, 0.0, 0.0, 0.0]), 2),
        (np.outer(np.arange(8.0), np.arange(6.0)), 1),
        # a zero column (e.g. a pruned filter) next to a rank-1 signal in noise
        (
            np.pad(
                10 * np.outer(np.linspace(-1, 1, 30), np.cos(np.arange(20.0)))
                + 0.1 * np.random.default_rng(0).normal(size=(30, 20)),
                ((0, 0), (0, 5)),
            ),
            1,
        ),
    ],
)
def test_vbmf_rank_of_matrices_with_exact_zero_singular_values(matrix, rank):
    # a zero singular value once put log(0) into the free energy (RuntimeWarning, and an
    # infinite objective at every sigma^2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert dec.vbmf_rank(matrix) == rank


@pytest.mark.parametrize("shape", [(3, 3, 6, 10), (1, 1, 8, 3)])  # wide and tall unfoldings
def test_tucker2_spectra_and_factors_share_their_gram_matrices(monkeypatch, shape):
    from keras_eigenconv.decompositions import matrix as mx
    from keras_eigenconv.decompositions import tensor as tn

    k = np.random.default_rng(4).normal(size=shape)
    plain_s, plain_f = dec.tucker2_spectra(k), dec.tucker2_factors(k, (2, 2))
    grams, real = [], tn._tall_gram
    monkeypatch.setattr(tn, "_tall_gram", lambda m: grams.append(m.shape) or real(m))
    with mx.shared_work():
        w = mx.shared_array("layer", lambda: k.copy())
        s = dec.tucker2_spectra(w)
        f = dec.tucker2_factors(w, (2, 2))
        assert len(grams) == 2  # one per channel unfolding, for both the spectra and factors
        assert dec.tucker2_spectra(w) is s  # kept: asking again computes nothing
    for got, want in zip((*s, *f), (*plain_s, *plain_f)):
        np.testing.assert_array_equal(got, want)  # the same numbers as without sharing
    # exact at full ranks, in either orientation of the unfoldings
    full = (min(shape[2], k[..., 0, :].size), min(shape[3], k[..., 0].size))
    np.testing.assert_allclose(dec.tucker2_full(*dec.tucker2_factors(k, full)), k, atol=1e-10)
