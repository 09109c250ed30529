"""Optimization-based solvers over :mod:`milp_model`: ``milp`` (exact), ``lp-round`` (LP relaxation,
rounded placement, exact token LP) and ``lp-tokens`` (token-assignment LP on a fixed placement).

Every solver here starts from the greedy plan (valid in microseconds), never returns anything worse
than it, and treats running out of time as a status. The MILP models whole tokens when the loads are
integral; the LPs do not, and their routes are made integral by largest remainder per (source,
expert), which keeps every sum exact. Each result is re-scored with the cost model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..cost import evaluate, lower_bound_us
from ..errors import SolverError
from ..problem import Problem
from ..routes import compact_routes, expand_routes
from ..window import copies_fit_np
from . import SolverResult, register
from .greedy import prepare, run_kernel
from .lp_backends import ModelSolution, get_backend, solve_highs
from .milp_model import LayerModel, build_layer_model, copies_active, model_columns, node_flows
from .placement_search import improve_placement


@dataclass
class LayerParts:
    """One layer's answer: replicas ``[R, 3]`` (expert, src, dst), routes ``[N, 3]`` (src, expert, dst),
    tokens ``[N]``, and its makespan under the cost model."""

    replicas: np.ndarray
    routes: np.ndarray
    tokens: np.ndarray
    makespan_us: float


def _layer_makespan(prob: Problem, lay: int, replicas: np.ndarray, routes: np.ndarray, tokens: np.ndarray) -> float:
    zeros_r = np.zeros((replicas.shape[0], 1), dtype=np.int64)
    zeros_q = np.zeros((routes.shape[0], 1), dtype=np.int64)
    m = evaluate(prob.topology, prob.loads[lay:lay + 1], np.hstack([zeros_q, routes]), tokens, np.hstack([zeros_r, replicas]),
                 prob.params)
    return float(m.layer_makespan_us[0])


def split_layers(prob: Problem, res: SolverResult) -> list[LayerParts]:
    """A multi-layer :class:`SolverResult` as per-layer parts with every route explicit, each scored."""
    out = []
    idx, tok_all = expand_routes(prob.topology.native, prob.loads, res.route_idx, res.route_tok)
    for lay in range(prob.loads.shape[0]):
        rm = res.replicas[:, 0] == lay
        qm = idx[:, 0] == lay
        rep, routes, tok = res.replicas[rm, 1:], idx[qm, 1:], tok_all[qm]
        out.append(LayerParts(rep, routes, tok, _layer_makespan(prob, lay, rep, routes, tok)))
    return out


def join_layers(prob: Problem, parts: list[LayerParts], info: dict) -> SolverResult:
    """Per-layer parts as one result, routes listed only for split experts."""
    reps = [np.hstack([np.full((p.replicas.shape[0], 1), i), p.replicas]) for i, p in enumerate(parts)]
    routes = [np.hstack([np.full((p.routes.shape[0], 1), i), p.routes]) for i, p in enumerate(parts)]
    rep = np.vstack(reps).astype(np.int64).reshape(-1, 4)
    idx, tok = compact_routes(prob.topology.native, rep, np.vstack(routes).astype(np.int64).reshape(-1, 4),
                              np.concatenate([p.tokens for p in parts]), len(parts))
    return SolverResult(rep, idx, tok, info)


def integral_routes(flows: np.ndarray, y: np.ndarray, loads: np.ndarray, integral: bool) -> tuple[np.ndarray, np.ndarray]:
    """Clean flows (``[F, 3]`` (src, expert, dst), amounts ``y``) into routes whose per-(source,
    expert) sums equal ``loads`` exactly; integral when ``integral`` (largest remainder)."""
    g, e_all = loads.shape
    y = np.maximum(np.asarray(y, dtype=np.float64), 0.0)
    key = flows[:, 0] * e_all + flows[:, 1]
    want = loads[flows[:, 0], flows[:, 1]]
    have = np.bincount(key, weights=y, minlength=g * e_all)[key]
    # rescale each pair to its load; a pair with no flow left goes wholly to its first listed host
    scale = np.divide(want, have, out=np.zeros_like(want), where=have > 0)
    y = y * scale
    first = np.r_[True, key[1:] != key[:-1]] if key.size else np.zeros(0, dtype=bool)
    order = np.argsort(key, kind="stable")
    if not np.all(order == np.arange(key.size)):
        raise AssertionError("flows must be grouped by (source, expert)")
    y = np.where((have <= 0) & first, want, y)
    if integral:
        base = np.floor(y + 1e-9)
        frac = y - base
        short = want - np.bincount(key, weights=base, minlength=g * e_all)[key]  # whole tokens to hand out
        # rank each flow within its pair by fractional part, largest first
        idx = np.lexsort((-frac, key))
        ranks = np.empty(key.size, dtype=np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(key[idx])) + 1]
        pos = np.arange(key.size) - np.repeat(starts, np.diff(np.r_[starts, key.size]))
        ranks[idx] = pos
        y = base + (ranks < np.round(short))
    else:
        # absorb float residue in each pair's largest flow so sums are exact
        resid = want - np.bincount(key, weights=y, minlength=g * e_all)[key]
        big = np.zeros(key.size, dtype=bool)
        if key.size:
            idx = np.lexsort((-y, key))
            lead = np.r_[True, key[idx][1:] != key[idx][:-1]]
            big[idx[lead]] = True
        y = y + np.where(big, resid, 0.0)
    keep = y > 0
    return flows[keep], y[keep]


def warm_start(m: LayerModel, prob: Problem, lay: int, parts: LayerParts) -> np.ndarray | None:
    """The model's variable vector for a plan (None if the plan uses a copy the model lacks)."""
    g, e_all = prob.loads.shape[1:]
    x = np.zeros(m.num_cols)
    ckey = (m.copies[:, 0] * g + m.copies[:, 1]) * g + m.copies[:, 2]
    rkey = (parts.replicas[:, 0] * g + parts.replicas[:, 1]) * g + parts.replicas[:, 2]
    pos = np.searchsorted(ckey, rkey) if ckey.size else np.zeros(rkey.size, dtype=np.int64)
    if rkey.size and (np.any(pos >= ckey.size) or np.any(ckey[np.minimum(pos, ckey.size - 1)] != rkey)):
        return None
    x[m.z0 + pos] = 1.0
    hkey = m.hosts[:, 0] * g + m.hosts[:, 1]
    s, e, r = parts.routes.T
    hpos = np.searchsorted(hkey, e * g + r)
    if hpos.size and (np.any(hpos >= hkey.size) or np.any(hkey[np.minimum(hpos, hkey.size - 1)] != e * g + r)):
        return None
    proc = np.bincount(hpos, weights=parts.tokens, minlength=hkey.size)
    if m.w0 >= 0:  # multi-node node form: no hint (it is only a hint, and only OR-Tools takes one)
        return None
    if m.flows is None:
        x[m.y0:m.l0] = proc
        x[m.l0:m.a0] = np.bincount(hpos, weights=parts.tokens * (s == r), minlength=hkey.size)
    else:
        fkey = (m.flows[:, 0] * e_all + m.flows[:, 1]) * g + m.flows[:, 2]
        order = np.argsort(fkey)
        qkey = (s * e_all + e) * g + r
        p = np.searchsorted(fkey, qkey, sorter=order)
        if qkey.size and (np.any(p >= fkey.size) or np.any(fkey[order[np.minimum(p, fkey.size - 1)]] != qkey)):
            return None
        x[m.y0 + order[p]] = parts.tokens
    active = proc > 0
    if m.col_lo[m.a0:m.t0].min(initial=0.0) > 0:
        active[:] = True
    x[m.a0:m.t0] = active
    x[m.t0:m.tm] = np.maximum(proc * prob.params.alpha_us, prob.params.beta_us * active)
    comp = np.bincount(m.hosts[:, 1], weights=x[m.t0:m.tm], minlength=g)
    x[m.tc] = comp.max(initial=0.0)
    x[m.tm] = (parts.makespan_us - x[m.tc]) / 2.0
    return x


