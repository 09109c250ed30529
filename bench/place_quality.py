"""Long-lived placement quality on the real traces: plan on one window of batches, score on the next ones.

Per scenario (a shared trace cut into a stream of batches ``[T, L, G, E]``, a model card and a cluster
card with ``E/G + 2`` physical slots per rank, ``--extra-slots``), the placement is chosen from the first half of the
batches and scored on the second half — batches it never saw — by the one cost model (each batch
dispatched over the placement's hosts by the static rule):

- ``static``: the sharded placement, no spare slots used;
- ``eplb``: EPLB-style placement (``baselines.eplb``) of the planning window's totals, every slot;
- ``place``: :func:`probe_planner.place.place` on the planning window, every slot;
- ``place+greedy``: ``place`` with ``--reserve`` (1) slots per rank reserved, plus a per-batch ``solve(..., "greedy")``
  on each scored batch using the reserved slots (copies inside a ``--window-us`` hiding window), planned
  for the batch's own loads (what a lookahead predictor approximates; probe-bench's ``greedy``);
- ``place+greedy-hist``: the same per-batch plans made for the previous batch's loads and run on the
  batch's real loads through ``DispatchRule`` (no foresight);
- ``static+greedy``: the per-batch greedy on the sharded placement with ``--reserve`` replica slots (what
  ``place`` adds over per-batch planning alone).

Prints the mean and p99 next-batch makespan (sum over layers, µs) per method, the mean's ratio to
``eplb``, and the placement's weight copies and bytes moved from the sharded placement.
Run: ``python bench/place_quality.py [--window-us 300] [--time-limit-s 8]`` (needs ../shared/traces).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from probe_planner import Budget, DispatchRule, Topology, solve
from probe_planner.baselines.eplb import eplb_placement
from probe_planner.place import Placement, place
from probe_planner.place.scorer import expected_makespan_us
from probe_planner.traces import default_trace_dir, qwen3_prefill_windows, qwen15_decode_steps, qwen15_top1_iterations


def scenarios(trace_dir):
    """``(name, topology, batches [T, L, G, E])``."""
    q3 = Topology.from_cards(model="qwen3-30b-a3b", cluster="h100x8")
    yield "qwen3-prefill x16 / h100x8", q3, qwen3_prefill_windows(8, steps=16, trace_dir=trace_dir)
    q3ib = Topology.from_cards(model="qwen3-30b-a3b", cluster="h100x16-ib")
    yield "qwen3-prefill x16 / h100x16-ib", q3ib, qwen3_prefill_windows(16, steps=16, trace_dir=trace_dir)
    q15 = Topology.from_cards(model="qwen1.5-moe-a2.7b", cluster="h100x8", ranks=6)
    yield "qwen1.5-top1 x20 / 6 x h100", q15, qwen15_top1_iterations(trace_dir=trace_dir)
    q15d = Topology.from_cards(model="qwen1.5-moe-a2.7b", cluster="h100x8", ranks=4)
    yield "qwen1.5-decode x127 / 4 x h100", q15d, qwen15_decode_steps(4, trace_dir=trace_dir)


def static_us(batches: np.ndarray, hosts: np.ndarray, topo: Topology) -> np.ndarray:
    """Per batch, the sum over layers of the static dispatch's makespan on ``hosts [L, G, E]``."""
    return sum(expected_makespan_us(batches[:, lay], hosts[lay], topo) for lay in range(batches.shape[1]))


def per_batch_us(batches: np.ndarray, pl: Placement, topo: Topology, window_us: float, history: bool) -> np.ndarray:
    """Per scored batch, the sum over layers of the per-batch greedy plans' makespans."""
    T, L = batches.shape[:2]
    out = []
    for t in range(1 if history else 0, T):
        total = 0.0
        for lay in range(L):
            tp = pl.topology(topo, lay)
            budget = Budget(window_us=window_us, time_limit_s=0.05)
            if history:
                plan = solve(batches[t - 1, lay], tp, budget, solver="greedy")
                total += DispatchRule(plan).executed(batches[t, lay][None]).makespan_us
            else:
                total += solve(batches[t, lay], tp, budget, solver="greedy").makespan_us
        out.append(total)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window-us", type=float, default=300.0, help="hiding window of the per-batch copies")
    ap.add_argument("--time-limit-s", type=float, default=8.0, help="place()'s search budget per scenario")
    ap.add_argument("--extra-slots", type=int, default=2, help="physical slots per rank beyond E/G")
    ap.add_argument("--reserve", type=int, default=1, help="slots per rank place+greedy keeps for per-batch replicas")
    ap.add_argument("--only", default=None, help="run the scenarios whose name contains this")
    ap.add_argument("--trace-dir", default=None)
    args = ap.parse_args()
    trace_dir = args.trace_dir or default_trace_dir()
    print(f"plan on the first half of each trace's batches, score on the second half; window {args.window_us:g} us")
    print(f"{'scenario':<32} {'method':<18} {'mean us':>10} {'p99 us':>10} {'/ eplb':>7} {'copies':>7} {'GB moved':>9} {'plan s':>7}")
    for name, topo, batches in scenarios(trace_dir):
        if args.only and args.only not in name:
            continue
        T = batches.shape[0]
        G, E = topo.num_ranks, topo.num_experts
        slots = E // G + args.extra_slots
        plan_on, score_on = batches[: T // 2], batches[T // 2:]
        t = time.perf_counter()
        ep = Placement.from_map(eplb_placement(plan_on.sum(axis=(0, 2)), topo, slots * G - E))
        t_ep = time.perf_counter() - t
        pl = place(plan_on, topo, slots, time_limit_s=args.time_limit_s)
        plr = place(plan_on, topo, slots, reserve=args.reserve, time_limit_s=args.time_limit_s)
        cur = np.broadcast_to(topo.native, ep.hosts.shape)
        rows = [("static", static_us(score_on, cur, topo), 0, 0.0),
                ("eplb", static_us(score_on, ep.hosts, topo), int((ep.hosts & ~cur).sum()), t_ep),
                ("place", static_us(score_on, pl.hosts, topo), len(pl.copies), pl.info["time_s"]),
                ("place+greedy", per_batch_us(score_on, plr, topo, args.window_us, False), len(plr.copies), plr.info["time_s"]),
                ("place+greedy-hist", per_batch_us(score_on, plr, topo, args.window_us, True), len(plr.copies), plr.info["time_s"]),
                ("static+greedy", per_batch_us(score_on, Placement(hosts=cur, reserve=args.reserve), topo, args.window_us, False), 0, 0.0)]
        eplb_us = float(np.mean(rows[1][1]))
        for method, per, copies, secs in rows:
            us = float(np.mean(per))
            print(f"{name:<32} {method:<18} {us:10.1f} {np.percentile(per, 99):10.1f} {us / eplb_us:7.3f} {copies:7d} "
                  f"{copies * topo.model.expert_bytes / 1e9:9.3f} {secs:7.2f}")


if __name__ == "__main__":
    main()
