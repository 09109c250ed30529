"""An expert-parallel MoE layer that executes probe-planner plans (torch.distributed; CPU tensors and
gloo for now — the NCCL/CUDA path, with a CUDA stream for the copies, is not written yet).

Each rank holds its native experts' SwiGLU weights and ``slots`` replica buffers. A forward pass:
router -> top-k -> count exchange (one all-gather of the ``[E]`` counts per rank) -> the plan's
:class:`probe_planner.DispatchRule` splits every (source, expert) pair's real tokens over the
expert's hosts -> dispatch with ``all_to_all_single`` (uneven splits; each rank derives every
split from the exchanged counts, so no sizes or expert ids travel) -> per-expert grouped compute on
natives and replicas -> combine with the reverse ``all_to_all_single`` -> gate-weighted sum.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from probe_planner import DispatchRule, Plan, PlanInvalidError, Topology


@dataclass(frozen=True)
class ExpertBank:
    """SwiGLU weights of a set of experts: ``w1``, ``w3`` ``[n, ffn, hidden]``, ``w2`` ``[n, hidden, ffn]``."""

    w1: torch.Tensor
    w3: torch.Tensor
    w2: torch.Tensor

    def expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``i`` of the bank on rows ``x [n, hidden]``."""
        return (F.silu(x @ self.w1[i].T) * (x @ self.w3[i].T)) @ self.w2[i].T


def seeded_experts(num_experts: int, hidden: int, ffn: int, seed: int, dtype=torch.float32) -> ExpertBank:
    """Every expert's weights, the same on every rank for the same seed (each rank keeps its share)."""
    g = torch.Generator().manual_seed(seed)
    scale = hidden ** -0.5
    return ExpertBank(torch.randn(num_experts, ffn, hidden, generator=g, dtype=dtype) * scale,
                      torch.randn(num_experts, ffn, hidden, generator=g, dtype=dtype) * scale,
                      torch.randn(num_experts, hidden, ffn, generator=g, dtype=dtype) * ffn ** -0.5)


def reference_moe(x: torch.Tensor, router: torch.Tensor, bank: ExpertBank, top_k: int) -> torch.Tensor:
    """Single-process MoE with every expert local: what the distributed layer must reproduce."""
    gates, ids = torch.topk(torch.softmax(x @ router, dim=-1), top_k, dim=-1)
    gates = gates / gates.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        out.index_add_(0, tok, bank.expert(e, x[tok]) * gates[tok, slot, None])
    return out


@dataclass
class CopyJob:
    """Replica copies in flight (:meth:`EPMoELayer.start_replicas`)."""

    plan: Plan
    layer: int
    slot_expert: np.ndarray
    thread: threading.Thread | None = None
    copy_s: float = 0.0
    error: BaseException | None = None


@dataclass
class LayerStats:
    """One rank's times (s) of its layer's last copy (and the part of it nothing overlapped) and
    forward: routing and splitting (router,
    count exchange, dispatch rule), dispatch and combine all-to-alls, expert compute; the tokens it
    processed, and the real ``[G, E]`` counts it saw."""

    copy_s: float = 0.0
    copy_exposed_s: float = 0.0
    route_s: float = 0.0
    dispatch_s: float = 0.0
    compute_s: float = 0.0
    combine_s: float = 0.0
    tokens_processed: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


