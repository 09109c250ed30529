"""How far the fast solvers are from the proven optimum, and how long the proof takes.

Per layer: the MILP (HiGHS) is run to optimality or the time limit; then static, greedy, greedy's
thorough setting, lp-round and auto (with a short budget) are scored as makespan / MILP makespan
(the optimum when the status is ``optimal``). Also prints the LP bound over that makespan (how
loose the relaxation is) and each solver's wall time. Zipf 64x8 layers by default, then the first
layers of the real traces when ``--trace-dir`` holds them.

    python bench/optimality_gap.py [--zipf-layers 8] [--trace-layers 2] [--time-limit-s 60]
        [--auto-budget-s 0.05] [--trace-dir ../shared/traces]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from probe_planner import Budget, solve
from probe_planner.errors import TraceError
from probe_planner.solvers.greedy import THOROUGH
from solver_quality import synthetic_topology, trace_cases, zipf

FAST = [("static", "static", {}), ("greedy", "greedy", {}), ("thorough", "greedy", THOROUGH),
        ("lp-round", "lp-round", {}), ("auto", "auto", {})]


def cases(args):
    topo = synthetic_topology(64, 8)
    for seed in range(args.zipf_layers):
        yield f"zipf 64x8 #{seed}", topo, zipf(1, 8, 64, seed=1000 + seed)[0]
    if args.trace_layers <= 0:
        return
    try:
        for name, topo, loads in trace_cases(args.trace_layers, args.trace_dir):
            for lay, layer in enumerate(loads):
                yield f"{name} L{lay}", topo, layer
    except TraceError as exc:
        print(f"real traces skipped: {exc}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zipf-layers", type=int, default=8)
    ap.add_argument("--trace-layers", type=int, default=2)
    ap.add_argument("--time-limit-s", type=float, default=60.0)
    ap.add_argument("--auto-budget-s", type=float, default=0.05)
    ap.add_argument("--window-us", type=float, default=200.0)
    ap.add_argument("--trace-dir", default=None)
    args = ap.parse_args()
    names = [n for n, _, _ in FAST]
    print(f"makespan / MILP makespan (window {args.window_us:g} us; MILP limit {args.time_limit_s:g} s; "
          f"auto budget {args.auto_budget_s:g} s); wall times in ms")
    print(f"{'case':<28} {'milp':>9} {'proof s':>8} {'LP/milp':>8} " + " ".join(f"{n:>9}" for n in names)
          + "  " + " ".join(f"{n + ' ms':>11}" for n in names[1:]))
    ratios = {n: [] for n in names}
    solve(np.ones((8, 64)), synthetic_topology(64, 8), Budget(window_us=args.window_us), solver="greedy")  # compile
    for label, topo, loads in cases(args):
        t = time.perf_counter()
        exact = solve(loads, topo, Budget(window_us=args.window_us, time_limit_s=args.time_limit_s), solver="milp")
        proof = time.perf_counter() - t
        lp = solve(loads, topo, Budget(window_us=args.window_us, time_limit_s=args.time_limit_s), solver="lp-round")
        row, times = [], []
        for name, solver, opts in FAST:
            limit = args.auto_budget_s if name == "auto" else args.time_limit_s
            t = time.perf_counter()
            plan = solve(loads, topo, Budget(window_us=args.window_us, time_limit_s=limit), solver=solver, **opts)
            times.append((time.perf_counter() - t) * 1e3)
            row.append(plan.makespan_us / exact.makespan_us)
            ratios[name].append(row[-1])
        print(f"{label:<28} {exact.status:>9} {proof:8.1f} {lp.bound_us / exact.makespan_us:8.3f} "
              + " ".join(f"{r:9.3f}" for r in row) + "  " + " ".join(f"{t:11.2f}" for t in times[1:]))
    print(f"{'mean':<28} {'':>9} {'':>8} {'':>8} " + " ".join(f"{np.mean(ratios[n]):9.3f}" for n in names))
    print(f"{'max':<28} {'':>9} {'':>8} {'':>8} " + " ".join(f"{np.max(ratios[n]):9.3f}" for n in names))


if __name__ == "__main__":
    main()
