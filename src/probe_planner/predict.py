"""Load predictors the runtime and the simulator share: what the next batch (``history``) or the next
layer (``coactivation``) will route, as expected per-expert counts the planner takes (fractional
loads are fine). The runtime adds the gate-initialised lookahead predictor
(:class:`probe_runtime.predictor.LookaheadPredictor`), which needs torch.

Every predictor answers :meth:`predict` with ``[E]`` expected counts for a layer, or ``None`` when
it has nothing to go on (the caller then runs the static plan), and learns from :meth:`observe`.
"""

from __future__ import annotations

import numpy as np

from .errors import LoadsError


def count_error(predicted: np.ndarray, real: np.ndarray) -> float:
    """Relative L1 error of predicted counts: ``Σ|p − r| / Σ r`` (0 when both are empty)."""
    p, r = np.asarray(predicted, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if p.shape != r.shape:
        raise LoadsError(f"predicted counts {list(p.shape)} and real {list(r.shape)} differ in shape")
    total = r.sum()
    return float(np.abs(p - r).sum() / total) if total > 0 else float(np.abs(p).sum() > 0)


class HistoryPredictor:
    """Exponential moving average of each layer's past counts (``decay`` the weight of the past;
    0: the previous batch, what EPLB-style systems and the runtime's ``history`` policy use)."""

    name = "history"

    def __init__(self, num_layers: int, num_experts: int, decay: float = 0.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise LoadsError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = decay
        self.num_layers, self.num_experts = num_layers, num_experts
        self.mean: dict[int, np.ndarray] = {}  # layer -> the average so far ([E], or [G, E] per source)

    def predict(self, layer: int, previous_layer_counts: np.ndarray | None = None) -> np.ndarray | None:
        return self.mean[layer].copy() if layer in self.mean else None

    def observe(self, layer: int, counts: np.ndarray) -> None:
        """Counts ``[E]`` (or ``[G, E]``: every source's, as the runtime's count exchange gives)."""
        c = np.asarray(counts, dtype=np.float64)
        if c.shape[-1] != self.num_experts or not 0 <= layer < self.num_layers:
            raise LoadsError(f"layer {layer} counts of shape {list(c.shape)}: expected layer < {self.num_layers}, "
                             f"{self.num_experts} experts")
        old = self.mean.get(layer)
        self.mean[layer] = c.copy() if old is None or old.shape != c.shape else self.decay * old + (1 - self.decay) * c


class CoactivationPredictor:
    """Layer l+1's counts from layer l's: ``counts_l @ P_l`` with ``P_l[e, f]`` the share of layer-l
    assignments to ``e`` whose token goes to ``f`` at layer l+1 (rows of a cross-layer
    co-occurrence matrix, normalised). Give the matrices (e.g. the shared OLMoE/Mixtral ones,
    :meth:`from_cooccurrence`) or learn them online from per-token expert ids (:meth:`observe_tokens`)."""

    name = "coactivation"

    def __init__(self, num_layers: int, num_experts: int) -> None:
        self.cooc = np.zeros((num_layers, num_experts, num_experts))  # [l+1, e at l, f at l+1]

    @classmethod
    def from_cooccurrence(cls, matrices: dict[int, np.ndarray], num_layers: int) -> CoactivationPredictor:
        """``matrices[l+1]``: ``[E, E]`` counts of (expert at layer l, expert at layer l+1) pairs."""
        e = next(iter(matrices.values())).shape[0]
        out = cls(num_layers, e)
        for lay, m in matrices.items():
            m = np.asarray(m, dtype=np.float64)
            if m.shape != (e, e) or not np.isfinite(m).all() or (m < 0).any():
                raise LoadsError(f"co-occurrence matrix for layer {lay} must be a finite >= 0 [{e}, {e}] array")
            out.cooc[lay] = m
        return out

    def observe_tokens(self, layer: int, ids_before: np.ndarray, ids_after: np.ndarray) -> None:
        """Learn ``P_{layer-1}`` from the top-k ids ``[T, k]`` of the same tokens at layers ``layer-1``
        and ``layer``: each assignment at ``layer-1`` spreads one count over the token's next experts."""
        a, b = np.asarray(ids_before, dtype=np.int64), np.asarray(ids_after, dtype=np.int64)
        k = b.shape[1]
        rows = np.repeat(a.reshape(-1), k)
        cols = np.repeat(b, a.shape[1], axis=0).reshape(-1)
        np.add.at(self.cooc[layer], (rows, cols), 1.0 / k)

    def observe(self, layer: int, counts: np.ndarray) -> None:
        """Counts alone say nothing of co-occurrence (see :meth:`observe_tokens`)."""

    def predict(self, layer: int, previous_layer_counts: np.ndarray | None = None) -> np.ndarray | None:
        if layer == 0 or previous_layer_counts is None:
            return None
        m = self.cooc[layer]
        rows = m.sum(axis=1, keepdims=True)
        if not rows.any():
            return None
        # an expert never seen at layer l spreads its tokens evenly (no evidence either way)
        p = np.divide(m, rows, out=np.full_like(m, 1.0 / m.shape[1]), where=rows > 0)
        return np.asarray(previous_layer_counts, dtype=np.float64) @ p
