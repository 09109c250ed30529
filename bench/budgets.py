"""Do budgets hold? Wall time of whole ``solve()`` calls (building, solving, validating) over their
budget, per solver, shape and budget; the max over repeats. The promise: wall <= 1.1 x budget + 1 ms.

    python bench/budgets.py [--repeats 2] [--layers 1 8] [--budgets 0.001 0.005 0.01 0.05 0.2 1]
                            [--solvers greedy lp-tokens lp-round milp auto] [--shapes 64x8 128x8 ...]

Loads are Zipf(1.0) (bench/greedy_speed.py's generator); ranks 8 per node, 200 us window.
"""

from __future__ import annotations

import argparse
import time

from greedy_speed import topology, zipf_loads
from probe_planner import Budget, solve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.05, 0.2, 1.0])
    ap.add_argument("--solvers", nargs="+", default=["static", "greedy", "lp-tokens", "lp-round", "milp", "auto"])
    ap.add_argument("--shapes", nargs="+", default=["64x8", "128x8", "128x16", "256x32", "256x64"])
    ap.add_argument("--window-us", type=float, default=200.0)
    args = ap.parse_args()
    print(f"max wall / budget over {args.repeats} repeats (promise: <= 1.1 + 1 ms / budget)")
    head = f"{'solver':<10} {'shape':>7} {'layers':>6} " + " ".join(f"{b * 1e3:>8g}ms" for b in args.budgets)
    print(head)
    worst = 0.0
    for shape in args.shapes:
        e, g = (int(v) for v in shape.split("x"))
        topo = topology(e, g)
        for layers in args.layers:
            loads = zipf_loads(layers, g, e, 1024, 8, 1.0, seed=7)
            for name in args.solvers:
                solve(loads, topo, Budget(window_us=args.window_us, time_limit_s=0.01), solver=name)  # compile once
                cells = []
                for b in args.budgets:
                    ratio = 0.0
                    for _ in range(args.repeats):
                        t = time.perf_counter()
                        solve(loads, topo, Budget(window_us=args.window_us, time_limit_s=b), solver=name)
                        ratio = max(ratio, (time.perf_counter() - t) / b)
                    over = ratio > 1.1 + 1e-3 / b
                    worst = max(worst, ratio / (1.1 + 1e-3 / b))
                    cells.append(f"{ratio:>9.2f}{'!' if over else ' '}")
                print(f"{name:<10} {shape:>7} {layers:>6} " + " ".join(cells), flush=True)
    print(f"worst wall / promise: {worst:.2f} ('!' marks a broken promise)")


if __name__ == "__main__":
    main()
