"""``lp-tokens``: the exact token split for a fixed placement (the token-assignment LP, LPLB's
problem), and the polish every optimizer applies to a placement with it."""

from __future__ import annotations

import math
import time

import numpy as np

from ..problem import Problem
from . import SolverResult
from .decode import drop_unused, model_routes
from .greedy import run_kernel
from .layers import (
    LayerPlan,
    finish,
    greedy_fallback,
    greedy_first,
    greedy_start,
    hosts_of,
    layer_makespan,
    model_size,
    nothing_fits,
    phase_fits,
    remaining,
    split_layers,
)
from .lp_backends import ModelSolution, solve_highs
from .milp_model import build_layer_model
from .registry import Option, register
from .split_lp import exact_split, prepare


def token_lp(prob: Problem, lay: int, replicas: np.ndarray, end: float) -> tuple[LayerPlan | None, ModelSolution | None]:
    """Best token split for a fixed placement (every host active), then integral routes; by ``end``
    (a ``perf_counter`` time), else ``(None, None)`` without starting when the LP cannot fit."""
    hosts = hosts_of(prob, replicas)
    # the native placement's token LP plus ~4 columns a replica: close enough to gate on, and cheap
    if not phase_fits(prob, remaining(end), 0) or \
            not phase_fits(prob, remaining(end), model_size(prob, lay, copies=False) + 4 * replicas.shape[0]):
        return None, None
    m = build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params, fixed_hosts=hosts)
    sol = solve_highs(m, remaining(end), relax=True, deadline=end)
    if sol.x is None:
        return None, sol
    routes, tok = model_routes(m, prob, lay, sol.x, replicas)
    rep = drop_unused(replicas, routes, hosts.shape)
    return LayerPlan(rep, routes, tok, layer_makespan(prob, lay, rep, routes, tok)), sol


def best_split(prob: Problem, lay: int, replicas: np.ndarray, end: float) -> LayerPlan | None:
    """The token LP's optimum on a placement by ``end``: compiled (:mod:`.split_lp`, well under a
    millisecond on one node) where its dense tableau fits, else HiGHS; None when neither fits."""
    cand = exact_split(prob, lay, replicas, end)
    return cand if cand is not None else token_lp(prob, lay, replicas, end)[0]


def polished_placement(prob: Problem, lay: int, replicas: np.ndarray, end: float) -> LayerPlan | None:
    """The token LP on a placement, then :func:`without_idle_floor`; both by ``end`` (a
    ``perf_counter`` time). None when not even the first fits."""
    t0 = time.perf_counter()
    cand = best_split(prob, lay, replicas, end)
    # the second LP is the same size: run it only if it fits in what is left
    if cand is None or remaining(end) < time.perf_counter() - t0:
        return cand
    return without_idle_floor(prob, lay, cand, end)


def without_idle_floor(prob: Problem, lay: int, cand: LayerPlan, end: float) -> LayerPlan:
    """``cand`` (a token-LP plan) or, if better, the token LP again without the replicas it gave
    fewer tokens than the roofline floor (``alpha·p < beta``: the LP charges every host ``beta``, so
    it keeps such a replica where dropping it and re-splitting is shorter)."""
    if cand.replicas.shape[0] == 0:
        return cand
    g, e_all = prob.loads.shape[1:]
    proc = np.bincount(cand.routes[:, 2] * e_all + cand.routes[:, 1], weights=cand.tokens, minlength=g * e_all)
    rep = cand.replicas
    small = proc[rep[:, 2] * e_all + rep[:, 0]] * prob.params.alpha_us < prob.params.beta_us
    if not small.any():
        return cand
    fewer = best_split(prob, lay, rep[~small], end)
    return fewer if fewer is not None and fewer.makespan_us < cand.makespan_us else cand


def polished_start(prob: Problem, first: SolverResult) -> tuple[list[LayerPlan], list[str]]:
    """:func:`greedy_start` from greedy's plan ``first``, each layer's token split polished exactly
    (:func:`polished_placement`) where the layer's share of the budget allows: a few ms, often
    5-10% better. Also notes on what the time left out, for the plan's message."""
    parts = greedy_start(prob, first)
    notes = [] if first.info["finished"] else ["time limit inside greedy: returned greedy's partial plan"]
    L = len(parts)
    polished = 0
    for lay in range(L):
        cand = polished_placement(prob, lay, parts[lay].replicas, time.perf_counter() + remaining(prob.deadline) / (L - lay))
        polished += cand is not None
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    if polished < L:
        notes.append(f"budget too short for the token LP on {L - polished} of {L} layer(s): greedy's split kept there")
    return parts, notes


@register("lp-tokens", Option("base", "choice", "static", choices=("static", "greedy")), prepare=prepare)
def solve_lp_tokens(prob: Problem, base: str = "static") -> SolverResult:
    """Token-assignment LP on the placement of ``base`` (``static`` or ``greedy``): compiled where
    it fits (:func:`best_split`), HiGHS otherwise, each layer in its share of the budget."""
    first = run_kernel(prob, 0) if base == "static" else greedy_first(prob)
    if nothing_fits(prob):
        return greedy_fallback(first, "lp-tokens") if base == "greedy" else \
            SolverResult(first.replicas, first.route_idx, first.route_tok,
                         dict(first.info, status="heuristic", message="budget too short for the token LP: the static plan"))
    parts = split_layers(prob, first) if base == "static" else greedy_start(prob, first)
    L = len(parts)
    solved = 0
    for lay in range(L):
        cand = best_split(prob, lay, parts[lay].replicas, time.perf_counter() + remaining(prob.deadline) / (L - lay))
        solved += cand is not None
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    msg = "token LP solved on every layer" if solved == L else \
        f"budget too short for the token LP on {L - solved} of {L} layer(s): {base}'s plan kept there"
    return finish(prob, parts, np.full(L, -math.inf), [False] * L, {"base": base}, message=msg)
