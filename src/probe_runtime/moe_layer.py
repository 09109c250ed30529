"""An expert-parallel MoE layer that executes probe-planner plans (torch.distributed; the same code
on CPU tensors with gloo and on CUDA tensors with NCCL, see :mod:`probe_runtime.device`).

Each rank holds its native experts' SwiGLU weights; replicas live in a :class:`SlotPool` shared by
the stack's layers. A forward pass: router -> top-k -> count exchange (one all-gather of the ``[E]``
counts per rank) -> the plan's :class:`probe_planner.DispatchRule` splits every (source, expert)
pair's real tokens over the expert's hosts -> dispatch with ``all_to_all_single`` (uneven splits;
each rank derives every split from the exchanged counts, so no sizes or expert ids travel) ->
per-expert grouped compute on natives and replicas -> combine with the reverse
``all_to_all_single`` -> gate-weighted sum. Replica copies are split-phase
(:meth:`EPMoELayer.start_replicas` / :meth:`EPMoELayer.finish_replicas`) and paused during the
combine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from probe_planner import DispatchRule, Plan, PlanInvalidError, Topology

from .copies import CopyJob, Transfer
from .device import settle, to_numpy
from .experts import ExpertBank, route
from .slots import Holding, SlotPool


@dataclass
class Routed:
    """A batch after the router: ``gates``/``ids [T, k]``, every rank's real ``counts [G, E]`` (the
    count exchange's result, the same on every rank), every rank's ``extra [G, E]`` numbers sent
    along with them (e.g. predicted counts of the next layer; ``None`` when none were) and the time
    the two took."""

    gates: torch.Tensor
    ids: torch.Tensor
    counts: np.ndarray
    route_s: float
    extra: np.ndarray | None = None


@dataclass
class LayerStats:
    """One rank's times (s) of its layer's last copy — its duration, the part nothing overlapped
    (``copy_exposed_s``: the wait in :meth:`EPMoELayer.finish_replicas`), the time it was paused —
    and of its last forward: routing with the count exchange, turning the plan into splits, the
    dispatch and combine all-to-alls, expert compute (without ``hook_s``, the time of the caller's
    ``during_compute``); the tokens it processed and the real
    ``[G, E]`` counts it saw."""

    copy_s: float = 0.0
    copy_exposed_s: float = 0.0
    copy_paused_s: float = 0.0
    route_s: float = 0.0
    split_s: float = 0.0
    dispatch_s: float = 0.0
    compute_s: float = 0.0
    combine_s: float = 0.0
    hook_s: float = 0.0
    tokens_processed: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


class EPMoELayer:
    """One MoE layer under expert parallelism on the default process group (rank = its rank).

    ``topology``: the cluster and model as the planner sees it (its ``native`` placement decides which
    experts this rank holds); ``router [hidden, E]`` and ``bank`` (every expert's weights, e.g.
    :func:`probe_runtime.seeded_experts`) are the same on every rank; this rank keeps only its
    natives, on ``device``. ``pool``: the stack's shared replica buffers, of which this layer (the
    stack's ``index``-th) uses one; without one the layer makes its own single-buffer pool (a
    collective: every rank builds its layers in the same order). :meth:`load_replicas` fills the
    slots for a plan's layer; :meth:`forward` runs a batch under it.
    """

    def __init__(self, topology: Topology, router: torch.Tensor, bank: ExpertBank, top_k: int,
                 pool: SlotPool | None = None, index: int = 0, device: torch.device | str | None = None,
                 timeout: timedelta = timedelta(minutes=2)) -> None:
        self.topology = topology
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        if self.world != topology.num_ranks:
            raise PlanInvalidError(f"the topology has {topology.num_ranks} ranks but the process group {self.world}")
        self.device = torch.device(device) if device is not None else (pool.device if pool is not None else torch.device("cpu"))
        self.pool = pool if pool is not None else SlotPool(topology.slots, bank, self.device, buffers=1, timeout=timeout)
        if self.pool.slots != topology.slots or self.pool.device != self.device:
            raise PlanInvalidError(f"the slot pool has {self.pool.slots} slots on {self.pool.device}; the layer needs "
                                   f"{topology.slots} on {self.device}")
        for w, b in zip(self.pool.banks[0].tensors, bank.tensors, strict=True):
            if w.shape[1:] != b.shape[1:] or w.dtype != b.dtype:  # a transfer of the wrong size kills gloo's process
                raise PlanInvalidError(f"the slot pool holds {w.dtype}{list(w.shape[1:])} experts, the layer's bank "
                                       f"{b.dtype}{list(b.shape[1:])}")
        self.buffer = self.pool.buffer_of(index)
        self.router = router.to(self.device)
        self.top_k = top_k
        self.natives = np.flatnonzero(topology.native[self.rank])
        self.native_bank = bank.take(self.natives, self.device)
        self.stats = LayerStats()  # the last forward's and copy's times on this rank

    @property
    def slot_bank(self) -> ExpertBank:
        """This layer's replica buffer (shared with every ``pool.buffers``-th layer of the stack)."""
        return self.pool.banks[self.buffer]

    @property
    def slot_expert(self) -> np.ndarray:
        """Which expert each replica slot holds for this layer (-1: none, or another layer's)."""
        h = self.pool.holding[self.buffer]
        if h is None or h.owner is not self or h.job is not None:
            return np.full(self.pool.slots, -1, dtype=np.int64)
        return h.slot_expert

    # ---- replicas ------------------------------------------------------------------------------
    def start_replicas(self, plan: Plan, layer: int, buffer: int | None = None) -> CopyJob:
        """Start copying the plan's replicas of ``layer`` into this layer's buffer (``buffer``: move
        the layer to that one of the pool's buffers first), point to point on the pool's own process
        group (so the copies never queue behind the all-to-alls), in the pool's background thread:
        the caller computes meanwhile and calls :meth:`finish_replicas`. The plan is checked first,
        with the same decision on every rank, so a bad plan is refused before any transfer; until
        the copies finish, :meth:`forward` refuses to run on the buffer."""
        plan.validate()
        t = plan.topology
        if (t.num_ranks, t.num_experts) != (self.topology.num_ranks, self.topology.num_experts) or not np.array_equal(
                t.native, self.topology.native):
            raise PlanInvalidError("the plan was made for another cluster or placement than this layer's")
        if not 0 <= layer < plan.num_layers:
            raise PlanInvalidError(f"plan layer {layer} out of range [0, {plan.num_layers})")
        rep = plan.replicas[plan.replicas[:, 0] == layer][:, 1:]
        per_rank = np.bincount(rep[:, 2], minlength=self.world)
        if per_rank.max(initial=0) > self.pool.slots:  # every rank sees every rank's count: refused alike
            r = int(np.argmax(per_rank))
            raise PlanInvalidError(f"the plan gives rank {r} {per_rank[r]} replicas; the pool has {self.pool.slots} slots")
        if buffer is not None:
            if not 0 <= buffer < self.pool.buffers:
                raise PlanInvalidError(f"buffer {buffer} out of range [0, {self.pool.buffers})")
            self.buffer = buffer
        self.pool.check_free(self.buffer)
        rep = rep[np.lexsort((rep[:, 2], rep[:, 1], rep[:, 0]))]  # (expert, src, dst): the same order everywhere
        mine = rep[rep[:, 2] == self.rank]
        slot_expert = np.full(self.pool.slots, -1, dtype=np.int64)
        slot_expert[:mine.shape[0]] = mine[:, 0]
        slots = self.slot_bank
        transfers = []
        for e, src, dst in rep.tolist():
            if dst == self.rank:
                j = int(np.flatnonzero(slot_expert == e)[0])
                transfers += [Transfer(False, w[j], src) for w in slots.tensors]
            elif src == self.rank:
                i = int(np.flatnonzero(self.natives == e)[0])
                transfers += [Transfer(True, w[i], dst) for w in self.native_bank.tensors]
        job = self.pool.copier.submit(transfers)
        self.pool.holding[self.buffer] = Holding(self, plan, layer, slot_expert, job)
        return job

    def finish_replicas(self, job: CopyJob) -> None:
        """Wait for :meth:`start_replicas`' copies; the buffer then holds that plan layer's replicas.
        Records the copy time and the part of it the caller waited for (exposed)."""
        h = self.pool.holding[self.buffer]
        if h is None or h.owner is not self or h.job is not job:
            raise PlanInvalidError("finish_replicas got a copy job this layer's buffer is not waiting for")
        t0 = time.perf_counter()
        if not job.done.wait(self.pool.timeout.total_seconds()):
            raise TimeoutError(f"rank {self.rank}: replica copies did not finish within {self.pool.timeout} (a peer stalled)")
        h.job = None
        st = self.stats
        st.copy_exposed_s, st.copy_s, st.copy_paused_s = time.perf_counter() - t0, job.copy_s, job.paused_s
        if job.error is not None:
            self.pool.holding[self.buffer] = None  # half-copied: holds nothing usable
            raise job.error

    def load_replicas(self, plan: Plan, layer: int) -> None:
        """Copy the plan's replicas of ``layer`` into the slots and wait (no overlap)."""
        self.finish_replicas(self.start_replicas(plan, layer))

    # ---- forward -------------------------------------------------------------------------------
    def route(self, x: torch.Tensor, bias: torch.Tensor | None = None, extra=None) -> Routed:
        """Router, top-k and the count exchange (a collective): what an oracle plans from. ``extra``
        (``[E]`` numbers, e.g. this rank's predicted counts of the next layer, or a function of this
        rank's ``[E]`` counts and ``[T, k]`` expert ids that gives them) travels in the same
        all-gather; every rank must pass it or none."""
        t0 = time.perf_counter()
        gates, ids = route(x, self.router, self.top_k, bias)
        E = self.topology.num_experts
        counts = torch.bincount(ids.reshape(-1), minlength=E).to(torch.float64)
        if callable(extra):
            extra = extra(to_numpy(counts), ids)
        if extra is not None:
            if np.shape(extra) != (E,):
                raise PlanInvalidError(f"extra must be [E={E}] numbers, got shape {list(np.shape(extra))}")
            counts = torch.cat([counts, torch.as_tensor(np.asarray(extra, dtype=np.float64), device=self.device)])
        every = [torch.zeros_like(counts) for _ in range(self.world)]
        dist.all_gather(every, counts)
        both = to_numpy(torch.stack(every))  # [G, E] or [G, 2E]
        return Routed(gates, ids, both[:, :E].copy(), time.perf_counter() - t0, both[:, E:].copy() if extra is not None else None)

    def forward(self, x: torch.Tensor, rule: DispatchRule, layer: int = 0, bias: torch.Tensor | None = None,
                routed: Routed | None = None, during_compute: Callable[[], None] | None = None) -> torch.Tensor:
        """``x [T, hidden]`` this rank's tokens -> the layer's output for them, dispatched by ``rule``
        (layer ``layer`` of its plan); ``bias [E]`` is added to the router's logits; ``routed``: the
        batch's :meth:`route` when the caller already ran it (to plan from its counts);
        ``during_compute``: called once the dispatch is done, as the expert compute starts (where the
        next layer's copies begin). The pool's copies are paused during the combine."""
        G, me = self.world, self.rank
        # refused before any collective, alike on every rank: the buffer must hold this plan's replicas
        if not self.pool.holds(self.buffer, self, rule.plan, layer):
            raise PlanInvalidError(f"forward under a plan layer whose replicas are not loaded: call load_replicas(plan, {layer}) first")
        if routed is None:
            routed = self.route(x, bias)
        t0 = time.perf_counter()
        flat = routed.ids.reshape(-1)
        hosts, _, _ = rule.layer(layer)
        split = rule.split(layer, routed.counts).astype(np.int64)  # [G, E, H]
        # this rank's assignments sorted by expert; each expert's run cut into its hosts' quotas
        order = to_numpy(torch.argsort(flat, stable=True))
        dst = np.repeat(hosts.reshape(-1), split[me].reshape(-1))  # hosts by (expert, slot): matches the sort
        by_dst = np.argsort(dst, kind="stable")
        send_rows = order[by_dst]  # assignment indices, grouped by destination, by expert within it
        send_sizes = np.bincount(dst, minlength=G).tolist()
        # what this rank receives from each source, by expert: derived from the same split
        recv_by_src_e = (split * (hosts == me)[None]).sum(axis=2)  # [G, E]
        recv_sizes = recv_by_src_e.sum(axis=1).tolist()
        recv_e = np.repeat(np.tile(np.arange(self.topology.num_experts), G), recv_by_src_e.reshape(-1))
        recv_order = np.argsort(recv_e, kind="stable")  # received rows grouped by expert
        bounds = np.searchsorted(recv_e[recv_order], np.arange(self.topology.num_experts + 1))
        rows_dev = torch.as_tensor(send_rows, device=self.device)
        tok = rows_dev // self.top_k
        t1 = self._clock()
        payload = x[tok].contiguous()
        recv = torch.empty((sum(recv_sizes), x.shape[1]), dtype=x.dtype, device=self.device)
        dist.all_to_all_single(recv, payload, recv_sizes, send_sizes)
        t2 = self._clock()
        banks = self._banks()  # before the hook: it may start copies into the other buffer, never this one
        self.pool.busy[self.buffer] = True
        hook_s = 0.0
        try:
            # the hook runs while the expert compute does: first on CPU, where the copies' thread is
            # the overlap; after queueing the kernels on GPU, where the device computes meanwhile
            gpu = self.device.type == "cuda"
            if gpu:
                out_rows = self._compute(recv, recv_order, bounds, banks)
            if during_compute is not None:
                h0 = time.perf_counter()
                during_compute()
                hook_s = time.perf_counter() - h0
            if not gpu:
                out_rows = self._compute(recv, recv_order, bounds, banks)
        finally:
            self.pool.busy[self.buffer] = False
        back = torch.empty_like(payload)
        t3 = self._clock()
        self.pool.copier.pause()  # the combine has the links to itself
        try:
            dist.all_to_all_single(back, out_rows, send_sizes, recv_sizes)
        finally:
            self.pool.copier.resume()
        t4 = self._clock()
        g = routed.gates.reshape(-1)[rows_dev]
        out = torch.zeros_like(x)
        out.index_add_(0, tok, back * g[:, None])
        st = self.stats
        st.route_s, st.split_s, st.dispatch_s, st.compute_s = routed.route_s, t1 - t0, t2 - t1, t3 - t2 - hook_s
        st.hook_s = hook_s
        st.combine_s, st.tokens_processed, st.counts = t4 - t3, int(recv.shape[0]), routed.counts
        return out

    def _compute(self, recv: torch.Tensor, recv_order: np.ndarray, bounds: np.ndarray,
                 banks: dict[int, tuple[ExpertBank, int]]) -> torch.Tensor:
        """Grouped expert compute: each expert's received rows through its weights."""
        out_rows = torch.empty_like(recv)
        order_dev = torch.as_tensor(recv_order, device=self.device)
        for e in np.flatnonzero(np.diff(bounds)).tolist():
            if e not in banks:
                raise PlanInvalidError(f"rank {self.rank} was sent tokens of expert {e} but holds no weights for it")
            bank, i = banks[e]
            rows = order_dev[bounds[e]:bounds[e + 1]]
            out_rows[rows] = bank.expert(i, recv[rows])
        return out_rows

    def _clock(self) -> float:
        """Host time once this device's queued work is done (on CPU, at once)."""
        settle(torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None)
        return time.perf_counter()

    def _banks(self) -> dict[int, tuple[ExpertBank, int]]:
        """Where each expert this rank holds lives: its native bank or its replica buffer."""
        out = {int(e): (self.native_bank, i) for i, e in enumerate(self.natives)}
        out.update({int(e): (self.slot_bank, j) for j, e in enumerate(self.slot_expert) if e >= 0})
        return out
