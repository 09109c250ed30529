"""The compiled plan check (probe_planner.plan_check) against a slow, obviously correct reference;
malformed Plan(...) arguments raise PlanInvalidError naming the problem."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from probe_planner import Budget, Plan, PlanInvalidError, plan_check, solve, solver_names
from probe_planner import plan_check as pc
from probe_planner.cost import CostParams
from probe_planner.plan import _REL_TOL
from probe_planner.window import copies_fit_np

from .conftest import make_topology, problems

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

# What the message of each violation says (tests/test_errors.py matches the same words).
MESSAGE = {
    pc.RANGE_REPLICA: r"replica \d+ = .*: column \d outside", pc.RANGE_ROUTE: r"route \d+ = .*: column \d outside",
    pc.TOKENS: "carries .* tokens \\(must be finite, >= 0\\)", pc.SRC_NOT_NATIVE: "source rank does not natively host",
    pc.DST_NATIVE: "destination already hosts the expert natively", pc.COPIED_TWICE: "copied twice",
    pc.SLOTS: r"replicas in layer \d+, slots=", pc.UNLISTED_SPLIT: "hosts but no routes listed",
    pc.WINDOW: "replica copies taking .* > window", pc.NOT_HELD: "does not hold the expert", pc.REPEAT: "repeat",
    pc.CONSERVATION: "routes carry", pc.UNCOVERED: "routes carry 0 tokens", pc.FRACTIONAL: "integral",
}


def reference_check(plan: Plan) -> int:
    """The first violated invariant's code, checked one by one with plain Python (slow, obviously
    correct), in the order plan_check documents."""
    topo, loads = plan.topology, plan.loads
    rep, ri, rt = plan.replicas.tolist(), plan.route_idx.tolist(), plan.route_tok.tolist()
    L, G, E = loads.shape
    native = topo.native
    for c, hi in enumerate((L, E, G, G)):
        if any(not 0 <= r[c] < hi for r in rep):
            return pc.RANGE_REPLICA
    for c, hi in enumerate((L, G, E, G)):
        if any(not 0 <= r[c] < hi for r in ri):
            return pc.RANGE_ROUTE
    if any(not (math.isfinite(t) and t >= 0) for t in rt):
        return pc.TOKENS
    if any(not native[s, e] for _, e, s, _ in rep):
        return pc.SRC_NOT_NATIVE
    if any(native[d, e] for _, e, _, d in rep):
        return pc.DST_NATIVE
    if any(n > 1 for n in Counter((lay, e, d) for lay, e, _, d in rep).values()):
        return pc.COPIED_TWICE
    if any(n > topo.slots for n in Counter((lay, d) for lay, _, _, d in rep).values()):
        return pc.SLOTS
    listed = {(lay, e) for lay, _, e, _ in ri}
    copies = Counter((lay, e) for lay, e, _, _ in rep)
    for lay in range(L):
        for e in range(E):
            hosts = int(native[:, e].sum()) + copies[(lay, e)]
            if hosts != 1 and (lay, e) not in listed and loads[lay, :, e].sum() > 0:
                return pc.UNLISTED_SPLIT
    p = CostParams.from_topology(topo)
    win = plan.budget.windows(G)
    node = topo.node_of
    n_copies = Counter()
    for lay, _, s, d in rep:
        inter = bool(node[s] != node[d])
        n_copies[(lay, d, "receive", inter)] += 1
        n_copies[(lay, s, "send", inter)] += 1
    for (_, r, _, inter), n in n_copies.items():
        if not copies_fit_np(float(n), p.copy_inter_us if inter else p.copy_intra_us, win[r]):
            return pc.WINDOW
    holders = {(lay, e, d) for lay, e, _, d in rep}
    if any(not (native[d, e] or (lay, e, d) in holders) for lay, _, e, d in ri):
        return pc.NOT_HELD
    if len(set(map(tuple, ri))) != len(ri):
        return pc.REPEAT
    sums: dict = defaultdict(float)
    for (lay, s, e, _), t in zip(ri, rt, strict=True):
        sums[(lay, s, e)] += t
    for (lay, s, e), total in sums.items():
        want = loads[lay, s, e]
        if abs(total - want) > _REL_TOL * max(1.0, want):
            return pc.CONSERVATION
    for lay, e in listed:
        if any(loads[lay, s, e] > 0 and (lay, s, e) not in sums for s in range(G)):
            return pc.UNCOVERED
    if np.all(loads == np.floor(loads)) and any(t != math.floor(t) for t in rt):
        return pc.FRACTIONAL
    return pc.OK


def assert_same_verdict(plan: Plan) -> int:
    """The compiled check and the reference agree on the first violation; validate() raises with
    that violation's message exactly when there is one."""
    want = reference_check(plan)
    got = int(plan._check_result()[0])
    assert got == want, f"compiled check says {got}, reference says {want}"
    if want == pc.OK:
        plan.validate()
    else:
        with pytest.raises(PlanInvalidError, match=MESSAGE[want]):
            plan.validate()
    return want


