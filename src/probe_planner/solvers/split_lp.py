"""The exact token split of a fixed placement, compiled: the token LP (``lp-tokens``; the node form
of docs/formulation.md, every host active) over the experts with several hosts only, solved by
:mod:`.simplex` in well under a millisecond on an 8-rank layer where HiGHS needs tens.

Experts with one host contribute constants (their compute on the host, their traffic on both ends).
Token amounts are scaled to compute microseconds (``α·tokens``), so the compute rows' coefficients
are 1 and the link rows' ``τ/α`` (10-10⁴ over the model cards).
Variables, per host ``r`` of a split expert: ``l`` (kept from its own source), ``w`` / ``v``
(received within / across nodes), ``t`` (compute, ``≥ β``); per (source, split expert): ``oa`` /
``ob`` (sent within / across nodes) where the source has that choice, else a constant. Rows: the
source's conservation ``l + oa + ob = n``, the intra balance per (node, expert), the inter balance
and the Hall rows per expert, the roofline ``t ≥ l + w + v``, and per rank the compute and the four
link rows, against ``Tc`` and ``Tm``; objective ``2·Tm + Tc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ..plan import LayerPlan
from ..problem import Problem
from .decode import ZERO, drop_unused, integral_routes, multinode_flows_from, single_node_flows_from
from .greedy import prepare as greedy_prepare
from .layers import hosts_of, layer_makespan, remaining
from .simplex import OPTIMAL, solve_dense

# Measured here (2 cores): one pivot costs 0.2-0.4 ns per tableau entry, and the LPs take 0.9-1.4 pivots
# per row. An LP is started when its typical time fits what is left; an iteration cap from the slow
# end of the range stops it by the deadline if it turns out long.
_NS_PER_ENTRY = 0.3e-9
_NS_PER_ENTRY_SLOW = 1.2e-9  # 3-6x the quiet machine's: a loaded one must still stop in time
_PIVOTS_PER_ROW = 1.0
# Building the LP: a pass over the layer's loads and the tableau's allocation (~50 us at 128x8).
_BUILD_FIXED_S = 3e-5
_BUILD_PER_ENTRY_S = 2e-8
MAX_ROWS = 1500  # beyond this the dense tableau (rows x (cols + 2 rows)) is the wrong tool


@nb.njit(cache=True, nogil=True)
def build_split_lp(loads, hosts, node_of, alpha, beta, tau_intra, tau_inter, max_rows, max_work):
    """The reduced token LP of one layer (see the module docstring). Returns ``(A, row_lo, row_hi,
    col_lo, col_hi, cost, hv [H, 6], qv [P, 6], qfix [P, 2], comp [G])`` (``comp``: each rank's
    compute for its single-host experts). Refused — ``A`` empty, nothing allocated — when the LP
    would have more than ``max_rows`` rows or ``rows² · (cols + 2·rows)`` (the simplex's typical
    work) above ``max_work``: per split host ``(expert, rank, l, w, v, t)``
    column indices (-1: absent) and per (source, split expert) pair ``(source, expert, oa, ob,
    oa_fixed, ob_fixed)``, the last two the scaled constant sends where there is no choice (the
    ``oa``/``ob`` columns then -1). Columns 0 and 1 are ``Tm`` and ``Tc``."""
    g, e_all = loads.shape
    k_nodes = node_of.max() + 1
    total = np.zeros(e_all)
    nh = np.zeros(e_all, np.int64)
    for s in range(g):
        for e in range(e_all):
            total[e] += loads[s, e]
    for r in range(g):
        for e in range(e_all):
            if hosts[r, e] and total[e] > 0:
                nh[e] += 1
    comp = np.zeros(g)
    vol = np.zeros((g, 4))  # in intra, in inter, out intra, out inter: constant tokens
    # hosts per (expert, node)
    hn = np.zeros((e_all, k_nodes), np.int64)
    for r in range(g):
        for e in range(e_all):
            if hosts[r, e] and total[e] > 0:
                hn[e, node_of[r]] += 1
    H = 0
    P = 0
    for e in range(e_all):
        if total[e] <= 0:
            continue
        if nh[e] == 1:
            r = 0
            while not hosts[r, e]:
                r += 1
            comp[r] += max(alpha * total[e], beta)
            for s in range(g):
                a = loads[s, e]
                if a > 0 and s != r:
                    k = 0 if node_of[s] == node_of[r] else 1
                    vol[r, k] += a
                    vol[s, 2 + k] += a
        else:
            H += nh[e]
            for s in range(g):
                if loads[s, e] > 0:
                    P += 1
    hv = -np.ones((H, 6), np.int64)
    qv = -np.ones((P, 6), np.int64)
    qfix = np.zeros((P, 2))
    ncol = 2
    h = 0
    q = 0
    for e in range(e_all):
        if total[e] <= 0 or nh[e] < 2:
            continue
        for r in range(g):
            if not (hosts[r, e] and total[e] > 0):
                continue
            nd = node_of[r]
            same = False
            other = False
            for s in range(g):
                if loads[s, e] > 0 and s != r:
                    if node_of[s] == nd:
                        same = True
                    else:
                        other = True
            hv[h, 0] = e
            hv[h, 1] = r
            hv[h, 2] = ncol
            ncol += 1
            if same:
                hv[h, 3] = ncol
                ncol += 1
            if other:
                hv[h, 4] = ncol
                ncol += 1
            hv[h, 5] = ncol
            ncol += 1
            h += 1
        for s in range(g):
            a = loads[s, e]
            if a <= 0:
                continue
            nd = node_of[s]
            own = 1 if hosts[s, e] else 0
            intra = hn[e, nd] - own > 0
            inter = nh[e] - hn[e, nd] > 0
            qv[q, 0] = s
            qv[q, 1] = e
            if own == 1 or (intra and inter):
                if intra:
                    qv[q, 2] = ncol
                    ncol += 1
                if inter:
                    qv[q, 3] = ncol
                    ncol += 1
            elif intra:
                qfix[q, 0] = alpha * a
            else:
                qfix[q, 1] = alpha * a
            q += 1
    # rows: count first
    m = 0
    for i in range(P):
        s, e = qv[i, 0], qv[i, 1]
        if qv[i, 2] >= 0 or qv[i, 3] >= 0:
            m += 1  # conservation
    nbal = 0
    for e in range(e_all):
        if total[e] > 0 and nh[e] >= 2:
            for nd in range(k_nodes):
                if hn[e, nd] > 0:
                    nbal += 1
            if k_nodes > 1:
                nbal += 1 + k_nodes  # inter balance and Hall rows
    m += nbal + H + g + 4 * g
    if m > max_rows or float(m) * m * (ncol + 2 * m) > max_work:  # before the dense tableau is allocated
        return (np.zeros((0, 0)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), hv, qv, qfix, comp)
    A = np.zeros((m, ncol))
    lo = np.zeros(m)
    hi = np.zeros(m)
    cl = np.zeros(ncol)
    cu = np.full(ncol, np.inf)
    cost = np.zeros(ncol)
    cost[0] = 2.0
    cost[1] = 1.0
    hostcol = -np.ones((g, e_all), np.int64)  # row of hv for (rank, expert)
    for i in range(H):
        hostcol[hv[i, 1], hv[i, 0]] = i
        e, r = hv[i, 0], hv[i, 1]
        cu[hv[i, 2]] = alpha * loads[r, e]
        cl[hv[i, 5]] = beta
    row = 0
    for i in range(P):
        s, e = qv[i, 0], qv[i, 1]
        if qv[i, 2] < 0 and qv[i, 3] < 0:
            if hostcol[s, e] >= 0:  # a host with no one to send to keeps everything
                c = hv[hostcol[s, e], 2]
                cl[c] = alpha * loads[s, e]
            continue
        if hostcol[s, e] >= 0:
            A[row, hv[hostcol[s, e], 2]] = 1.0
        if qv[i, 2] >= 0:
            A[row, qv[i, 2]] = 1.0
        if qv[i, 3] >= 0:
            A[row, qv[i, 3]] = 1.0
        lo[row] = alpha * loads[s, e]
        hi[row] = lo[row]
        row += 1
    tm_lo = 0.0
    tc_lo = 0.0
    # balances: per (expert, node) intra; per expert inter + Hall
    for e in range(e_all):
        if total[e] <= 0 or nh[e] < 2:
            continue
        first = row
        for nd in range(k_nodes):
            if hn[e, nd] > 0:
                row += 1
        bal_of = np.full(k_nodes, -1, np.int64)
        b = first
        for nd in range(k_nodes):
            if hn[e, nd] > 0:
                bal_of[nd] = b
                b += 1
        inter_row = -1
        hall0 = -1
        if k_nodes > 1:
            inter_row = row
            hall0 = row + 1
            row += 1 + k_nodes
            for nd in range(k_nodes):
                lo[hall0 + nd] = -np.inf  # Σ_{s∈N} ob - Σ_{r∉N} v <= 0
        for i in range(P):
            if qv[i, 1] != e:
                continue
            nd = node_of[qv[i, 0]]
            if qv[i, 2] >= 0:
                A[bal_of[nd], qv[i, 2]] += 1.0
            elif qfix[i, 0] > 0:
                lo[bal_of[nd]] -= qfix[i, 0]
                hi[bal_of[nd]] -= qfix[i, 0]
            if k_nodes > 1:
                if qv[i, 3] >= 0:
                    A[inter_row, qv[i, 3]] += 1.0
                    A[hall0 + nd, qv[i, 3]] += 1.0
                elif qfix[i, 1] > 0:
                    lo[inter_row] -= qfix[i, 1]
                    hi[inter_row] -= qfix[i, 1]
                    hi[hall0 + nd] -= qfix[i, 1]
        for i in range(H):
            if hv[i, 0] != e:
                continue
            nd = node_of[hv[i, 1]]
            if hv[i, 3] >= 0:
                A[bal_of[nd], hv[i, 3]] -= 1.0
            if hv[i, 4] >= 0:
                A[inter_row, hv[i, 4]] -= 1.0
                for nd2 in range(k_nodes):
                    if nd2 != nd:
                        A[hall0 + nd2, hv[i, 4]] -= 1.0
    for i in range(H):  # roofline: t - l - w - v >= 0
        A[row, hv[i, 5]] = 1.0
        for k in range(2, 5):
            if hv[i, k] >= 0:
                A[row, hv[i, k]] = -1.0
        hi[row] = np.inf
        row += 1
    # compute: Tc - Σ t >= const
    for r in range(g):
        A[row, 1] = 1.0
        lo[row] = comp[r]
        hi[row] = np.inf
        any_var = False
        for i in range(H):
            if hv[i, 1] == r:
                A[row, hv[i, 5]] = -1.0
                any_var = True
        if not any_var:
            tc_lo = max(tc_lo, comp[r])
        row += 1
    # links: Tm - (tau/alpha) Σ vars >= tau V0, per rank, kind and direction
    taus = (tau_intra, tau_inter)
    for r in range(g):
        for kd in range(4):
            tau = taus[kd % 2]
            A[row, 0] = 1.0
            lo[row] = tau * (vol[r, kd] + 0.0)
            hi[row] = np.inf
            row += 1
    base = row - 4 * g
    for i in range(H):
        r = hv[i, 1]
        if hv[i, 3] >= 0:
            A[base + 4 * r + 0, hv[i, 3]] -= tau_intra / alpha
        if hv[i, 4] >= 0:
            A[base + 4 * r + 1, hv[i, 4]] -= tau_inter / alpha
    for i in range(P):
        s = qv[i, 0]
        if qv[i, 2] >= 0:
            A[base + 4 * s + 2, qv[i, 2]] -= tau_intra / alpha
        else:
            lo[base + 4 * s + 2] += tau_intra * qfix[i, 0] / alpha
        if qv[i, 3] >= 0:
            A[base + 4 * s + 3, qv[i, 3]] -= tau_inter / alpha
        else:
            lo[base + 4 * s + 3] += tau_inter * qfix[i, 1] / alpha
    for j in range(base, row):
        tm_lo = max(tm_lo, lo[j]) if _row_empty(A, j) else tm_lo
    cl[0] = tm_lo
    cl[1] = tc_lo
    return A[:row], lo[:row], hi[:row], cl, cu, cost, hv, qv, qfix, comp


@nb.njit(cache=True, inline="always")
def _row_empty(A, j):
    for k in range(2, A.shape[1]):
        if A[j, k] != 0.0:
            return False
    return True


@dataclass(frozen=True)
class SplitSolution:
    """An optimal reduced token LP: its makespan ``objective_us`` (every host paying at least ``β``),
    ``effective_us`` (the same flows, idle hosts free) and what decoding it into routes needs."""

    objective_us: float
    x: np.ndarray
    hv: np.ndarray
    qv: np.ndarray
    qfix: np.ndarray
    effective_us: float  # the same flows' makespan with hosts given nothing paying nothing (<= objective_us)
    spread: float  # sum over ranks of that compute squared: breaks ties between equal makespans
    work: np.ndarray  # [H] per split host (rows of hv), the tokens it processes times alpha (compute us)


def split_solution(prob: Problem, lay: int, hosts: np.ndarray, end: float) -> SplitSolution | None:
    """Solve the layer's reduced token LP for the ``[G, E]`` host mask by ``end`` (a ``perf_counter``
    time); None when it does not fit the time or the size limit. Its objective is the decoded plan's
    makespan up to whole-token rounding, or above it (a host the split leaves idle pays nothing)."""
    g, e_all = hosts.shape
    if remaining(end) < _BUILD_FIXED_S + _BUILD_PER_ENTRY_S * g * e_all:  # not even the build fits
        return None
    p = prob.params
    max_work = remaining(end) / (_PIVOTS_PER_ROW * _NS_PER_ENTRY)
    A, lo, hi, cl, cu, cost, hv, qv, qfix, comp = build_split_lp(prob.loads[lay], hosts, prob.topology.node_of, p.alpha_us,
                                                                 p.beta_us, p.tok_intra_us, p.tok_inter_us, MAX_ROWS, max_work)
    m, n = A.shape
    if m == 0:  # refused: too big for the dense tableau or for the time left
        return None
    entries = m * (n + 2 * m)
    left = remaining(end)
    # an iteration cap from the time left keeps the budget even on an unlucky LP
    cap = max(1, int(left / max(entries * _NS_PER_ENTRY_SLOW, 1e-9)))
    status, x, obj, _ = solve_dense(A, lo, hi, cl, cu, cost, 1e-9, cap)
    if status != OPTIMAL:
        return None
    # what the same flows cost when a host the split gives nothing pays nothing (the cost model's
    # roofline: t(0) = 0), as the decoded plan will: the search compares placements by this
    t = x[hv[:, 5]]
    work = sum(np.where(hv[:, k] >= 0, x[np.maximum(hv[:, k], 0)], 0.0) for k in (2, 3, 4))
    t = np.where(work > ZERO * p.alpha_us * prob.loads[lay].sum(axis=0)[hv[:, 0]], t, 0.0)
    per_rank = comp + np.bincount(hv[:, 1], weights=t, minlength=g)
    return SplitSolution(obj, x, hv, qv, qfix, 2.0 * float(x[0]) + float(per_rank.max(initial=0.0)), float(per_rank @ per_rank),
                         work)


def split_flows(prob: Problem, lay: int, sol: SplitSolution) -> tuple[np.ndarray, np.ndarray]:
    """``(flows [F, 3] (src, expert, dst), amounts [F])`` of the split experts' tokens in ``sol``."""
    inv = 1.0 / prob.params.alpha_us
    col = lambda idx: np.where(idx >= 0, sol.x[np.maximum(idx, 0)], 0.0) * inv  # noqa: E731
    hv, qv = sol.hv, sol.qv
    h_e, h_r = hv[:, 0], hv[:, 1]
    l, w, v = col(hv[:, 2]), col(hv[:, 3]), col(hv[:, 4])
    loads = prob.loads[lay]
    if prob.topology.num_nodes == 1:
        return single_node_flows_from(h_e, h_r, l + w + v, loads)
    oa = col(qv[:, 2]) + sol.qfix[:, 0] * inv
    ob = col(qv[:, 3]) + sol.qfix[:, 1] * inv
    return multinode_flows_from(h_e, h_r, l, w, v, qv[:, 0], qv[:, 1], oa, ob, loads, prob.topology.node_of)


