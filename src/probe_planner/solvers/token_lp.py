"""``lp-tokens``: the exact token split for a fixed placement (the token-assignment LP, LPLB's
problem), and the polish every optimizer applies to a placement with it."""

from __future__ import annotations

import math
import time

import numpy as np

from ..problem import Problem
from . import SolverResult
from .decode import drop_unused, model_routes
from .greedy import prepare, run_kernel
from .layers import SECONDS_PER_COLUMN, LayerParts, finish, greedy_start, layer_makespan, model_size, remaining, split_layers
from .lp_backends import ModelSolution, solve_highs
from .milp_model import build_layer_model
from .registry import Option, register


def token_lp(prob: Problem, lay: int, replicas: np.ndarray, time_limit_s: float) -> tuple[LayerParts | None, ModelSolution]:
    """Best token split for a fixed placement (every host active), then integral routes."""
    hosts = prob.topology.native.copy()
    hosts[replicas[:, 2], replicas[:, 0]] = True
    m = build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params, fixed_hosts=hosts)
    sol = solve_highs(m, time_limit_s, relax=True)
    if sol.x is None:
        return None, sol
    routes, tok = model_routes(m, prob, lay, sol.x, replicas)
    rep = drop_unused(replicas, routes, hosts.shape)
    return LayerParts(rep, routes, tok, layer_makespan(prob, lay, rep, routes, tok)), sol


def polished_placement(prob: Problem, lay: int, replicas: np.ndarray, end: float) -> LayerParts | None:
    """The token LP on a placement, then again without the replicas it gave fewer tokens than
    the roofline floor (``alpha·p < beta``: such a host pays ``beta`` anyway), the better of the
    two; both by ``end`` (a ``perf_counter`` time)."""
    t0 = time.perf_counter()
    cand, _ = token_lp(prob, lay, replicas, remaining(end))
    # the second LP is the same size: run it only if it fits in what is left
    if cand is None or remaining(end) < time.perf_counter() - t0 or cand.replicas.shape[0] == 0:
        return cand
    g, e_all = prob.loads.shape[1:]
    proc = np.bincount(cand.routes[:, 2] * e_all + cand.routes[:, 1], weights=cand.tokens, minlength=g * e_all)
    rep = cand.replicas
    small = proc[rep[:, 2] * e_all + rep[:, 0]] * prob.params.alpha_us < prob.params.beta_us
    if not small.any():
        return cand
    fewer, _ = token_lp(prob, lay, rep[~small], remaining(end))
    return fewer if fewer is not None and fewer.makespan_us < cand.makespan_us else cand


def polished_start(prob: Problem) -> list[LayerParts]:
    """:func:`greedy_start`, each layer's token split polished exactly (:func:`polished_placement`) where
    the layer's share of the budget allows: a few ms, often 5-10% better."""
    parts = greedy_start(prob)
    L = len(parts)
    for lay in range(L):
        left = remaining(prob.deadline) / (L - lay)
        if left < SECONDS_PER_COLUMN * model_size(prob, lay, copies=False):
            continue
        cand = polished_placement(prob, lay, parts[lay].replicas, time.perf_counter() + left)
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    return parts


@register("lp-tokens", Option("base", "choice", "static", choices=("static", "greedy")), prepare=prepare)
def solve_lp_tokens(prob: Problem, base: str = "static") -> SolverResult:
    """Token-assignment LP on the placement of ``base`` (``static`` or ``greedy``)."""
    parts = split_layers(prob, run_kernel(prob, 0)) if base == "static" else greedy_start(prob)
    L = len(parts)
    for lay in range(L):
        if remaining(prob.deadline) <= 0:
            break
        cand, _ = token_lp(prob, lay, parts[lay].replicas, remaining(prob.deadline) / (L - lay))
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    return finish(prob, parts, np.full(L, -math.inf), [False] * L, {"base": base})

