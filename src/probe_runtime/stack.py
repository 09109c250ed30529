"""A stack of transformer-like layers — attention, then an expert-parallel MoE layer — run under a
planning policy, with the continuous lookahead pipeline:

    layer l:  attention -> [lookahead: predict l+1's counts from l's hidden state] -> route
              (count exchange; the predictions travel with it) -> plan l+1 in a worker thread
              -> [oracle: plan l, copy l, wait] -> wait for l's plan and copies -> dispatch
              -> expert compute (l+1's copies start once its plan is ready) -> combine (copies
              paused) -> (l+1's attention: copies resume) ...

Policies say where the loads a layer is planned for come from: ``static`` (no plan: natives only),
``history`` (the previous batch's counts of the same layer, or their moving average),
``coactivation`` (layer l+1's counts from layer l's through a cross-layer co-occurrence matrix
learnt online from the tokens' expert ids, :class:`probe_planner.predict.CoactivationPredictor`),
``lookahead`` (layer l+1's counts predicted from layer l's hidden state by a
:class:`~probe_runtime.predictor.LookaheadPredictor`) — both fall back to history for the first
layer, and coactivation for the first batch — and ``oracle`` (this batch's own counts, known only after the
layer's router: an upper bound on what prediction can give, its planning and copies exposed). The
first three plan layer l+1 while layer l runs. Whatever the policy, the output is the same: plans
change where tokens are computed, never what.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

from probe_planner import DispatchRule, Plan, PlanInvalidError, Topology
from probe_planner.predict import CoactivationPredictor, HistoryPredictor, count_error

from .device import to_numpy
from .experts import ExpertBank, reference_moe, seeded_experts
from .moe_layer import EPMoELayer
from .planner import EmbeddedPlanner
from .predictor import LookaheadPredictor, topk_recall
from .slots import SlotPool

POLICIES = ("static", "history", "coactivation", "lookahead", "oracle")
PREDICTED = ("coactivation", "lookahead")  # policies whose layer l+1 loads come from a prediction made at layer l


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


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


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
                   [torch.randn(hidden, num_experts, generator=torch.Generator().manual_seed(seed + 10 * i + 1)) * hidden ** -0.5
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
    """One layer of one step on this rank (seconds): planning (its wall time, and the part the layer
    waited for: ``plan_exposed_s``), copies (duration, the wait nothing overlapped, paused), phases,
    the layer's wall time, what it processed, and the prediction it ran on (``recall``: top-k
    recall of this rank's tokens, ``count_error``: relative L1 of the all-gathered ``[G, E]``
    counts; NaN without a prediction). ``predicted``/``real``: the ``[G, E]`` loads planned for
    (NaN: static) and routed."""

    layer: int
    plan_s: float
    plan_exposed_s: float
    copy_s: float
    copy_exposed_s: float
    copy_paused_s: float
    attention_s: float
    route_s: float
    split_s: float
    dispatch_s: float
    compute_s: float
    combine_s: float
    layer_s: float
    tokens_processed: int
    replicas: int
    recall: float
    count_error: float
    predicted: np.ndarray
    real: np.ndarray
    predicted_by: str = "static"  # what the loads planned for came from: the policy, or "history" (fallback)


class _Ahead:
    """A layer's plan and copies made while an earlier layer runs: a worker thread plans (the
    planner's collectives on its own group) and starts the copies once ``go`` is set (the earlier
    layer's expert compute began), or, not threaded, both at once on the caller's thread."""

    def __init__(self, stack: MoEStack, lay: int, loads: np.ndarray | None, buffer: int, threaded: bool) -> None:
        self.loads, self.go = loads, threading.Event()
        self.plan: Plan | None = None
        self.job = None
        self.plan_s = 0.0
        self.error: BaseException | None = None

        def run() -> None:
            try:
                if stack.device.type == "cuda":  # a new thread starts on GPU 0: the copies' events must be this rank's
                    torch.cuda.set_device(stack.device)
                t0 = time.perf_counter()
                self.plan = stack.planner.plan(loads)
                self.plan_s = time.perf_counter() - t0
                self.go.wait()
                self.job = stack.layers[lay].start_replicas(self.plan, 0, buffer=buffer)
            except BaseException as exc:  # re-raised on the layer's thread by result()
                self.error = exc

        self.thread = threading.Thread(target=run, name=f"plan-layer{lay}", daemon=True) if threaded else None
        if self.thread is not None:
            self.thread.start()
        else:
            self.go.set()
            run()

    def result(self, timeout_s: float) -> tuple[Plan, object, float, float]:
        """``(plan, copy job, plan time, time waited here)``."""
        t0 = time.perf_counter()
        self.go.set()  # nothing left to wait for
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                raise TimeoutError(f"planning did not finish within {timeout_s:g} s (a peer stalled)")
        if self.error is not None:
            raise self.error
        # planned on the caller's thread: the caller waited for all of it
        waited = self.plan_s if self.thread is None else time.perf_counter() - t0
        return self.plan, self.job, self.plan_s, waited


class MoEStack:
    """The weights' layers on this rank, replicas in one double-buffered :class:`SlotPool`, each
    layer planned by ``planner`` under ``policy``. ``predictors[l]`` (lookahead) predicts layer
    ``l``'s routing from layer ``l-1``'s hidden state; ``threaded``: plan in a worker thread (so
    planning overlaps the previous layer; the planner then gets a process group of its own).
    :meth:`step` runs one batch."""

    def __init__(self, topology: Topology, weights: StackWeights, planner: EmbeddedPlanner, policy: str,
                 device: torch.device | str = "cpu", timeout: timedelta = timedelta(minutes=2),
                 chunk_bytes: int = 1 << 20, predictors: dict[int, LookaheadPredictor] | None = None,
                 threaded: bool = True, history_decay: float = 0.0) -> None:
        if policy not in POLICIES:
            raise PlanInvalidError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
        L = len(weights.banks)
        self.predictors = dict(predictors or {})
        if policy == "lookahead" and set(self.predictors) != set(range(1, L)):
            raise PlanInvalidError(f"lookahead needs a predictor for each of layers 1..{L - 1}, got {sorted(self.predictors)}")
        self.device = torch.device(device)
        self.policy, self.planner, self.topology = policy, planner, topology
        self.timeout = timeout
        self.threaded = threaded
        if threaded:  # a collective: every rank builds its stacks in the same order. Plans are host
            # data: gloo, whatever the device, so no third NCCL communicator runs beside the layers'
            planner.group = dist.new_group(backend="gloo", timeout=timeout)
            planner.device = torch.device("cpu")
        self.pool = SlotPool(topology.slots, weights.banks[0], self.device, buffers=min(2, L), timeout=timeout,
                             chunk_bytes=chunk_bytes)
        self.layers = [EPMoELayer(topology, weights.routers[i], weights.banks[i], topology.model.top_k, pool=self.pool,
                                  index=i, device=self.device) for i in range(L)]
        self.attention = [a.to(self.device) for a in weights.attention]
        self.biases = [b.to(self.device) for b in weights.biases]
        E = topology.num_experts
        self.history = HistoryPredictor(L, E, history_decay)  # past batches' real [G, E] counts per layer
        self.coactivation = CoactivationPredictor(L, E)  # learnt from this rank's tokens
        self._ids: dict[int, torch.Tensor] = {}  # layer -> this batch's expert ids there (coactivation learns)
        self._steps = 0
        self._ahead: dict[int, _Ahead] = {}  # layer -> its plan and copies in the making
        self._starts = 0  # copy jobs started so far: picks each one's buffer
        self._guess: dict[int, torch.Tensor] = {}  # layer -> this rank's predicted top-k ids for it
        self.collect = False  # keep each layer's MoE inputs and true router logits (for distillation)
        self.inputs: dict[int, list[torch.Tensor]] = {}
        self.true_logits: dict[int, list[torch.Tensor]] = {}

    def _loads_ahead(self, lay: int, routed) -> tuple[np.ndarray | None | bool, str]:
        """The loads layer ``lay`` is planned for before its router runs (``None``: static), or
        ``False`` when they are known only after it (oracle); and where they come from."""
        if self.policy == "oracle":
            return False, "oracle"
        if self.policy == "static":
            return None, "static"
        if self.policy in PREDICTED and lay > 0 and routed is not None and routed.extra is not None:
            return routed.extra, self.policy
        h = self.history.predict(lay)
        return h, "history" if h is not None else "static"

    def _coactivation_guess(self, nxt: int, counts: np.ndarray, ids) -> np.ndarray:
        # numbers on every rank, or the all-gather's sizes would differ: a rank that has learnt
        # nothing yet (no tokens so far) guesses its own counts
        p = self.coactivation.predict(nxt, counts)
        return p if p is not None else counts

    def _start(self, lay: int, loads: np.ndarray | None, source: str, threaded: bool) -> _Ahead:
        # buffers in the order copies start: consecutive layers (and a step's last layer and the
        # next step's first, whatever the layer count) always land in different buffers
        buffer = self._starts % self.pool.buffers
        self._starts += 1
        ahead = _Ahead(self, lay, loads, buffer, threaded)
        ahead.source = source
        return ahead

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerRecord]]:
        """One batch ``x [T, hidden]`` (this rank's tokens) through every layer."""
        records = []
        L = len(self.layers)
        G, E = self.topology.num_ranks, self.topology.num_experts
        for lay, layer in enumerate(self.layers):
            t0 = time.perf_counter()
            x = x + self.attention[lay](x)
            attention_s = time.perf_counter() - t0
            h = rms_norm(x)
            if self.collect:
                self.inputs.setdefault(lay, []).append(h)
                self.true_logits.setdefault(lay, []).append(h @ layer.router + self.biases[lay])
            nxt = (lay + 1) % L  # the next layer, or the next batch's first
            guess = None
            if self.policy == "lookahead" and lay + 1 < L:
                guess, self._guess[lay + 1] = self.predictors[lay + 1].predict(h)
            elif self.policy == "coactivation" and lay + 1 < L and self._steps > 0:  # nothing learnt before
                guess = partial(self._coactivation_guess, lay + 1)
            routed = layer.route(h, self.biases[lay], extra=guess)
            if self.policy == "coactivation":
                if lay > 0:
                    self.coactivation.observe_tokens(lay, to_numpy(self._ids.pop(lay - 1)), to_numpy(routed.ids))
                self._ids[lay] = routed.ids
            if lay not in self._ahead:  # oracle (needs this batch's counts), or nothing ran before it
                loads, source = self._loads_ahead(lay, None)
                self._ahead[lay] = self._start(lay, routed.counts if loads is False else loads, source, threaded=False)
            ahead_now = self._ahead.pop(lay)
            plan, job, plan_s, plan_wait = ahead_now.result(self.timeout.total_seconds())
            # then the next layer's: one planner thread at a time, so the planner's collectives and
            # the copy jobs keep one order on every rank
            loads, source = self._loads_ahead(nxt, routed)
            if nxt != lay and nxt not in self._ahead and loads is not False:
                self._ahead[nxt] = self._start(nxt, loads, source, self.threaded)
            layer.finish_replicas(job)  # waits only for what the previous layer's compute did not cover
            hook = self._ahead[nxt].go.set if nxt in self._ahead and nxt != lay else None
            y = layer.forward(h, DispatchRule(plan), 0, routed=routed, during_compute=hook)
            x = x + y
            self.history.observe(lay, routed.counts)
            st = layer.stats
            pred = ahead_now.loads
            recall = topk_recall(self._guess.pop(lay), routed.ids) if lay in self._guess else math.nan
            err = count_error(pred, routed.counts) if isinstance(pred, np.ndarray) and pred is not routed.counts else math.nan
            records.append(LayerRecord(lay, plan_s, plan_wait, st.copy_s, st.copy_exposed_s, st.copy_paused_s, attention_s,
                                       st.route_s, st.split_s, st.dispatch_s, st.compute_s, st.combine_s,
                                       time.perf_counter() - t0, st.tokens_processed, int(plan.num_replicas), recall, err,
                                       pred if isinstance(pred, np.ndarray) else np.full((G, E), np.nan), routed.counts,
                                       ahead_now.source))
        self._ids.clear()
        self._steps += 1
        return x, records

    def distill(self, steps: int = 300, lr: float = 3e-3, gather: bool = True) -> dict[int, float]:
        """Train each lookahead predictor on the batches collected so far (:attr:`collect`): layer
        l's inputs against layer l+1's true router logits. ``gather`` (a collective; every rank must
        have collected as many tokens): train on every rank's tokens, so every rank ends with the same
        predictor and a rank's few tokens do not overfit it. Returns each predictor's final loss."""
        out = {}
        for lay, pred in self.predictors.items():
            if lay - 1 in self.inputs and lay in self.true_logits:
                h, z = torch.cat(self.inputs[lay - 1]), torch.cat(self.true_logits[lay])
                if gather and dist.get_world_size() > 1:
                    h, z = (torch.cat(_all_gather(t)) for t in (h, z))
                out[lay] = pred.distill(h, z, steps, lr)[-1]
        return out

    def recall(self) -> dict[int, float]:
        """Each predictor's top-k recall on the batches collected so far."""
        return {lay: topk_recall(p.topk(torch.cat(self.inputs[lay - 1])),
                                 torch.topk(torch.cat(self.true_logits[lay]), p.top_k, dim=-1).indices)
                for lay, p in self.predictors.items() if lay - 1 in self.inputs and lay in self.true_logits}

    def forget(self) -> None:
        """Drop the collected batches."""
        self.inputs.clear()
        self.true_logits.clear()

    def close(self) -> None:
        """Wait for plans and copies started ahead, then stop the pool's copy thread."""
        try:
            for lay, ahead in list(self._ahead.items()):
                _, job, _, _ = ahead.result(self.timeout.total_seconds())
                self.layers[lay].finish_replicas(job)
        finally:
            self._ahead.clear()
            self.pool.close()
