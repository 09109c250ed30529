"""place(): long-lived placements from load windows — invariants, budgets, round trips, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe_planner import Budget, LoadsError, PlannerError, solve, solver_names
from probe_planner.cost import CostParams
from probe_planner.engine_maps import load_map, save_map
from probe_planner.errors import PlacementError
from probe_planner.place import Placement, fit_slots, place, score_placement
from probe_planner.place.exact import exact_layer
from probe_planner.place.scorer import expected_makespan_us
from probe_planner.window import copy_times_us

from .conftest import make_topology


def _window(rng, T, L, G, E, skew=1.5, scale=20.0, sources=True):
    pop = 1.0 / np.arange(1, E + 1) ** skew
    pop = np.stack([pop[rng.permutation(E)] for _ in range(L)])  # [L, E]
    lam = pop / pop.mean(axis=1, keepdims=True) * scale
    if sources:
        return rng.poisson(lam[None, :, None, :] * rng.uniform(0.5, 1.5, size=(T, L, G, 1))).astype(float)
    return rng.poisson(lam[None] * G * rng.uniform(0.5, 1.5, size=(T, L, 1))).astype(float)


def _check_invariants(res: Placement, cur: np.ndarray, topo, held: int):
    L, G, E = res.hosts.shape
    assert (res.hosts.sum(axis=2) == held).all()  # equal slots per rank, "kept" included (the slots asked for)
    assert res.hosts.any(axis=1).all()  # every expert somewhere, every layer
    assert res.to_map().phy2log.shape == (L, G * res.slots_per_rank)  # the map's own checks: no duplicate on a rank
    # copies are exactly the new (rank, expert) pairs, each from a rank holding the expert now
    new = res.hosts & ~cur
    assert len(res.copies) == int(new.sum())
    if len(res.copies):
        lay, e, src, dst = res.copies.T
        assert new[lay, dst, e].all() and cur[lay, src, e].all()
    assert res.moved_bytes == pytest.approx(len(res.copies) * topo.model.expert_bytes)


def test_the_scorer_is_the_static_solver_on_a_multi_host_placement():
    topo = make_topology(2, 4, 4, slots=0)
    rng = np.random.default_rng(0)
    hosts = topo.native.copy()
    hosts[[3, 5, 6], 0] = True
    hosts[1, 9] = True
    batches = _window(rng, 6, 1, 8, 32)[:, 0]
    plan = solve(batches, topo.with_(placement=hosts), Budget(window_us=0.0), solver="static")
    assert np.array_equal(expected_makespan_us(batches, hosts, topo), plan.metrics.layer_makespan_us)


@settings(max_examples=25, deadline=None)
@given(nodes=st.integers(1, 2), rpn=st.integers(1, 4), epr=st.integers(1, 3), extra=st.integers(0, 2),
       reserve=st.integers(0, 1), sources=st.booleans(), seed=st.integers(0, 2**16), budget=st.sampled_from([None, 0.0, 1.5, 6.0]),
       by_time=st.booleans())
def test_placements_keep_the_invariants_and_the_budget_and_never_expect_worse(nodes, rpn, epr, extra, reserve, sources, seed,
                                                                            budget, by_time):
    topo = make_topology(nodes, rpn, epr, slots=0)
    G, E = topo.num_ranks, topo.num_experts
    slots = min(epr + extra, E) + reserve  # a rank holds each expert at most once
    rng = np.random.default_rng(seed)
    win = _window(rng, 10, 2, G, E, sources=sources)
    p = CostParams.from_topology(topo)
    kw = {}
    if budget is not None:  # in units of one intra-node copy
        kw = {"move_budget_us": budget * p.copy_intra_us} if by_time else {"move_budget_bytes": budget * topo.model.expert_bytes}
    try:
        res = place(win, topo, slots, reserve=reserve, time_limit_s=2.0, eval_batches=64, **kw)
    except PlacementError as exc:  # only a budget too small to fill the new slots may refuse
        assert slots - reserve > epr and budget is not None and "move budget" in str(exc)
        return
    cur = np.broadcast_to(topo.native, res.hosts.shape)
    _check_invariants(res, cur, topo, slots - reserve)
    if budget is not None and by_time:
        t = copy_times_us(res.copies[:, 2], res.copies[:, 3], topo.ranks_per_node, G, p.copy_intra_us, p.copy_inter_us)
        assert t.max(initial=0.0) <= budget * p.copy_intra_us * (1 + 1e-9) + 1e-9
        assert res.move_time_us == pytest.approx(t.max(initial=0.0))
    elif budget is not None:
        assert len(res.copies) <= budget
    if budget == 0.0:
        assert len(res.copies) == 0
    # never worse than the current placement, over every batch of the window (eval_batches >= T)
    after = score_placement(win, res.hosts, topo, eval_batches=64).sum()
    if (cur.sum(axis=2) == slots - reserve).all():  # else the reference is the current placement fitted to the slots
        before = score_placement(win, cur, topo, eval_batches=64).sum()
        assert res.before_us == pytest.approx(before)
    assert after <= res.before_us * (1 + 1e-12)
    assert res.after_us == pytest.approx(after)


def test_place_beats_the_sharded_placement_and_keeps_a_placement_that_does_not_pay():
    topo = make_topology(2, 4, 4, slots=0)
    win = _window(np.random.default_rng(1), 16, 3, 8, 32, skew=1.2)
    res = place(win, topo, 5)
    assert res.status == "replaced" and res.after_us < 0.9 * res.before_us
    again = place(win, topo, 5, current=res)
    assert again.after_us <= res.after_us * (1 + 1e-9)
    kept = place(win, topo, 5, current=res, min_gain=0.5)  # nothing gains 50% over a placed window
    assert kept.status == "kept" and np.array_equal(kept.hosts, res.hosts) and len(kept.copies) == 0
    assert "min_gain" in kept.message and kept.after_us == kept.before_us


def test_a_current_map_with_more_slots_is_trimmed_and_counted_against():
    topo = make_topology(1, 4, 4, slots=0)
    win = _window(np.random.default_rng(2), 12, 2, 4, 16)
    wide = place(win, topo, 6)
    res = place(win, topo, 5, current=wide.to_map(), min_gain=0.0)
    _check_invariants(res, wide.hosts, topo, 5)


@pytest.mark.parametrize("fmt, suffix", [("eplb", ".npz"), ("sglang", ".json"), ("trtllm", ".yaml")])
def test_the_result_round_trips_through_every_engine_format(fmt, suffix, tmp_path):
    topo = make_topology(2, 2, 3, slots=0)
    win = _window(np.random.default_rng(3), 8, 3, 4, 12)
    res = place(win, topo, 4, reserve=1)
    m = load_map(save_map(res.to_map(), tmp_path / f"m{suffix}", fmt), topo.num_ranks, topo.num_experts, num_layers=3)
    back = Placement.from_map(m, reserve=1)
    assert np.array_equal(back.hosts, res.hosts) and back.reserve == 1
    assert np.array_equal(Placement.from_map(res.to_map()).hosts, res.hosts)


@settings(max_examples=20, deadline=None)
@given(nodes=st.integers(1, 2), rpn=st.integers(1, 4), reserve=st.integers(1, 3), window=st.sampled_from([0.0, 50.0, math.inf]),
       seed=st.integers(0, 2**16), solver=st.sampled_from(["greedy", "static", "lp-round"]))
def test_per_batch_plans_on_top_use_at_most_the_reserved_slots(nodes, rpn, reserve, window, seed, solver):
    topo = make_topology(nodes, rpn, 4, slots=3)
    G = topo.num_ranks
    win = _window(np.random.default_rng(seed), 6, 2, G, topo.num_experts, skew=1.8)
    res = place(win, topo, 4 + reserve, reserve=reserve, time_limit_s=1.0)
    for lay in range(2):
        t = res.topology(topo, lay)
        assert t.slots == reserve and np.array_equal(t.native, res.hosts[lay])
        plan = solve(win[-1, lay], t, Budget(window_us=window, time_limit_s=0.5), solver=solver)
        per_rank = np.bincount(plan.replicas[:, 3], minlength=G)
        assert per_rank.max(initial=0) <= reserve
        assert (res.hosts[lay].sum(axis=1) + per_rank <= 4 + reserve).all()  # the placement plus replicas fit the slots


def test_every_solver_runs_on_a_placed_topology():
    topo = make_topology(2, 2, 3, slots=1)
    win = _window(np.random.default_rng(5), 6, 1, 4, 12)
    res = place(win, topo, 4, reserve=1)
    t = res.topology(topo, 0)
    static = solve(win[0, 0], t, Budget(window_us=100.0, time_limit_s=0.5), solver="static").makespan_us
    for name in solver_names():
        plan = solve(win[0, 0], t, Budget(window_us=100.0, time_limit_s=0.5), solver=name)
        assert plan.makespan_us > 0 and plan.validate() is plan
        if name in ("greedy", "auto", "milp", "lp-round"):
            assert plan.makespan_us <= static * (1 + 1e-9)


def test_fit_slots_fills_and_trims_to_equal_slots():
    topo = make_topology(2, 2, 2, slots=0)
    load = np.arange(8, dtype=float)[::-1] + 1
    filled = fit_slots(topo.native, 4, load, topo.node_of)
    assert (filled.sum(axis=1) == 4).all() and filled[topo.native].all()
    assert filled[:, 0].sum() > 1  # the hottest expert got a copy
    assert (fit_slots(filled, 2, load, topo.node_of).sum(axis=1) == 2).all()


@pytest.mark.parametrize("change, err, match", [
    ({"window": np.zeros((4, 2, 9))}, LoadsError, "window must be"),
    ({"window": np.zeros((4, 9))}, LoadsError, "window must be"),
    ({"window": np.zeros((4, 2, 3, 8))}, LoadsError, "window must be"),
    ({"window": np.full((4, 2, 8), np.nan)}, LoadsError, "NaN"),
    ({"window": -np.ones((4, 2, 8))}, LoadsError, ">= 0"),
    ({"window": np.ones((4, 2, 8), dtype=bool)}, LoadsError, "real numbers"),
    ({"slots": 0}, PlacementError, "slots"),
    ({"slots": 1}, PlacementError, "cannot hold the 8 experts"),
    ({"slots": 2.5}, PlacementError, "slots"),
    ({"reserve": 3}, PlacementError, "reserve"),
    ({"reserve": -1}, PlacementError, "reserve"),
    ({"slots": 3, "reserve": 2}, PlacementError, "cannot hold"),
    ({"move_budget_us": -1.0}, PlacementError, "move_budget_us"),
    ({"move_budget_bytes": float("nan")}, PlacementError, "move_budget_bytes"),
    ({"min_gain": 1.5}, PlacementError, "min_gain"),
    ({"time_limit_s": 0}, PlacementError, "time_limit_s"),
    ({"workers": 0}, PlacementError, "workers"),
    ({"max_batches": 0}, PlacementError, "max_batches"),
    ({"current": np.zeros((4, 8), dtype=bool)}, PlacementError, "without a host"),
    ({"current": np.ones((3, 8), dtype=bool)}, PlacementError, "current placement must be"),
    ({"current": np.full((4, 8), 2)}, PlacementError, "0/1"),
    ({"topology": "h100x8"}, PlacementError, "Topology"),
])
def test_bad_input_raises_a_planner_error_naming_the_problem(change, err, match):
    topo = make_topology(1, 4, 2, slots=0)
    args = {"window": np.ones((4, 2, 8)), "topology": topo, "slots": 3}
    args.update(change)
    with pytest.raises(err, match=match) as info:
        place(args.pop("window"), args.pop("topology"), args.pop("slots"), **args)
    assert isinstance(info.value, PlannerError)


def test_placement_topology_refuses_a_mismatched_cluster():
    topo = make_topology(1, 4, 2, slots=0)
    res = place(np.ones((3, 1, 8)), topo, 3, min_gain=0.0)
    with pytest.raises(PlacementError, match="layer 5"):
        res.topology(topo, 5)
    with pytest.raises(PlacementError, match="ranks"):
        res.topology(make_topology(1, 2, 2, slots=0), 0)


def test_the_reserved_slots_are_used_and_not_exceeded():
    topo = make_topology(2, 4, 4, slots=0)
    win = _window(np.random.default_rng(6), 8, 1, 8, 32, skew=2.0, scale=200.0)
    res = place(win, topo, 6, reserve=2)
    plan = solve(win[-1, 0], res.topology(topo, 0), Budget(window_us=math.inf, time_limit_s=1.0), solver="greedy")
    per_rank = np.bincount(plan.replicas[:, 3], minlength=8)
    assert per_rank.sum() > 0 and per_rank.max() <= 2


def test_the_exact_form_bounds_the_search_and_its_placement_is_valid():
    topo = make_topology(2, 2, 2, slots=0)
    rng = np.random.default_rng(7)
    win = _window(rng, 3, 1, 4, 8, skew=1.5, scale=8.0)
    res = place(win, topo, 3, exact=True, eval_batches=64, time_limit_s=4.0, min_gain=0.0)
    bound = res.info["bound_us"][0]
    assert np.isfinite(bound) and bound <= res.after_us * (1 + 1e-6)  # optimal routing <= the static rule
    heuristic = place(win, topo, 3, eval_batches=64, min_gain=0.0)
    assert res.after_us <= heuristic.after_us * (1 + 1e-9)  # the exact start can only add a better end
    _check_invariants(res, np.broadcast_to(topo.native, res.hosts.shape), topo, 3)
    h, lb, status = exact_layer(win[:, 0], topo, 2, topo.native, 0, 2.0)  # no copies allowed: the current placement
    assert status == "optimal" and np.array_equal(h, topo.native)
    assert lb <= score_placement(win, topo.native[None], topo).sum() * (1 + 1e-6)


def test_kept_only_when_the_current_placement_has_the_slots_asked_for():
    """A current placement with other slot counts is never handed back as "kept": the map it would
    write has the wrong number of slots for the engine."""
    topo = make_topology(1, 4, 2, slots=0)
    rng = np.random.default_rng(0)
    w = rng.poisson(5.0, size=(8, 1, 4, 8)).astype(float)
    cur = topo.native.copy()
    cur[0, 2] = cur[1, 4] = True  # ranks hold 3, 3, 2, 2
    res = place(w, topo, 2, current=cur, min_gain=0.9, time_limit_s=0.5)
    assert (res.hosts.sum(axis=2) == 2).all()
    res = place(np.ones((8, 1, 4, 8)), topo, 3, min_gain=0.9, time_limit_s=0.5)
    assert (res.hosts.sum(axis=2) == 3).all() and res.to_map().phy2log.shape == (1, 12)


def test_window_totals_above_the_load_limit_are_refused():
    topo = make_topology(1, 4, 2, slots=0)
    w = np.ones((2, 1, 4, 8)) * 1e25
    with pytest.raises(LoadsError, match="MAX_LOAD_TOTAL"):
        place(w, topo, 3, time_limit_s=0.5)
    with pytest.raises(PlacementError, match="current placement"):
        place(np.ones((2, 1, 4, 8)), topo, 3, current=[[1, 0], [1]])