def _routes(m: LayerModel, prob: Problem, lay: int, x: np.ndarray, replicas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integral routes from a model solution, given the replicas kept."""
    hosts = prob.topology.native.copy()
    hosts[replicas[:, 2], replicas[:, 0]] = True
    if m.flows is None:
        flows, y = node_flows(m, x, prob.loads[lay], hosts, prob.topology.node_of)
    else:
        flows, y = m.flows, x[m.y0:m.a0].copy()
        y[~hosts[flows[:, 2], flows[:, 1]]] = 0.0
    return integral_routes(flows, y, prob.loads[lay], prob.integral)


def _drop_unused(replicas: np.ndarray, routes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A replica nobody routes to is not worth copying."""
    used = np.zeros(shape, dtype=bool)
    used[routes[:, 2], routes[:, 1]] = True
    return replicas[used[replicas[:, 2], replicas[:, 0]]]


def parts_from_solution(m: LayerModel, prob: Problem, lay: int, x: np.ndarray) -> LayerParts:
    """Replicas (z > 1/2) and integral routes from a model solution; tokens on ranks that do not end
    up hosting the expert are dropped and each (source, expert) pair rescaled to its load."""
    chosen = m.copies[x[m.z0:m.y0] > 0.5]
    routes, tok = _routes(m, prob, lay, x, chosen)
    chosen = _drop_unused(chosen, routes, prob.loads.shape[1:])
    return LayerParts(chosen, routes, tok, _layer_makespan(prob, lay, chosen, routes, tok))


def token_lp(prob: Problem, lay: int, replicas: np.ndarray, time_limit_s: float) -> tuple[LayerParts | None, ModelSolution]:
    """Best token split for a fixed placement (every host active), then integral routes."""
    hosts = prob.topology.native.copy()
    hosts[replicas[:, 2], replicas[:, 0]] = True
    m = build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params, fixed_hosts=hosts)
    sol = solve_highs(m, time_limit_s, relax=True)
    if sol.x is None:
        return None, sol
    routes, tok = _routes(m, prob, lay, sol.x, replicas)
    rep = _drop_unused(replicas, routes, hosts.shape)
    return LayerParts(rep, routes, tok, _layer_makespan(prob, lay, rep, routes, tok)), sol


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


