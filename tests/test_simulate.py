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
    assert (tmp_path / "simulate.csv").stat().st_size > 0 and (tmp_path / "simulate.png").stat().st_size > 0


def test_probe_bench_simulate_refuses_bad_arguments(tmp_path, capsys):
    from probe_planner.harness.cli import main

    assert main(["simulate", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("probe-bench simulate: error:")


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
