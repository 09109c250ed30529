"""Capacity-aware inference baselines: hand-computed cases, properties, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe_planner import LoadsError, PlannerError, SolverError, TopologyError
from probe_planner.baselines.capacity import CapacityResult, capacity_of, drop, reroute, reroute_tokens

from .conftest import make_topology, problems

TOPO = make_topology(1, 2, 2, slots=1)  # G=2 ranks on one node, E=4: rank 0 hosts e0, e1; rank 1 hosts e2, e3
LOADS = np.array([[6, 1, 0, 1],
                  [2, 1, 1, 0]], dtype=np.float64)  # expert totals [8, 2, 1, 1], layer total 12, mean 3
GAMMAS = st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.1, 1.5, 2.0, 3.0])


def _rtol(loads: np.ndarray) -> float:
    """Slack for fractional loads (float rounding of proportional shares); whole numbers are exact."""
    return 0.0 if np.all(loads == np.floor(loads)) else 1e-9 * max(1.0, float(loads.sum()))


# --- hand-computed cases ------------------------------------------------------------------------

def test_capacity_is_gamma_times_the_mean_load():
    assert capacity_of(LOADS, 1.0).tolist() == [3.0]
    assert capacity_of(np.stack([LOADS, 2 * LOADS]), 0.5).tolist() == [1.5, 3.0]
    assert capacity_of(np.zeros((2, 4)), 2.0).tolist() == [0.0]


def test_drop_by_hand_gamma_1():
    # C = 1 * 12 / 4 = 3. Only e0 (8) is over: it keeps 3. Shares 6/8*3 = 2.25 and 2/8*3 = 0.75:
    # floors 2, 0, one token left for the larger remainder (source 1, 0.75) -> kept [2, 1], 5 dropped.
    r = drop(LOADS, TOPO, 1.0)
    assert isinstance(r, CapacityResult)
    np.testing.assert_array_equal(r.loads, [[[2, 1, 0, 1], [1, 1, 1, 0]]])
    assert r.dropped.tolist() == [5.0] and r.rerouted.tolist() == [0.0]
    assert r.total.tolist() == [12.0] and r.capacity.tolist() == [3.0]
    assert r.dropped_fraction == pytest.approx(5 / 12) and r.rerouted_fraction == 0.0
    assert r.rule.startswith("drop") and "\n" not in r.rule


def test_drop_by_hand_floors_the_cap_and_breaks_ties_to_the_lower_source():
    # C = 0.5 * 3 = 1.5 -> floor 1 for whole tokens. e0 (8): shares 0.75, 0.25 -> floors 0, 0, the
    # token to source 0. e1 (2): shares 0.5, 0.5 -> a tie, to source 0. e2, e3 (1 each) stay.
    r = drop(LOADS, TOPO, 0.5)
    np.testing.assert_array_equal(r.loads, [[[1, 1, 0, 1], [0, 0, 1, 0]]])
    assert r.dropped.tolist() == [8.0] and r.capacity.tolist() == [1.0]


def test_drop_by_hand_fractional():
    # total 3, C = 0.75. e0 (2.0) keeps 0.75: each source keeps 0.375 of its share -> 0.5625, 0.1875.
    loads = np.array([[1.5, 0.5, 0, 0], [0.5, 0, 0, 0.5]])
    r = drop(loads, TOPO, 1.0)
    np.testing.assert_allclose(r.loads, [[[0.5625, 0.5, 0, 0], [0.1875, 0, 0, 0.5]]])
    np.testing.assert_allclose(r.dropped, [1.25])
    np.testing.assert_allclose(r.capacity, [0.75])


def test_reroute_by_hand_gamma_1():
    # C = 3; capped as in drop: [[2,1,0,1],[1,1,1,0]], overflow (s0,e0)=4, (s1,e0)=1; room e1 1, e2 2, e3 2.
    # (s0,e0): e1 is native on rank 0 (tier 0) -> 1; then e2, e3 on its node (tier 1), equal room,
    #          lower id first -> e2 takes 2, e3 takes 1. Rooms now e1 0, e2 0, e3 1.
    # (s1,e0): e3 (native on rank 1) takes 1. Nothing dropped, 5 rerouted, every expert at 3.
    r = reroute(LOADS, TOPO, 1.0)
    np.testing.assert_array_equal(r.loads, [[[2, 2, 2, 2], [1, 1, 1, 1]]])
    assert r.dropped.tolist() == [0.0] and r.rerouted.tolist() == [5.0] and r.capacity.tolist() == [3.0]
    assert r.rerouted_fraction == pytest.approx(5 / 12)
    assert "counts only" in r.rule and "\n" not in r.rule


def test_reroute_by_hand_with_leftover_dropped():
    # C = 0.75 * 3 = 2.25 -> 2. e0 (8) keeps 2: shares 1.5, 0.5 -> floors 1, 0, tie -> source 0: [2, 0].
    # Capped: [[2,1,0,1],[0,1,1,0]]; overflow (s0,e0)=4, (s1,e0)=2; room e1 0, e2 1, e3 1.
    # (s0,e0): e2 then e3 (tier 1, equal room, lower id first) take 1 each, 2 dropped; (s1,e0): no room, 2 dropped.
    r = reroute(LOADS, TOPO, 0.75)
    np.testing.assert_array_equal(r.loads, [[[2, 1, 1, 2], [0, 1, 1, 0]]])
    assert r.dropped.tolist() == [4.0] and r.rerouted.tolist() == [2.0] and r.capacity.tolist() == [2.0]


def test_reroute_prefers_the_own_rank_over_more_room():
    # rank 0 also hosts e3: native [[1,1,0,1],[0,0,1,1]]. Loads total 12, C = 3; e0 (9) keeps 3, overflow 6
    # from source 0. Room e1 1, e2 3, e3 2. Tier 0 for source 0: e3 (room 2) then e1 (room 1); tier 1: e2.
    topo = make_topology(1, 2, 2, slots=1, placement=np.array([[1, 1, 0, 1], [0, 0, 1, 1]]))
    r = reroute(np.array([[9, 2, 0, 0], [0, 0, 0, 1]]), topo, 1.0)
    np.testing.assert_array_equal(r.loads, [[[3, 3, 3, 2], [0, 0, 0, 1]]])
    assert r.rerouted.tolist() == [6.0] and r.dropped.tolist() == [0.0]


def test_reroute_prefers_the_own_node_over_more_room():
    # 2 nodes x 2 ranks, expert e on rank e. Total 12, C = 3; e0 (8) keeps 3, overflow 5 from source 0
    # (node 0). Room e1 2 (node 0), e2 3 (node 1), e3 0. e1 first despite less room, then e2.
    topo = make_topology(2, 2, 1, slots=0)
    loads = np.zeros((4, 4))
    loads[0, 0], loads[1, 1], loads[3, 3] = 8, 1, 3
    r = reroute(loads, topo, 1.0)
    expect = loads.copy()
    expect[0] = [3, 2, 3, 0]
    np.testing.assert_array_equal(r.loads, expect[None])
    assert r.rerouted.tolist() == [5.0] and r.dropped.tolist() == [0.0]


def test_under_the_cap_nothing_changes_and_layers_are_separate():
    loads = np.stack([LOADS, np.full((2, 4), 5.0)])
    for fn in (drop, reroute):
        r = fn(loads, TOPO, 3.0)  # C = 9 and 30: no expert over
        np.testing.assert_array_equal(r.loads, loads)
        assert r.dropped.tolist() == [0, 0] and r.rerouted.tolist() == [0, 0]
    r = drop(loads, TOPO, 1.0)
    np.testing.assert_array_equal(r.loads[1], loads[1])  # the uniform layer is at its mean: untouched
    assert r.dropped.tolist() == [5.0, 0.0]


def test_zero_loads_give_zero_fractions():
    for fn in (drop, reroute):
        r = fn(np.zeros((2, 4)), TOPO, 1.0)
        assert r.dropped_fraction == 0.0 and r.rerouted_fraction == 0.0 and r.capacity.tolist() == [0.0]


def test_inputs_are_not_modified_and_results_are_read_only():
    loads = LOADS.copy()
    r = reroute(loads, TOPO, 0.75)
    np.testing.assert_array_equal(loads, LOADS)
    with pytest.raises(ValueError):
        r.loads[0, 0, 0] = 1.0


def test_reroute_tokens_by_hand_top1():
    # capacity 1: t0 takes e0; t1, t2 overflow. Round rank 2: t1 -> e1, t2 -> e2.
    assigned, moved, dropped, rerouted = reroute_tokens(np.array([[0, 1, 2], [0, 1, 2], [0, 2, 1]]), 1, 1, 3)
    np.testing.assert_array_equal(assigned, [[0], [1], [2]])
    np.testing.assert_array_equal(moved, [[False], [True], [True]])
    assert (dropped, rerouted) == (0, 2)


def test_reroute_tokens_by_hand_top2_with_drops():
    # capacity 1.9 -> 1, 4 experts, 6 assignments. Rank 1: t0 -> e0; rank 2: t0 -> e1. t1, t2 overflow both slots.
    # Round rank 3 (e2): t1 then t2 offer their slot 0: t1 admitted. Round rank 4 (e3): t1 (slot 1) admitted,
    # t2 (slot 0) refused. t2 drops both.
    assigned, moved, dropped, rerouted = reroute_tokens(np.array([[0, 1, 2, 3]] * 3), 2, 1.9, 4)
    np.testing.assert_array_equal(assigned, [[0, 1], [2, 3], [-1, -1]])
    np.testing.assert_array_equal(moved, [[False, False], [True, True], [False, False]])
    assert (dropped, rerouted) == (2, 2)


def test_reroute_tokens_admits_rank_1_before_rank_2():
    # t0's rank-2 choice is e1, t1's rank-1 choice is e1, capacity 1: t1 wins e1 (rank 1 goes first), t0 moves on.
    assigned, moved, _, _ = reroute_tokens(np.array([[0, 1, 2], [1, 0, 2]]), 2, 1, 3)
    np.testing.assert_array_equal(assigned, [[0, 2], [1, -1]])
    np.testing.assert_array_equal(moved, [[False, True], [False, False]])


def test_reroute_tokens_with_no_tokens():
    assigned, moved, dropped, rerouted = reroute_tokens(np.zeros((0, 3), dtype=np.int64), 2, 4, 5)
    assert assigned.shape == moved.shape == (0, 2) and (dropped, rerouted) == (0, 0)


# --- properties -----------------------------------------------------------------------------------

def _apportion_reference(col: list[int], keep: int) -> list[int]:
    """Largest remainder in exact integers: floor(n*keep/T) each, one more for the largest remainders (ties: lower source)."""
    total = sum(col)
    base = [n * keep // total for n in col]
    rem = [n * keep % total for n in col]
    for s in sorted(range(len(col)), key=lambda s: (-rem[s], s))[:keep - sum(base)]:
        base[s] += 1
    return base


@settings(max_examples=80, deadline=None)
@given(problems(), GAMMAS)
def test_drop_caps_every_expert_and_never_adds(problem, gamma):
    loads, topo, _ = problem
    r = drop(loads, topo, gamma)
    whole = bool(np.all(loads == np.floor(loads)))
    tol = _rtol(loads)
    cap = capacity_of(loads, gamma)
    np.testing.assert_array_equal(r.capacity, np.floor(cap) if whole else cap)
    assert r.loads.shape == loads.shape
    assert np.all(r.loads >= 0) and np.all(r.loads <= loads)
    totals, kept = loads.sum(axis=1), r.loads.sum(axis=1)
    assert np.all(kept <= r.capacity[:, None] + tol)
    over = totals > r.capacity[:, None]
    np.testing.assert_allclose(kept[over], np.broadcast_to(r.capacity[:, None], over.shape)[over], rtol=1e-12)
    np.testing.assert_array_equal(r.loads.transpose(0, 2, 1)[~over], loads.transpose(0, 2, 1)[~over])
    np.testing.assert_allclose(r.dropped, r.total - r.loads.sum(axis=(1, 2)), atol=tol)
    np.testing.assert_array_equal(r.total, loads.sum(axis=(1, 2)))
    assert not r.rerouted.any()
    if whole:
        assert np.all(r.loads == np.floor(r.loads)) and np.all(r.dropped == np.floor(r.dropped))
        for lay, e in zip(*np.nonzero(over), strict=True):
            col = [int(x) for x in loads[lay, :, e]]
            assert r.loads[lay, :, e].tolist() == _apportion_reference(col, int(r.capacity[lay]))
    else:  # proportional: every source of a capped expert keeps the same share
        for lay, e in zip(*np.nonzero(over), strict=True):
            np.testing.assert_allclose(r.loads[lay, :, e], loads[lay, :, e] * r.capacity[lay] / totals[lay, e], rtol=1e-12)


@settings(max_examples=80, deadline=None)
@given(problems(), GAMMAS)
def test_reroute_conserves_tokens_and_respects_room(problem, gamma):
    loads, topo, _ = problem
    r = reroute(loads, topo, gamma)
    d = drop(loads, topo, gamma)
    whole = bool(np.all(loads == np.floor(loads)))
    tol = _rtol(loads)
    np.testing.assert_array_equal(r.capacity, d.capacity)
    cap = r.capacity[:, None]
    assert r.loads.shape == loads.shape and np.all(r.loads >= 0)
    # conservation: per (layer, source) nothing is created; per layer kept + dropped == total
    assert np.all(r.loads.sum(axis=2) <= loads.sum(axis=2) + tol)
    np.testing.assert_allclose(r.loads.sum(axis=(1, 2)) + r.dropped, r.total, atol=tol)
    np.testing.assert_allclose((loads.sum(axis=2) - r.loads.sum(axis=2)).sum(axis=1), r.dropped, atol=tol)
    # the cap, and rerouted tokens only to experts that had room
    totals = loads.sum(axis=1)
    after = r.loads.sum(axis=1)
    assert np.all(after <= cap + tol)
    assert np.all(r.loads >= d.loads)  # rerouting only adds to what capping kept
    gained = r.loads - d.loads
    had_room = totals < cap
    assert not gained.transpose(0, 2, 1)[~had_room].any()
    np.testing.assert_allclose(r.rerouted, gained.sum(axis=(1, 2)), atol=tol)
    np.testing.assert_allclose(r.rerouted + r.dropped, d.dropped, atol=tol)
    # maximal: overflow is only dropped when no other expert has room left
    for lay in np.flatnonzero(r.dropped > tol):
        assert np.all(after[lay] >= cap[lay] - tol)
    if not whole and gamma >= 1:  # total room >= total overflow: nothing need be dropped
        assert np.all(r.dropped <= tol)
    if whole:
        assert np.all(r.loads == np.floor(r.loads))
        assert np.all(r.dropped == np.floor(r.dropped)) and np.all(r.rerouted == np.floor(r.rerouted))
    again = reroute(loads, topo, gamma)
    np.testing.assert_array_equal(again.loads, r.loads)
    np.testing.assert_array_equal(again.dropped, r.dropped)


def _reroute_tokens_reference(choices: np.ndarray, top_k: int, capacity: float, num_experts: int):
    """The rule in plain loops (see reroute_tokens' docstring)."""
    cap = math.floor(capacity)
    count = [0] * num_experts
    t_count, m = choices.shape
    assigned = [[-1] * top_k for _ in range(t_count)]
    moved = [[False] * top_k for _ in range(t_count)]
    for r in range(top_k):
        for t in range(t_count):
            e = int(choices[t, r])
            if count[e] < cap:
                assigned[t][r] = e
                count[e] += 1
    for j in range(top_k, m):
        for t in range(t_count):
            if -1 not in assigned[t]:
                continue
            e = int(choices[t, j])
            if count[e] < cap and e not in assigned[t]:
                slot = assigned[t].index(-1)
                assigned[t][slot], moved[t][slot] = e, True
                count[e] += 1
    return np.array(assigned, dtype=np.int64).reshape(t_count, top_k), np.array(moved, dtype=bool).reshape(t_count, top_k)


@st.composite
def token_choices(draw):
    num_experts = draw(st.integers(2, 10))
    m = draw(st.integers(2, num_experts))
    top_k = draw(st.integers(1, m - 1))
    tokens = draw(st.integers(0, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    skew = draw(st.sampled_from([0.0, 1.0, 2.0]))
    pop = 1.0 / np.arange(1, num_experts + 1) ** skew
    pop /= pop.sum()
    choices = np.array([rng.choice(num_experts, size=m, replace=False, p=pop) for _ in range(tokens)],
                       dtype=np.int64).reshape(tokens, m)
    mean = tokens * top_k / num_experts
    capacity = draw(st.one_of(st.sampled_from([0.0, 1.0, 2.5]), st.floats(0, max(1.0, 3 * mean), allow_nan=False)))
    return choices, top_k, capacity, num_experts


@settings(max_examples=100, deadline=None)
@given(token_choices())
def test_reroute_tokens_properties(case):
    choices, top_k, capacity, num_experts = case
    assigned, moved, dropped, rerouted = reroute_tokens(choices, top_k, capacity, num_experts)
    t_count = choices.shape[0]
    assert assigned.shape == moved.shape == (t_count, top_k)
    kept = assigned >= 0
    assert dropped == int((~kept).sum()) and rerouted == int(moved.sum())
    assert dropped + int(kept.sum()) == t_count * top_k
    counts = np.bincount(assigned[kept], minlength=num_experts)
    assert np.all(counts <= math.floor(capacity))
    for t in range(t_count):
        held = assigned[t][kept[t]].tolist()
        assert len(set(held)) == len(held)  # never twice the same expert
        for r in range(top_k):
            if moved[t, r]:
                assert assigned[t, r] in choices[t, top_k:].tolist()
            elif kept[t, r]:
                assert assigned[t, r] == choices[t, r]
            else:  # dropped: its own choice and every further choice it does not hold are full
                assert counts[choices[t, r]] == math.floor(capacity)
                assert all(counts[e] == math.floor(capacity) for e in choices[t, top_k:] if e not in held)
    ref_assigned, ref_moved = _reroute_tokens_reference(choices, top_k, capacity, num_experts)
    np.testing.assert_array_equal(assigned, ref_assigned)
    np.testing.assert_array_equal(moved, ref_moved)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("loads, match", [
    (np.ones(4), "shape"),
    (np.ones((1, 1, 2, 4)), "shape"),
    (np.ones((3, 4)), "shape"),
    (np.ones((2, 5)), "shape"),
    (np.ones((2, 2, 3)), "shape"),
    (np.ones((0, 2, 4)), "zero layers"),
    (np.array([[1, np.nan, 0, 0], [0, 0, 0, 0]]), "NaN or inf"),
    (np.array([[1, np.inf, 0, 0], [0, 0, 0, 0]]), "NaN or inf"),
    (np.array([[1, -1, 0, 0], [0, 0, 0, 0]]), ">= 0"),
    (np.ones((2, 4), dtype=bool), "bool"),
    (np.full((2, 4), "1"), "string"),
    ([[1, True, 0, 0], [0, 0, 0, 0]], "boolean"),
    ([[1, 2], [3]], "rectangular|ragged|object"),
    (None, "NoneType"),
    ("loads", "str"),
])
def test_bad_loads_raise_loads_error(loads, match):
    for fn in (drop, reroute):
        with pytest.raises(LoadsError, match=match):
            fn(loads, TOPO, 1.0)


@pytest.mark.parametrize("gamma", [0, 0.0, -1.0, math.nan, math.inf, -math.inf, True, False, np.bool_(True), "1", None,
                                   [1.0], np.array([1.0]), 10**400, complex(1, 0)])
def test_bad_gamma_raises_solver_error(gamma):
    for fn in (drop, reroute):
        with pytest.raises(SolverError, match="gamma"):
            fn(LOADS, TOPO, gamma)
    with pytest.raises(SolverError, match="gamma"):
        capacity_of(LOADS, gamma)


def test_gamma_of_numpy_and_integer_types_is_accepted():
    for gamma in (1, np.float32(1.0), np.int64(1)):
        assert drop(LOADS, TOPO, gamma).dropped.tolist() == [5.0]


def test_capacity_of_bad_loads():
    for loads in (np.ones(4), np.ones((1, 1, 2, 4)), np.array([[np.nan, 1.0]]), np.array([[-1.0, 1.0]]),
                  np.ones((2, 4), dtype=bool), "x", np.ma.masked_array(np.ones((2, 4)))):
        with pytest.raises(LoadsError):
            capacity_of(loads, 1.0)


def test_topology_must_be_a_topology():
    with pytest.raises(TopologyError):
        drop(LOADS, object(), 1.0)


@pytest.mark.parametrize("choices, top_k, match", [
    (np.array([[0.0, 1.0, 2.0]]), 1, "integer"),
    (np.array([[True, False]]), 1, "integer"),
    (np.array([0, 1, 2]), 1, "shape"),
    (np.zeros((1, 1, 3), dtype=np.int64), 1, "shape"),
    (np.array([[0, 1, 2]]), 3, "more than top_k"),
    (np.array([[0, 1]]), 2, "more than top_k"),
    (np.array([[0, 1, 9]]), 1, "expert ids"),
    (np.array([[0, -1, 2]]), 1, "expert ids"),
    (np.array([[0, 1, 2**63]], dtype=np.uint64), 1, "expert ids"),
    (np.array([[0, 1, 0]]), 1, "repeat"),
    ([[0, 1], [2]], 1, "rectangular|integer"),
    ("0 1 2", 1, "integer"),
])
def test_bad_choices_raise_loads_error(choices, top_k, match):
    with pytest.raises(LoadsError, match=match):
        reroute_tokens(choices, top_k, 1.0, 4)


@pytest.mark.parametrize("top_k, capacity, num_experts", [
    (0, 1.0, 4), (True, 1.0, 4), (1.0, 1.0, 4), ("1", 1.0, 4), (None, 1.0, 4),
    (1, -1.0, 4), (1, math.nan, 4), (1, math.inf, 4), (1, True, 4), (1, "2", 4), (1, None, 4), (1, 10**400, 4),
    (1, 1.0, 0), (1, 1.0, 2.5), (1, 1.0, True),
])
def test_bad_parameters_raise_solver_error(top_k, capacity, num_experts):
    with pytest.raises(SolverError):
        reroute_tokens(np.array([[0, 1, 2], [1, 2, 3]]), top_k, capacity, num_experts)


def test_errors_are_value_errors():
    assert issubclass(LoadsError, ValueError) and issubclass(SolverError, ValueError)
    with pytest.raises(PlannerError):
        reroute(LOADS, TOPO, -2.0)


def test_drop_breaks_exact_remainder_ties_to_the_lower_source():
    # e0 [7, 4, 6, 1] (total 18) keeps floor(1.4 * 18 / 4) = 6: shares 7/3, 4/3, 2, 1/3 -> floors 2, 1, 2, 0 and
    # equal remainders 1/3 for sources 0, 1, 3 (floats would order them by rounding noise): the token goes to source 0.
    loads = np.zeros((4, 4))
    loads[:, 0] = [7, 4, 6, 1]
    r = drop(loads, make_topology(1, 4, 1, slots=0), 1.4)
    assert r.capacity.tolist() == [6.0] and r.loads[0, :, 0].tolist() == [3, 1, 2, 0]


def test_drop_is_exact_for_counts_near_2_53():
    # n * keep passes 2**63 here: the split must still be exact.
    loads = np.array([[2**51, 3, 0, 0], [2**51 + 1, 0, 0, 0]], dtype=np.float64)  # total 2**52 + 4, C = 2**50 + 1
    r = drop(loads, TOPO, 1.0)
    assert r.capacity.tolist() == [2.0**50 + 1]
    assert r.loads[0, :, 0].tolist() == _apportion_reference([2**51, 2**51 + 1], 2**50 + 1)
    assert r.loads[0, :, 0].sum() == 2**50 + 1 and r.dropped.tolist() == [2**52 + 1 - (2**50 + 1)]
