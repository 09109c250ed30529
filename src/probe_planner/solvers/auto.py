"""``auto``: anytime — greedy's plan at once, then the token-LP polish, the LP rounding with a
placement search, and each layer's MILP, as the budget allows; each phase keeps a layer's plan
only if it is better."""

from __future__ import annotations

import math
import time

import numpy as np

from ..problem import Problem
from . import SolverResult
from .layers import finish, greedy_fallback, greedy_first, greedy_start, model_size, nothing_fits, phase_fits, remaining, too_short_for_lp
from .lp_backends import lp_solver_for
from .lp_round import lp_round_layer, lp_seconds
from .milp import MILP_OPTIONS, milp_layers
from .registry import register
from .split_search import prepare, search_split_placement


@register("auto", *MILP_OPTIONS, prepare=prepare)
def solve_auto(prob: Problem, backend: str = "highs", mip_rel_gap: float = 1e-4) -> SolverResult:
    """Anytime: the greedy plan at once; its token split made exact by the token LP (compiled,
    :mod:`.split_lp`; :func:`polished_placement`); then per layer, in its share of the budget: where
    no HiGHS phase fits the share (or only a MILP under ~0.5 s would), the placement search on the
    compiled token split (:mod:`.split_search`); where the share is under ~1 s but holds the LP
    relaxation twice, the LP rounded (as ``lp-round``) and a local search over the rounded
    placement (:mod:`.placement_search`); then each layer's MILP (HiGHS solves the LP relaxation at
    the root and rounds it with its own heuristics) while the budget lasts. Every phase keeps a
    layer's plan only if it is better, so ``auto`` is never worse than greedy's plan. A phase that
    cannot be built and searched in the layer's share of the budget is skipped."""
    first = greedy_first(prob)
    if nothing_fits(prob):
        return greedy_fallback(first, "auto")
    # thorough only where it is a small part of the time: at ~1 ms the exact split of greedy's
    # placement pays more (Qwen3 128x8: 5% in 0.3 ms; thorough's 1.4 ms left no time for it)
    parts = greedy_start(prob, first, thorough_cost=_THOROUGH_SHARE_COST)
    notes = [] if first.info["finished"] else ["time limit inside greedy: returned greedy's partial plan"]
    L = len(parts)
    lp_bounds = np.full(L, -math.inf)
    searched = set()
    compiled = 0
    for lay in range(L):
        left = remaining(prob.deadline) / (L - lay)
        end = time.perf_counter() + left
        highs = not too_short_for_lp(prob) and phase_fits(prob, left, 0) and phase_fits(prob, left, model_size(prob, lay))
        cols = model_size(prob, lay) if highs else 0
        lp_s = lp_seconds(cols, lp_solver_for(prob.topology.num_nodes, cols) == "ipm") if highs else math.inf
        rounding = lp_s <= _LP_SHARE * left and left < _LP_BEFORE_S
        if not rounding and (not highs or left < _MILP_MIN_S):
            # no HiGHS phase fits the layer's share, or only a MILP too short to leave its root: the
            # placement search on the compiled token split (its first LP is greedy's exact split)
            parts[lay] = search_split_placement(prob, lay, parts[lay], end)
            searched.add(lay)
            compiled += 1
            continue
        # the compiled search first, in a share: cheap, and a better start and cutoff for HiGHS
        parts[lay] = search_split_placement(prob, lay, parts[lay], time.perf_counter() + _SEARCH_FIRST_SHARE * left)
        left = remaining(prob.deadline) / (L - lay)
        if rounding:  # LP rounding where it takes a small part of the share
            # the MILP after the search needs twice its root LP's time, else the search takes it all
            milp_fits = 0.85 * (1 - _SEARCH_SHARE) * left >= 2 * lp_s
            lp_bounds[lay] = lp_round_layer(prob, lay, parts, left, search=_SEARCH_SHARE if milp_fits else 0.9)
            if not milp_fits:
                searched.add(lay)
    bounds, proven, short = milp_layers(prob, parts, backend, mip_rel_gap, skip=searched)
    lp_done = int(np.isfinite(lp_bounds).sum())
    notes.append(f"compiled placement search on {compiled}, LP rounding on {lp_done} of {L} layer(s), MILP on {L - short - len(searched)}; "
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
# A MILP given less than this per layer rarely gets past its root (64x8: 1.6-2.4 s for the root,
# above); the compiled search uses such a share better.
_MILP_MIN_S = 0.5
# Where HiGHS phases follow, the compiled search gets this share of the layer's time first: on small
# floor-bound layers it finds what the LP rounding misses (relocation chains), and its plan is the
# MILP's cutoff.
_SEARCH_FIRST_SHARE = 0.25
# auto runs greedy's thorough setting only when the time left is this many default kernels' times.
_THOROUGH_SHARE_COST = 40.0


# ... and then searches the placement's neighbourhood until this share of the layer's time is used
# (0.9 when what is left cannot hold the MILP's root LP twice: HiGHS given 0.32 s for a 128x8 MILP
# returned after 0.43 s); copies the LP gave less than _SEARCH_MIN_Z are not candidates.
_SEARCH_SHARE = 0.6
