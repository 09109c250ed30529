"""The placement search against the exact form on small layers: search alone, search from the MILP's
placement, and the MILP's lower bound (optimal routing per batch), on Zipf windows.

Run: ``python bench/place_exact.py [--time-limit-s 6]``. Prints per case the expected makespan (µs, mean
over the window's batches, static dispatch) of ``place()`` without and with ``exact=True``, the bound,
and the heuristic's ratio to the bound.
"""

from __future__ import annotations

import argparse

import numpy as np

from probe_planner import ModelShape, Topology
from probe_planner.place import place


def small_topology(nodes: int, rpn: int, experts: int) -> Topology:
    model = ModelShape(name="small", num_experts=experts, top_k=1, hidden=1024, expert_ffn=512)
    return Topology(num_ranks=nodes * rpn, ranks_per_node=rpn, intra_node_bw=450e9, inter_node_bw=50e9,
                    peak_flops=989.5e12, hbm_bw=3.35e12, model=model, slots=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit-s", type=float, default=6.0)
    args = ap.parse_args()
    print(f"{'case':<28} {'search us':>10} {'+exact us':>10} {'bound us':>9} {'search/bound':>13} {'+exact/bound':>13}")
    for seed, (nodes, rpn, E, S) in enumerate([(2, 2, 8, 3), (1, 4, 8, 3), (2, 2, 12, 4), (1, 4, 12, 4)]):
        topo = small_topology(nodes, rpn, E)
        rng = np.random.default_rng(seed)
        pop = 1.0 / np.arange(1, E + 1) ** 1.5
        win = rng.poisson(pop[rng.permutation(E)][None, None, None, :] * 30, size=(4, 1, topo.num_ranks, E)).astype(float)
        h = place(win, topo, S, eval_batches=64, min_gain=0.0, time_limit_s=args.time_limit_s)
        x = place(win, topo, S, eval_batches=64, min_gain=0.0, exact=True, time_limit_s=args.time_limit_s)
        bound = x.info["bound_us"][0]
        name = f"{nodes}x{rpn} ranks, {E} experts, {S} slots"
        print(f"{name:<28} {h.after_us:10.2f} {x.after_us:10.2f} {bound:9.2f} {h.after_us / bound:13.3f} {x.after_us / bound:13.3f}")


if __name__ == "__main__":
    main()
