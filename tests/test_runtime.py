"""probe_runtime on CPU: gloo processes running the expert-parallel MoE layer against a
single-process reference, for static, greedy and mispredicted plans, and replica copies."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from probe_planner import Budget, DispatchRule, solve  # noqa: E402

from .conftest import make_topology  # noqa: E402

HIDDEN, FFN, TOP_K, TOKENS = 32, 16, 2, 48


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases(world: int):
    """(name, topology, loads the plan is made for or None for the real ones, solver, window)."""
    topo = make_topology(1, world, 2, slots=2, hidden=HIDDEN, ffn=FFN)
    rng = np.random.default_rng(world)
    other = rng.poisson(rng.uniform(1, 40, size=(world, topo.num_experts))).astype(float)
    return [("static", topo, None, "static", np.inf), ("greedy", topo, None, "greedy", np.inf),
            ("mispredicted", topo, other, "greedy", np.inf),
            ("two-nodes", make_topology(2, world // 2, 2, slots=1, hidden=HIDDEN, ffn=FFN), other, "greedy", np.inf),
            ("many-copies", make_topology(1, world, 2, slots=3, hidden=HIDDEN, ffn=FFN), None, "hand", np.inf)]


def _many_copies_plan(topo, real):
    """Every rank sends both its natives to the next rank and (more than 2 ranks) its first to the one
    after: every rank sends and receives several copies, two per neighbouring pair; tokens split
    half native, half first replica."""
    from probe_planner import Plan

    G = topo.num_ranks
    pairs = ((0, 1), (1, 1), (0, 2)) if G > 2 else ((0, 1), (1, 1))  # (which native, how far on)
    rep = [(0, 2 * r + i, r, (r + k) % G) for r in range(G) for i, k in pairs]
    idx, tok = [], []
    for e in range(topo.num_experts):
        dst = [d for _, ee, _, d in rep if ee == e]
        for s_ in range(G):
            n = real[s_, e]
            first = np.floor(n / 2)
            idx += [(0, s_, e, e // 2), (0, s_, e, dst[0])]
            tok += [first, n - first]
    keep = np.array(tok) > 0
    return Plan(topo, Budget(window_us=np.inf), real[None], np.array(rep), np.array(idx)[keep], np.array(tok)[keep],
                solver="hand", solve_time_s=0.0).validate()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from probe_runtime import EPMoELayer, reference_moe, seeded_experts
    from probe_runtime.plain_ep import PlainEPLayer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)  # several processes share the cores
    torch.manual_seed(0)
    results = {}
    try:
        for name, topo, predicted, solver, window in _cases(world):
            if topo.num_ranks != world:
                continue
            E = topo.num_experts
            router = torch.randn(HIDDEN, E, generator=torch.Generator().manual_seed(1))
            router[:, 0] += 0.8  # a hot expert, as real routing has
            bank = seeded_experts(E, HIDDEN, FFN, seed=2)
            x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(100 + rank))
            # the real counts of every rank's tokens (what an oracle would plan for)
            xs = [torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(100 + r)) for r in range(world)]
            real = np.stack([np.bincount(torch.topk(torch.softmax(xr @ router, -1), TOP_K, -1)[1].reshape(-1).numpy(),
                                         minlength=E) for xr in xs]).astype(float)
            # planned for a serving-size batch with these proportions (48 tokens a rank would not pay for a copy)
            plan = _many_copies_plan(topo, real) if solver == "hand" else \
                solve(50 * (real if predicted is None else predicted), topo, Budget(window_us=window), solver=solver)
            layer = EPMoELayer(topo, router, bank, TOP_K)
            layer.load_replicas(plan, 0)
            for j, e in enumerate(layer.slot_expert.tolist()):  # copies are bit-identical to the source
                if e >= 0:
                    assert all(torch.equal(ws[j], wb[e]) for ws, wb in zip((layer.slot_bank.w1, layer.slot_bank.w3, layer.slot_bank.w2),
                                                                          (bank.w1, bank.w3, bank.w2), strict=True))
            y = layer.forward(x, DispatchRule(plan), 0)
            ref = reference_moe(x, router, bank, TOP_K)
            results[name] = (float((y - ref).abs().max()), plan.num_replicas, int((layer.slot_expert >= 0).sum()))
            if name == "static":  # the bench's baseline computes the same layer
                plain = PlainEPLayer(topo, router, bank, TOP_K).forward(x)
                results["plain"] = (float((plain - ref).abs().max()), 0, 0)
    finally:
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.array([results], dtype=object), allow_pickle=True)
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_distributed_moe_equals_the_reference(world, tmp_path):
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, start_method="spawn")
    per_rank = [np.load(tmp_path / f"rank{r}.npy", allow_pickle=True)[0] for r in range(world)]
    names = {n for n, topo, *_ in _cases(world) if topo.num_ranks == world} | {"plain"}
    replicas = 0
    for res in per_rank:
        assert set(res) == names
        for name, (err, _, _) in res.items():
            assert err < 1e-5, (name, err)
        replicas += sum(held for _, _, held in res.values())
    assert per_rank[0]["greedy"][1] > 0 and replicas > 0  # the plans did copy experts, and the copies ran


@pytest.mark.slow
def test_probe_run_completes_and_balances(tmp_path, capsys):
    import json

    from probe_runtime.launcher import main

    out = tmp_path / "metrics.json"
    assert main(["--nproc", "2", "--steps", "1", "--layers", "2", "--out", str(out)]) == 0
    recs = json.loads(out.read_text())["records"]
    by = {(r["policy"], r["layer"]): r for r in recs}
    assert set(by) == {("static", 0), ("static", 1), ("oracle", 0), ("oracle", 1)}
    for lay in (0, 1):  # the oracle plan spreads the skewed routing: processed tokens more even
        assert by[("oracle", lay)]["imbalance"] <= by[("static", lay)]["imbalance"] + 1e-9
        assert by[("static", lay)]["replicas"] == 0


@pytest.mark.slow
def test_probe_run_history_overlaps_the_next_layers_copies(tmp_path):
    import json

    from probe_runtime.launcher import main

    out = tmp_path / "metrics.json"
    assert main(["--nproc", "2", "--steps", "1", "--layers", "2", "--policy", "history", "--out", str(out)]) == 0
    recs = [r for r in json.loads(out.read_text())["records"] if r["policy"] == "history"]
    assert {r["layer"] for r in recs} == {0, 1}
    for r in recs:  # the wait for a layer's copies never exceeds how long they took
        assert 0.0 <= r["copy_exposed_s"] <= r["copy_s"] + 0.05


@pytest.mark.parametrize("argv", [["--model", "no-such-card"], ["--nproc", "0"], ["--nproc", "3"], ["--solver", "magic"],
                                  ["--budget-s", "-1"], ["--timeout-s", "nan"]])
def test_probe_run_refuses_bad_arguments_before_spawning(argv, capsys):
    from probe_runtime.launcher import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe-run: error:") and len(err.strip().splitlines()) == 1


def _failing_worker(rank: int, world: int, port: int, out_dir: str, mode: str) -> None:
    import datetime
    import time

    from probe_planner import PlanInvalidError
    from probe_runtime import EPMoELayer, seeded_experts

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=10))
    topo = make_topology(1, world, 2, slots=1, hidden=HIDDEN, ffn=FFN)
    E = topo.num_experts
    layer = EPMoELayer(topo, torch.randn(HIDDEN, E, generator=torch.Generator().manual_seed(1)),
                       seeded_experts(E, HIDDEN, FFN, seed=2), TOP_K)
    loads = np.full((world, E), 5.0)
    loads[:, 0] = 500.0
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(rank))
    outcome = []
    if mode == "bad-plan":
        moved = np.roll(np.arange(E) // 2, 1)  # a plan for another placement than the layer's
        other = make_topology(1, world, 2, slots=1, placement=moved, hidden=HIDDEN, ffn=FFN)
        from probe_planner import LoadsError
        from probe_runtime import EmbeddedPlanner

        for step in ("load", "forward", "slots", "bank", "planner"):
            try:
                if step == "load":
                    layer.load_replicas(solve(loads, other, Budget(window_us=np.inf)), 0)
                elif step == "forward":  # a rule whose replicas were never loaded
                    layer.forward(x, DispatchRule(solve(loads, topo, Budget(window_us=np.inf))), 0)
                elif step == "slots":  # made for 3 slots a rank; the layer has 1
                    layer.load_replicas(_many_copies_plan(make_topology(1, world, 2, slots=3, hidden=HIDDEN, ffn=FFN), loads), 0)
                elif step == "bank":  # experts of another shape than the pool's buffers
                    EPMoELayer(topo, layer.router, seeded_experts(E, HIDDEN, 2 * FFN, seed=2), TOP_K, pool=layer.pool)
                else:  # rank 0's solve fails: every rank gets its error, none waits for a broadcast
                    EmbeddedPlanner(topo, Budget(window_us=np.inf)).plan(np.full((world, E + 1), 1.0))
                outcome.append("ran")
            except PlanInvalidError:
                outcome.append("refused")
            except LoadsError:
                outcome.append("loads-error")
        dist.barrier()  # every rank refused before any collective: the group still works
        outcome.append("alive")
    else:  # killed: rank 1 vanishes; the others must get an error, not hang
        if rank == 1:
            os._exit(0)
        t0 = time.perf_counter()
        try:
            plan = solve(loads, topo, Budget(window_us=np.inf))
            layer.load_replicas(plan, 0)
            layer.forward(x, DispatchRule(plan), 0)
            outcome.append("ran")
        except Exception as exc:  # gloo reports the lost peer as a RuntimeError subclass
            outcome.append(type(exc).__name__)
        outcome.append(time.perf_counter() - t0)
    np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.array(outcome, dtype=object), allow_pickle=True)
    os._exit(0)  # the group may be broken: skip its teardown


@pytest.mark.slow
def test_a_bad_plan_is_refused_on_every_rank_before_any_collective(tmp_path):
    mp.start_processes(_failing_worker, args=(2, _free_port(), str(tmp_path), "bad-plan"), nprocs=2, start_method="spawn")
    for r in range(2):
        assert list(np.load(tmp_path / f"rank{r}.npy", allow_pickle=True)) == ["refused"] * 4 + ["loads-error", "alive"]


@pytest.mark.slow
def test_a_dead_rank_gives_an_error_not_a_hang(tmp_path):
    mp.start_processes(_failing_worker, args=(2, _free_port(), str(tmp_path), "killed"), nprocs=2, start_method="spawn")
    kind, waited = np.load(tmp_path / "rank0.npy", allow_pickle=True)
    assert kind != "ran" and waited < 30.0


def _stack_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from probe_runtime import EmbeddedPlanner, MoEStack, StackWeights
    from probe_runtime.predictor import LookaheadPredictor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)  # several processes share the cores
    results = {}
    try:
        topo = make_topology(1, world, 2, slots=2, hidden=HIDDEN, ffn=FFN, top_k=TOP_K)
        E = topo.num_experts
        bias = np.zeros((3, E))
        bias[:, 0], bias[1, 1] = 2.5, 2.0  # hot experts: the plans copy them
        weights = StackWeights.seeded(E, HIDDEN, FFN, bias, seed=5)
        good = {i: LookaheadPredictor(weights.routers[i], weights.biases[i], TOP_K) for i in (1, 2)}
        # badly wrong: another router and the opposite skew; the plans are for the wrong loads
        bad = {i: LookaheadPredictor(-weights.routers[i], -3 * weights.biases[i], TOP_K) for i in (1, 2)}
        cases = [(p, r, good) for p in ("static", "history", "coactivation", "lookahead", "oracle") for r in (False, True)]
        for policy, replicated, predictors in [*cases, ("lookahead-bad", False, bad)]:
            planner = EmbeddedPlanner(topo, Budget(window_us=np.inf), "greedy", replicated=replicated)
            stack = MoEStack(topo, weights, planner, policy.split("-")[0], chunk_bytes=256, predictors=predictors,
                             threaded=not replicated)
            errs, reps = [], 0
            for step in range(3):  # history plans from the batch before: loads that differ from the real ones
                xs = [torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(10 * step + r)) for r in range(world)]
                y, recs = stack.step(xs[rank])
                errs.append(float((y - weights.reference(xs[rank], TOP_K)).abs().max()))
                reps += sum(r.replicas for r in recs)
            stack.close()
            results[(policy, replicated)] = (max(errs), reps, planner.agreed)
    finally:
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.array([results], dtype=object), allow_pickle=True)
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_the_stack_equals_the_reference_under_every_policy(world, tmp_path):
    """Three layers on two buffers (layer 2 overwrites layer 0's replicas), next layers planned in a
    worker thread and copied during this one, chunked copies: the output is the single-process
    stack's for static, history, lookahead (also with a badly wrong predictor) and oracle plans,
    rank 0's plan broadcast or every rank planning."""
    mp.start_processes(_stack_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, start_method="spawn")
    for r in range(world):
        res = np.load(tmp_path / f"rank{r}.npy", allow_pickle=True)[0]
        assert len(res) == 11
        for (policy, _), (err, reps, agreed) in res.items():
            assert err < 1e-4, (policy, err)  # prediction changes speed, never results
            assert (reps == 0) == (policy == "static") and agreed


def _pause_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import time

    from probe_planner import PlanInvalidError
    from probe_runtime import EPMoELayer, SlotPool, seeded_experts

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)  # several processes share the cores
    out = []
    try:
        topo = make_topology(1, world, 2, slots=3, hidden=HIDDEN, ffn=FFN)
        E = topo.num_experts
        banks = [seeded_experts(E, HIDDEN, FFN, seed=s) for s in (2, 3, 4)]
        router = torch.randn(HIDDEN, E, generator=torch.Generator().manual_seed(1))
        pool = SlotPool(topo.slots, banks[0], buffers=2, chunk_bytes=64)
        layers = [EPMoELayer(topo, router, b, TOP_K, pool=pool, index=i) for i, b in enumerate(banks)]
        real = np.full((world, E), 10.0)
        plan = _many_copies_plan(topo, real)
        # paused right after the start: the copies make no progress until resumed
        pool.copier.pause()
        job = layers[0].start_replicas(plan, 0)
        time.sleep(0.3)
        out.append(job.done.is_set())
        pool.copier.resume()
        layers[0].finish_replicas(job)
        out.append(layers[0].stats.copy_paused_s > 0.1)
        layers[1].load_replicas(plan, 0)  # the other buffer: layer 0's replicas stay
        x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(rank))
        layers[0].forward(x, DispatchRule(plan), 0)
        out.append(bool((layers[0].slot_expert >= 0).any()))
        layers[2].load_replicas(plan, 0)  # layer 2 shares layer 0's buffer: its replicas are gone
        out.append(bool((layers[0].slot_expert >= 0).any()))
        try:
            layers[0].forward(x, DispatchRule(plan), 0)
            out.append("ran")
        except PlanInvalidError:
            out.append("refused")
        ok = all(torch.equal(ws[j], wb[e]) for j, e in enumerate(layers[2].slot_expert.tolist()) if e >= 0
                 for ws, wb in zip(layers[2].slot_bank.tensors, banks[2].tensors, strict=True))
        out.append(ok)
        dist.barrier()
    finally:
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.array(out, dtype=object), allow_pickle=True)
        dist.destroy_process_group()


