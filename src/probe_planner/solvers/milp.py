"""``milp``: the exact MILP per layer (HiGHS or OR-Tools), started from greedy's plan with its
token split polished; returns the incumbent, the best bound and the gap."""

from __future__ import annotations

import math
import time

import numpy as np

from ..problem import Problem
from . import SolverResult
from .decode import parts_from_solution, warm_start
from .layers import LayerPlan, finish, greedy_fallback, greedy_first, model_size, nothing_fits, overrun_s, phase_fits, remaining
from .lp_backends import BACKENDS, backend_cost, get_backend, lp_solver_for
from .milp_model import build_layer_model
from .registry import Option, register
from .split_lp import prepare
from .token_lp import polished_start


def milp_layers(prob: Problem, parts: list[LayerPlan], backend: str, mip_rel_gap: float,
                skip: set[int] | frozenset[int] = frozenset()) -> tuple[np.ndarray, list[bool], int]:
    """Each layer's MILP (except those in ``skip``) in its share of the time left, skipping a layer
    whose share cannot build and search its model (:func:`phase_fits`). Returns the layers' bounds,
    whether each was proven optimal, and how many layers were skipped for time."""
    solve_backend = get_backend(backend)
    L = len(parts)
    bounds = np.full(L, -math.inf)
    proven = [False] * L
    short = 0
    for lay in range(L):
        if lay in skip:
            continue
        left = remaining(prob.deadline) / (L - lay)
        if not phase_fits(prob, left, 0) or not phase_fits(prob, left, model_size(prob, lay) * backend_cost(backend)):
            short += 1
            continue
        # Token flows continuous: the model is then a relaxation of the whole-token problem (its bound
        # stays valid), the rounded plan is re-scored, and "optimal" is claimed only when that plan is
        # within the gap of the bound. Measured 2-4x faster proofs than whole-token flows on 64x8,
        # the rounded plans within 1e-4 of the bound.
        m = build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params)
        # Margins: backends overrun their limit by ~15% plus ~2.5 us per column (measured: HiGHS given
        # 35 ms on a 64x8 layer returns after 41 ms), and the answer must still be extracted.
        lp_solver = lp_solver_for(prob.topology.num_nodes, m.num_cols)
        limit = 0.85 * remaining(prob.deadline) / (L - lay) - overrun_s(m.num_cols, lp_solver)
        if limit <= 0:
            short += 1
            continue
        sol = solve_backend(m, limit, warm=warm_start(m, prob, lay, parts[lay]), mip_rel_gap=mip_rel_gap,
                            cutoff=parts[lay].makespan_us * (1 + 1e-6) + 1e-6, deadline=time.perf_counter() + limit,
                            lp_solver=lp_solver)
        bounds[lay] = sol.bound
        if sol.x is not None:
            cand = parts_from_solution(m, prob, lay, sol.x)
            if cand.makespan_us < parts[lay].makespan_us:
                parts[lay] = cand
        proven[lay] = sol.status == "optimal"
    return bounds, proven, short


MILP_OPTIONS = (
    Option("backend", "choice", "highs", choices=tuple(sorted(BACKENDS))),
    Option("mip_rel_gap", "float", 1e-4, lo=0.0, hi=0.5),
)


@register("milp", *MILP_OPTIONS, prepare=prepare)
def solve_milp(prob: Problem, backend: str = "highs", mip_rel_gap: float = 1e-4) -> SolverResult:
    """Exact MILP per layer, started from greedy's plan with its token split polished by the token
    LP (the incumbent and cutoff); returns the incumbent, bound and gap.
    ``backend``: ``"highs"`` or ``"ortools"``; ``mip_rel_gap``: relative gap that counts as optimal."""
    first = greedy_first(prob)
    if nothing_fits(prob):
        return greedy_fallback(first, "milp")
    parts, notes = polished_start(prob, first)
    bounds, proven, short = milp_layers(prob, parts, backend, mip_rel_gap)
    L = len(parts)
    if short:
        notes.append(f"budget too short for the MILP on {short} of {L} layer(s): greedy's plan (polished) kept there")
    elif not all(proven):
        notes.append("time limit: the MILP's incumbent and bound")
    return finish(prob, parts, bounds, proven, {"backend": backend}, rel_gap=mip_rel_gap, message="; ".join(notes))