def remade(plan: Plan, budget: Budget | None = None, **arrays) -> Plan:
    fields = dict(replicas=plan.replicas, route_idx=plan.route_idx, route_tok=plan.route_tok)
    fields.update(arrays)
    return Plan(plan.topology, budget or plan.budget, plan.loads, solver="x", solve_time_s=0.0, **fields)


def test_prepare_compiles_one_specialization_for_every_caller():
    """``prepare()`` compiles once; read-only, Fortran-ordered or non-contiguous arrays reuse it."""
    plan_check.prepare()
    plan_check.prepare()
    topo = make_topology(2, 2, 2, slots=1)
    loads = np.full((2, 4, 8), 5.0)
    loads[:, :, 0] = 300.0
    plan = solve(loads, topo, Budget(window_us=np.inf))
    ro = [a.copy() for a in (plan.loads, plan.replicas, plan.route_idx, plan.route_tok)]
    for a in ro:
        a.setflags(write=False)
    remade(plan, replicas=ro[1], route_idx=ro[2], route_tok=ro[3]).validate()
    Plan(topo, plan.budget, ro[0], np.asfortranarray(plan.replicas), plan.route_idx[::1], plan.route_tok,
         solver="x", solve_time_s=0.0).validate()
    Plan(topo, plan.budget, np.asfortranarray(plan.loads), plan.replicas.astype(np.int32), plan.route_idx.astype(float),
         plan.route_tok.astype(np.float32).astype(float), solver="x", solve_time_s=0.0).validate()
    assert len(plan_check.check_plan.signatures) == 1
    assert len(plan_check.scan_loads.signatures) == 1


@pytest.mark.parametrize("solver", solver_names())
@settings(max_examples=8, deadline=None, suppress_health_check=SUPPRESS)
@given(case=problems(max_nodes=2, max_rpn=2, max_layers=2, max_epr=2))
def test_accepts_every_solvers_plans(solver, case):
    loads, topo, budget = case
    plan = solve(loads, topo, Budget(window_us=budget.window_us, time_limit_s=0.2), solver=solver)
    assert assert_same_verdict(plan) == pc.OK
    idx, tok = plan.full_routes  # the explicit form is as valid
    assert assert_same_verdict(remade(plan, route_idx=idx, route_tok=tok)) == pc.OK


TAMPERS = ("move_token", "shift_token", "reroute", "route_field", "drop_route", "repeat_route", "add_route",
           "add_replica", "copy_again", "drop_replica", "replica_field", "shrink_window", "unlist", "half_token")


