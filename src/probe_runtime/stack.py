"""A stack of transformer-like layers — attention, then an expert-parallel MoE layer — run under a
planning policy, with the continuous split-phase copy schedule:

    layer l:  attention -> route (count exchange) -> [oracle: plan l, copy l, wait]
              -> wait for l's copies -> dispatch -> start l+1's copies -> expert compute
              -> combine (copies paused) -> (l+1's attention: copies resume) ...

Policies say where the loads a layer is planned for come from: ``static`` (no plan: natives only),
``history`` (the previous batch's counts of the same layer: known ahead, so layer l+1's plan and
copies are made during layer l's compute) and ``oracle`` (this batch's own counts, known only after
the layer's router: an upper bound on what prediction can give, its copies exposed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from probe_planner import DispatchRule, Plan, PlanInvalidError, Topology

from .experts import ExpertBank, reference_moe, seeded_experts
from .moe_layer import EPMoELayer
from .planner import EmbeddedPlanner
from .slots import SlotPool

POLICIES = ("static", "history", "oracle")


@dataclass(frozen=True)
class Attention:
    """Single-head self-attention over a rank's own tokens with pre-RMSNorm: the non-MoE compute the
    next layer's copies resume under."""

    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor

    @classmethod
    def seeded(cls, hidden: int, seed: int) -> Attention:
        g = torch.Generator().manual_seed(seed)
        return cls(*(torch.randn(hidden, hidden, generator=g) * hidden ** -0.5 for _ in range(4)))

    def to(self, device: torch.device) -> Attention:
        return Attention(*(w.to(device) for w in (self.wq, self.wk, self.wv, self.wo)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm(x)
        q, k, v = h @ self.wq, h @ self.wk, h @ self.wv
        a = torch.softmax(q @ k.T * x.shape[1] ** -0.5, dim=-1)
        return (a @ v) @ self.wo


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6)


@dataclass(frozen=True)
class StackWeights:
    """Seeded weights of an ``L``-layer stack, the same on every rank: per layer attention, router
    ``[hidden, E]``, router bias ``[E]`` (the skew) and every expert's SwiGLU weights."""

    attention: list[Attention]
    routers: list[torch.Tensor]
    biases: list[torch.Tensor]
    banks: list[ExpertBank]

    @classmethod
    def seeded(cls, num_experts: int, hidden: int, ffn: int, bias: np.ndarray, seed: int = 0) -> StackWeights:
        L = bias.shape[0]
        return cls([Attention.seeded(hidden, seed + 10 * i) for i in range(L)],
                   [torch.randn(hidden, num_experts, generator=torch.Generator().manual_seed(seed + 10 * i + 1)) * 0.02
                    for i in range(L)],
                   [torch.as_tensor(bias[i], dtype=torch.float32) for i in range(L)],
                   [seeded_experts(num_experts, hidden, ffn, seed + 10 * i + 2) for i in range(L)])

    def reference(self, x: torch.Tensor, top_k: int) -> torch.Tensor:
        """The stack on one process, every expert local: what the distributed stack must give."""
        for att, router, b, bank in zip(self.attention, self.routers, self.biases, self.banks, strict=True):
            x = x + att(x)
            x = x + reference_moe(rms_norm(x), router, bank, top_k, b)
        return x


@dataclass
class LayerRecord:
    """One layer of one step on this rank (seconds): planning (synchronous here, so all exposed),
    copies (duration, the wait nothing overlapped, paused), phases, and what it processed."""

    layer: int
    plan_s: float
    copy_s: float
    copy_exposed_s: float
    copy_paused_s: float
    attention_s: float
    route_s: float
    split_s: float
    dispatch_s: float
    compute_s: float
    combine_s: float
    tokens_processed: int
    replicas: int


class MoEStack:
    """The weights' layers on this rank, replicas in one double-buffered :class:`SlotPool`, each
    layer planned by ``planner`` under ``policy``. :meth:`step` runs one batch."""

    def __init__(self, topology: Topology, weights: StackWeights, planner: EmbeddedPlanner, policy: str,
                 device: torch.device | str = "cpu", timeout: timedelta = timedelta(minutes=2),
                 chunk_bytes: int = 1 << 20) -> None:
        if policy not in POLICIES:
            raise PlanInvalidError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
        self.device = torch.device(device)
        self.policy, self.planner, self.topology = policy, planner, topology
        L = len(weights.banks)
        self.pool = SlotPool(topology.slots, weights.banks[0], self.device, buffers=min(2, L), timeout=timeout,
                             chunk_bytes=chunk_bytes)
        self.layers = [EPMoELayer(topology, weights.routers[i], weights.banks[i], topology.model.top_k, pool=self.pool,
                                  index=i, device=self.device) for i in range(L)]
        self.attention = [a.to(self.device) for a in weights.attention]
        self.biases = [b.to(self.device) for b in weights.biases]
        self.history: dict[int, np.ndarray] = {}  # the last batch's real counts per layer
        self._ahead: dict[int, tuple[Plan, object, float]] = {}  # layer -> (plan, copy job, plan time) made ahead
        self._starts = 0  # copy jobs started so far: picks each one's buffer

    def _known_ahead(self, lay: int) -> np.ndarray | None | bool:
        """The loads layer ``lay`` is planned for before its router runs (``None``: static), or
        ``False`` when they are known only after it (oracle)."""
        if self.policy == "oracle":
            return False
        return None if self.policy == "static" else self.history.get(lay)

    def _plan_and_copy(self, lay: int, loads: np.ndarray | None) -> tuple[Plan, object, float]:
        plan = self.planner.plan(loads)
        # buffers in the order copies start: consecutive layers (and a step's last layer and the
        # next step's first, whatever the layer count) always land in different buffers
        buffer = self._starts % self.pool.buffers
        self._starts += 1
        return plan, self.layers[lay].start_replicas(plan, 0, buffer=buffer), self.planner.last_s

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerRecord]]:
        """One batch ``x [T, hidden]`` (this rank's tokens) through every layer."""
        records = []
        L = len(self.layers)
        for lay, layer in enumerate(self.layers):
            t0 = time.perf_counter()
            x = x + self.attention[lay](x)
            attention_s = time.perf_counter() - t0
            h = rms_norm(x)
            routed = layer.route(h, self.biases[lay])
            if lay not in self._ahead:  # oracle (needs this batch's counts), or nothing ran before it
                loads = self._known_ahead(lay)
                self._ahead[lay] = self._plan_and_copy(lay, routed.counts if loads is False else loads)
            plan, job, plan_s = self._ahead.pop(lay)
            layer.finish_replicas(job)  # waits only for what the previous layer's compute did not cover
            nxt = (lay + 1) % L  # the next layer, or the next batch's first

            def start_next(lay=lay, nxt=nxt) -> None:
                # layer l+1's copies while layer l computes, into the other buffer (never this one)
                loads = self._known_ahead(nxt)
                if loads is not False and nxt != lay and nxt not in self._ahead:
                    self._ahead[nxt] = self._plan_and_copy(nxt, loads)

            y = layer.forward(h, DispatchRule(plan), 0, routed=routed, during_compute=start_next)
            x = x + y
            self.history[lay] = routed.counts
            st = layer.stats
            records.append(LayerRecord(lay, plan_s, st.copy_s, st.copy_exposed_s, st.copy_paused_s, attention_s,
                                       st.route_s, st.split_s, st.dispatch_s, st.compute_s, st.combine_s,
                                       st.tokens_processed, int(plan.num_replicas)))
        return x, records

    def close(self) -> None:
        """Wait for copies started ahead, then stop the pool's copy thread."""
        try:
            for lay, (_, job, _) in list(self._ahead.items()):
                self.layers[lay].finish_replicas(job)
        finally:
            self._ahead.clear()
            self.pool.close()
