"""``static``: the baseline placement, no replicas (what plain expert parallelism does)."""

from __future__ import annotations

from ..problem import Problem
from . import SolverResult
from .greedy import prepare, run_kernel
from .registry import register


@register("static", prepare=prepare)
def solve_static(prob: Problem) -> SolverResult:
    """Baseline placement, no replicas; each expert's tokens go to its native host (water-filled,
    locality first, when the placement hosts it more than once)."""
    res = run_kernel(prob, max_moves=0)
    res.info["message"] = "baseline placement"
    return res
