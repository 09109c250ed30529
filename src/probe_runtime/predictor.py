"""The gate-initialised lookahead predictor (PROBE): layer l+1's routing predicted from layer l's
hidden state, by a frozen copy of layer l+1's router plus a residual MLP (SiLU) whose last layer
starts at zero — so before training it *is* the cloned router — trained online by :meth:`distill`
against the true router's distribution at l+1."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .device import to_numpy


class LookaheadPredictor(torch.nn.Module):
    """Predicts layer l+1's routing from layer l's hidden state ``h [T, hidden]``. ``router``
    ``[hidden, E]`` and ``bias [E]``: layer l+1's (cloned, frozen); ``width``: the residual MLP's."""

    name = "lookahead"

    def __init__(self, router: torch.Tensor, bias: torch.Tensor | None, top_k: int, width: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.noise = 1e-3  # RMS error of the predicted logits, as last measured by distill()
        hidden, experts = router.shape
        self.register_buffer("router", router.detach().clone())
        self.register_buffer("bias", (bias if bias is not None else torch.zeros(experts)).detach().clone().to(router.dtype))
        self.top_k = top_k
        g = torch.Generator().manual_seed(seed)
        self.up = torch.nn.Linear(hidden, width)
        self.down = torch.nn.Linear(width, experts)
        with torch.no_grad():
            self.up.weight.copy_(torch.randn(width, hidden, generator=g) * hidden ** -0.5)
            self.up.bias.zero_()
            self.down.weight.zero_()  # zero-initialised residual: starts as the cloned router
            self.down.bias.zero_()
        self.to(router.device)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.router + self.bias + self.down(F.silu(self.up(h)))

    @torch.no_grad()
    def membership(self, h: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``[T, E]`` each expert's chance of being in the token's top-k. The router's top-k is a
        deterministic cut of its logits, so the uncertainty is the prediction's own: Gaussian-like
        logit noise of scale :attr:`noise` (the RMS logit error :meth:`distill` measured; tiny before
        any, i.e. the predicted top-k) around the cut between the k-th and (k+1)-th predicted logits;
        rows rescaled to sum to ``k``. (``k × softmax`` would spread a flat router's mass over every
        expert: 90–130% count error on the runtime's skewed routing, against 3–9% for the top-k.)
        ``z``: the logits when the caller has them."""
        z = self.logits(h) if z is None else z
        if self.top_k >= z.shape[1]:  # every expert, every token
            return torch.ones_like(z)
        top = torch.topk(z, self.top_k + 1, dim=-1).values
        cut = top[:, self.top_k - 1:self.top_k + 1].mean(dim=-1, keepdim=True)
        scale = self.noise if math.isfinite(self.noise) and self.noise > 1e-6 else 1e-6
        m = torch.sigmoid(1.702 * (z - cut) / scale)  # the logistic approximation of the normal CDF
        return m * (self.top_k / m.sum(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def expected_counts(self, h: torch.Tensor, z: torch.Tensor | None = None) -> np.ndarray:
        """``[E]`` expected tokens per expert for this rank's batch (expectations, not argmax, so the
        planner sees uncertainty as spread load; sums to ``T·k``). Expected counts under half a token
        are dropped (the rest rescaled; all kept when every one is under): the cost model charges an
        active expert its roofline floor however few tokens it gets, and dust on every expert made
        every copy look unprofitable."""
        c = to_numpy(self.membership(h, z).sum(dim=0)).astype(np.float64)
        total, kept = c.sum(), np.where(c >= 0.5, c, 0.0)
        return kept * (total / kept.sum()) if kept.sum() > 0 else c

    @torch.no_grad()
    def predict(self, h: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """``(expected counts [E], predicted top-k ids [T, k])`` from one evaluation of the logits."""
        z = self.logits(h)
        return self.expected_counts(h, z), torch.topk(z, self.top_k, dim=-1).indices

    @torch.no_grad()
    def topk(self, h: torch.Tensor) -> torch.Tensor:
        return torch.topk(self.logits(h), self.top_k, dim=-1).indices

    def distill(self, h: torch.Tensor, target_logits: torch.Tensor, steps: int = 100, lr: float = 3e-3) -> list[float]:
        """Train the residual with cross-entropy against the true router's distribution
        ``softmax(target_logits)`` at layer l+1 for the same tokens, then measure the logits' RMS
        error (:attr:`noise`); returns the losses."""
        target = torch.softmax(target_logits.detach(), dim=-1)
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=lr)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = -(target * torch.log_softmax(self.logits(h.detach()), dim=-1)).sum(dim=-1).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():  # how far off the logits still are: the spread membership() assumes;
            # centred per token, as softmax (and the top-k) ignore a token's common offset
            d = self.logits(h) - target_logits
            self.noise = float((d - d.mean(dim=-1, keepdim=True)).pow(2).mean().sqrt())
        return losses


def topk_recall(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over tokens of ``|predicted top-k ∩ true top-k| / k`` (``[T, k]`` id tensors)."""
    if true.numel() == 0:
        return 1.0
    hit = (predicted[:, :, None] == true[:, None, :]).any(dim=2).float()
    return float(hit.mean())