@pytest.mark.slow
def test_paused_copies_wait_and_shared_buffers_refuse_overwritten_replicas(tmp_path):
    mp.start_processes(_pause_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for r in range(2):
        assert list(np.load(tmp_path / f"rank{r}.npy", allow_pickle=True)) == [False, True, True, False, "refused", True]


@pytest.mark.slow
def test_probe_run_lookahead_reports_its_predictions_and_records_the_loads(tmp_path):
    import json

    from probe_runtime.launcher import main

    out, rec = tmp_path / "metrics.json", tmp_path / "loads.npz"
    assert main(["--nproc", "2", "--steps", "2", "--layers", "2", "--policy", "lookahead", "history", "--distill-steps", "2",
                 "--distill-iters", "20", "--out", str(out), "--record", str(rec)]) == 0
    doc = json.loads(out.read_text())
    assert 0.0 < doc["recall"]["untrained"] <= 1.0 and 0.0 < doc["recall"]["trained"] <= 1.0
    by = {(r["policy"], r["step"], r["layer"]): r for r in doc["records"]}
    assert 0.0 < by[("lookahead", 0, 1)]["recall"] <= 1.0 and by[("lookahead", 0, 1)]["count_error"] >= 0.0
    assert by[("lookahead", 0, 0)]["recall"] is None  # layer 0 runs on history: no lookahead prediction
    from probe_planner import TraceError
    from probe_planner.traces import recorded_loads

    pred, real = recorded_loads(rec, "lookahead")
    assert real.shape == (2, 2, 2, 128) and pred.shape == (2, 2, 2, 128)
    assert np.isnan(recorded_loads(rec, "static")[0]).all() and (real.sum(axis=(2, 3)) == 2 * 128 * 8).all()
    assert np.isfinite(pred[:, 1]).all() and abs(pred[:, 1].sum() - real[:, 1].sum()) < 1e-6 * real[:, 1].sum()
    with pytest.raises(TraceError, match="oracle"):
        recorded_loads(rec, "oracle")
