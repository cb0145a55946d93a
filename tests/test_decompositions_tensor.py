"""The tensor decompositions (TT-SVD, TT-matrix, TT-conv, naive TT, Tucker-2, CP, VBMF)."""

import math

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
