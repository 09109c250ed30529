"""``probe-run``: spawn N processes (gloo on CPU), run a stack of expert-parallel MoE layers on skewed
routing under a planning policy and the static baseline, print per-layer phase times and imbalance,
and write per-step metrics as JSON.

Plans are made for the model card's real shapes on the cluster card (what the planner would do on
that hardware) and executed with weights scaled down by ``--scale``, so the CPU runs the same
dispatch, copies and compute structure at a size it can hold. Rank 0 plans and broadcasts the plan,
so every rank runs the same one whatever the solver.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import timedelta

import numpy as np

SCALES = {"tiny": {"hidden": 64, "ffn": 32, "tokens": 128}, "small": {"hidden": 256, "ffn": 128, "tokens": 512}}
POLICIES = ("static", "oracle", "history")


def _topology(model: str, cluster: str, nproc: int):
    from probe_planner import Topology
    from probe_planner.cards import load_cluster_card, load_model_card

    fields = load_cluster_card(cluster)
    fields.update(num_ranks=nproc, ranks_per_node=min(nproc, fields["ranks_per_node"]))
    if nproc % fields["ranks_per_node"]:
        fields["ranks_per_node"] = nproc
    return Topology(model=load_model_card(model), **fields)


def _expert_bias(num_experts: int, layers: int, trace_dir: str | None, seed: int) -> np.ndarray:
    """``[layers, E]`` router bias: log expert frequencies of the real Qwen3 prefill trace when it is
    there and the model has its 128 experts, else of a shuffled Zipf(1.0)."""
    from probe_planner.errors import TraceError
    from probe_planner.traces import qwen3_prefill_loads

    rng = np.random.default_rng(seed)
    if num_experts == 128:
        try:
            freq = qwen3_prefill_loads(1, trace_dir).sum(axis=1)[:layers]  # [layers, 128]
            if freq.shape[0] == layers:
                return np.log((freq + 1.0) / (freq + 1.0).mean(axis=1, keepdims=True))
        except TraceError:
            pass
    out = np.zeros((layers, num_experts))
    for lay in range(layers):
        pop = 1.0 / np.arange(1, num_experts + 1)
        out[lay] = np.log(pop[rng.permutation(num_experts)] / pop.mean())
    return out


def _plan(policy: str, counts: np.ndarray | None, topo, window_us: float, solver: str, budget_s: float):
    """Rank 0: the plan for ``counts`` ([G, E]) under ``policy``, its solve time, as plain arrays."""
    from probe_planner import Budget, solve

    budget = Budget(window_us=window_us, time_limit_s=budget_s)
    loads = counts if counts is not None else np.zeros(topo.native.shape)
    t0 = time.perf_counter()
    plan = solve(loads, topo, budget, solver="static" if policy == "static" or counts is None else solver)
    return (plan.replicas, plan.route_idx, plan.route_tok, plan.loads, plan.solver), time.perf_counter() - t0


def _worker(rank: int, args: argparse.Namespace, port: int) -> None:
    import torch
    import torch.distributed as dist

    from probe_planner import Budget, DispatchRule, Plan

    from .moe_layer import EPMoELayer, seeded_experts

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank that dies makes the others fail within the timeout instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=args.nproc, timeout=timedelta(seconds=args.timeout_s))
    try:
        topo = _topology(args.model, args.cluster, args.nproc)
        sc = SCALES[args.scale]
        E, k = topo.num_experts, topo.model.top_k
        bias = _expert_bias(E, args.layers, args.trace_dir, seed=3)
        layers = []
        for lay in range(args.layers):
            router = torch.randn(sc["hidden"], E, generator=torch.Generator().manual_seed(10 + lay)) * 0.02
            bank = seeded_experts(E, sc["hidden"], sc["ffn"], seed=100 + lay)
            layers.append((EPMoELayer(topo, router, bank, k, timedelta(seconds=args.timeout_s)),
                           torch.as_tensor(bias[lay], dtype=torch.float32)))
        budget = Budget(window_us=args.window_us)
        records = []
        history: dict[int, np.ndarray] = {}
        def planned(policy: str, counts: np.ndarray | None):
            box = [None, 0.0]
            if rank == 0:
                box = list(_plan(policy, counts, topo, args.window_us, args.solver, args.budget_s))
            dist.broadcast_object_list(box, src=0)  # every rank runs rank 0's plan
            (rep, idx, tok, loads, solver), plan_s = box
            return Plan(topo, budget, loads, rep, idx, tok, solver=solver, solve_time_s=plan_s)

        for policy in ("static", args.policy) if args.policy != "static" else ("static",):
            for step in range(-1, args.steps):  # step -1 warms up (kernels load, buffers fault in): not recorded
                x = torch.randn(sc["tokens"], sc["hidden"], generator=torch.Generator().manual_seed(1000 * step + rank))
                plans, jobs = {}, {}
                for lay, (layer, b) in enumerate(layers):
                    # the batch's real counts before the layer: what an oracle plans for
                    local = torch.bincount(torch.topk(torch.softmax(x @ layer.router + b, -1), k, -1)[1].reshape(-1),
                                           minlength=E)
                    every = [torch.zeros_like(local) for _ in range(args.nproc)]
                    dist.all_gather(every, local)
                    now = torch.stack(every).numpy().astype(np.float64)
                    if lay not in plans:  # oracle (needs this layer's counts), or the first layer: nothing to overlap
                        plans[lay] = planned(policy, {"static": None, "oracle": now, "history": history.get(lay)}[policy])
                        jobs[lay] = layer.start_replicas(plans[lay], 0)
                    if policy != "oracle" and lay + 1 < len(layers):  # known ahead: copy layer l+1's replicas now
                        plans[lay + 1] = planned(policy, None if policy == "static" else history.get(lay + 1))
                        jobs[lay + 1] = layers[lay + 1][0].start_replicas(plans[lay + 1], 0)
                    layer.finish_replicas(jobs[lay])  # waits only for what this layer's compute did not cover
                    plan = plans[lay]
                    y = layer.forward(x, DispatchRule(plan), 0, bias=b)
                    history[lay] = layer.stats.counts
                    if step < 0:
                        x = x + y
                        continue
                    st = layer.stats
                    mine = torch.tensor([st.copy_s, st.copy_exposed_s, st.route_s, st.dispatch_s, st.compute_s,
                                         st.combine_s, st.tokens_processed], dtype=torch.float64)
                    allv = [torch.zeros_like(mine) for _ in range(args.nproc)]
                    dist.all_gather(allv, mine)
                    m = torch.stack(allv).numpy()
                    proc = m[:, 6]
                    records.append({"policy": policy, "step": step, "layer": lay, "plan_s": plan.solve_time_s,
                                    "copy_s": m[:, 0].max(), "copy_exposed_s": m[:, 1].max(), "route_s": m[:, 2].max(),
                                    "dispatch_s": m[:, 3].max(), "compute_s": m[:, 4].max(), "combine_s": m[:, 5].max(),
                                    "imbalance": float(proc.max() / proc.mean()) if proc.mean() > 0 else 1.0,
                                    "replicas": int(plan.num_replicas)})
                    x = x + y
        if rank == 0:
            _report(records, args)
    finally:
        dist.destroy_process_group()


def _report(records: list[dict], args: argparse.Namespace) -> None:
    print(f"probe-run: {args.nproc} gloo processes, {args.model} ({args.scale} weights), {args.layers} layers x "
          f"{args.steps} steps, solver {args.solver}, window {args.window_us:g} us; times are ms per layer, "
          "max over ranks, mean over steps (CPU: compute and gloo all-to-alls, not GPU times)")
    print(f"{'policy':<8} {'layer':>5} {'plan':>7} {'copy':>7} {'exposed':>7} {'route':>7} {'dispatch':>8} {'compute':>8} "
          f"{'combine':>8} {'imbalance':>9} {'replicas':>8}")
    keys = sorted({(r["policy"], r["layer"]) for r in records}, key=lambda t: (POLICIES.index(t[0]), t[1]))
    for pol, lay in keys:
        rs = [r for r in records if r["policy"] == pol and r["layer"] == lay]
        mean = {f: float(np.mean([r[f] for r in rs])) for f in rs[0] if f not in ("policy", "step", "layer")}
        print(f"{pol:<8} {lay:>5} {mean['plan_s'] * 1e3:7.2f} {mean['copy_s'] * 1e3:7.2f} {mean['copy_exposed_s'] * 1e3:7.2f} "
              f"{mean['route_s'] * 1e3:7.2f} "
              f"{mean['dispatch_s'] * 1e3:8.2f} {mean['compute_s'] * 1e3:8.2f} {mean['combine_s'] * 1e3:8.2f} "
              f"{mean['imbalance']:9.3f} {mean['replicas']:8.1f}")
    copy = sum(r["copy_s"] for r in records)
    exposed = sum(min(r["copy_exposed_s"], r["copy_s"]) for r in records)
    print(f"copy time hidden behind compute: {100 * (1 - exposed / copy) if copy > 0 else 100:.0f}% "
          "(layer l+1's copies run during layer l when its plan is known ahead: history, static; oracle plans "
          "need the layer's own counts, so its copies are exposed)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "records": records}, fh, default=float)
        print(f"metrics written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="probe-run", description="Run expert-parallel MoE layers under a plan (gloo on CPU).")
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--model", default="qwen3-30b-a3b", help="model card name or .toml path")
    ap.add_argument("--cluster", default="h100x8", help="cluster card the plans are made for")
    ap.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--solver", default="greedy")
    ap.add_argument("--policy", choices=POLICIES, default="oracle")
    ap.add_argument("--window-us", type=float, default=300.0)
    ap.add_argument("--budget-s", type=float, default=0.05, help="the planner's time budget per layer")
    ap.add_argument("--trace-dir", default=None)
    ap.add_argument("--out", default=None, help="write per-step metrics to this JSON file")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="collectives fail after this long (a dead rank)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from probe_planner import Budget, PlannerError
    from probe_planner.solvers import get_solver

    args = build_parser().parse_args(argv)
    try:  # everything a rank could refuse, refused here before spawning
        if args.nproc < 1 or args.layers < 1 or args.steps < 1:
            raise PlannerError("--nproc, --layers and --steps must be >= 1")
        topo = _topology(args.model, args.cluster, args.nproc)
        if topo.num_experts % args.nproc:
            raise PlannerError(f"--nproc {args.nproc} must divide the model's {topo.num_experts} experts")
        get_solver(args.solver)
        Budget(window_us=args.window_us, time_limit_s=args.budget_s)
        Budget(window_us=0.0, time_limit_s=args.timeout_s)
    except PlannerError as exc:
        print(f"probe-run: error: {exc}", file=sys.stderr)
        return 2
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(args, port), nprocs=args.nproc, start_method="spawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
