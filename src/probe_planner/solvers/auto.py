"""``auto``: anytime — greedy's plan at once, then the token-LP polish, the LP rounding with a
placement search, and each layer's MILP, as the budget allows; each phase keeps a layer's plan
only if it is better."""

from __future__ import annotations

import math

import numpy as np

from ..problem import Problem
from . import SolverResult
from .greedy import prepare
from .layers import finish, greedy_fallback, greedy_first, model_size, remaining, too_short_for_lp
from .lp_backends import lp_solver_for
from .lp_round import lp_round_layer, lp_seconds
from .milp import MILP_OPTIONS, milp_layers
from .registry import register
from .token_lp import polished_start


@register("auto", *MILP_OPTIONS, prepare=prepare)
def solve_auto(prob: Problem, backend: str = "highs", mip_rel_gap: float = 1e-4) -> SolverResult:
    """Anytime: the greedy plan at once; its token split polished by the token LP
    (:func:`polished_placement`); where a layer's share of the budget is under ~1 s (too short for
    the MILP's root) but holds the LP relaxation twice, the LP rounded (as ``lp-round``) and a local
    search over the rounded placement (:mod:`placement_search`); then each layer's MILP (HiGHS
    solves the LP relaxation at the root and rounds it with its own heuristics) while the budget
    lasts. Every phase keeps a layer's plan only if it is better. A phase that cannot be built and
    searched in the layer's share of the budget is skipped, so the budget is not overrun by it."""
    first = greedy_first(prob)
    if too_short_for_lp(prob):
        return greedy_fallback(first, "auto")
    parts, notes = polished_start(prob, first)
    L = len(parts)
    lp_bounds = np.full(L, -math.inf)
    searched = set()
    for lay in range(L):  # LP rounding where it takes a small part of the layer's share
        left = remaining(prob.deadline) / (L - lay)
        cols = model_size(prob, lay)
        lp_s = lp_seconds(cols, lp_solver_for(prob.topology.num_nodes, cols) == "ipm")
        if lp_s <= _LP_SHARE * left and left < _LP_BEFORE_S:
            # the MILP after the search needs twice its root LP's time, else the search takes it all
            milp_fits = 0.85 * (1 - _SEARCH_SHARE) * left >= 2 * lp_s
            lp_bounds[lay] = lp_round_layer(prob, lay, parts, left, search=_SEARCH_SHARE if milp_fits else 0.9)
            if not milp_fits:
                searched.add(lay)
    bounds, proven, short = milp_layers(prob, parts, backend, mip_rel_gap, skip=searched)
    lp_done = int(np.isfinite(lp_bounds).sum())
    notes.append(f"LP rounding on {lp_done} of {L} layer(s), MILP on {L - short - len(searched)}; "
                 + ("the budget ran out" if short else "each phase within its share of the budget"))
    return finish(prob, parts, np.maximum(bounds, lp_bounds), proven, {"backend": backend}, rel_gap=mip_rel_gap,
                  message="; ".join(notes))


# auto runs the LP rounding when its LP is expected to take at most half of the layer's share and
# the share is under _LP_BEFORE_S. Measured on this 2-core class of machine: with 0.3-1 s per layer
# HiGHS's MILP rarely gets past its root (64x8 Zipf: 1.6-2.4 s) and the rounding gave up to 3.4%
# shorter makespans on five 64x8 layers (Zipf, Switch trace; one 0.4% longer), no change on four
# 128x8 layers; with 2 s the MILP needs all of it (128x8 Zipf: 2% longer with the LP phase first).
_LP_SHARE = 0.5
_LP_BEFORE_S = 1.2


# ... and then searches the placement's neighbourhood until this share of the layer's time is used
# (0.9 when what is left cannot hold the MILP's root LP twice: HiGHS given 0.32 s for a 128x8 MILP
# returned after 0.43 s); copies the LP gave less than _SEARCH_MIN_Z are not candidates.
_SEARCH_SHARE = 0.6
