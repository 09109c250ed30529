"""How fast the simulator sweeps: steps x 48 layers x 8 ranks of Qwen3 prefill loads with the greedy
policy on 90%-recall predictions (every plan solved and timed, none replayed), wall time and the
extrapolation to 1000 steps (target: under 2 minutes).

    python bench/simulate_speed.py [--steps 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from probe_planner.harness.scenarios import build
from probe_planner.simulate import Policy, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    sc = build("prefill", "h100x8", 4, prefill_scale=4)
    loads = np.concatenate([sc.loads] * (args.steps // sc.loads.shape[0] + 1))[:args.steps]
    pol = [Policy("greedy-lookahead90", "per-batch", prediction="lookahead", recall=0.9)]
    simulate(loads[:1], sc.topology, 300.0, pol, budget_s=0.0003)  # load the kernels
    t0 = time.perf_counter()
    simulate(loads, sc.topology, 300.0, pol, budget_s=0.0003)
    dt = time.perf_counter() - t0
    print(f"{args.steps} steps x {loads.shape[1]} layers x {loads.shape[2]} ranks, greedy on lookahead: {dt:.1f} s "
          f"({dt / (args.steps * loads.shape[1]) * 1e3:.2f} ms per layer-step); 1000 steps: about {dt * 1000 / args.steps:.0f} s")


if __name__ == "__main__":
    main()