def split_plan(prob: Problem, lay: int, replicas: np.ndarray, sol: SplitSolution, hosts: np.ndarray | None = None) -> LayerPlan:
    """The plan of ``sol``, solved for the host mask ``hosts`` (default: the native placement plus
    ``replicas``; a mask may leave some of those hosts idle): integral routes when the loads are
    integral, unused replicas dropped, scored by the cost model."""
    flows, y = split_flows(prob, lay, sol)
    if hosts is not None:  # an expert the mask leaves one host of several: every token to that host
        held = hosts_of(prob, replicas)
        loads = prob.loads[lay]
        sole = np.flatnonzero((hosts.sum(axis=0) == 1) & (held.sum(axis=0) > 1) & (loads.sum(axis=0) > 0))
        if sole.size:
            r_of = np.argmax(hosts[:, sole], axis=0)
            s_idx, j = np.nonzero(loads[:, sole] > 0)
            extra = np.stack([s_idx, sole[j], r_of[j]], axis=1)
            flows = np.vstack([flows, extra])
            y = np.concatenate([y, loads[s_idx, sole[j]]])
            order = np.lexsort((flows[:, 2], flows[:, 1], flows[:, 0]))
            flows, y = flows[order], y[order]
    routes, tok = integral_routes(flows, y, prob.loads[lay], prob.integral)
    rep = drop_unused(replicas, routes, prob.loads.shape[1:])
    return LayerPlan(rep, routes, tok, layer_makespan(prob, lay, rep, routes, tok))


def exact_split(prob: Problem, lay: int, replicas: np.ndarray, end: float) -> LayerPlan | None:
    """The best token split for the placement ``replicas`` (every host active), as integral routes
    when the loads are integral, scored by the cost model; None when it does not fit by ``end``."""
    sol = split_solution(prob, lay, hosts_of(prob, replicas), end)
    return None if sol is None else split_plan(prob, lay, replicas, sol)


_ready = False


def prepare() -> None:
    """Compile (or load from numba's cache) the greedy kernel, this LP's builder and simplex and the decoder once,
    outside any solver's budget: loading them alone takes milliseconds."""
    global _ready
    greedy_prepare()
    if not _ready:
        hosts = np.ones((2, 2), dtype=bool)
        A, lo, hi, cl, cu, cost, *_ = build_split_lp(np.ones((2, 2)), hosts, np.zeros(2, np.int64), 1.0, 1.0, 1.0, 1.0,
                                                     MAX_ROWS, np.inf)
        solve_dense(A, lo, hi, cl, cu, cost, 1e-9, 100)
        single_node_flows_from(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1), np.ones((2, 2)))
        _ready = True
