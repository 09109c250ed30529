"""How fast the simulator sweeps: steps x 48 layers x 8 ranks of Qwen3 prefill loads with the greedy
policy on 90%-recall predictions (every plan solved and timed, none replayed), wall time and the
extrapolation to 1000 steps (target: under 2 minutes). ``--place``: the place policy instead (greedy
on 90%-recall predictions on top of ``place()``, re-placed every ``--interval`` steps from as many,
each ``place()`` limited to ``--place-time-s``).

    python bench/simulate_speed.py [--steps 100] [--place --interval 50 --place-time-s 1]
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
    ap.add_argument("--place", action="store_true", help="time the place policy instead of per-batch greedy")
    ap.add_argument("--interval", type=int, default=50, help="--place: re-place every this many steps, from as many")
    ap.add_argument("--place-time-s", type=float, default=1.0)
    args = ap.parse_args()
    sc = build("prefill", "h100x8", 4, prefill_scale=4)
    loads = np.concatenate([sc.loads] * (args.steps // sc.loads.shape[0] + 1))[:args.steps]
    if args.place:
        pol = [Policy("place-greedy-lookahead90", "place", prediction="lookahead", recall=0.9, interval=args.interval,
                      history=args.interval, place_time_s=args.place_time_s)]
    else:
        pol = [Policy("greedy-lookahead90", "per-batch", prediction="lookahead", recall=0.9)]
    simulate(loads[:1], sc.topology, 300.0, pol, budget_s=0.0003)  # load the kernels
    t0 = time.perf_counter()
    simulate(loads, sc.topology, 300.0, pol, budget_s=0.0003)
    dt = time.perf_counter() - t0
    print(f"{args.steps} steps x {loads.shape[1]} layers x {loads.shape[2]} ranks, {pol[0].name}: {dt:.1f} s "
          f"({dt / (args.steps * loads.shape[1]) * 1e3:.2f} ms per layer-step); 1000 steps: about {dt * 1000 / args.steps:.0f} s")


if __name__ == "__main__":
    main()
