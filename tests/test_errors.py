"""Each bad input raises its own PlannerError subclass (a ValueError) naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner import (
    Budget,
    BudgetError,
    CardError,
    LoadsError,
    ModelShape,
    Plan,
    PlanFileError,
    PlanInvalidError,
    PlannerError,
    SolverError,
    Topology,
    TopologyError,
    TraceError,
    solve,
)
from probe_planner.errors import OutputError

from .conftest import make_topology


def test_hierarchy():
    for cls in (LoadsError, TopologyError, BudgetError, CardError, SolverError, PlanInvalidError, PlanFileError,
                TraceError, OutputError):
        assert issubclass(cls, PlannerError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("loads, match", [
    (np.array([[1.0, -2.0, 0, 0]] * 2), "must be >= 0"),
    (np.array([[1.0, np.nan, 0, 0]] * 2), "NaN or inf"),
    (np.array([[1.0, np.inf, 0, 0]] * 2), "NaN or inf"),
    (np.ones((2, 5)), "expert axis E=4"),
    (np.ones((3, 4)), "per-source loads"),
    (np.ones((2, 2, 2, 4)), "per-source loads"),
    (np.ones((0, 2, 4)), "zero layers"),
    ("abc", "numeric"),
])
def test_bad_loads(loads, match):
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(LoadsError, match=match):
        solve(loads, topo, Budget(window_us=1.0))


def test_layers_by_experts_needs_uniform_hint():
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(LoadsError, match="sources='uniform'"):
        solve(np.ones((3, 4)), topo, Budget(window_us=1.0))
    assert solve(np.ones((3, 4)), topo, Budget(window_us=1.0), sources="uniform").num_layers == 3


def model(e=8):
    return ModelShape(name="m", num_experts=e, top_k=2, hidden=64, expert_ffn=32)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_ranks=0), "num_ranks"),
    (dict(num_ranks=3), "not a multiple of ranks_per_node"),
    (dict(num_ranks=3, ranks_per_node=3), "divisible by num_ranks"),
    (dict(slots=-1), "slots"),
    (dict(intra_node_bw=0.0), "intra_node_bw"),
    (dict(peak_flops=float("nan")), "peak_flops"),
    (dict(placement=np.zeros((4, 8), dtype=bool)), "without a host"),
    (dict(placement=np.ones((4, 7), dtype=bool)), "host matrix"),
    (dict(placement=np.array([0, 1, 2, 3, 4, 0, 1, 2])), "ranks must lie in"),
])
def test_bad_topology(kwargs, match):
    base = dict(num_ranks=4, ranks_per_node=2, intra_node_bw=1e11, inter_node_bw=1e10, peak_flops=1e15,
                hbm_bw=1e12, model=model(), slots=2)
    base.update(kwargs)
    with pytest.raises(TopologyError, match=match):
        Topology(**base)


def test_bad_model_shape():
    with pytest.raises(TopologyError, match="top_k"):
        ModelShape(name="m", num_experts=4, top_k=5, hidden=8, expert_ffn=8)
    with pytest.raises(TopologyError, match="hidden"):
        ModelShape(name="m", num_experts=4, top_k=1, hidden=0, expert_ffn=8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(window_us=-1.0), ">= 0"),
    (dict(window_us=[1.0, float("nan")]), ">= 0"),
    (dict(window_us=1.0, time_limit_s=0.0), "time_limit_s"),
    (dict(window_us=np.ones((2, 2))), "scalar or a"),
])
def test_bad_budget(kwargs, match):
    with pytest.raises(BudgetError, match=match):
        Budget(**kwargs)


def test_window_length_must_match_ranks():
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(BudgetError, match="3 entries but the topology has 2"):
        solve(np.ones((2, 4)), topo, Budget(window_us=[1.0, 1.0, 1.0]))


def test_unknown_solver_and_options():
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(SolverError, match="unknown solver 'magic'"):
        solve(np.ones((2, 4)), topo, Budget(window_us=1.0), solver="magic")
    with pytest.raises(SolverError, match="n_dest must be an integer >= 1"):
        solve(np.ones((2, 4)), topo, Budget(window_us=1.0), solver="greedy", n_dest=0)


def test_bad_cards(tmp_path):
    with pytest.raises(CardError, match="no built-in moe card named 'nope'"):
        Topology.from_cards(model="nope", cluster="h100x8")
    bad = tmp_path / "c.toml"
    bad.write_text("num_ranks = [")
    with pytest.raises(CardError, match="not valid TOML"):
        Topology.from_cards(model="mixtral-8x7b", cluster=bad)
    bad.write_text('num_ranks = 8\nranks_per_node = 8\nintra_node_GBps = "fast"\ninter_node_GBps = 1\n'
                   'peak_tflops = 1\nhbm_TBps = 1\n')
    with pytest.raises(CardError, match="must be a number"):
        Topology.from_cards(model="mixtral-8x7b", cluster=bad)
    with pytest.raises(CardError, match="does not exist"):
        Topology.from_cards(model=tmp_path / "missing.toml", cluster="h100x8")


def tampered(plan: Plan, **changes) -> Plan:
    fields = dict(replicas=plan.replicas.copy(), route_idx=plan.route_idx.copy(), route_tok=plan.route_tok.copy())
    fields.update(changes)
    return Plan(plan.topology, plan.budget, plan.loads, solver="x", solve_time_s=0.0, **fields)


@pytest.fixture
def good_plan():
    topo = make_topology(2, 2, 2, slots=1)
    loads = np.full((4, 8), 5.0)
    loads[:, 0] = 300.0
    plan = solve(loads, topo, Budget(window_us=np.inf), solver="greedy")
    assert plan.num_replicas >= 1
    return plan


def test_validate_catches_lost_tokens(good_plan):
    tok = good_plan.route_tok.copy()
    tok[0] -= 1
    with pytest.raises(PlanInvalidError, match="routes carry"):
        tampered(good_plan, route_tok=tok).validate()


def test_validate_catches_route_to_non_host(good_plan):
    idx = good_plan.route_idx.copy()
    row = np.flatnonzero(idx[:, 2] == 0)[0]  # expert 0 is split: its routes are listed
    hosts = set(good_plan.replicas[good_plan.replicas[:, 1] == 0, 3].tolist()) | {0}
    idx[row, 3] = min(set(range(4)) - hosts)
    with pytest.raises(PlanInvalidError, match="does not hold the expert"):
        tampered(good_plan, route_idx=idx).validate()


def test_validate_catches_a_source_left_out(good_plan):
    idx, tok = good_plan.route_idx, good_plan.route_tok
    src = idx[0, 1]
    keep = ~((idx[:, 0] == idx[0, 0]) & (idx[:, 1] == src) & (idx[:, 2] == idx[0, 2]))
    with pytest.raises(PlanInvalidError, match=f"source {src}, expert {idx[0, 2]}: routes carry 0 tokens"):
        tampered(good_plan, route_idx=idx[keep], route_tok=tok[keep]).validate()


def test_validate_catches_split_expert_without_routes(good_plan):
    keep = good_plan.route_idx[:, 2] != 0
    assert not keep.all()
    with pytest.raises(PlanInvalidError, match="hosts but no routes listed"):
        tampered(good_plan, route_idx=good_plan.route_idx[keep], route_tok=good_plan.route_tok[keep]).validate()


def test_implicit_routes_send_everything_to_the_sole_host(good_plan):
    listed = set(good_plan.route_idx[:, 2].tolist())
    assert listed == set(good_plan.replicas[:, 1].tolist())  # only replicated experts are listed
    idx, tok = good_plan.full_routes
    for e in set(range(8)) - listed:
        rows = idx[:, 2] == e
        assert set(idx[rows, 3].tolist()) == {e // 2}
        np.testing.assert_allclose(tok[rows].sum(), good_plan.loads[0, :, e].sum())
    assert good_plan.layer(0).routes.shape[0] == idx.shape[0]


def test_validate_catches_slot_overflow(good_plan):
    rep = good_plan.replicas
    extra = np.array([[0, 2, 1, rep[0, 3]]]) if rep[0, 3] != 1 else np.array([[0, 0, 0, 3]])
    with pytest.raises(PlanInvalidError, match="slots=1|copied twice"):
        tampered(good_plan, replicas=np.vstack([rep, extra])).validate()


def test_validate_catches_window_overflow(good_plan):
    p = Plan(good_plan.topology, Budget(window_us=1e-3), good_plan.loads, good_plan.replicas,
             good_plan.route_idx, good_plan.route_tok, solver="x", solve_time_s=0.0)
    with pytest.raises(PlanInvalidError, match="window"):
        p.validate()


def test_validate_catches_non_native_source(good_plan):
    rep = good_plan.replicas.copy()
    rep[0, 2] = (rep[0, 2] + 1) % 4
    with pytest.raises(PlanInvalidError, match="source rank does not natively host"):
        tampered(good_plan, replicas=rep).validate()


def test_validate_catches_fractional_routing_of_integral_loads(good_plan):
    tok = good_plan.route_tok.copy()
    i = np.flatnonzero(tok >= 2)[0]
    tok[i] -= 0.5
    j = np.flatnonzero((good_plan.route_idx[:, :3] == good_plan.route_idx[i, :3]).all(axis=1))
    j = j[j != i]
    if j.size == 0:  # no second entry to carry the half token: split the entry
        idx = np.vstack([good_plan.route_idx, good_plan.route_idx[i]])
        with pytest.raises(PlanInvalidError, match="repeat"):
            tampered(good_plan, route_idx=idx, route_tok=np.append(tok, 0.5)).validate()
    else:
        tok[j[0]] += 0.5
        with pytest.raises(PlanInvalidError, match="integral"):
            tampered(good_plan, route_tok=tok).validate()


def test_validate_catches_out_of_range(good_plan):
    idx = good_plan.route_idx.copy()
    idx[0, 2] = 99
    with pytest.raises(PlanInvalidError, match="column 2 outside"):
        tampered(good_plan, route_idx=idx).validate()


@pytest.mark.parametrize("options", [{"max_moves": "many"}, {"max_moves": 1.5}, {"comm_weight": -1.0},
                                     {"comm_weight": "x"}, {"max_swaps": -2}, {"lookahead": 0.5}])
def test_bad_greedy_options(options):
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(SolverError, match="greedy option"):
        solve(np.ones((2, 4)), topo, Budget(window_us=1.0), solver="greedy", **options)


def test_unknown_solver_option():
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(SolverError, match=r"takes no option\(s\) \['backend'\]"):
        solve(np.ones((2, 4)), topo, Budget(window_us=1.0), solver="greedy", backend="highs")


@pytest.mark.parametrize("solver", ["milp", "auto"])
def test_bad_mip_gap(solver):
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(SolverError, match="mip_rel_gap"):
        solve(np.ones((2, 4)), topo, Budget(window_us=1.0), solver=solver, mip_rel_gap=-0.1)


@pytest.mark.parametrize("solver, options, match", [
    (["greedy"], {}, "solver must be a name"),
    ("greedy", {"max_moves": 10**30}, r"max_moves must be an integer >= 0 and <= 2147483647"),
    ("greedy", {"n_dest": True}, "n_dest must be an integer"),
    ("greedy", {"comm_weight": float("nan")}, "comm_weight must be a finite number"),
    ("milp", {"mip_rel_gap": "0.1"}, "mip_rel_gap must be a finite number"),
    ("lp-tokens", {"base": "milp"}, r"base must be one of \['static', 'greedy'\]"),
])
def test_bad_solver_and_option_values(solver, options, match):
    topo = make_topology(1, 2, 2, slots=1)
    with pytest.raises(SolverError, match=match):
        solve(np.ones((2, 4)), topo, Budget(window_us=1.0), solver=solver, **options)


def test_huge_counts_are_clamped_not_allocated():
    # n_dest=10**9 used to allocate 16 GB; counts beyond the shape change nothing and cost nothing
    topo = make_topology(1, 4, 2, slots=2)
    loads = np.full((4, 8), 5.0)
    loads[:, 0] = 900.0
    budget = Budget(window_us=np.inf, time_limit_s=0.2)
    huge = solve(loads, topo, budget, solver="greedy", n_dest=10**9, n_exp=10**9, max_moves=10**9, lookahead=10**9)
    plain = solve(loads, topo, budget, solver="greedy", n_dest=4, n_exp=8, lookahead=8)
    assert huge.makespan_us == plain.makespan_us and huge.solve_time_s < 0.2 * 1.1 + 1e-3
