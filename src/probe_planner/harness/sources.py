"""Where a scenario's loads come from: ``[steps, layers, G, E]`` streams of batches.

- ``qwen3-prefill``: the real Qwen3-30B-A3B prefill trace cut into contiguous token windows, one per
  step (``../shared/traces``);
- ``qwen15-decode``: the real Qwen1.5-MoE-A2.7B decode steps (5 layers, 60 experts, 11–25 tokens);
- ``zipf``: synthetic Zipf(``skew``) popularity whose hot set moves every ``shift_every`` steps
  (a new random permutation), Poisson counts, ``tokens`` per rank per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TraceError
from ..traces import qwen3_prefill_windows, qwen15_decode_steps


@dataclass(frozen=True)
class Source:
    """A load source: the model card its loads are for (None: any), and a note for reports."""

    model: str | None
    note: str


SOURCES = {
    "qwen3-prefill": Source("qwen3-30b-a3b", "real Qwen3-30B-A3B ShareGPT prefill, token windows per step"),
    "qwen15-decode": Source("qwen1.5-moe-a2.7b", "real Qwen1.5-MoE-A2.7B GSM8K decode steps"),
    "zipf": Source(None, "synthetic Zipf popularity, hot set moving every few steps"),
}


def load_source(name: str, num_ranks: int, num_experts: int, steps: int, layers: int, trace_dir=None, *,
                tokens: int = 2048, top_k: int = 8, skew: float = 1.2, shift_every: int = 2,
                seed: int = 0) -> np.ndarray:
    """``[steps, layers, G, E]`` loads of source ``name`` (see the module doc)."""
    if name not in SOURCES:
        raise TraceError(f"unknown load source {name!r}; have {sorted(SOURCES)}")
    if name == "qwen3-prefill":
        out = qwen3_prefill_windows(num_ranks, steps, trace_dir)
    elif name == "qwen15-decode":
        out = qwen15_decode_steps(num_ranks, trace_dir)[:steps]
    else:
        rng = np.random.default_rng(seed)
        pop = 1.0 / np.arange(1, num_experts + 1) ** skew
        out = np.zeros((steps, layers, num_ranks, num_experts))
        perms = [[rng.permutation(num_experts) for _ in range(layers)] for _ in range((steps + shift_every - 1) // shift_every)]
        for s in range(steps):
            for lay in range(layers):
                p = pop[perms[s // shift_every][lay]]
                out[s, lay] = rng.poisson(p / p.sum() * tokens * top_k, size=(num_ranks, num_experts))
    if out.shape[-1] != num_experts:
        raise TraceError(f"source {name} has {out.shape[-1]} experts, the model card {num_experts}")
    return np.ascontiguousarray(out[:, :layers])