def polished_placement(prob: Problem, lay: int, replicas: np.ndarray, end: float) -> LayerParts | None:
    """The token LP on a placement, then again without the replicas it gave fewer tokens than
    the roofline floor (``alpha·p < beta``: such a host pays ``beta`` anyway), the better of the
    two; both by ``end`` (a ``perf_counter`` time)."""
    t0 = time.perf_counter()
    cand, _ = token_lp(prob, lay, replicas, _remaining(end))
    # the second LP is the same size: run it only if it fits in what is left
    if cand is None or _remaining(end) < time.perf_counter() - t0 or cand.replicas.shape[0] == 0:
        return cand
    g, e_all = prob.loads.shape[1:]
    proc = np.bincount(cand.routes[:, 2] * e_all + cand.routes[:, 1], weights=cand.tokens, minlength=g * e_all)
    rep = cand.replicas
    small = proc[rep[:, 2] * e_all + rep[:, 0]] * prob.params.alpha_us < prob.params.beta_us
    if not small.any():
        return cand
    fewer, _ = token_lp(prob, lay, rep[~small], _remaining(end))
    return fewer if fewer is not None and fewer.makespan_us < cand.makespan_us else cand


# The optimizers start from the better of greedy's default and most thorough settings, per layer:
# ~0.3 ms per layer together, little next to an LP, and the thorough one is up to 20% better on
# layers where a hot rank's copy window is the constraint (it is not better everywhere).
THOROUGH = {"n_dest": 4, "max_swaps": 4, "lookahead": 4, "stuck_ties": 4}


def _start(prob: Problem) -> list[LayerParts]:
    moves = prob.topology.num_ranks * prob.topology.slots
    default = split_layers(prob, run_kernel(prob, moves))
    thorough = split_layers(prob, run_kernel(prob, moves, **THOROUGH))
    return [t if t.makespan_us < d.makespan_us else d for d, t in zip(default, thorough, strict=True)]


def _polished_start(prob: Problem) -> list[LayerParts]:
    """:func:`_start`, each layer's token split polished exactly (:func:`polished_placement`) where
    the layer's share of the budget allows: a few ms, often 5-10% better."""
    parts = _start(prob)
    L = len(parts)
    for lay in range(L):
        left = _remaining(prob.deadline) / (L - lay)
        if left < _SECONDS_PER_COLUMN * model_size(prob, lay, copies=False):
            continue
        cand = polished_placement(prob, lay, parts[lay].replicas, time.perf_counter() + left)
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    return parts


def _remaining(deadline: float) -> float:
    return deadline - time.perf_counter()


def _finish(prob: Problem, parts: list[LayerParts], bounds: np.ndarray, proven: list[bool], extra: dict,
            rel_gap: float = 1e-4) -> SolverResult:
    """Assemble the layers; "optimal" when every layer's model was solved to ``rel_gap`` and the
    integral plan is within ``2·rel_gap`` of the bound (token rounding may add a little)."""
    analytic = lower_bound_us(prob.topology, prob.loads, prob.windows_us, prob.params)
    bounds = np.maximum(bounds, analytic)
    mk = np.array([p.makespan_us for p in parts])
    optimal = all(proven) and bool(np.all(mk <= bounds * (1 + 2 * rel_gap) + 1e-9))
    status = "optimal" if optimal else "feasible"
    total_mk, total_b = float(mk.sum()), float(bounds.sum())
    info = dict(extra, status=status, bound_us=total_b, layer_bound_us=bounds,
                gap=0.0 if total_mk <= 0 else max(0.0, (total_mk - total_b) / total_mk))
    return join_layers(prob, parts, info)


