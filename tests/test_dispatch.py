"""A plan made for predicted loads, run on other (real) counts by its dispatch rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe_planner import Budget, LoadsError, solve
from probe_planner.dispatch import DispatchRule

from .conftest import make_topology, problems

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems(), st.sampled_from(["greedy", "lp-tokens", "auto"]))
def test_the_planned_counts_give_the_plan_back(case, solver):
    loads, topo, budget = case
    plan = solve(loads, topo, Budget(window_us=budget.window_us, time_limit_s=0.1), solver=solver)
    run = DispatchRule(plan).executed(plan.loads)
    np.testing.assert_allclose(run.metrics.layer_makespan_us, plan.metrics.layer_makespan_us, rtol=1e-9, atol=1e-9)
    if plan.integral:  # whole-token plans come back route for route
        a, b = plan.full_routes, run.full_routes
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@SETTINGS
@given(problems(), st.integers(0, 2**32 - 1), st.booleans())
def test_any_real_counts_give_a_valid_plan_on_the_same_placement(case, seed, whole):
    loads, topo, budget = case
    plan = solve(loads, topo, budget, solver="greedy")
    rng = np.random.default_rng(seed)
    real = rng.poisson(loads + rng.uniform(0, 30, size=loads.shape)).astype(float)  # other counts, new pairs too
    if not whole:
        real *= rng.uniform(0.5, 1.5, size=real.shape)
    run = DispatchRule(plan).executed(real)  # validated: sums exact, every token on a host, whole tokens
    np.testing.assert_array_equal(run.replicas, plan.replicas)
    assert run.integral == whole


def test_remainders_stay_local_and_unplanned_pairs_go_to_the_busiest_host():
    topo = make_topology(1, 4, 2, slots=3)  # experts 0, 1 on rank 0
    loads = np.full((4, 8), 10.0)
    loads[:, 0] = 400.0  # hot expert 0 ...
    loads[2, 0] = 0.0  # ... of which source 2 is predicted to send nothing
    plan = solve(loads, topo, Budget(window_us=np.inf), solver="greedy")
    assert set(plan.replicas[:, 1]) == {0}
    rule = DispatchRule(plan)
    hosts, weight, overflow = rule.layer(0)
    real = loads.copy()
    real[0, 0] = 401.0  # one token more than planned at the native host: it stays there, local
    real[2, 0] = 5.0  # a pair the plan gave nothing: all to expert 0's busiest host
    out = rule.split(0, real)
    assert hosts[0, 0] == 0 and out[0, 0, 0] == weight[0, 0, 0] + 1 and out[0, 0].sum() == 401.0
    busiest = np.argmax(weight[:, 0].sum(axis=0))
    assert out[2, 0, busiest] == 5.0 and out[2, 0].sum() == 5.0
    held = topo.native.copy()
    held[plan.replicas[:, 3], plan.replicas[:, 1]] = True
    r, t = rule.routes(0, real)
    assert np.all(held[r[:, 2], r[:, 1]]) and t.sum() == real.sum()


def test_bad_counts_are_refused():
    topo = make_topology(1, 2, 2, slots=1)
    rule = DispatchRule(solve(np.ones((2, 4)), topo, Budget(window_us=1.0)))
    for bad in (np.ones((3, 4)), -np.ones((2, 4)), np.full((2, 4), np.nan)):
        with pytest.raises(LoadsError):
            rule.split(0, bad)
    with pytest.raises(LoadsError, match="layer 1 out of range"):
        rule.split(1, np.ones((2, 4)))


def test_counts_too_large_for_int64_products_take_the_float_path():
    topo = make_topology(1, 2, 2, slots=1)
    loads = np.full((2, 4), 2.0**30)
    loads[:, 0] = 2.0**40
    rule = DispatchRule(solve(loads, topo, Budget(window_us=np.inf)))
    real = np.full((2, 4), 2.0**40)  # counts x planned tokens beyond 2**62
    out = rule.split(0, real)
    np.testing.assert_array_equal(out.sum(axis=2), real)
    assert np.all(out >= 0)
