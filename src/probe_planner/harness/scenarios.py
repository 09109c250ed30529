"""Serving scenarios for the simulator, from the shared real traces: ``[steps, layers, G, E]`` loads
plus the model and cluster they run on.

- ``prefill``: the Qwen3-30B-A3B ShareGPT prefill cut into token windows, one prefill batch per
  step, each window's counts scaled by ``prefill_scale`` (the trace holds 2050 tokens; a serving
  prefill batch holds thousands: the same routing, a bigger batch) (TTFT proxy: the step time);
- ``decode``: the Qwen1.5-MoE-A2.7B GSM8K decode steps, ``mix`` consecutive steps' tokens merged
  into one batch (the trace's steps hold 11–25 tokens; a serving batch mixes more sequences);
  throughput in tokens per second; 4 ranks (they divide the 60 experts; 16 do not), on a multi-node
  card 2 per node so that dispatch and copies cross its network;
- ``shift``: OLMoE-1B-7B tokens drawn from one domain's per-layer expert distribution, then from
  another's from the middle of the run (PROBE's workload-shift test); its 3 recorded layers;
- ``top1``: the Qwen1.5-MoE top-1 iterations (6 ranks; very skewed, a stress case).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..cards import load_cluster_card
from ..errors import TraceError
from ..topology import CLUSTER_FIELDS, Topology
from ..traces import domain_counts, qwen3_prefill_windows, qwen15_decode_steps, qwen15_top1_iterations


@dataclass(frozen=True)
class SimScenario:
    """A named scenario: its loads, topology, what it reports (``latency`` or ``throughput``), a
    note, and the step where its workload shifts (None: none)."""

    name: str
    loads: np.ndarray
    topology: Topology
    report: str
    note: str
    shift_step: int | None = None


def _topology(model: str, cluster: str, ranks: int | None = None) -> Topology:
    return Topology.from_cards(model, cluster, ranks=ranks)


def build(name: str, cluster: str = "h100x8", steps: int = 8, trace_dir=None, seed: int = 0,
          tokens: int = 4096, mix: int = 8, prefill_scale: int = 8) -> SimScenario:
    """Scenario ``name`` on ``cluster`` with ``steps`` steps (see the module doc)."""
    if name == "prefill":
        topo = _topology("qwen3-30b-a3b", cluster)
        loads = qwen3_prefill_windows(topo.num_ranks, steps, trace_dir) * prefill_scale
        return SimScenario(name, loads, topo, "latency",
                           f"Qwen3-30B-A3B prefill, {2050 // steps} tokens per window x{prefill_scale} per step")
    if name == "decode":
        card = load_cluster_card(cluster)
        ranks = 4 if card["num_ranks"] >= 4 else None  # 60 experts: 4 ranks divide them
        if ranks and card["num_ranks"] > card["ranks_per_node"]:  # a multi-node card: the 4 ranks on 2 nodes, over its network
            topo = Topology.from_cards("qwen1.5-moe-a2.7b", cluster, ranks=ranks, ranks_per_node=2)
        else:
            topo = _topology("qwen1.5-moe-a2.7b", cluster, ranks)
        raw = qwen15_decode_steps(topo.num_ranks, trace_dir)
        n = min(steps, raw.shape[0] // mix)
        if n < 2:
            raise TraceError(f"the decode trace has {raw.shape[0]} steps: too few for {mix} per batch")
        loads = raw[:n * mix].reshape(n, mix, *raw.shape[1:]).sum(axis=1)
        return SimScenario(name, loads, topo, "throughput", f"Qwen1.5-MoE decode, {mix} trace steps per batch")
    if name == "shift":
        topo = _topology("olmoe-1b-7b", cluster)
        doms = domain_counts("olmoe", trace_dir)
        first, second = "github", "arxiv"
        rng = np.random.default_rng(seed)
        G, k = topo.num_ranks, topo.model.top_k
        loads = np.zeros((steps, 3, G, topo.num_experts))
        for s in range(steps):
            dist = doms[first if s < steps // 2 else second]  # [3, E]
            for lay in range(3):
                p = dist[lay] / dist[lay].sum()
                loads[s, lay] = rng.multinomial(tokens * k // G, p, size=G)
        return SimScenario(name, loads, topo, "throughput",
                           f"OLMoE-1B-7B, {first} then {second} tokens, {tokens} per step", steps // 2)
    if name == "top1":
        topo = _topology("qwen1.5-moe-a2.7b", cluster, 6)
        topo = Topology(model=replace(topo.model, top_k=1), **{f: getattr(topo, f) for f in CLUSTER_FIELDS})
        loads = qwen15_top1_iterations(trace_dir)[:steps]
        return SimScenario(name, loads, topo, "throughput", "Qwen1.5-MoE gate with top-1 routing (stress case)")
    raise TraceError(f"unknown scenario {name!r}; have prefill, decode, shift, top1")



SCENARIOS = ("prefill", "decode", "shift", "top1")
