"""Plans round-trip losslessly through JSON and NPZ; corrupt files raise PlanFileError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from probe_planner import Budget, Plan, PlanFileError, PlanInvalidError, load_plan, save_plan, solve

from .conftest import make_topology, problems


def assert_same(a, b):
    np.testing.assert_array_equal(a.loads, b.loads)
    np.testing.assert_array_equal(a.replicas, b.replicas)
    np.testing.assert_array_equal(a.route_idx, b.route_idx)
    np.testing.assert_array_equal(a.route_tok, b.route_tok)
    np.testing.assert_array_equal(a.topology.native, b.topology.native)
    assert a.topology.to_dict() == b.topology.to_dict()
    assert a.budget.to_dict() == b.budget.to_dict()
    assert (a.solver, a.solve_time_s) == (b.solver, b.solve_time_s)
    assert a.makespan_us == b.makespan_us


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(problems(max_layers=3))
def test_round_trip(tmp_path, case):
    loads, topo, budget = case
    plan = solve(loads, topo, budget, solver="greedy")
    for suffix in (".json", ".npz"):
        path = save_plan(plan, tmp_path / f"plan{suffix}")
        assert_same(plan, load_plan(path))


@pytest.fixture
def saved(tmp_path):
    topo = make_topology(1, 4, 2, slots=2)
    loads = np.arange(32, dtype=float).reshape(4, 8) ** 1.5
    loads[:, 0] += 400.0
    plan = solve(loads, topo, Budget(window_us=[1e3, 1e3, 0.0, 1e3]))
    assert plan.route_idx.shape[0] > 0  # something is split, so routes are listed
    return plan, save_plan(plan, tmp_path / "p.json"), save_plan(plan, tmp_path / "p.npz")


def test_truncated_and_garbage_files(saved, tmp_path):
    _, js, npz = saved
    bad = tmp_path / "bad.json"
    bad.write_text(js.read_text()[:100])
    with pytest.raises(PlanFileError, match="corrupt"):
        load_plan(bad)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz.read_bytes()[:50])
    with pytest.raises(PlanFileError, match="corrupt"):
        load_plan(bad)
    with pytest.raises(PlanFileError, match="does not exist"):
        load_plan(tmp_path / "nothing.json")
    with pytest.raises(PlanFileError, match="suffix"):
        save_plan(saved[0], tmp_path / "p.txt")


@pytest.mark.parametrize("edit, error, match", [
    (lambda d: d.update(format="other"), PlanFileError, "not a probe-plan file"),
    (lambda d: d.update(version=99), PlanFileError, "version 99"),
    (lambda d: d.pop("routes"), PlanFileError, "routes"),
    (lambda d: d["loads"].update(shape=[1, 4, 9]), PlanFileError, "shape says"),
    (lambda d: d["topology"].update(num_ranks=8), PlanFileError, "inconsistent topology|does not match"),
    (lambda d: d["routes"].update(index=[[0, 0, 0]]), PlanFileError, r"expected \[N, 4\]"),
    (lambda d: d["routes"]["tokens"].__setitem__(0, d["routes"]["tokens"][0] + 1), PlanInvalidError, "routes carry"),
])
def test_mismatched_content(saved, tmp_path, edit, error, match):
    _, js, _ = saved
    doc = json.loads(js.read_text())
    edit(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(error, match=match):
        load_plan(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_layers=2))
def test_explicit_and_compact_routes_are_the_same_plan(case):
    """Listing every route (what full_routes gives, and what older plan files hold) is as valid as
    the compact form and scores the same."""
    loads, topo, budget = case
    plan = solve(loads, topo, budget, solver="greedy")
    idx, tok = plan.full_routes
    explicit = Plan(topo, budget, plan.loads, plan.replicas, idx, tok, solver="x", solve_time_s=0.0).validate()
    np.testing.assert_allclose(explicit.metrics.layer_makespan_us, plan.metrics.layer_makespan_us, rtol=1e-12)
    np.testing.assert_allclose(explicit.metrics.tokens_processed, plan.metrics.tokens_processed, rtol=1e-12, atol=1e-9)