def model_size(prob: Problem, lay: int, copies: bool = True) -> int:
    """Columns the layer's MILP (or, ``copies=False``, its token LP on the native placement) would
    have, without building it."""
    fixed = None if copies else prob.topology.native
    return model_columns(prob.loads[lay], prob.topology, prob.windows_us, prob.params, fixed)


# Measured on a 2-core CI-class machine: building costs ~0.3 us per column and HiGHS, which cannot
# be interrupted during setup and presolve, needs 3-9 us per column for even the token LP; a phase
# with less than 10 us per column left is skipped rather than allowed to overrun the budget.
_SECONDS_PER_COLUMN = 1e-5
_OVERRUN_PER_COLUMN = 2.5e-6


def _milp_layers(prob: Problem, parts: list[LayerParts], backend: str, mip_rel_gap: float, skip_small: bool,
                 skip: set[int] | frozenset[int] = frozenset()):
    """Each layer's MILP (except those in ``skip``) in its share of the time left; ``skip_small``:
    skip a layer whose share cannot build and search its model (see ``_SECONDS_PER_COLUMN``)."""
    solve_backend = get_backend(backend)
    if not isinstance(mip_rel_gap, (int, float)) or not 0 <= mip_rel_gap < 1:
        raise SolverError(f"mip_rel_gap must be a number in [0, 1), got {mip_rel_gap!r}")
    L = len(parts)
    bounds = np.full(L, -math.inf)
    proven = [False] * L
    for lay in range(L):
        left = _remaining(prob.deadline) / (L - lay)
        if left <= 0:
            break
        if lay in skip or (skip_small and left < _SECONDS_PER_COLUMN * model_size(prob, lay)):
            continue
        # Token flows continuous: the model is then a relaxation of the whole-token problem (its bound
        # stays valid), the rounded plan is re-scored, and "optimal" is claimed only when that plan is
        # within the gap of the bound. Measured 2-4x faster proofs than whole-token flows on 64x8,
        # the rounded plans within 1e-4 of the bound.
        m = build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params)
        # Margins: backends overrun their limit by ~15% plus ~2.5 us per column (measured: HiGHS given
        # 35 ms on a 64x8 layer returns after 41 ms), and the answer must still be extracted.
        limit = 0.85 * _remaining(prob.deadline) / (L - lay) - _OVERRUN_PER_COLUMN * m.num_cols
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


@register("milp")
def solve_milp(prob: Problem, backend: str = "highs", mip_rel_gap: float = 1e-4) -> SolverResult:
    """Exact MILP per layer, started from greedy's plan with its token split polished by the token
    LP (the incumbent and cutoff); returns the incumbent, bound and gap.
    ``backend``: ``"highs"`` or ``"ortools"``; ``mip_rel_gap``: relative gap that counts as optimal."""
    parts = _polished_start(prob)
    bounds, proven = _milp_layers(prob, parts, backend, mip_rel_gap, skip_small=False)
    return _finish(prob, parts, bounds, proven, {"backend": backend}, rel_gap=mip_rel_gap)


@register("auto")
def solve_auto(prob: Problem, backend: str = "highs", mip_rel_gap: float = 1e-4) -> SolverResult:
    """Anytime: the greedy plan at once; its token split polished by the token LP
    (:func:`polished_placement`); where a layer's share of the budget is under ~1 s (too short for
    the MILP's root) but holds the LP relaxation twice, the LP rounded (as ``lp-round``) and a local
    search over the rounded placement (:mod:`placement_search`); then each layer's MILP (HiGHS
    solves the LP relaxation at the root and rounds it with its own heuristics) while the budget
    lasts. Every phase keeps a layer's plan only if it is better. A phase that cannot be built and
    searched in the layer's share of the budget is skipped, so the budget is not overrun by it."""
    parts = _polished_start(prob)
    L = len(parts)
    lp_bounds = np.full(L, -math.inf)
    searched = set()
    for lay in range(L):  # LP rounding where it takes a small part of the layer's share
        left = _remaining(prob.deadline) / (L - lay)
        lp_s = _lp_seconds(model_size(prob, lay))
        if lp_s <= _LP_SHARE * left and left < _LP_BEFORE_S:
            # the MILP after the search needs twice its root LP's time, else the search takes it all
            milp_fits = 0.85 * (1 - _SEARCH_SHARE) * left >= 2 * lp_s
            lp_bounds[lay] = _lp_round_layer(prob, lay, parts, left, search=_SEARCH_SHARE if milp_fits else 0.9)
            if not milp_fits:
                searched.add(lay)
    bounds, proven = _milp_layers(prob, parts, backend, mip_rel_gap, skip_small=True, skip=searched)
    return _finish(prob, parts, np.maximum(bounds, lp_bounds), proven, {"backend": backend}, rel_gap=mip_rel_gap)


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
_SEARCH_MIN_Z = 0.02