def tamper(data, plan: Plan, kind: str):
    """One random edit of the plan's arrays (or budget): (replicas, route_idx, route_tok, budget)."""
    L, G, E = plan.loads.shape
    rep, ri, rt = plan.replicas.copy(), plan.route_idx.copy(), plan.route_tok.copy()
    budget = plan.budget
    n, r = ri.shape[0], rep.shape[0]
    pick = lambda size: data.draw(st.integers(0, size - 1))  # noqa: E731
    if kind == "move_token" and n >= 2:
        i, j = pick(n), pick(n)
        amount = min(1.0, rt[i])
        rt[i] -= amount
        rt[j] += amount
    elif kind == "shift_token" and n:
        i = pick(n)
        rt[i] += data.draw(st.sampled_from([1.0, -1.0, 0.5, 1e-12, 1e-6, -rt[i] - 1.0, np.nan, np.inf]))
    elif kind == "reroute" and n:
        ri[pick(n), 3] = pick(G)
    elif kind == "route_field" and n:
        c = pick(4)
        ri[pick(n), c] = data.draw(st.integers(-1, (L, G, E, G)[c]))
    elif kind == "drop_route" and n:
        keep = np.arange(n) != pick(n)
        ri, rt = ri[keep], rt[keep]
    elif kind == "repeat_route" and n:
        i = pick(n)
        ri, rt = np.vstack([ri, ri[i]]), np.append(rt, data.draw(st.sampled_from([0.0, rt[i]])))
    elif kind == "add_route":
        lay, s, e, d = pick(L), pick(G), pick(E), pick(G)
        ri = np.vstack([ri, [lay, s, e, d]])
        rt = np.append(rt, data.draw(st.sampled_from([0.0, float(plan.loads[lay, s, e]), 1.0])))
    elif kind == "add_replica":
        rep = np.vstack([rep, [pick(L), pick(E), pick(G), pick(G)]])
    elif kind == "copy_again" and r:
        rep = np.vstack([rep, rep[pick(r)]])
    elif kind == "drop_replica" and r:
        rep = rep[np.arange(r) != pick(r)]
    elif kind == "replica_field" and r:
        c = pick(4)
        rep[pick(r), c] = data.draw(st.integers(-1, (L, E, G, G)[c]))
    elif kind == "shrink_window":
        p = CostParams.from_topology(plan.topology)
        w = data.draw(st.sampled_from([0.0, 1e-3, p.copy_intra_us, p.copy_inter_us, 2 * p.copy_intra_us, 2.5 * p.copy_inter_us]))
        budget = Budget(window_us=np.full(G, w) if data.draw(st.booleans()) else w)
    elif kind == "unlist" and n:
        i = pick(n)
        keep = ~((ri[:, 0] == ri[i, 0]) & (ri[:, 2] == ri[i, 2]))
        ri, rt = ri[keep], rt[keep]
    elif kind == "half_token" and n:  # half a token to another holder of the same (layer, source, expert)
        i = pick(n)
        lay, s, e, _ = ri[i].tolist()
        holders = sorted(set(np.flatnonzero(plan.topology.native[:, e]).tolist())
                         | set(rep[(rep[:, 0] == lay) & (rep[:, 1] == e), 3].tolist()))
        d = data.draw(st.sampled_from(holders))
        twin = np.flatnonzero((ri == [lay, s, e, d]).all(axis=1))
        if not twin.size:
            ri, rt = np.vstack([ri, [lay, s, e, d]]), np.append(rt, 0.0)
        rt[i] -= 0.5
        rt[twin[0] if twin.size else -1] += 0.5
    return rep, ri, rt, budget


@settings(max_examples=400, deadline=None, suppress_health_check=SUPPRESS)
@given(case=problems(max_layers=2, max_epr=3), solver=st.sampled_from(["greedy", "greedy", "static", "lp-tokens"]),
       wide=st.booleans(), kinds=st.lists(st.sampled_from(TAMPERS), min_size=1, max_size=3), data=st.data())
def test_tampered_plans_get_the_reference_verdict(case, solver, wide, kinds, data):
    """Random edits (a token moved between sources, a route to a non-host, a replica beyond the slots,
    a shrunk window, ...) get the same first violation from the compiled check as from the reference."""
    loads, topo, budget = case
    plan = solve(loads, topo, Budget(window_us=np.inf if wide else budget.window_us, time_limit_s=0.2), solver=solver)
    rep, ri, rt, bud = plan.replicas, plan.route_idx, plan.route_tok, plan.budget
    for kind in kinds:
        rep, ri, rt, bud = tamper(data, remade(plan, bud, replicas=rep, route_idx=ri, route_tok=rt), kind)
    event(f"verdict {assert_same_verdict(remade(plan, bud, replicas=rep, route_idx=ri, route_tok=rt))}")


@pytest.fixture
def split_plan():
    topo = make_topology(2, 2, 2, slots=2)
    loads = np.full((2, 4, 8), 5.0)
    loads[:, :, 0] = 300.0
    loads[1, :, 5] = 200.0
    plan = solve(loads, topo, Budget(window_us=np.inf))
    assert plan.num_replicas >= 2 and plan.route_idx.shape[0] > 0
    return plan


