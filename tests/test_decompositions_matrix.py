"""The Gram-matrix SVD used by every matrix method."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_eigenconv.decompositions import gram_svd, singular_energies


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
