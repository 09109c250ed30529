"""Plans round-trip losslessly through JSON and NPZ; corrupt files raise PlanFileError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _set_load(d, value):
    d["loads"]["values"][3] = value


@pytest.mark.parametrize("edit, match", [
    (lambda d: _set_load(d, float("nan")), r"'loads' holds nan at \[0, 0, 3\]: loads must be finite and >= 0"),
    (lambda d: _set_load(d, float("inf")), "'loads' holds inf at"),
    (lambda d: _set_load(d, -2.0), "'loads' holds -2.0 at"),
    (lambda d: d["replicas"][0].__setitem__(1, 1.5), r"'replicas' holds 1.5 at \[0, 1\]: indices must be whole numbers"),
    (lambda d: d["routes"]["index"][0].__setitem__(3, 0.5), "'routes.index' holds 0.5 at"),
    (lambda d: d["routes"]["index"][0].__setitem__(0, float("nan")), "'routes.index' holds nan at"),
    (lambda d: d["routes"]["index"][0].__setitem__(0, "0"), "'routes.index' is not a numeric array"),
    (lambda d: d["routes"]["index"][0].__setitem__(0, None), "'routes.index' is not a numeric array"),
    (lambda d: d["routes"].update(tokens=d["routes"]["tokens"][:-1]), "route entries but"),
    (lambda d: d["loads"]["shape"].__setitem__(0, 1.5), "'loads.shape' must be a list of whole numbers"),
])
def test_edited_values_are_refused(saved, tmp_path, edit, match):
    """NaN/inf/negative loads and fractional or non-numeric indices are refused, never truncated."""
    _, js, _ = saved
    doc = json.loads(js.read_text())
    edit(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))  # NaN and Infinity are what an edited JSON file can say
    with pytest.raises((PlanFileError, PlanInvalidError), match=match):
        load_plan(path)


@pytest.mark.parametrize("field, edit, match", [
    ("loads", lambda a: a.__setitem__((0, 1, 2), np.nan), r"'loads' holds nan at \[0, 1, 2\]"),
    ("loads", lambda a: a.__setitem__((0, 1, 2), -np.inf), "'loads' holds -inf at"),
    ("loads", lambda a: a.__setitem__((0, 1, 2), -1.0), "'loads' holds -1.0 at"),
    ("replicas", lambda a: a.__setitem__((0, 2), 0.5), r"'replicas' holds 0.5 at \[0, 2\]"),
    ("route_idx", lambda a: a.__setitem__((1, 1), 2.25), r"'route_idx' holds 2.25 at \[1, 1\]"),
    ("route_idx", lambda a: a.__setitem__((1, 1), np.inf), "'route_idx' holds inf at"),
    ("route_tok", lambda a: a.__setitem__(0, np.nan), "carries nan tokens"),
])
def test_edited_npz_is_refused(saved, tmp_path, field, edit, match):
    _, _, npz = saved
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[field] = arrays[field].astype(float)
    edit(arrays[field])
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    with pytest.raises((PlanFileError, PlanInvalidError), match=match):
        load_plan(path)


def test_whole_number_float_indices_load(saved, tmp_path):
    """An index written as 2.0 (some JSON writers do) is the integer 2."""
    plan, js, npz = saved
    doc = json.loads(js.read_text())
    doc["replicas"] = [[float(v) for v in row] for row in doc["replicas"]]
    path = tmp_path / "floats.json"
    path.write_text(json.dumps(doc))
    assert_same(plan, load_plan(path))
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["route_idx"] = arrays["route_idx"].astype(np.float32)
    np.savez(tmp_path / "floats.npz", **arrays)
    assert_same(plan, load_plan(tmp_path / "floats.npz"))


json_garbage = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["loads.values", "loads.shape", "replicas", "routes.index", "routes.tokens", "replicas.0",
                              "routes.index.0", "loads.values.0"]), value=json_garbage)
def test_json_garbage_is_refused_cleanly(saved, tmp_path, where, value):
    """Any JSON value in place of a plan field: PlanFileError or PlanInvalidError (or a valid plan)."""
    _, js, _ = saved
    doc = json.loads(js.read_text())
    *path, last = where.split(".")
    node = doc
    for key in path:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    edited = tmp_path / "garbage.json"
    edited.write_text(json.dumps(doc))
    try:
        load_plan(edited)
    except (PlanFileError, PlanInvalidError):
        pass