def test_every_violation_kind_is_reachable(split_plan):
    """One deliberate edit per violation kind: the compiled check, the reference and the message agree."""
    p = split_plan
    rep, ri, rt = p.replicas, p.route_idx, p.route_tok
    L, G, E = p.loads.shape
    seen = set()

    def check(**kw):
        seen.add(assert_same_verdict(remade(p, **kw)))

    check()
    check(replicas=np.vstack([rep, [0, E, 0, 1]]))
    check(route_idx=np.vstack([ri[:-1], [L, 0, 0, 0]]))
    check(route_tok=np.where(np.arange(rt.size) == 0, np.nan, rt))
    check(replicas=np.vstack([rep, [0, 0, 3, 2]]))  # rank 3 does not host expert 0
    check(replicas=np.vstack([rep, [0, 1, 0, 0]]))  # rank 0 hosts expert 1 natively
    check(replicas=np.vstack([rep, rep[0]]))
    check(replicas=np.vstack([rep, [[0, 2, 1, 3], [0, 3, 1, 3], [0, 1, 0, 3]]]))
    check(route_idx=ri[ri[:, 2] != rep[0, 1]], route_tok=rt[ri[:, 2] != rep[0, 1]])
    seen.add(assert_same_verdict(remade(p, Budget(window_us=1e-3))))
    holders = {(lay, e, d) for lay, e, _, d in rep.tolist()}
    holds = lambda lay, e, d: p.topology.native[d, e] or (lay, e, d) in holders  # noqa: E731
    row = next(i for i in range(rt.size) if any(not holds(ri[i, 0], ri[i, 2], d) for d in range(G)))
    bad = ri.copy()
    bad[row, 3] = next(d for d in range(G) if not holds(ri[row, 0], ri[row, 2], d))
    check(route_idx=bad)
    check(route_idx=np.vstack([ri, ri[0]]), route_tok=np.append(rt, 0.0))
    check(route_tok=rt + np.where(np.arange(rt.size) == 0, 1.0, 0.0))
    first = (ri[:, :3] == ri[0, :3]).all(axis=1)
    check(route_idx=ri[~first], route_tok=rt[~first])
    # half a token moved to another holder of the same (layer, source, expert): sums hold, integrality not
    row = int(np.flatnonzero(rt >= 1)[0])
    lay, s, e, d0 = ri[row].tolist()
    d1 = next(d for d in range(G) if d != d0 and holds(lay, e, d))
    twin = np.flatnonzero((ri == [lay, s, e, d1]).all(axis=1))
    idx, tok = (ri, rt.copy()) if twin.size else (np.vstack([ri, [lay, s, e, d1]]), np.append(rt, 0.0))
    tok[row] -= 0.5
    tok[twin[0] if twin.size else -1] += 0.5
    check(route_idx=idx, route_tok=tok)
    assert seen == set(range(15)), sorted(set(range(15)) - seen)


def test_first_violation_is_named(split_plan):
    p = split_plan
    ri = p.route_idx.copy()
    ri[[3, 5], 2] = 99
    with pytest.raises(PlanInvalidError, match=r"route 3 = \[.*99.*\]: column 2 outside \[0, 8\)"):
        remade(p, route_idx=ri).validate()
    rt = p.route_tok.copy()
    rt[[2, 4]] += 1.0
    G, E = p.topology.num_ranks, p.topology.num_experts
    lay, s, e = min((p.route_idx[i, :3].tolist() for i in (2, 4)), key=lambda k: (k[0] * G + k[1]) * E + k[2])
    with pytest.raises(PlanInvalidError, match=f"layer {lay}, source {s}, expert {e}: routes carry"):
        remade(p, route_tok=rt).validate()
    with pytest.raises(PlanInvalidError, match=r"route entries repeat .*: entries 0 and \d+ are both"):
        remade(p, route_idx=np.vstack([p.route_idx, p.route_idx[0]]), route_tok=np.append(p.route_tok, 0.0)).validate()


