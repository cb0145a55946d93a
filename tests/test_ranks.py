"""Rank selection: energy, effective (entropy) rank, rounding, VBMF, budget allocation."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_eigenconv import decompositions as dec
from keras_eigenconv.compress import ranks as rk


def test_energy_rank_matches_relative_error():
    s = np.array([5.0, 3.0, 1.0, 0.5, 0.5])
    errs = rk.relative_errors(s)
    for e in (0.3, 0.5, 0.8, 0.9, 0.99, 1.0):
        r = rk.energy_rank(s, e)
        assert 1 - errs[r - 1] ** 2 >= e - 1e-12
        if r > 1:
            assert 1 - errs[r - 2] ** 2 < e
    assert errs[-1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="energy"):
        rk.energy_rank(s, 1.5)


def test_effective_rank():
    assert rk.effective_rank(np.ones(7)) == 7  # flat spectrum: every direction counts
    assert rk.effective_rank(np.array([1.0, 0, 0, 0])) == 1
    s = np.array([100.0, 1.0, 1.0, 0.01])
    assert 1 < rk.effective_rank(s) < 4


def test_round_rank_and_candidates():
    assert rk.round_rank(5, 8, 64) == 8
    assert rk.round_rank(17, 16, 64) == 32
    assert rk.round_rank(60, 32, 50) == 50  # capped at the maximum
    assert rk.round_rank(3, None, 9) == 3
    assert list(rk.candidate_ranks(20, 8)) == [8, 16, 20]
    assert list(rk.candidate_ranks(5)) == [1, 2, 3, 4, 5]
    assert list(rk.candidate_ranks(5, 8)) == [5]
    with pytest.raises(ValueError, match="round_to"):
        rk.round_rank(3, 0, 9)


def test_vbmf_recovers_the_rank_of_a_noisy_low_rank_matrix():
    rng = np.random.default_rng(0)
    for L, M, r in [(40, 90, 4), (120, 60, 9)]:
        a = rng.normal(size=(L, r)) @ rng.normal(size=(r, M)) * 2.0
        assert dec.vbmf_rank(a + 0.1 * rng.normal(size=(L, M))) == r
    assert dec.vbmf_rank(rng.normal(size=(30, 40))) <= 2  # pure noise


def test_parse_budget():
    assert rk.parse_budget({"macs": 0.5}) == ("macs", 0.5)
    assert rk.parse_budget({"params": 1e6}) == ("params", 1e6)
    for bad in ({"flops": 0.5}, {"macs": -1}, {"macs": 0.5, "params": 0.5}, 0.5):
        with pytest.raises(ValueError, match="budget"):
            rk.parse_budget(bad)


def _item(key, spectrum, cost_per_rank, original):
    s = np.asarray(spectrum, float)
    ranks = np.arange(1, len(s) + 1)
    return rk.BudgetItem(key, ranks, rk.relative_errors(s) ** 2, cost_per_rank * ranks, original)


def _brute_force(items, target, fixed):
    best = None
    opts = [
        [(it.original_cost, 0.0, None)] + list(zip(it.costs, it.errors, it.ranks)) for it in items
    ]
    for combo in itertools.product(*opts):
        cost = fixed + sum(c for c, _, _ in combo)
        if cost <= target:
            err = sum(e for _, e, _ in combo)
            if best is None or err < best - 1e-12:
                best = err
    return best


def _total(items, alloc, fixed):
    cost, err = fixed, 0.0
    for it in items:
        r = alloc[it.key]
        if r is None:
            cost += it.original_cost
        else:
            i = list(it.ranks).index(r)
            cost += it.costs[i]
            err += it.errors[i]
    return cost, err


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(0.01, 10.0), min_size=2, max_size=5),
            st.integers(1, 10),
        ),
        min_size=1,
        max_size=3,
    ),
    st.floats(0.2, 1.0),
)
def test_allocation_meets_the_budget_near_optimally(layers, share):
    items = [
        _item(i, sorted(s, reverse=True), c, float(c * len(s))) for i, (s, c) in enumerate(layers)
    ]
    fixed = 5.0
    full = fixed + sum(it.original_cost for it in items)
    target = share * full
    floor = fixed + sum(it.costs[0] for it in items)
    if floor > target:
        with pytest.raises(ValueError, match="budget cannot be met"):
            rk.allocate_budget(items, target, fixed)
        return
    alloc = rk.allocate_budget(items, target, fixed)
    cost, err = _total(items, alloc, fixed)
    assert cost <= target + 1e-9
    best = _brute_force(items, target, fixed)
    # greedy on the convex hulls: optimal up to one layer's error step
    worst_step = max(it.errors[0] for it in items)
    assert err <= best + worst_step + 1e-9


def test_tighter_budgets_cost_less_and_lose_more():
    rng = np.random.default_rng(1)
    items = [
        _item(i, np.sort(rng.random(16) ** 3)[::-1], float(rng.integers(1, 5)), 0.0)
        for i in range(6)
    ]
    for it in items:
        it.original_cost = float(it.costs[-1]) * 0.9
    full = sum(it.original_cost for it in items)
    prev_err = -1.0
    for share in (0.9, 0.6, 0.3, 0.15):
        cost, err = _total(items, rk.allocate_budget(items, share * full), 0.0)
        assert cost <= share * full + 1e-9
        assert err >= prev_err - 1e-12
        prev_err = err
    assert prev_err > 0


# --- exact values and error messages (what mutation testing asks of compress/ranks.py) ------


def test_rank_rules_exact_values():
    s = np.array([0.4, 0.3, 0.2, 0.1])  # a total below 1 is an ordinary spectrum
    np.testing.assert_allclose(rk.relative_errors(s), np.sqrt([0.6, 0.3, 0.1, 0.0]), atol=1e-12)
    assert rk.energy_rank(s, 0.95) == 4 and rk.energy_rank(s, 0.4) == 1
    assert rk.effective_rank(np.full(5, 0.01)) == 5
    assert rk.effective_rank(np.array([4.0])) == 1
    assert rk.effective_rank(np.zeros(3)) == 1
    # cumulative round-off past the total: the error at full rank is 0, not NaN
    s = np.sort(np.random.default_rng(0).random(8))[::-1]
    assert 1.0 - np.cumsum(s)[-1] / s.sum() < 0.0  # the round-off this case is about
    e = rk.relative_errors(s)
    assert np.all(np.isfinite(e)) and e[-1] == 0.0


def test_rank_rule_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^convert: energy=1\.5 must be in \(0, 1\]"):
        rk.energy_rank([1.0, 0.5], 1.5)
    for bad in (0, -8, 2.5, True, "8", 8.0):
        with pytest.raises(ValueError, match=r"round_to=.* must be a positive int"):
            rk.round_rank(3, bad, 9)
        with pytest.raises(ValueError, match=r"round_to=.* must be a positive int"):
            rk.candidate_ranks(9, bad)
    assert rk.round_rank(3, 1, 9) == 3 and rk.round_rank(3, np.int64(2), 9) == 4
    assert list(rk.candidate_ranks(3, 1)) == [1, 2, 3]
    assert rk.round_rank(1, None, 9) == 1 and rk.round_rank(0, 1, 9) == 1
    assert rk.round_rank(-3, 4, 9) == 4


def test_parse_budget_bounds_and_messages():
    assert rk.parse_budget({"macs": 1}) == ("macs", 1.0)
    assert rk.parse_budget({"params": np.float32(0.25)}) == ("params", 0.25)
    assert rk.parse_budget({"macs": np.int64(5)}) == ("macs", 5.0)
    for bad in (0, 0.0, -0.5, np.inf, np.nan, True, np.bool_(True), "0.5", None):
        with pytest.raises(ValueError, match=r"must be a positive, finite number"):
            rk.parse_budget({"macs": bad})
    with pytest.raises(
        ValueError, match=r'e\.g\. \{"macs": 0\.5\} \(half the MACs\) or \{"params": 2_000_000\}\.$'
    ):
        rk.parse_budget({})
    with pytest.raises(ValueError, match=r"budget key 'flops' is not 'macs' or 'params'"):
        rk.parse_budget({"flops": 0.5})
