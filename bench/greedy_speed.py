"""Greedy solver speed and quality.

Prints the median µs per layer of the compiled greedy kernel for 64x8, 128x8, 256x32 and 256x64
(experts x ranks) on Zipf loads, with the static baseline timed in the same process; the front
door's own cost: one single-layer ``solve()`` call, call to return (building, solving and
validating), beside the kernel alone on that layer and their ratio; then the imbalance ratio static -> greedy on the real
Qwen3-30B-A3B prefill trace (skipped when the traces are absent).

    python bench/greedy_speed.py [--layers 16] [--repeats 30] [--trace-dir ../shared/traces]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from probe_planner import Budget, ModelShape, Topology, solve
from probe_planner.errors import TraceError
from probe_planner.problem import Problem
from probe_planner.solvers.greedy import (
    THOROUGH,  # greedy's most thorough settings
    run_kernel,
)
from probe_planner.traces import qwen3_prefill_loads

SHAPES = [(64, 8), (128, 8), (256, 32), (256, 64)]
FAST = {"n_dest": 1, "n_exp": 2}


def zipf_loads(layers: int, g: int, e: int, tokens_per_rank: int, top_k: int, s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((layers, g, e))
    for lay in range(layers):
        pop = 1.0 / np.arange(1, e + 1) ** s
        pop = pop[rng.permutation(e)]
        for r in range(g):
            p = rng.dirichlet(pop / pop.sum() * 100.0)
            out[lay, r] = rng.multinomial(tokens_per_rank * top_k, p)
    return out


def topology(e: int, g: int) -> Topology:
    model = ModelShape(name=f"synthetic-{e}", num_experts=e, top_k=8, hidden=4096, expert_ffn=1536)
    return Topology(num_ranks=g, ranks_per_node=min(g, 8), intra_node_bw=450e9, inter_node_bw=50e9,
                    peak_flops=989.5e12, hbm_bw=3.35e12, model=model, slots=3, name=f"h100x{g}")


def time_kernel(prob: Problem, max_moves: int | None, repeats: int, **options) -> float:
    moves = prob.topology.num_ranks * prob.topology.slots if max_moves is None else max_moves
    run_kernel(prob, moves, **options)  # compile / load from cache
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        run_kernel(prob, moves, **options)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) / prob.loads.shape[0] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--window-us", type=float, default=200.0)
    ap.add_argument("--trace-dir", default=None)
    args = ap.parse_args()

    print(f"greedy = defaults; thorough = {THOROUGH}; fast = {FAST}. us/layer: median over repeats of the compiled kernel; "
          "1-layer: one layer's kernel and whole solve() call (validation included), median us, and their ratio; "
          "makespan: us per layer, (bound) = lower bound")
    print(f"{'E x G':>8} {'static':>7} {'greedy':>7} {'thorough':>9} {'fast':>6} {'1-layer kernel / solve()':>25}   "
          f"{'makespan static / greedy / thorough / fast (bound)':>52}   {'imbalance static->greedy':>24}")
    for e, g in SHAPES:
        topo = topology(e, g)
        budget = Budget(window_us=args.window_us, time_limit_s=10.0)
        loads = zipf_loads(args.layers, g, e, 1024, 8, 1.0, seed=e * 1000 + g)
        prob = Problem.build(loads, topo, budget)
        t_static = time_kernel(prob, 0, args.repeats)
        t_greedy = time_kernel(prob, None, args.repeats)
        t_thorough = time_kernel(prob, None, args.repeats, **THOROUGH)
        t_fast = time_kernel(prob, None, args.repeats, **FAST)
        plans = {name: solve(loads, topo, budget, "greedy", **opts) for name, opts in
                 (("greedy", {}), ("thorough", THOROUGH), ("fast", FAST))}
        p = plans["greedy"]
        one = loads[:1]
        t_one = time_kernel(Problem.build(one, topo, budget), None, args.repeats)
        t_call = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            solve(one, topo, budget, "greedy")
            t_call.append(time.perf_counter() - t)
        t_call = float(np.median(t_call)) * 1e6
        st = solve(loads, topo, budget, "static")
        per = [x.makespan_us / args.layers for x in (st, plans["greedy"], plans["thorough"], plans["fast"])]
        print(f"{e:>4}x{g:<3} {t_static:7.1f} {t_greedy:7.1f} {t_thorough:9.1f} {t_fast:6.1f} "
              f"{t_one:9.1f} / {t_call:6.1f} ({t_call / t_one:4.2f}x)   {per[0]:9.1f} / {per[1]:8.1f} / {per[2]:8.1f} / {per[3]:8.1f} "
              f"({p.lower_bound_us / args.layers:7.1f})   {st.imbalance_ratio:13.3f} -> {p.imbalance_ratio:6.3f}")

    try:
        loads = qwen3_prefill_loads(8, args.trace_dir)
    except TraceError as exc:
        print(f"Qwen3 prefill trace skipped: {exc}")
        return
    topo = Topology.from_cards(model="qwen3-30b-a3b", cluster="h100x8")
    budget = Budget(window_us=args.window_us, time_limit_s=10.0)
    st = solve(loads, topo, budget, "static")
    gr = solve(loads, topo, budget, "greedy")
    print(f"Qwen3-30B-A3B ShareGPT prefill (48 layers, 2050 tokens, h100x8, window {args.window_us:g} us): "
          f"imbalance {st.imbalance_ratio:.3f} -> {gr.imbalance_ratio:.3f}, "
          f"makespan {st.makespan_us:.0f} -> {gr.makespan_us:.0f} us ({st.makespan_us / gr.makespan_us:.2f}x), "
          f"lower bound {gr.lower_bound_us:.0f} us, {gr.num_replicas} replicas, "
          f"greedy {gr.solve_time_s / 48 * 1e6:.1f} us/layer")


if __name__ == "__main__":
    main()
