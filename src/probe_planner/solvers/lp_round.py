"""``lp-round``: the LP relaxation (its value a lower bound), its placement rounded in several
orders with a slot/window repair, each rounding polished by the token LP; and the same step with a
placement search after it, which ``auto`` runs."""

from __future__ import annotations

import math
import time

import numpy as np

from ..problem import Problem
from ..window import copies_fit_np
from . import SolverResult
from .layers import LayerPlan, finish, greedy_fallback, greedy_first, model_size, nothing_fits, overrun_s, phase_fits, remaining
from .lp_backends import lp_solver_for, solve_highs
from .milp_model import LayerModel, build_layer_model, copies_active
from .placement_search import improve_placement
from .registry import register
from .split_lp import prepare
from .token_lp import polished_placement, polished_start


def round_placement(m: LayerModel, prob: Problem, zval: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """Round an LP placement: each rank takes as many copies as its LP slot use rounds to (at
    least one where the LP put any real weight), in order of ``key`` (default: the LP value ``z``),
    largest first, while its slots and both windows allow (a copy that does not fit moves on to the
    next candidate)."""
    topo, p = prob.topology, prob.params
    g = topo.num_ranks
    node = topo.node_of
    want = np.bincount(m.copies[:, 2], weights=zval, minlength=g)
    quota = np.minimum(np.where(want > 0.05, np.maximum(np.round(want), 1), 0), topo.slots).astype(np.int64)
    used = np.zeros(g, dtype=np.int64)
    cnt = np.zeros((g, 4))  # copies in intra, in inter, out intra, out inter
    taken = set()
    out = []
    order = np.argsort(-(zval if key is None else key), kind="stable")
    for c in order[zval[order] > 1e-6]:
        e, u, r = (int(v) for v in m.copies[c])
        if (e, r) in taken or used[r] >= quota[r]:
            continue
        k = 0 if node[u] == node[r] else 1
        unit = p.copy_intra_us if k == 0 else p.copy_inter_us
        if not (copies_fit_np(cnt[r, k] + 1, unit, prob.windows_us[r]) and copies_fit_np(cnt[u, 2 + k] + 1, unit, prob.windows_us[u])):
            continue
        cnt[r, k] += 1
        cnt[u, 2 + k] += 1
        used[r] += 1
        taken.add((e, r))
        out.append((e, u, r))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def rounding_keys(m: LayerModel, prob: Problem, lay: int, x: np.ndarray) -> list[np.ndarray]:
    """Orders in which to round an LP solution's copies: by ``z``; by the tokens the LP gives the
    replica; by ``z`` times the expert's load. Measured on 8 Zipf 64x8 layers (rounded plan after
    the token LP / optimum): 1.168, 1.050 and 1.092 on average, 1.042 for the best of the three per
    layer — ``z`` alone ranks a hot expert's copies, which the LP spreads thinly over many ranks,
    behind whole copies of cold experts, and the hot expert's source window is then spent."""
    g = prob.topology.num_ranks
    hkey = m.hosts[:, 0] * g + m.hosts[:, 1]
    H = hkey.size
    if m.flows is None:
        proc = np.maximum(x[m.y0:m.y0 + H], 0.0)
    else:
        proc = np.bincount(np.searchsorted(hkey, m.flows[:, 1] * g + m.flows[:, 2]),
                           weights=np.maximum(x[m.y0:m.a0], 0.0), minlength=H)
    zval = x[m.z0:m.y0]
    on_copy = proc[np.searchsorted(hkey, m.copies[:, 0] * g + m.copies[:, 2])]
    return [zval, on_copy, zval * prob.loads[lay].sum(axis=0)[m.copies[:, 0]]]


_SEARCH_MIN_Z = 0.02


def lp_round_layer(prob: Problem, lay: int, parts: list[LayerPlan], time_s: float, search: float = 0.0) -> float:
    """LP relaxation of one layer, rounded in each order of :func:`rounding_keys` and polished
    (:func:`polished_placement`) within ``time_s``; then, until ``search`` x ``time_s`` has passed, a
    local search (:mod:`placement_search`) over the copies the LP put weight on. Improves
    ``parts[lay]`` in place and returns the LP bound (-inf when the LP did not finish)."""
    start = time.perf_counter()
    end = min(prob.deadline, start + time_s)
    if not phase_fits(prob, time_s, 0):  # before sizing the model, which alone costs ms on big layers
        return -math.inf
    cols = model_size(prob, lay)
    lp_solver = lp_solver_for(prob.topology.num_nodes, cols)
    if min(time_s, remaining(prob.deadline)) < lp_seconds(cols, lp_solver == "ipm") or not phase_fits(prob, time_s, cols):
        return -math.inf
    m = copies_active(build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params))
    lp_end = end - overrun_s(m.num_cols, lp_solver)  # HiGHS answers its interrupt a little late
    sol = solve_highs(m, 0.85 * remaining(lp_end), relax=True, deadline=lp_end, lp_solver=lp_solver)
    if sol.x is None or remaining(end) <= 0:
        return sol.bound
    zval = sol.x[m.z0:m.y0]
    keys = rounding_keys(m, prob, lay, sol.x)
    tried = set()
    for key in keys:
        placement = round_placement(m, prob, zval, key)
        sig = placement[np.lexsort(placement.T)].tobytes()
        if sig in tried or remaining(end) <= 0:
            continue
        tried.add(sig)
        cand = polished_placement(prob, lay, placement, end)
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    stop = min(end, start + search * time_s)
    if remaining(stop) > 0:
        order = np.argsort(-keys[1], kind="stable")  # by the LP's tokens on the copy
        cands = m.copies[order[zval[order] > _SEARCH_MIN_Z]]
        parts[lay] = improve_placement(prob, parts[lay], cands,
                                       lambda reps: polished_placement(prob, lay, reps, stop), stop)
    return sol.bound


def lp_seconds(columns: int, ipm: bool = False) -> float:
    """Expected time of a layer's LP rounding (LP relaxation and its roundings), measured on a
    2-core CI-class machine: with the simplex, 64x8 Zipf (2.5k columns) 65-90 ms, 128x8 (5k columns)
    0.2-0.4 s — superlinear; with the interior point (``ipm``: large models across nodes,
    :func:`lp_solver_for`), 18.4k columns 2.6-8 s, 73.7k 35-51 s."""
    if ipm:
        return 2e-6 * columns ** 1.5
    return 3e-5 * columns * max(1.0, columns / 2500.0)


@register("lp-round", prepare=prepare)
def solve_lp_round(prob: Problem) -> SolverResult:
    """LP relaxation (its value is a lower bound), placement rounded in three orders with a
    slot/window repair, exact token LP on each rounded placement and on greedy's; the best plan."""
    first = greedy_first(prob)
    if nothing_fits(prob):
        return greedy_fallback(first, "lp-round")
    parts, notes = polished_start(prob, first)  # on 256x32 Zipf layers better than any rounding (1.476 vs 1.520)
    L = len(parts)
    bounds = np.full(L, -math.inf)
    for lay in range(L):
        bounds[lay] = lp_round_layer(prob, lay, parts, remaining(prob.deadline) / (L - lay))
    short = int(np.isinf(bounds).sum())
    notes.append(f"LP relaxation not solved on {short} of {L} layer(s) (budget too short): greedy's plan kept there"
                 if short else "LP relaxation solved and rounded on every layer")
    return finish(prob, parts, bounds, [False] * L, {"lp_bound_us": float(bounds.sum())}, message="; ".join(notes))

