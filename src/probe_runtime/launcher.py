"""``probe-run``: spawn N processes (gloo on CPU, NCCL on GPUs), run a :class:`~probe_runtime.stack.MoEStack`
on skewed routing under a planning policy and the static baseline, print per-layer phase times and
imbalance, and write per-step metrics as JSON (one record per policy, step and layer: a metrics hook
a serving engine can scrape).

Plans are made for the model card's real shapes on the cluster card (what the planner would do on
that hardware) and executed with weights scaled down by ``--scale``, so the CPU runs the same
dispatch, copies and compute structure at a size it can hold. Rank 0 plans and broadcasts the plan
(:class:`~probe_runtime.planner.EmbeddedPlanner`), so every rank runs the same one whatever the solver.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from datetime import timedelta

import numpy as np

from .stack import POLICIES

SCALES = {"tiny": {"hidden": 64, "ffn": 32, "tokens": 128}, "small": {"hidden": 256, "ffn": 128, "tokens": 512}}


def _topology(model: str, cluster: str, nproc: int):
    from probe_planner import Topology

    return Topology.from_cards(model, cluster, ranks=nproc)


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


FIELDS = ("plan_s", "plan_exposed_s", "copy_s", "copy_exposed_s", "copy_paused_s", "attention_s", "route_s", "split_s",
          "dispatch_s", "compute_s", "combine_s", "layer_s")


def _device(rank: int, choice: str, nproc: int):
    import torch

    # NCCL takes one GPU per rank: `auto` uses the GPUs only when there is one for every rank
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available() and nproc <= torch.cuda.device_count()):
        dev = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


def _worker(rank: int, args: argparse.Namespace, port: int) -> None:
    import torch
    import torch.distributed as dist

    from probe_planner import Budget

    from .device import backend_for, to_numpy
    from .planner import EmbeddedPlanner
    from .predictor import LookaheadPredictor
    from .stack import MoEStack, StackWeights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.nproc))  # N processes share the cores
    device = _device(rank, args.device, args.nproc)
    timeout = timedelta(seconds=args.timeout_s)
    # a rank that dies makes the others fail within the timeout instead of hanging
    dist.init_process_group(backend_for(device), rank=rank, world_size=args.nproc, timeout=timeout)
    try:
        topo = _topology(args.model, args.cluster, args.nproc)
        sc = SCALES[args.scale]
        weights = StackWeights.seeded(topo.num_experts, sc["hidden"], sc["ffn"],
                                      _expert_bias(topo.num_experts, args.layers, args.trace_dir, seed=3))
        budget = Budget(window_us=args.window_us, time_limit_s=args.budget_s)
        records, recalls, loads = [], {}, {}

        def batch(step: int):
            return torch.randn(sc["tokens"], sc["hidden"], generator=torch.Generator().manual_seed(1000 * step + rank)).to(device)

        for policy in dict.fromkeys(("static", *args.policy)):
            planner = EmbeddedPlanner(topo, budget, args.solver, device=device)
            predictors = {i: LookaheadPredictor(weights.routers[i].to(device), weights.biases[i].to(device), topo.model.top_k)
                          for i in range(1, args.layers)} if policy == "lookahead" else None
            stack = MoEStack(topo, weights, planner, policy, device, timeout, predictors=predictors)
            # warm-up batches (kernels load, buffers fault in; lookahead: the predictors distil on
            # them, and their recall is measured on a held-out batch before and after): not recorded
            stack.collect = policy == "lookahead"
            stack.step(batch(-1))
            if policy == "lookahead":
                recalls["untrained"] = float(np.mean(list(stack.recall().values()) or [np.nan]))
                stack.forget()
                for w in range(args.distill_steps):
                    stack.step(batch(-2 - w))
                if args.distill_steps:
                    stack.distill(steps=args.distill_iters)
                    stack.forget()
                    stack.step(batch(-1))
                    recalls["trained"] = float(np.mean(list(stack.recall().values()) or [np.nan]))
                stack.forget()
            stack.collect = False
            pred, real = [], []
            for step in range(args.steps):
                _, recs = stack.step(batch(step))
                pred.append([r.predicted for r in recs])
                real.append([r.real for r in recs])
                for r in recs:
                    mine = torch.tensor([getattr(r, f) for f in FIELDS] + [r.recall, r.tokens_processed], dtype=torch.float64,
                                        device=device)
                    every = [torch.zeros_like(mine) for _ in range(args.nproc)]
                    dist.all_gather(every, mine)
                    m = to_numpy(torch.stack(every))
                    proc = m[:, -1]
                    rec = {"policy": policy, "step": step, "layer": r.layer, "replicas": r.replicas,
                           "imbalance": float(proc.max() / proc.mean()) if proc.mean() > 0 else 1.0,
                           "tokens_per_rank": proc.tolist(), "recall": float(np.mean(m[:, -2])), "count_error": r.count_error,
                           "predicted_by": r.predicted_by}
                    rec.update({f: float(m[:, i].max()) for i, f in enumerate(FIELDS)})  # a layer lasts as long as its slowest rank
                    records.append(rec)
            loads[policy] = (np.array(pred), np.array(real))
            stack.close()
        if rank == 0:
            _report(records, recalls, args, str(device))
            if args.record:
                np.savez_compressed(args.record, **{f"{p}_{k}": v for p, (pr, re) in loads.items()
                                                    for k, v in (("predicted", pr), ("real", re))},
                                    note="per policy: predicted (planned-for; NaN = static) and real [steps, layers, G, E] loads")
                print(f"loads recorded to {args.record}")
    finally:
        dist.destroy_process_group()


def _mean(rs: list[dict], f: str) -> float:
    v = [r[f] for r in rs if not math.isnan(r[f])]
    return float(np.mean(v)) if v else math.nan


def _hidden(rs: list[dict], total: str, exposed: str) -> str:
    """The share of ``total`` time nothing waited for ("-" where the policy planned or copied nothing)."""
    t = sum(r[total] for r in rs)
    e = sum(min(r[exposed], r[total]) for r in rs)
    return f"{100 * (1 - e / t):10.0f}%" if t > 1e-6 and any(r["replicas"] for r in rs) else f"{'-':>11}"


def _report(records: list[dict], recalls: dict, args: argparse.Namespace, device: str) -> None:
    print(f"probe-run: {args.nproc} processes on {device}, {args.model} ({args.scale} weights), {args.layers} layers x "
          f"{args.steps} steps, solver {args.solver}, window {args.window_us:g} us; ms per layer, max over ranks, "
          "mean over steps")
    cols = ("plan", "plan exp", "copy", "copy exp", "attn", "route", "split", "dispatch", "compute", "combine", "layer")
    keys = ("plan_s", "plan_exposed_s", "copy_s", "copy_exposed_s", "attention_s", "route_s", "split_s", "dispatch_s",
            "compute_s", "combine_s", "layer_s")
    print(f"{'policy':<12} {'layer':>5} " + " ".join(f"{c:>8}" for c in cols) + f" {'imbalance':>9} {'replicas':>8} {'recall':>6} "
          f"{'cnt err':>7}")
    policies = list(dict.fromkeys(r["policy"] for r in records))
    for pol in policies:
        for lay in sorted({r["layer"] for r in records if r["policy"] == pol}):
            rs = [r for r in records if r["policy"] == pol and r["layer"] == lay]
            print(f"{pol:<12} {lay:>5} " + " ".join(f"{_mean(rs, k) * 1e3:8.2f}" for k in keys)
                  + f" {_mean(rs, 'imbalance'):9.3f} {_mean(rs, 'replicas'):8.1f} {_mean(rs, 'recall'):6.3f} {_mean(rs, 'count_error'):7.3f}")
    print("\nper policy (mean over layers and steps; count error over the layers the policy's own prediction planned):")
    print(f"{'policy':<12} {'imbalance':>9} {'layer ms':>9} {'recall':>6} {'cnt err':>7} {'plan hidden':>11} {'copy hidden':>11}")
    for pol in policies:
        rs = [r for r in records if r["policy"] == pol]

        own = [r for r in rs if r["predicted_by"] == pol] or rs  # lookahead/coactivation: not layer 0's history fallback
        print(f"{pol:<12} {_mean(rs, 'imbalance'):9.3f} {_mean(rs, 'layer_s') * 1e3:9.2f} {_mean(rs, 'recall'):6.3f} "
              f"{_mean(own, 'count_error'):7.3f} {_hidden(rs, 'plan_s', 'plan_exposed_s')} {_hidden(rs, 'copy_s', 'copy_exposed_s')}")
    if "untrained" in recalls:
        print(f"lookahead predictor top-k recall on a held-out batch: {recalls['untrained']:.3f} untrained (cloned routers)"
              + (f", {recalls['trained']:.3f} after distilling on {args.distill_steps} other batches" if "trained" in recalls else ""))
    print("oracle plans need the layer's own counts, so their planning and copies are exposed; the others plan "
          "layer l+1 while layer l runs. CPU times: gloo and PyTorch on shared cores, not a GPU's.")
    if args.out:
        plain = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]
        with open(args.out, "w") as fh:  # strict JSON: no prediction is null, not NaN
            json.dump({"args": vars(args), "recall": {k: None if math.isnan(v) else v for k, v in recalls.items()},
                       "records": plain}, fh, default=float, allow_nan=False)
        print(f"metrics written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="probe-run", description="Run expert-parallel MoE layers under a plan (gloo on CPU, NCCL on GPU).")
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--model", default="qwen3-30b-a3b", help="model card name or .toml path")
    ap.add_argument("--cluster", default="h100x8", help="cluster card the plans are made for")
    ap.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--solver", default="greedy")
    ap.add_argument("--policy", nargs="+", choices=POLICIES, default=["oracle"],
                    help="policies to run after the static baseline")
    ap.add_argument("--distill-steps", type=int, default=16, help="lookahead: warm-up batches the predictors distil on")
    ap.add_argument("--distill-iters", type=int, default=300, help="lookahead: optimiser steps over those batches")
    ap.add_argument("--record", default=None, help="write the planned-for and real loads per policy to this .npz")
    ap.add_argument("--window-us", type=float, default=300.0)
    ap.add_argument("--budget-s", type=float, default=0.05, help="the planner's time budget per layer")
    ap.add_argument("--trace-dir", default=None)
    ap.add_argument("--out", default=None, help="write per-step metrics to this JSON file")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="cuda: NCCL, one GPU per rank; cpu: gloo; auto: cuda when every rank has a GPU")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="collectives fail after this long (a dead rank)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from probe_planner import Budget, PlannerError
    from probe_planner.solvers import get_solver

    args = build_parser().parse_args(argv)
    try:  # everything a rank could refuse, refused here before spawning
        if args.nproc < 1 or args.layers < 1 or args.steps < 1 or args.distill_steps < 0 or args.distill_iters < 1:
            raise PlannerError("--nproc, --layers, --steps and --distill-iters must be >= 1, --distill-steps >= 0")
        topo = _topology(args.model, args.cluster, args.nproc)
        if topo.num_experts % args.nproc:
            raise PlannerError(f"--nproc {args.nproc} must divide the model's {topo.num_experts} experts")
        get_solver(args.solver)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available() or args.nproc > torch.cuda.device_count():
                raise PlannerError(f"--device cuda needs a GPU per rank: {args.nproc} ranks, "
                                   f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPUs here")
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
