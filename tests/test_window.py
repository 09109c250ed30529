"""The one copy-fits-the-window rule: its compiled twin, its capacities, and the bound built on it."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest

from probe_planner import Budget, ModelShape, Topology, solve, solver_names
from probe_planner.cost import CostParams, copy_capacity
from probe_planner.window import copies_fit, copies_fit_np, copies_that_fit


@nb.njit(cache=True)
def _fit_all(count, unit, window):
    out = np.zeros(count.size, np.bool_)
    for i in range(count.size):
        out[i] = copies_fit(count[i], unit[i], window[i])
    return out


def test_compiled_twin_agrees_with_numpy_rule_at_exact_multiples():
    rng = np.random.default_rng(0)
    unit = rng.uniform(0.1, 300.0, 4000)
    k = rng.integers(0, 12, 4000).astype(float)
    # windows at exact multiples, one ulp either side, and far off
    window = np.concatenate([k[:1000] * unit[:1000], np.nextafter(k[1000:2000] * unit[1000:2000], 0),
                             np.nextafter(k[2000:3000] * unit[2000:3000], np.inf), rng.uniform(0, 3000, 1000)])
    count = rng.integers(0, 12, 4000).astype(float)
    count[:3000] = k[:3000]
    np.testing.assert_array_equal(_fit_all(count, unit, window), copies_fit_np(count, unit, window))
    assert copies_fit_np(count[:3000], unit[:3000], window[:3000]).all()  # an exact multiple fits


@pytest.mark.parametrize("k", [1, 3, 5])
def test_capacity_is_the_largest_count_the_rule_admits(k):
    for unit in (7.0, 0.1, 1 / 3, 2.2737367544323206e-3, 58.7):
        w = np.array([k * unit, np.nextafter(k * unit, 0), k * unit * (1 - 1e-6), np.inf, 0.0])
        cap = copies_that_fit(unit, w, most=1000)
        assert cap[0] == k and cap[1] == k and cap[2] == k - 1 and cap[3] == 1000 and cap[4] == 0
        assert np.all(copies_fit_np(cap, unit, w)) and not np.any(copies_fit_np(cap[:3] + 1, unit, w[:3]))


def _boundary_topology(nodes: int) -> Topology:
    model = ModelShape(name="boundary", num_experts=8 * nodes, top_k=1, hidden=256, expert_ffn=512)
    return Topology(num_ranks=8 * nodes, ranks_per_node=8, intra_node_bw=450e9, inter_node_bw=50e9,
                    peak_flops=989.5e12, hbm_bw=3.35e12, model=model, slots=1)


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("link", ["intra", "inter"])
def test_bound_stays_below_plans_when_the_window_is_an_exact_multiple(nodes, k, link):
    # the reported failure: window 3 x copy_intra_us, greedy made 3 copies at 77.98 us while the
    # "lower bound" said 118.24 us (the bound floored the window without the rule's tolerance)
    topo = _boundary_topology(nodes)
    p = CostParams.from_topology(topo)
    window = k * (p.copy_intra_us if link == "intra" else p.copy_inter_us)
    loads = np.ones((topo.num_ranks, topo.num_experts))
    loads[:, 0] = 20000.0
    cap_in, cap_out = copy_capacity(topo, np.full(topo.num_ranks, window), p)
    assert cap_out[0] >= k
    for name in solver_names():
        plan = solve(loads, topo, Budget(window_us=window, time_limit_s=0.5), solver=name)
        assert plan.lower_bound_us <= plan.bound_us <= plan.makespan_us * (1 + 1e-9) + 1e-9, name
    if link == "intra" and nodes == 1:  # the hot expert's host sends exactly k copies
        assert solve(loads, topo, Budget(window_us=window), solver="greedy").num_replicas == k