class EPMoELayer:
    """One MoE layer under expert parallelism on the default process group (rank = its rank).

    ``topology``: the cluster and model as the planner sees it (its ``native`` placement decides which
    experts this rank holds; ``slots`` replica buffers are preallocated); ``router [hidden, E]`` and
    ``bank`` (every expert's weights, e.g. :func:`seeded_experts`) are the same on every rank; this
    rank keeps only its natives. :meth:`load_replicas` fills the slots for a plan's layer;
    :meth:`forward` runs a batch under it.
    """

    def __init__(self, topology: Topology, router: torch.Tensor, bank: ExpertBank, top_k: int,
                 timeout: timedelta = timedelta(minutes=2)) -> None:
        self.topology = topology
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        if self.world != topology.num_ranks:
            raise PlanInvalidError(f"the topology has {topology.num_ranks} ranks but the process group {self.world}")
        self.router = router
        self.top_k = top_k
        self.natives = np.flatnonzero(topology.native[self.rank])
        self.native_bank = ExpertBank(*(w[torch.as_tensor(self.natives)].clone() for w in (bank.w1, bank.w3, bank.w2)))
        s = topology.slots
        self.slot_bank = ExpertBank(*(torch.zeros((s, *w.shape[1:]), dtype=w.dtype) for w in (bank.w1, bank.w3, bank.w2)))
        self.slot_expert = np.full(s, -1, dtype=np.int64)  # which expert each replica slot holds
        self.stats = LayerStats()  # the last forward's and copy's times on this rank
        self._loaded: tuple[Plan, int] | None = None  # the plan layer whose replicas the slots hold
        # the copies' own group (every rank builds its layers in the same order); a peer that stalls
        # fails it within ``timeout`` instead of gloo's 30-minute default
        self.copy_group = dist.new_group(backend="gloo", timeout=timeout)
        self._job: CopyJob | None = None  # copies in flight on this layer's slots

    # ---- replicas ------------------------------------------------------------------------------
    def start_replicas(self, plan: Plan, layer: int) -> CopyJob:
        """Start copying the plan's replicas of ``layer`` into this layer's slots, point to point on
        the layer's own process group (so the copies never queue behind the all-to-alls), in a
        background thread: the caller computes meanwhile and calls :meth:`finish_replicas`. The plan
        is validated first, on every rank alike, so a bad plan is refused before any transfer; until
        the copies finish, :meth:`forward` refuses to run on these slots."""
        if self._job is not None:
            raise PlanInvalidError("copies into this layer's slots are still in flight: finish_replicas first")
        plan.validate()
        if plan.topology.native.shape != self.topology.native.shape or not np.array_equal(plan.topology.native,
                                                                                         self.topology.native):
            raise PlanInvalidError("the plan was made for another placement than this layer's")
        rep = plan.replicas[plan.replicas[:, 0] == layer][:, 1:]
        rep = rep[np.lexsort((rep[:, 2], rep[:, 1], rep[:, 0]))]  # (expert, src, dst): the same order everywhere
        mine = rep[rep[:, 2] == self.rank]  # at most `slots` of them: validate() checked
        slot_expert = np.full(self.topology.slots, -1, dtype=np.int64)
        slot_expert[:mine.shape[0]] = mine[:, 0]
        ops = []  # (isend or irecv, tensor, peer) in the global (expert, src, dst) order
        for e, src, dst in rep.tolist():
            if dst == self.rank:
                j = int(np.flatnonzero(slot_expert == e)[0])
                ops += [(dist.irecv, w[j], src) for w in (self.slot_bank.w1, self.slot_bank.w3, self.slot_bank.w2)]
            elif src == self.rank:
                i = int(np.flatnonzero(self.natives == e)[0])
                ops += [(dist.isend, w[i].contiguous(), dst) for w in (self.native_bank.w1, self.native_bank.w3, self.native_bank.w2)]
        self._loaded = None  # the slots are being overwritten
        job = CopyJob(plan, layer, slot_expert)

        def run() -> None:
            # one transfer at a time, in the same global order on every rank: copy k waits only on
            # copies before it, so no cycle can form (no batched p2p: serving engines have hung on it)
            t0 = time.perf_counter()
            try:
                for fn, tensor, peer in ops:
                    fn(tensor, peer, group=self.copy_group).wait()
            except Exception as exc:  # surfaced by finish_replicas
                job.error = exc
            job.copy_s = time.perf_counter() - t0

        job.thread = threading.Thread(target=run, name=f"replica-copies-rank{self.rank}", daemon=True)
        job.thread.start()
        self._job = job
        return job

    def finish_replicas(self, job: CopyJob) -> None:
        """Wait for :meth:`start_replicas`' copies; the slots then hold that plan layer's replicas.
        Records the copy time and the part of it the caller waited for (exposed)."""
        if job is not self._job:
            raise PlanInvalidError("finish_replicas got a copy job of another layer")
        t0 = time.perf_counter()
        job.thread.join()
        self._job = None
        self.stats.copy_exposed_s = time.perf_counter() - t0
        if job.error is not None:
            raise job.error
        self.stats.copy_s = job.copy_s
        self.slot_expert[:] = job.slot_expert
        self._loaded = (job.plan, job.layer)

    def load_replicas(self, plan: Plan, layer: int) -> None:
        """Copy the plan's replicas of ``layer`` into the slots and wait (no overlap)."""
        self.finish_replicas(self.start_replicas(plan, layer))

    def _held(self, e: int) -> tuple[ExpertBank, int]:
        i = np.flatnonzero(self.natives == e)
        if i.size:
            return self.native_bank, int(i[0])
        j = np.flatnonzero(self.slot_expert == e)
        if j.size:
            return self.slot_bank, int(j[0])
        raise PlanInvalidError(f"rank {self.rank} was sent tokens of expert {e} but holds no weights for it")

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, rule: DispatchRule, layer: int = 0, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [T, hidden]`` this rank's tokens -> the layer's output for them, dispatched by ``rule``
        (layer ``layer`` of its plan); ``bias [E]`` is added to the router's logits."""
        G, E, me = self.world, self.topology.num_experts, self.rank
        # refused before any collective, alike on every rank: the slots must hold this plan's replicas
        if self._loaded is None or self._loaded[0] is not rule.plan or self._loaded[1] != layer:
            raise PlanInvalidError(f"forward under a plan layer whose replicas are not loaded: call load_replicas(plan, {layer}) first")
        t0 = time.perf_counter()
        logits = x @ self.router if bias is None else x @ self.router + bias
        gates, ids = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        gates = gates / gates.sum(dim=-1, keepdim=True)
        flat = ids.reshape(-1)
        counts = torch.bincount(flat, minlength=E)
        every = [torch.zeros_like(counts) for _ in range(G)]
        dist.all_gather(every, counts)
        counts_all = torch.stack(every).numpy().astype(np.float64)  # [G, E]
        hosts, _, _ = rule.layer(layer)
        split = rule.split(layer, counts_all).astype(np.int64)  # [G, E, H]
        # this rank's assignments sorted by expert; each expert's run cut into its hosts' quotas
        order = torch.argsort(flat, stable=True).numpy()
        dst = np.repeat(hosts.reshape(-1), split[me].reshape(-1))  # hosts by (expert, slot): matches the sort
        by_dst = np.argsort(dst, kind="stable")
        send_rows = order[by_dst]  # assignment indices, grouped by destination, by expert within it
        send_sizes = np.bincount(dst, minlength=G)
        # what this rank receives from each source, by expert: derived from the same split
        held = hosts == me  # [E, H]
        recv_by_src_e = (split * held[None]).sum(axis=2)  # [G, E]
        recv_sizes = recv_by_src_e.sum(axis=1)
        tok = torch.as_tensor(send_rows // self.top_k)
        payload = x[tok].contiguous()
        recv = torch.empty((int(recv_sizes.sum()), x.shape[1]), dtype=x.dtype)
        t1 = time.perf_counter()
        dist.all_to_all_single(recv, payload, recv_sizes.tolist(), send_sizes.tolist())
        t2 = time.perf_counter()
        # expert of each received row: sources in rank order, experts ascending within each
        recv_e = np.repeat(np.tile(np.arange(E), G), recv_by_src_e.reshape(-1))
        out_rows = torch.empty_like(recv)
        for e in np.unique(recv_e).tolist():
            rows = torch.as_tensor(np.flatnonzero(recv_e == e))
            bank, i = self._held(e)
            out_rows[rows] = bank.expert(i, recv[rows])
        back = torch.empty_like(payload)
        t3 = time.perf_counter()
        dist.all_to_all_single(back, out_rows, send_sizes.tolist(), recv_sizes.tolist())
        t4 = time.perf_counter()
        g = gates.reshape(-1)[torch.as_tensor(send_rows)]
        out = torch.zeros_like(x)
        out.index_add_(0, tok, back * g[:, None])
        self.stats.route_s, self.stats.dispatch_s, self.stats.compute_s = t1 - t0, t2 - t1, t3 - t2
        self.stats.combine_s, self.stats.tokens_processed = t4 - t3, int(recv.shape[0])
        self.stats.counts = counts_all
        return out
