"""The embedded default problem ``probe-plan demo`` solves: no files needed."""

from __future__ import annotations

import numpy as np

DEMO_MODEL = "qwen3-30b-a3b"
DEMO_CLUSTER = "h100x8"
DEMO_WINDOW_US = 100.0


def demo_loads(num_ranks: int = 8, num_experts: int = 128, tokens_per_rank: int = 2048, top_k: int = 8,
               zipf_s: float = 0.9, seed: int = 0) -> np.ndarray:
    """A realistic skewed prefill load ``[G, E]``: expert popularity follows a Zipf law (real
    traces show hottest/mean 3-12 for Qwen3), each source rank perturbs it (its own prompts), and
    every token picks ``top_k`` distinct experts."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_experts + 1) ** zipf_s
    pop = pop[rng.permutation(num_experts)]
    loads = np.zeros((num_ranks, num_experts))
    for s in range(num_ranks):
        p = rng.dirichlet(pop / pop.sum() * 200.0)
        for _ in range(tokens_per_rank):
            loads[s, rng.choice(num_experts, size=top_k, replace=False, p=p)] += 1
    return loads