# ---- malformed arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("replicas", np.zeros((2, 3), np.int64), r"replicas have shape \[2, 3\], expected \[N, 4\]"),
    ("replicas", np.zeros(4, np.int64), r"replicas have shape \[4\], expected \[N, 4\]"),
    ("replicas", np.zeros((1, 2, 4), np.int64), r"replicas have shape \[1, 2, 4\]"),
    ("replicas", [[0, 1.5, 0, 1]], r"replica 0 = \[0.0, 1.5, 0.0, 1.0\]: column 1 holds 1.5, not a whole-number index"),
    ("replicas", [[0, 0, np.nan, 1]], "column 2 holds nan, not a whole-number index"),
    ("replicas", [[0, 0, 1e300, 1]], "not a whole-number index"),
    ("replicas", [[0, 0, 0, "1"]], "replicas must hold real numbers, got dtype <U"),
    ("replicas", np.ones((1, 4), bool), "must hold real numbers, got dtype bool"),
    ("replicas", [[0, 0, 0], [1]], "replicas is not a numeric array"),
    ("replicas", np.array([[0, 0, 0, 2**63]], np.uint64), "outside the int64 range"),
    ("route_idx", np.zeros((3, 3), np.int64), r"route_idx have shape \[3, 3\], expected \[N, 4\]"),
    ("route_idx", [[0, 0, 0.25, 0]], "route 0 = .*column 2 holds 0.25, not a whole-number index"),
    ("route_idx", [[0, 0, -np.inf, 0]], "column 2 holds -inf"),
    ("route_idx", np.array([[0, 0, 0, None]]), "route_idx must hold real numbers, got dtype object"),
    ("route_tok", "many", "route_tok must hold real numbers"),
    ("route_tok", np.zeros((1, 1)), r"route_tok has shape \[1, 1\], expected \[N\]"),
    ("route_tok", np.zeros(7), "route entries but 7 token counts"),
    ("loads", np.zeros((4, 8)), r"loads have shape \[4, 8\], expected \[L, G=4, E=8\]"),
    ("loads", np.zeros((1, 3, 8)), r"loads have shape \[1, 3, 8\]"),
    ("loads", np.zeros((1, 4, 8), complex), "loads must hold real numbers, got dtype complex128"),
    ("loads", [[[1.0] * 8] * 4, [[1.0] * 7] * 4], "loads is not a numeric array"),
])
def test_malformed_arguments(field, value, match):
    topo = make_topology(1, 4, 2, slots=1)
    args = dict(loads=np.ones((1, 4, 8)), replicas=np.zeros((0, 4), np.int64), route_idx=np.zeros((0, 4), np.int64),
                route_tok=np.zeros(0))
    if field == "route_tok" and match.startswith("route entries"):
        args["route_idx"] = np.zeros((3, 4), np.int64)
    args[field] = value
    with pytest.raises(PlanInvalidError, match=match):
        Plan(topo, Budget(window_us=1.0), solver="x", solve_time_s=0.0, **args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0, -1e-300])
def test_bad_loads(bad):
    topo = make_topology(1, 4, 2, slots=1)
    loads = np.ones((2, 4, 8))
    loads[1, 2, 3] = bad
    with pytest.raises(PlanInvalidError, match=r"loads\[1, 2, 3\] = .* \(loads must be finite, >= 0\)"):
        Plan(topo, Budget(window_us=1.0), loads, np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0), solver="x", solve_time_s=0.0)


def test_whole_number_floats_and_empty_lists_are_accepted(split_plan):
    p = split_plan
    q = Plan(p.topology, p.budget, p.loads.astype(np.float32).astype(np.int64), p.replicas.astype(float).tolist(),
             p.route_idx.astype(np.float32), p.route_tok.tolist(), solver="x", solve_time_s=0.0).validate()
    np.testing.assert_array_equal(q.replicas, p.replicas)
    assert q.replicas.dtype == np.int64 and q.route_idx.dtype == np.int64 and q.integral
    loads = np.ones((1, 4, 8))
    Plan(make_topology(1, 4, 2, slots=1), p.budget, loads, [], [], [], solver="x", solve_time_s=0.0).validate()
    assert not Plan(p.topology, p.budget, p.loads + 0.5, p.replicas, p.route_idx, p.route_tok + 0.0,
                    solver="x", solve_time_s=0.0).integral


GARBAGE_DTYPES = st.sampled_from([np.int64, np.int32, np.uint8, np.uint64, np.float64, np.float32, np.bool_, np.complex128, "U2"])
garbage = st.one_of(
    hnp.arrays(GARBAGE_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    st.lists(st.one_of(st.integers(-3, 9), st.floats(allow_nan=True), st.none(), st.lists(st.integers(-1, 9), max_size=5)),
             max_size=5),
    st.none(), st.text(max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[*SUPPRESS, HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["loads", "replicas", "route_idx", "route_tok"]), value=garbage, data=st.data())
def test_garbage_raises_plan_invalid_error(split_plan, field, value, data):
    """Garbage in any one argument (or a valid array with one entry garbled) gives PlanInvalidError or
    a valid plan, never a raw numpy/numba error."""
    p = split_plan
    args = dict(loads=p.loads, replicas=p.replicas, route_idx=p.route_idx, route_tok=p.route_tok)
    if data.draw(st.booleans()):
        arr = np.array(args[field], dtype=float)
        at = tuple(data.draw(st.integers(0, n - 1)) for n in arr.shape)
        arr[at] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.5, 1e300, 2.0**62, 7.0, 99.0, -0.0]))
        value = arr
    args[field] = value
    try:
        plan = Plan(p.topology, p.budget, solver="x", solve_time_s=0.0, **args).validate()
    except PlanInvalidError:
        return
    assert reference_check(plan) == pc.OK

