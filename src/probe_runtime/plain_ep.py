"""A plain expert-parallel MoE layer with no plan machinery: every token goes to its expert's first
native host. The same collectives as :class:`~probe_runtime.moe_layer.EPMoELayer` (count all-gather,
two ``all_to_all_single``) and the same grouped compute, no dispatch rule, slot pool or copy thread:
the baseline ``bench/runtime_overhead.py`` measures the runtime's cost against."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from probe_planner import Topology

from .device import to_numpy
from .experts import ExpertBank, route


class PlainEPLayer:
    """Expert parallelism over ``topology``'s native placement; ``router``/``bank`` as for
    :class:`~probe_runtime.moe_layer.EPMoELayer`."""

    def __init__(self, topology: Topology, router: torch.Tensor, bank: ExpertBank, top_k: int,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.num_experts = topology.num_experts
        self.owner = np.argmax(topology.native, axis=0)  # [E] first native host
        self.natives = np.flatnonzero(self.owner == self.rank)
        self.owner_t = torch.as_tensor(self.owner, device=self.device)
        self.router, self.top_k = router.to(self.device), top_k
        self.bank = bank.take(self.natives, self.device)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        E, G = self.num_experts, self.world
        gates, ids = route(x, self.router, self.top_k, bias)
        flat = ids.reshape(-1)
        counts = torch.bincount(flat, minlength=E)
        every = [torch.zeros_like(counts) for _ in range(G)]
        dist.all_gather(every, counts)
        c = to_numpy(torch.stack(every))  # [G, E]
        send_rows = torch.argsort(self.owner_t[flat] * E + flat, stable=True)  # by destination, experts ascending within
        per_dst = np.zeros((G, E), dtype=np.int64)
        per_dst[self.owner, np.arange(E)] = c[self.rank]
        send_sizes = per_dst.sum(axis=1).tolist()
        recv_by_src_e = c[:, self.natives]  # [G, n_local]
        recv_sizes = recv_by_src_e.sum(axis=1).tolist()
        tok = send_rows // self.top_k
        payload = x[tok].contiguous()
        recv = torch.empty((sum(recv_sizes), x.shape[1]), dtype=x.dtype, device=self.device)
        dist.all_to_all_single(recv, payload, recv_sizes, send_sizes)
        recv_e = np.repeat(np.tile(np.arange(self.natives.size), G), recv_by_src_e.reshape(-1))
        order = np.argsort(recv_e, kind="stable")
        bounds = np.searchsorted(recv_e[order], np.arange(self.natives.size + 1))
        order_dev = torch.as_tensor(order, device=self.device)
        out_rows = torch.empty_like(recv)
        for i in np.flatnonzero(np.diff(bounds)).tolist():
            rows = order_dev[bounds[i]:bounds[i + 1]]
            out_rows[rows] = self.bank.expert(i, recv[rows])
        back = torch.empty_like(payload)
        dist.all_to_all_single(back, out_rows, send_sizes, recv_sizes)
        out = torch.zeros_like(x)
        out.index_add_(0, tok, back * gates.reshape(-1)[send_rows][:, None])
        return out
