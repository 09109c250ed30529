"""``milp``: the exact MILP per layer (HiGHS or OR-Tools), started from greedy's plan with its
token split polished; returns the incumbent, the best bound and the gap."""

from __future__ import annotations

import math

import numpy as np

from ..problem import Problem
from . import SolverResult
from .decode import parts_from_solution, warm_start
from .greedy import prepare
from .layers import OVERRUN_PER_COLUMN, SECONDS_PER_COLUMN, LayerParts, finish, model_size, remaining
from .lp_backends import BACKENDS, get_backend
from .milp_model import build_layer_model
from .registry import Option, register
from .token_lp import polished_start


def milp_layers(prob: Problem, parts: list[LayerParts], backend: str, mip_rel_gap: float, skip_small: bool,
                 skip: set[int] | frozenset[int] = frozenset()):
    """Each layer's MILP (except those in ``skip``) in its share of the time left; ``skip_small``:
    skip a layer whose share cannot build and search its model (see ``SECONDS_PER_COLUMN``)."""
    solve_backend = get_backend(backend)
    L = len(parts)
    bounds = np.full(L, -math.inf)
    proven = [False] * L
    for lay in range(L):
        left = remaining(prob.deadline) / (L - lay)
        if left <= 0:
            break
        if lay in skip or (skip_small and left < SECONDS_PER_COLUMN * model_size(prob, lay)):
            continue
        # Token flows continuous: the model is then a relaxation of the whole-token problem (its bound
        # stays valid), the rounded plan is re-scored, and "optimal" is claimed only when that plan is
        # within the gap of the bound. Measured 2-4x faster proofs than whole-token flows on 64x8,
        # the rounded plans within 1e-4 of the bound.
        m = build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params)
        # Margins: backends overrun their limit by ~15% plus ~2.5 us per column (measured: HiGHS given
        # 35 ms on a 64x8 layer returns after 41 ms), and the answer must still be extracted.
        limit = 0.85 * remaining(prob.deadline) / (L - lay) - OVERRUN_PER_COLUMN * m.num_cols
        if skip_small and limit <= 0:
            continue
        sol = solve_backend(m, limit, warm=warm_start(m, prob, lay, parts[lay]),
                            mip_rel_gap=mip_rel_gap, cutoff=parts[lay].makespan_us * (1 + 1e-6) + 1e-6)
        bounds[lay] = sol.bound
        if sol.x is not None:
            cand = parts_from_solution(m, prob, lay, sol.x)
            if cand.makespan_us < parts[lay].makespan_us:
                parts[lay] = cand
        proven[lay] = sol.status == "optimal"
    return bounds, proven


MILP_OPTIONS = (
    Option("backend", "choice", "highs", choices=tuple(sorted(BACKENDS))),
    Option("mip_rel_gap", "float", 1e-4, lo=0.0, hi=0.5),
)


@register("milp", *MILP_OPTIONS, prepare=prepare)
def solve_milp(prob: Problem, backend: str = "highs", mip_rel_gap: float = 1e-4) -> SolverResult:
    """Exact MILP per layer, started from greedy's plan with its token split polished by the token
    LP (the incumbent and cutoff); returns the incumbent, bound and gap.
    ``backend``: ``"highs"`` or ``"ortools"``; ``mip_rel_gap``: relative gap that counts as optimal."""
    parts = polished_start(prob)
    bounds, proven = milp_layers(prob, parts, backend, mip_rel_gap, skip_small=False)
    return finish(prob, parts, bounds, proven, {"backend": backend}, rel_gap=mip_rel_gap)

