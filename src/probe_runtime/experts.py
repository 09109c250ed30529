"""Expert weights: a bank of SwiGLU experts, seeded the same on every rank, and the single-process
reference MoE every distributed layer must reproduce."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ExpertBank:
    """SwiGLU weights of a set of experts: ``w1``, ``w3`` ``[n, ffn, hidden]``, ``w2`` ``[n, hidden, ffn]``."""

    w1: torch.Tensor
    w3: torch.Tensor
    w2: torch.Tensor

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.w1, self.w3, self.w2

    def expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``i`` of the bank on rows ``x [n, hidden]``."""
        return (F.silu(x @ self.w1[i].T) * (x @ self.w3[i].T)) @ self.w2[i].T

    def take(self, index, device: torch.device | str | None = None) -> ExpertBank:
        """A bank of the experts ``index`` (their own contiguous copies), on ``device``."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ExpertBank(*(w[idx].contiguous().to(device) for w in self.tensors))

    def empty(self, n: int, device: torch.device | str | None = None) -> ExpertBank:
        """``n`` zeroed expert buffers of this bank's shapes and dtype."""
        return ExpertBank(*(torch.zeros((n, *w.shape[1:]), dtype=w.dtype, device=device) for w in self.tensors))


def seeded_experts(num_experts: int, hidden: int, ffn: int, seed: int, dtype=torch.float32) -> ExpertBank:
    """Every expert's weights, the same on every rank for the same seed (each rank keeps its share)."""
    g = torch.Generator().manual_seed(seed)
    scale = hidden ** -0.5
    return ExpertBank(torch.randn(num_experts, ffn, hidden, generator=g, dtype=dtype) * scale,
                      torch.randn(num_experts, ffn, hidden, generator=g, dtype=dtype) * scale,
                      torch.randn(num_experts, hidden, ffn, generator=g, dtype=dtype) * ffn ** -0.5)


def route(x: torch.Tensor, router: torch.Tensor, top_k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gates [T, k], ids [T, k])``: the top-k experts of each token and their renormalised gates."""
    logits = x @ router if bias is None else x @ router + bias
    gates, ids = torch.topk(torch.softmax(logits, dim=-1), top_k, dim=-1)
    return gates / gates.sum(dim=-1, keepdim=True), ids


def reference_moe(x: torch.Tensor, router: torch.Tensor, bank: ExpertBank, top_k: int,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """Single-process MoE with every expert local: what the distributed layer must reproduce."""
    gates, ids = route(x, router, top_k, bias)
    out = torch.zeros_like(x)
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        out.index_add_(0, tok, bank.expert(e, x[tok]) * gates[tok, slot, None])
    return out
