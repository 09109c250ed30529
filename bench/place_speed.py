"""Time ``place()`` on a DeepSeek-V3-sized window: ``[1000, 61, 256]`` per-batch loads on 64 ranks.

Synthetic loads: per layer a shuffled Zipf(1.0) popularity over the 256 experts, a slow log-normal drift
over the 1000 batches and Poisson counts of 4096 tokens x top-8 per batch. Prints the wall time of
``place()`` (kernels compiled or loaded from the cache beforehand, as a server would), of the
EPLB-style placement of the same window (``baselines.eplb``, pure Python), and the expected
makespans. Run: ``python bench/place_speed.py [--batches 1000] [--layers 61] [--slots 5]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from probe_planner import Topology
from probe_planner.baselines.eplb import eplb_placement
from probe_planner.place import Placement, place, score_placement


def zipf_window(T: int, L: int, E: int, tokens: int, seed: int = 0) -> np.ndarray:
    """``[T, L, E]`` Poisson counts of a drifting, per-layer shuffled Zipf(1.0) popularity."""
    rng = np.random.default_rng(seed)
    base = np.stack([rng.permutation(1.0 / np.arange(1, E + 1)) for _ in range(L)])  # [L, E]
    drift = np.exp(np.cumsum(rng.normal(0.0, 0.03, size=(T, L, E)), axis=0))
    lam = base[None] * drift
    lam *= tokens / lam.sum(axis=2, keepdims=True)
    return rng.poisson(lam).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=61)
    ap.add_argument("--slots", type=int, default=5, help="physical slots per rank (256 experts / 64 ranks = 4 native)")
    ap.add_argument("--time-limit-s", type=float, default=8.0)
    args = ap.parse_args()
    topo = Topology.from_cards(model="deepseek-v3", cluster="h100x16-ib", ranks=64)
    win = zipf_window(args.batches, args.layers, topo.num_experts, 4096 * topo.model.top_k)
    place(win[:4, :2], topo, args.slots, time_limit_s=1.0)  # compile / load the kernels
    t = time.perf_counter()
    pl = place(win, topo, args.slots, time_limit_s=args.time_limit_s)
    t_place = time.perf_counter() - t
    t = time.perf_counter()
    ep = eplb_placement(win.sum(axis=0), topo, args.slots * topo.num_ranks - topo.num_experts)
    t_eplb = time.perf_counter() - t
    # the EPLB placement scored like place()'s result: the same evaluation batches, the same dispatch
    eplb_us = float(score_placement(win, Placement.from_map(ep).hosts, topo).sum())
    print(f"window [{args.batches}, {args.layers}, {topo.num_experts}] on {topo.num_ranks} ranks "
          f"({topo.ranks_per_node} per node), {args.slots} slots per rank")
    names, counts = np.unique(pl.info["starts_won"], return_counts=True)
    won = ", ".join(f"{n} {c}" for n, c in zip(names.tolist(), counts.tolist(), strict=True))
    print(f"place(): {t_place:.2f} s wall (time_limit_s {args.time_limit_s:g}); search steps per layer: "
          f"mean {np.mean(pl.info['steps']):.1f}, starts won {won}")
    print(f"EPLB-style placement (baselines.eplb, Python): {t_eplb:.2f} s")
    print(f"expected makespan per batch: sharded {pl.before_us:.0f} us, EPLB-style {eplb_us:.0f} us, place {pl.after_us:.0f} us "
          f"(place / EPLB = {pl.after_us / eplb_us:.3f})")


if __name__ == "__main__":
    main()
