"""The simulator's accounting on hand-computed tiny cases."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner import CostParams, LoadsError, SolverError
from probe_planner.baselines.eplb import eplb_placement
from probe_planner.simulate import Policy, non_moe_us, perturb, simulate

from .conftest import make_topology


def _hot(steps: int = 2, layers: int = 1, G: int = 2, E: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.poisson(20.0, size=(steps, layers, G, E)).astype(float)
    x[..., 0] += 4000.0  # expert 0 (on rank 0) is hot from every source: a copy pays
    return x


def test_a_copy_over_the_window_adds_exactly_its_excess():
    topo = make_topology(1, 2, 2, slots=1, hidden=4096, ffn=1536)
    kappa = CostParams.from_topology(topo).copy_intra_us
    pol = Policy("planned-for-more", "per-batch", prediction="oracle", plan_window_us=1e9)
    # planning (measured) and then the one copy share the window: what exceeds it is exposed, exactly
    window = kappa - 10.0
    rec = simulate(_hot(1), topo, window, [pol])[0]
    assert rec.plan_us > 0.0
    assert rec.exposed_plan_us + rec.exposed_copy_us == pytest.approx(rec.plan_us + kappa - window, abs=1e-6)
    assert rec.exposed_plan_us == pytest.approx(max(0.0, rec.plan_us - window), abs=1e-6)
    assert rec.exposed_copy_us == pytest.approx(min(kappa, rec.plan_us + 10.0), abs=1e-6)  # 10 us with free planning
    fits = simulate(_hot(1), topo, window, [Policy("fits", "per-batch")])[0]  # planned for the real window: no copy
    assert fits.exposed_copy_us == 0.0


def test_planner_time_inside_the_window_adds_nothing():
    topo = make_topology(1, 2, 2, slots=1, hidden=4096, ffn=1536)
    rec = simulate(_hot(1), topo, 1e9, [Policy("greedy", "per-batch")])[0]
    assert rec.exposed_plan_us == 0.0 and rec.total_us == pytest.approx(rec.moe_us + rec.non_moe_us)
    tight = simulate(_hot(1), topo, 1e-3, [Policy("greedy", "per-batch")])[0]  # a solve takes more than 1 ns
    assert tight.exposed_plan_us > 0.0


def test_the_oracle_is_never_slower_than_static_on_a_step():
    topo = make_topology(2, 2, 2, slots=2, hidden=2048, ffn=768)
    x = np.random.default_rng(4).zipf(1.6, size=(4, 3, 4, 8)).astype(float)
    recs = simulate(x, topo, 200.0, [Policy("static"), Policy("oracle", "per-batch", prediction="oracle")])
    static = {r.step: r.moe_us for r in recs if r.policy == "static"}
    for r in recs:
        if r.policy == "oracle":
            assert r.moe_us <= static[r.step] * (1 + 1e-12)


def test_a_drop_policys_dropped_tokens_match_a_direct_count():
    topo = make_topology(1, 2, 2, slots=0)
    x = _hot(2, 2)
    recs = simulate(x, topo, 0.0, [Policy("drop", "capacity", mode="drop", gamma=1.0)])
    for r in recs:
        direct = 0.0
        for lay in range(x.shape[1]):
            totals = x[r.step, lay].sum(axis=0)
            cap = np.floor(totals.sum() / totals.size)  # gamma 1: the mean load per expert
            direct += np.maximum(totals - cap, 0.0).sum()
        assert r.dropped == direct and r.rerouted == 0.0


def test_eplb_re_places_on_its_interval_and_stalls_for_all_layers_moves():
    from probe_planner.window import copy_times_us

    topo = make_topology(1, 2, 2, slots=1)
    x = _hot(6, 2, seed=3)
    x[4:, :, :, 3] += 8000.0  # the hot expert changes: the second re-placement moves something
    recs = simulate(x, topo, 0.0, [Policy("static"), Policy("eplb", "eplb", interval=2, history=2)])
    by = {(r.policy, r.step): r for r in recs}
    assert by[("eplb", 0)].moe_us == by[("static", 0)].moe_us  # nothing placed before the first interval
    assert by[("eplb", 1)].stall_us == 0.0 and by[("eplb", 3)].stall_us == 0.0
    first = eplb_placement(x[0:2].sum(axis=(0, 2)), topo, 2)
    p = CostParams.from_topology(topo)
    src, dst = [], []  # both layers' copies at once, each from rank 0 or 1's native copy
    for lay in range(2):
        d, e = np.nonzero(first.hosts(lay) & ~topo.native)
        src += [int(np.flatnonzero(topo.native[:, k])[0]) for k in e]
        dst += d.tolist()
    both = copy_times_us(np.array(src), np.array(dst), 2, 2, p.copy_intra_us, p.copy_inter_us).max()
    assert by[("eplb", 2)].stall_us == pytest.approx(both) and both > first.migration(topo).time_us.max()
    second = eplb_placement(x[2:4].sum(axis=(0, 2)), topo, 2)  # from the map in use, not the native one
    assert by[("eplb", 4)].stall_us == pytest.approx(second.migration(topo, previous=first).all_layers_us)


def test_tokens_per_second_counts_tokens_not_assignments():
    from probe_planner.harness.simulate_cli import summarize

    topo = make_topology(1, 2, 2, slots=0, hidden=2048, ffn=768, top_k=2)
    x = _hot(2, 3)
    recs = simulate(x, topo, 0.0, [Policy("static")])
    rate = summarize("t", "throughput", recs, 2)[0]["tokens_per_s"]
    assert rate == pytest.approx(x[:, 0].sum() / 2 / (sum(r.total_us for r in recs) * 1e-6))


def test_perturb_keeps_each_sources_tokens_and_moves_the_share_asked():
    rng = np.random.default_rng(0)
    x = rng.poisson(50.0, size=(4, 16)).astype(float)
    x[:, 0] = 4000.0  # a hot expert
    assert np.array_equal(perturb(x, 1.0, rng), x)
    y = perturb(x, 0.8, rng)
    assert np.array_equal(y.sum(axis=1), x.sum(axis=1)) and (y == np.floor(y)).all()
    # 20% of the hot expert's assignments leave it; a 16th of all moved ones come back
    ratio = y[:, 0].sum() / x[:, 0].sum()
    assert 0.8 < ratio < 0.84


def test_non_moe_time_is_a_roofline_of_the_busiest_rank():
    topo = make_topology(1, 2, 2, slots=0, hidden=1024, ffn=512)
    h = 1024
    assert non_moe_us(topo, np.array([0.0, 0.0])) == pytest.approx(4 * h * h * 2.0 / topo.hbm_bw * 1e6)
    big = 1e6
    assert non_moe_us(topo, np.array([big, 1.0])) == pytest.approx(8 * h * h * big / topo.peak_flops * 1e6)


def test_the_simulator_refuses_bad_input():
    topo = make_topology(1, 2, 2, slots=0)
    with pytest.raises(LoadsError):
        simulate(np.ones((2, 2, 4)), topo, 0.0, [Policy("static")])
    with pytest.raises(SolverError):
        Policy("x", "magic")
    with pytest.raises(SolverError):
        simulate(np.ones((1, 1, 2, 4)), topo, 0.0, [Policy("a"), Policy("a")])


@pytest.mark.traces
@pytest.mark.slow
def test_probe_bench_simulate_runs_every_scenario(trace_dir, tmp_path, capsys):
    from probe_planner.harness.cli import main

    assert main(["simulate", "--quick", "--steps", "3", "--trace-dir", str(trace_dir), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for scenario in ("prefill", "decode", "shift", "top1"):
        assert f"| {scenario} | static |" in printed and f"| {scenario} | greedy-lookahead90 |" in printed
        assert f"| {scenario} | eplb-sglang |" in printed and f"| {scenario} | place-greedy-lookahead90 |" in printed
    assert "imbalance per step around the workload shift" in printed
    assert (tmp_path / "simulate.csv").stat().st_size > 0 and (tmp_path / "simulate.png").stat().st_size > 0
    header = (tmp_path / "simulate.csv").read_text().splitlines()[0].split(",")
    assert {"stall_us", "copies_per_rank", "moves", "late_plans"} <= set(header)


def test_probe_bench_simulate_refuses_bad_arguments(tmp_path, capsys):
    from probe_planner.harness.cli import main

    assert main(["simulate", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("probe-bench simulate: error:")


@pytest.mark.traces
def test_probe_bench_simulate_refuses_an_unknown_policy_name(trace_dir, tmp_path, capsys):
    from probe_planner.harness.cli import main

    args = ["simulate", "--scenarios", "top1", "--steps", "2", "--policies", "static", "nope", "--trace-dir", str(trace_dir)]
    assert main(args + ["--out", str(tmp_path), "--no-plots"]) == 2
    assert "nope" in capsys.readouterr().err


def test_the_engines_defaults_scale_by_one_factor():
    from probe_planner.harness.simulate_cli import policies

    by = {p.name: p for p in policies(16, 0.9, 1.5, None, stall="amortized")}
    # vLLM's 3000-step interval -> 8 steps (half the run): f = 8 / 3000; its 1000-step window -> 3 steps
    assert (by["eplb-periodic"].interval, by["eplb-periodic"].history) == (8, 3)
    # SGLang re-balances every 1000 iterations from a buffer of as many -> every 3 steps from 3
    assert (by["eplb-sglang"].interval, by["eplb-sglang"].history) == (3, 3)
    place = by["place-greedy-lookahead90"]
    assert (place.kind, place.interval, place.history, place.reserve) == ("place", 8, 3, 1)
    assert by["eplb-sglang"].stall_scale == pytest.approx(8 / 3000) == place.stall_scale
    assert all(p.stall_scale == 1.0 for p in policies(16, 0.9, 1.5, None))  # --stall full


def test_online_re_places_one_layer_a_step_and_exposes_the_moves_beyond_the_window():
    topo = make_topology(1, 2, 2, slots=1)
    x = _hot(3, 2)
    recs = simulate(x, topo, 0.0, [Policy("online", "online", history=1)])
    by = {r.step: r for r in recs}
    assert by[0].exposed_copy_us == 0.0  # nothing to learn from yet
    first = eplb_placement(x[0:1, 0].sum(axis=1), topo, 2)  # step 1 re-places layer 0 from step 0
    assert by[1].exposed_copy_us == pytest.approx(first.migration(topo).time_us[0]) and by[1].stall_us == 0.0
    second = eplb_placement(x[1:2, 1].sum(axis=1), topo, 2)  # step 2: layer 1, from the sharded placement
    assert by[2].exposed_copy_us == pytest.approx(second.migration(topo).time_us[0])


def test_recorded_predictions_are_what_the_plans_are_made_for():
    topo = make_topology(1, 2, 2, slots=1, hidden=2048, ffn=768)
    x = _hot(2, 1)
    nan = np.full_like(x, np.nan)
    # a fixed copy window: the default one depends on the last solve's measured time
    pols = [Policy("static"), Policy("oracle", "per-batch", plan_window_us=1e9),
            Policy("rec", "per-batch", prediction="recorded", plan_window_us=1e9)]
    same = {r.policy: r.moe_us for r in simulate(x, topo, 1e9, pols, recorded=x) if r.step == 1}
    assert same["rec"] == same["oracle"]  # a perfect recording plans like the oracle
    none = {r.policy: r.moe_us for r in simulate(x, topo, 1e9, pols, recorded=nan) if r.step == 1}
    assert none["rec"] == none["static"]  # NaN: no prediction, the static plan
    with pytest.raises(SolverError):
        simulate(x, topo, 1e9, pols)


def _place(name: str = "place", **kw) -> Policy:
    return Policy(name, "place", interval=2, history=2, place_time_s=0.05, **kw)


def test_place_charges_its_re_placement_moves_as_the_eplb_stall():
    from probe_planner.place import Placement

    # 2 ranks x 1 expert, 2 spare slots, reserve 1: the placement must hold both experts on both ranks
    topo = make_topology(1, 2, 1, slots=2)
    kappa = CostParams.from_topology(topo).copy_intra_us
    x = _hot(5, 1, E=2)
    recs = simulate(x, topo, 1e9, [_place(), _place("half", stall_scale=0.5)])
    by = {(r.policy, r.step): r for r in recs}
    assert by[("place", 1)].stall_us == 0.0 and by[("place", 1)].hosts is None  # nothing before the interval
    first = by[("place", 2)]
    assert first.hosts is not None and first.hosts.all()
    # two copies (expert 1 to rank 0, expert 0 to rank 1), in parallel on NVLink: one copy's time
    assert first.moves == 2 and first.stall_us == pytest.approx(kappa)
    assert by[("half", 2)].stall_us == pytest.approx(kappa / 2)
    assert by[("place", 4)].stall_us == 0.0 and by[("place", 4)].moves == 0  # nothing left to move
    # the per-batch plans on top run on the placement's topology: every expert local, nothing to copy
    assert by[("place", 3)].copies_per_rank == 0
    assert Placement(hosts=first.hosts, reserve=1).topology(topo, 0).slots == 1


def test_place_holds_equal_slots_per_rank_and_every_expert_once_per_rank():
    from probe_planner.engine_maps import from_phy2log
    from probe_planner.place import hosts_to_phy2log

    topo = make_topology(2, 2, 2, slots=2)  # 4 ranks on 2 nodes, 8 experts, 2 + 2 slots per rank, 1 reserved
    x = _hot(3, 2, G=4, E=8, seed=5)
    x[..., 5] += 3000.0
    rec = next(r for r in simulate(x, topo, 1e9, [_place()]) if r.step == 2)
    assert rec.hosts.shape == (2, 4, 8) and (rec.hosts.sum(axis=2) == 3).all()  # E/G + slots - reserve each
    assert rec.hosts.any(axis=1).all()  # every expert somewhere
    m = from_phy2log(hosts_to_phy2log(rec.hosts), 4, 8)  # the engines' validation: no duplicate on a rank
    assert m.slots_per_rank == 3 and rec.moves > 0


def test_place_per_batch_copies_use_only_the_reserved_slots():
    topo = make_topology(1, 2, 4, slots=3)
    x = _hot(4, 2, E=8, seed=1)
    x[..., 1:4] += 3000.0  # rank 0's four experts are all hot: a plain per-batch plan copies three
    recs = simulate(x, topo, 1e9, [_place(reserve=1), Policy("per-batch", "per-batch")])
    place_recs = [r for r in recs if r.policy == "place"]
    assert max(r.copies_per_rank for r in place_recs) == 1 and place_recs[0].copies_per_rank == 1
    assert max(r.copies_per_rank for r in recs if r.policy == "per-batch") >= 2  # the base topology's slots allow more


def test_a_bad_place_option_is_refused_naming_it():
    topo = make_topology(1, 2, 2, slots=1)
    for field, value in (("reserve", -1), ("reserve", 1.5), ("place_time_s", 0.0), ("stall_scale", 2.0)):
        with pytest.raises(SolverError, match=field):
            Policy("p", "place", **{field: value})
    with pytest.raises(SolverError, match="reserve"):  # more than the topology's spare slots
        simulate(_hot(2), topo, 0.0, [Policy("p", "place", reserve=2)])


def test_a_late_plan_is_waited_for_or_skipped_and_the_layer_runs_unplanned():
    topo = make_topology(1, 2, 2, slots=1, hidden=4096, ffn=1536)
    x = _hot(1, 2)
    pols = [Policy("static"), Policy("wait", "per-batch"), Policy("skip", "per-batch", late="skip")]
    by = {r.policy: r for r in simulate(x, topo, 1e-3, pols)}  # every solve takes more than 1 ns: every plan is late
    assert by["wait"].late_plans == 2 and by["wait"].exposed_plan_us > 0.0
    assert by["skip"].late_plans == 2 and by["skip"].exposed_plan_us == 0.0 and by["skip"].exposed_copy_us == 0.0
    assert by["skip"].moe_us == by["static"].moe_us and by["skip"].plan_us > 0.0
    # the planner still finishes a dropped plan: the next one starts behind (its backlog at the step's end)
    # (two layers, each hiding in 1 ns: the backlog is both solves' time less 2 ns)
    assert by["skip"].planner_lag_us == pytest.approx(by["skip"].plan_us - 2e-3) and by["wait"].planner_lag_us == 0.0
    with pytest.raises(SolverError, match="late"):
        Policy("x", "per-batch", late="never")
