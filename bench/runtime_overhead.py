"""What the plan machinery costs: the same MoE layers with a static plan through the runtime
(:class:`probe_runtime.EPMoELayer`: dispatch rule, slot pool, copy thread) and through a plain
expert-parallel layer with the same collectives and none of it (:class:`probe_runtime.plain_ep.PlainEPLayer`),
in the same processes, interleaved A/B. Reports the median step time of each, their ratio (target
<= 1.10 at --scale small) and the share of the runtime's layer time spent turning the plan into
dispatch splits (target <= 5%; the rule is built anew for every forward, as MoEStack does).

    python bench/runtime_overhead.py [--nproc 2] [--scale small] [--layers 4] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from probe_planner import Budget, DispatchRule, solve
from probe_runtime import EPMoELayer
from probe_runtime.launcher import SCALES, _expert_bias, _topology
from probe_runtime.plain_ep import PlainEPLayer
from probe_runtime.stack import StackWeights


def _worker(rank: int, args: argparse.Namespace, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.nproc))
    dist.init_process_group("gloo", rank=rank, world_size=args.nproc)
    topo = _topology(args.model, args.cluster, args.nproc)
    sc = SCALES[args.scale]
    w = StackWeights.seeded(topo.num_experts, sc["hidden"], sc["ffn"], _expert_bias(topo.num_experts, args.layers, None, 3))
    k = topo.model.top_k
    plain = [PlainEPLayer(topo, w.routers[i], w.banks[i], k) for i in range(args.layers)]
    ours = [EPMoELayer(topo, w.routers[i], w.banks[i], k, index=i) for i in range(args.layers)]
    plan = solve(np.zeros(topo.native.shape), topo, Budget(window_us=0.0), solver="static")
    for layer in ours:
        layer.load_replicas(plan, 0)
    times = {"plain": [], "runtime": []}
    split_share, diff = [], 0.0
    for rep in range(args.repeats + 2):  # two warm-up rounds
        x = torch.randn(sc["tokens"], sc["hidden"], generator=torch.Generator().manual_seed(rep * 100 + rank))
        outs = {}
        for name in (("plain", "runtime") if rep % 2 else ("runtime", "plain")):
            dist.barrier()
            t0 = time.perf_counter()
            y, split = x, 0.0
            for i in range(args.layers):
                if name == "plain":
                    y = y + plain[i].forward(y, w.biases[i])
                else:
                    y = y + ours[i].forward(y, DispatchRule(plan), 0, w.biases[i])  # a new rule per layer, as a stack makes
                    split += ours[i].stats.split_s
            dt = torch.tensor([time.perf_counter() - t0, split], dtype=torch.float64)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
            outs[name] = y
            if rep >= 2:
                times[name].append(float(dt[0]))
                if name == "runtime":
                    split_share.append(float(dt[1] / dt[0]))
        diff = max(diff, float((outs["plain"] - outs["runtime"]).abs().max()))
    if rank == 0:
        p, r = np.median(times["plain"]), np.median(times["runtime"])
        print(f"{args.nproc} gloo processes, {args.model} ({args.scale}: hidden {sc['hidden']}, ffn {sc['ffn']}, "
              f"{sc['tokens']} tokens/rank), {args.layers} MoE layers, {args.repeats} interleaved repeats")
        print(f"plain EP layer  median {p * 1e3:8.2f} ms / step  (min {min(times['plain']) * 1e3:.2f})")
        print(f"runtime, static median {r * 1e3:8.2f} ms / step  (min {min(times['runtime']) * 1e3:.2f})")
        print(f"ratio runtime / plain: {r / p:.3f} (target <= 1.10); dispatch split {100 * np.median(split_share):.1f}% "
              f"of the runtime's layer time (target <= 5%); max |output difference| {diff:.1e}")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="qwen3-30b-a3b")
    ap.add_argument("--cluster", default="h100x8")
    ap.add_argument("--scale", choices=sorted(SCALES), default="small")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(args, port), nprocs=args.nproc, start_method="spawn")


if __name__ == "__main__":
    main()
