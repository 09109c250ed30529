"""The batch-group size ``b``: how many batches go through a layer together, found by search.

A larger group spreads each expert load over more tokens (its compute hides more of the next layer's
loads) but every batch in it waits for the whole pass: latency grows with ``b``. :func:`choose_group`
plans each candidate ``b`` and keeps the one with the highest predicted throughput whose predicted pass
latency meets the cap (the planning model, :mod:`.plan`; candidates: powers of two up to what the
activations leave room for, and that largest group itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import OffloadError
from .exact import plan_exact
from .greedy import plan_greedy
from .plan import OffloadPlan
from .problem import OffloadProblem, forecast

PLANNERS = {"greedy": plan_greedy, "exact": plan_exact}
NEAR = 0.01  # groups within 1% of the best throughput count as ties; the smallest (lowest latency) wins


@dataclass(frozen=True)
class GroupChoice:
    """The chosen plan, and every candidate's ``(group, predicted pass µs, predicted tokens/s)`` in
    ``tried``; ``message`` says why this one (or that none met the cap)."""

    plan: OffloadPlan
    tried: tuple[tuple[int, float, float], ...]
    message: str


def candidate_groups(problem: OffloadProblem, most: int | None = None) -> list[int]:
    """Powers of two up to ``min(most, problem.max_group())``, and that bound itself."""
    top = problem.max_group() if most is None else min(int(most), problem.max_group())
    if top < 1:
        raise OffloadError(f"the largest group to try must be >= 1, got {most!r}")
    out = [1 << i for i in range(int(math.log2(top)) + 1)]
    return out if out[-1] == top else out + [top]


def choose_group(problem: OffloadProblem, freq: np.ndarray, latency_cap_us: float, groups: list[int] | None = None,
                 planner: str = "greedy") -> GroupChoice:
    """Plan every candidate group and keep the fastest (tokens/s) whose predicted pass latency is at most
    ``latency_cap_us`` (of those within 1% of the fastest, the smallest group); when none is, the
    smallest group tried (the lowest latency there is), saying so."""
    if not (isinstance(latency_cap_us, (int, float)) and not isinstance(latency_cap_us, bool) and latency_cap_us > 0):
        raise OffloadError(f"latency_cap_us must be a number > 0 (inf allowed), got {latency_cap_us!r}")
    if planner not in PLANNERS:
        raise OffloadError(f"planner must be one of {sorted(PLANNERS)}, got {planner!r}")
    f = problem.check_freq(freq)
    cands = candidate_groups(problem) if groups is None else sorted({problem.check_group(g) for g in groups})
    plans = [PLANNERS[planner](problem, forecast(problem, f, g)) for g in cands]
    tried = tuple((p.group, p.objective_us, p.tokens_per_s) for p in plans)
    ok = [p for p in plans if p.objective_us <= latency_cap_us]
    if not ok:
        return GroupChoice(plans[0], tried, f"no group meets the {latency_cap_us / 1e3:.1f} ms cap; group {plans[0].group} "
                                            f"({plans[0].objective_us / 1e3:.1f} ms) is the fastest pass")
    top = max(p.tokens_per_s for p in ok)
    best = min((p for p in ok if p.tokens_per_s >= (1.0 - NEAR) * top), key=lambda p: p.group)  # near-ties: lower latency
    return GroupChoice(best, tried, f"group {best.group}: {best.tokens_per_s:.3g} tokens/s predicted, pass "
                                    f"{best.objective_us / 1e3:.1f} ms <= cap {latency_cap_us / 1e3:.1f} ms, of {len(cands)} tried")