def _lp_seconds(columns: int) -> float:
    """Expected time of a layer's LP rounding (LP relaxation and its roundings), measured on a
    2-core CI-class machine: 64x8 Zipf (2.5k columns) 65-90 ms, 128x8 (5k columns) 0.2-0.4 s —
    superlinear."""
    return 3e-5 * columns * max(1.0, columns / 2500.0)


def _lp_round_layer(prob: Problem, lay: int, parts: list[LayerParts], time_s: float, search: float = 0.0) -> float:
    """LP relaxation of one layer, rounded in each order of :func:`rounding_keys` and polished
    (:func:`polished_placement`) within ``time_s``; then, until ``search`` x ``time_s`` has passed, a
    local search (:mod:`placement_search`) over the copies the LP put weight on. Improves
    ``parts[lay]`` in place and returns the LP bound (-inf when the LP did not finish)."""
    start = time.perf_counter()
    end = min(prob.deadline, start + time_s)
    m = copies_active(build_layer_model(prob.loads[lay], prob.topology, prob.windows_us, prob.params))
    sol = solve_highs(m, 0.85 * time_s, relax=True)  # margin: HiGHS overruns its limit a little
    if sol.x is None or _remaining(end) <= 0:
        return sol.bound
    zval = sol.x[m.z0:m.y0]
    keys = rounding_keys(m, prob, lay, sol.x)
    tried = set()
    for key in keys:
        placement = round_placement(m, prob, zval, key)
        sig = placement[np.lexsort(placement.T)].tobytes()
        if sig in tried or _remaining(end) <= 0:
            continue
        tried.add(sig)
        cand = polished_placement(prob, lay, placement, end)
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    stop = min(end, start + search * time_s)
    if _remaining(stop) > 0:
        order = np.argsort(-keys[1], kind="stable")  # by the LP's tokens on the copy
        cands = m.copies[order[zval[order] > _SEARCH_MIN_Z]]
        parts[lay] = improve_placement(prob, parts[lay], cands,
                                       lambda reps: polished_placement(prob, lay, reps, stop), stop)
    return sol.bound


@register("lp-round")
def solve_lp_round(prob: Problem) -> SolverResult:
    """LP relaxation (its value is a lower bound), placement rounded in three orders with a
    slot/window repair, exact token LP on each rounded placement and on greedy's; the best plan."""
    parts = _polished_start(prob)  # on 256x32 Zipf layers better than any rounding (1.476 vs 1.520)
    L = len(parts)
    bounds = np.full(L, -math.inf)
    for lay in range(L):
        if _remaining(prob.deadline) <= 0:
            break
        bounds[lay] = _lp_round_layer(prob, lay, parts, _remaining(prob.deadline) / (L - lay))
    return _finish(prob, parts, bounds, [False] * L, {"lp_bound_us": float(bounds.sum())})


@register("lp-tokens")
def solve_lp_tokens(prob: Problem, base: str = "static") -> SolverResult:
    """Token-assignment LP on the placement of ``base`` (``static`` or ``greedy``)."""
    if base not in ("static", "greedy"):
        raise SolverError(f"lp-tokens base must be 'static' or 'greedy', got {base!r}")
    parts = split_layers(prob, run_kernel(prob, 0)) if base == "static" else _start(prob)
    L = len(parts)
    for lay in range(L):
        if _remaining(prob.deadline) <= 0:
            break
        cand, _ = token_lp(prob, lay, parts[lay].replicas, _remaining(prob.deadline) / (L - lay))
        if cand is not None and cand.makespan_us < parts[lay].makespan_us:
            parts[lay] = cand
    return _finish(prob, parts, np.full(L, -math.inf), [False] * L, {"base": base})


for _fn in (solve_milp, solve_auto, solve_lp_round, solve_lp_tokens):
    _fn.prepare = prepare
