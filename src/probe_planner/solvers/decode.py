"""From a layer model's solution (:mod:`.milp_model`) to a plan's routes, and back (warm starts).

Routes keep every (source, expert) sum exact: flows are rescaled to the pair's load, integral loads
get whole tokens by largest remainder. Flows (and hosts) that are numerically zero are dropped first:
the roofline charges any host given a token its full weight-streaming floor, so a 1e-14 token flow
left by a solver's tolerance would make the plan cost more than the solver proved.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..problem import Problem
from .layers import LayerPlan, explicit_routes, hosts_of, layer_makespan
from .milp_model import LayerModel

ZERO = 1e-9  # an amount below this fraction of its (source, expert) load or expert total is solver noise


def integral_routes(flows: np.ndarray, y: np.ndarray, loads: np.ndarray, integral: bool) -> tuple[np.ndarray, np.ndarray]:
    """Clean flows (``[F, 3]`` (src, expert, dst), amounts ``y``) into routes whose per-(source,
    expert) sums equal ``loads`` exactly; integral when ``integral`` (largest remainder)."""
    g, e_all = loads.shape
    y = np.maximum(np.asarray(y, dtype=np.float64), 0.0)
    key = flows[:, 0] * e_all + flows[:, 1]
    want = loads[flows[:, 0], flows[:, 1]]
    # a flow numerically zero next to its pair's load is solver noise, and the roofline would charge its
    # host the full floor beta for it (HiGHS leaves ~1e-13-token flows on otherwise idle hosts)
    y = np.where(y > ZERO * want, y, 0.0)
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


def warm_start(m: LayerModel, prob: Problem, lay: int, parts: LayerPlan) -> np.ndarray | None:
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
    routes, tokens = explicit_routes(prob, lay, parts)
    s, e, r = routes.T
    hpos = np.searchsorted(hkey, e * g + r)
    if hpos.size and (np.any(hpos >= hkey.size) or np.any(hkey[np.minimum(hpos, hkey.size - 1)] != e * g + r)):
        return None
    proc = np.bincount(hpos, weights=tokens, minlength=hkey.size)
    if m.w0 >= 0:  # multi-node node form: no hint (it is only a hint, and only OR-Tools takes one)
        return None
    if m.flows is None:
        x[m.y0:m.l0] = proc
        x[m.l0:m.a0] = np.bincount(hpos, weights=tokens * (s == r), minlength=hkey.size)
    else:
        fkey = (m.flows[:, 0] * e_all + m.flows[:, 1]) * g + m.flows[:, 2]
        order = np.argsort(fkey)
        qkey = (s * e_all + e) * g + r
        p = np.searchsorted(fkey, qkey, sorter=order)
        if qkey.size and (np.any(p >= fkey.size) or np.any(fkey[order[np.minimum(p, fkey.size - 1)]] != qkey)):
            return None
        x[m.y0 + order[p]] = tokens
    active = proc > 0
    if m.col_lo[m.a0:m.t0].min(initial=0.0) > 0:
        active[:] = True
    x[m.a0:m.t0] = active
    x[m.t0:m.tm] = np.maximum(proc * prob.params.alpha_us, prob.params.beta_us * active)
    comp = np.bincount(m.hosts[:, 1], weights=x[m.t0:m.tm], minlength=g)
    x[m.tc] = comp.max(initial=0.0)
    x[m.tm] = (parts.makespan_us - x[m.tc]) / 2.0
    return x


def model_routes(m: LayerModel, prob: Problem, lay: int, x: np.ndarray, replicas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integral routes from a model solution, given the replicas kept."""
    hosts = hosts_of(prob, replicas)
    if m.flows is None:
        flows, y = node_flows(m, x, prob.loads[lay], hosts, prob.topology.node_of)
    else:
        flows, y = m.flows, x[m.y0:m.a0].copy()
        y[~hosts[flows[:, 2], flows[:, 1]]] = 0.0
    return integral_routes(flows, y, prob.loads[lay], prob.integral)


def drop_unused(replicas: np.ndarray, routes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A replica nobody routes to is not worth copying."""
    used = np.zeros(shape, dtype=bool)
    used[routes[:, 2], routes[:, 1]] = True
    return replicas[used[replicas[:, 2], replicas[:, 0]]]


def parts_from_solution(m: LayerModel, prob: Problem, lay: int, x: np.ndarray) -> LayerPlan:
    """Replicas (z > 1/2) and integral routes from a model solution; tokens on ranks that do not end
    up hosting the expert are dropped and each (source, expert) pair rescaled to its load."""
    chosen = m.copies[x[m.z0:m.y0] > 0.5]
    routes, tok = model_routes(m, prob, lay, x, chosen)
    chosen = drop_unused(chosen, routes, prob.loads.shape[1:])
    return LayerPlan(chosen, routes, tok, layer_makespan(prob, lay, chosen, routes, tok))



def _northwest(src_ranks, supply, dst_ranks, demand, e, out, tol) -> None:
    """Pair supplies with demands in list order (a northwest-corner transport), appending
    ``(src, e, dst, amount)`` to ``out``. Consumes ``supply`` and ``demand`` in place."""
    i = j = 0
    while i < len(src_ranks) and j < len(dst_ranks):
        a = min(supply[i], demand[j])
        if a > tol:
            out.append((src_ranks[i], e, dst_ranks[j], a))
        supply[i] -= a
        demand[j] -= a
        if supply[i] <= tol:
            i += 1
        if demand[j] <= tol:
            j += 1


def _flows_array(out) -> tuple[np.ndarray, np.ndarray]:
    if not out:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0)
    arr = np.array(out, dtype=np.float64)
    flows = arr[:, :3].astype(np.int64)
    order = np.lexsort((flows[:, 2], flows[:, 1], flows[:, 0]))
    return flows[order], arr[order, 3]


def node_flows(m: LayerModel, x: np.ndarray, loads: np.ndarray, host_mask: np.ndarray,
               node_of: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-source flows ``([F, 3] (src, expert, dst), amounts)`` from a node-form solution, grouped by
    (source, expert). Hosts not in ``host_mask`` (replicas rounded away) process nothing.

    One node: each expert's processed tokens are rescaled to its load; ``l = min(n, p)`` (keeping
    local never hurts, and then no rank both sends and receives the expert); remote tokens are
    paired source to host in rank order (a northwest-corner transport, never a rank with itself).
    Several nodes: see :func:`_multinode_flows`."""
    if m.w0 >= 0:
        return _multinode_flows(m, x, loads, host_mask, node_of)
    h_e, h_r = m.hosts[:, 0], m.hosts[:, 1]
    return single_node_flows_from(h_e, h_r, np.maximum(x[m.y0:m.l0], 0.0) * host_mask[h_r, h_e], loads)


def single_node_flows_from(h_e: np.ndarray, h_r: np.ndarray, p: np.ndarray, loads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One node's routes from the tokens ``p`` each host ``(h_e, h_r)`` processes (see
    :func:`node_flows`), hosts grouped by expert; ``(flows [F, 3], amounts)`` sorted by (source,
    expert, destination)."""
    order = np.argsort(h_e, kind="stable")
    h_e, h_r, p = (np.ascontiguousarray(a[order]) for a in (h_e, h_r, p))
    flows, amounts, k = _single_node_kernel(h_e.astype(np.int64), h_r.astype(np.int64), p.astype(np.float64), loads)
    flows, amounts = flows[:k], amounts[:k]
    order = np.lexsort((flows[:, 2], flows[:, 1], flows[:, 0]))
    return flows[order], amounts[order]


@nb.njit(cache=True, nogil=True)
def _single_node_kernel(h_e, h_r, p, loads):
    """Per expert (hosts contiguous in ``h_e``): noise dropped, processed tokens rescaled to the
    expert's load, ``l = min(n, p)`` kept local, the rest paired source to host in rank order (a
    northwest-corner transport, never a rank with itself)."""
    g = loads.shape[0]
    H = h_e.shape[0]
    flows = np.zeros((H + H * g + g, 3), np.int64)
    amounts = np.zeros(H + H * g + g)
    k = 0
    i = 0
    supply = np.zeros(g)
    while i < H:
        e = h_e[i]
        j = i
        while j < H and h_e[j] == e:
            j += 1
        n_e = 0.0
        for s in range(g):
            n_e += loads[s, e]
        pe = np.empty(j - i)
        tot = 0.0
        for t in range(i, j):
            v = p[t] if p[t] > ZERO * n_e else 0.0  # solver noise, not work: see integral_routes
            pe[t - i] = v
            tot += v
        if tot <= 0.0:  # nothing left: the first (native) host takes all
            pe[:] = 0.0
            pe[0] = n_e
            tot = n_e
        for t in range(j - i):
            pe[t] *= n_e / tot
        for s in range(g):
            supply[s] = loads[s, e]
        demand = np.empty(j - i)
        for t in range(i, j):
            r = h_r[t]
            loc = min(loads[r, e], pe[t - i])
            supply[r] -= loc
            demand[t - i] = pe[t - i] - loc
            if loc > 0.0:
                flows[k, 0], flows[k, 1], flows[k, 2] = r, e, r
                amounts[k] = loc
                k += 1
        tol = 1e-12 * max(1.0, n_e)
        s = 0
        d = 0
        while s < g and d < j - i:
            if supply[s] <= tol:
                s += 1
                continue
            if demand[d] <= tol:
                d += 1
                continue
            a = min(supply[s], demand[d])
            flows[k, 0], flows[k, 1], flows[k, 2] = s, e, h_r[i + d]
            amounts[k] = a
            k += 1
            supply[s] -= a
            demand[d] -= a
        i = j
    return flows, amounts, k


def _multinode_flows(m: LayerModel, x: np.ndarray, loads: np.ndarray, host_mask: np.ndarray,
                     node_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Routes from a multi-node node-form solution. Per expert: a rank that both sends and receives
    within its node keeps its own tokens instead (volumes only drop; the node balance holds); then
    intra-node sends meet intra-node receives by a northwest-corner transport inside each node,
    which never pairs a rank with itself; inter-node sends meet receives by one across nodes, nodes
    listed with the busiest (sends + receives) first on the sending side and last on the receiving
    side, which keeps most nodes off themselves (checked: if a pair stays inside a node, a small LP
    places the inter traffic instead; the model's Hall rows make one exist). Inter traffic needs no
    per-rank reduction: its pairs always join different nodes."""
    H = m.hosts.shape[0]
    P = m.pairs.shape[0]
    h_e, h_r = m.hosts[:, 0], m.hosts[:, 1]
    keep = host_mask[h_r, h_e] & (x[m.y0:m.l0] > ZERO * loads.sum(axis=0)[h_e])  # solver noise is no work
    return multinode_flows_from(h_e, h_r, x[m.l0:m.w0] * keep, x[m.w0:m.w0 + H] * keep, x[m.w0 + H:m.w0 + 2 * H] * keep,
                                m.pairs[:, 0], m.pairs[:, 1], x[m.oa0:m.oa0 + P], x[m.oa0 + P:m.oa0 + 2 * P], loads, node_of)


def multinode_flows_from(h_e, h_r, l, w, v, q_s, q_e, oa, ob, loads: np.ndarray,
                         node_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Routes from node-form amounts across nodes: per host ``(h_e, h_r)`` kept ``l``, received
    within ``w`` and across nodes ``v``; per (source ``q_s``, expert ``q_e``) sent within ``oa`` and
    across ``ob`` (see :func:`_multinode_flows`)."""
    l, w, v = np.maximum(l, 0.0), np.maximum(w, 0.0), np.maximum(v, 0.0)
    oa, ob = np.maximum(oa, 0.0), np.maximum(ob, 0.0)
    by_e_q = np.argsort(q_e, kind="stable")
    q_starts = np.searchsorted(q_e[by_e_q], np.arange(loads.shape[1] + 1))
    out = []
    for e in np.unique(h_e):
        sel = np.flatnonzero(h_e == e)
        qs = by_e_q[q_starts[e]:q_starts[e + 1]]
        tol = 1e-12 * max(1.0, loads[:, e].sum())
        ranks = h_r[sel]
        le, we, ve = l[sel].copy(), w[sel].copy(), v[sel].copy()
        src = q_s[qs]
        oae, obe = oa[qs].copy(), ob[qs].copy()
        pos = {int(r): i for i, r in enumerate(src)}
        for i, r in enumerate(ranks):  # a rank both sending and receiving within its node keeps its tokens
            j = pos.get(int(r))
            if j is not None:
                d = min(oae[j], we[i])
                oae[j] -= d
                we[i] -= d
                le[i] += d
        out.extend((r, e, r, a) for r, a in zip(ranks, le, strict=True) if a > tol)
        for nd in np.unique(node_of[np.concatenate([src, ranks])]):  # intra-node, per node
            si = np.flatnonzero((node_of[src] == nd) & (oae > tol))
            di = np.flatnonzero((node_of[ranks] == nd) & (we > tol))
            _northwest(src[si], oae[si], ranks[di], we[di], e, out, tol)
        si = np.flatnonzero(obe > tol)
        di = np.flatnonzero(ve > tol)
        if si.size and di.size:
            busy = np.bincount(node_of[src[si]], weights=obe[si], minlength=node_of.max() + 1) + \
                np.bincount(node_of[ranks[di]], weights=ve[di], minlength=node_of.max() + 1)
            top = int(np.argmax(busy))
            s_order = si[np.lexsort((src[si], node_of[src[si]] != top))]  # busiest node first
            d_order = di[np.lexsort((ranks[di], node_of[ranks[di]] == top))]  # busiest node last
            inter = []
            _northwest(src[s_order], obe[s_order].copy(), ranks[d_order], ve[d_order].copy(), e, inter, tol)
            if any(node_of[a] == node_of[b] for a, _, b, _ in inter):
                lp = _inter_by_lp(src[si], obe[si], ranks[di], ve[di], e, node_of, tol)
                # the LP must place every sender's tokens; else the northwest pairing stands (a pair
                # inside one node is still a valid route, only timed on the intra link)
                if {a for a, *_ in lp} == {int(x) for x in src[si]}:
                    inter = lp
            out.extend(inter)
    return _flows_array(out)


def _inter_by_lp(src, supply, dst, demand, e, node_of, tol):
    """Inter-node transport with no pair inside one node, as a small LP (fallback only): as much of
    the supplies as the demands take (a solver's last digits may leave them a hair apart, so neither
    side is an equality), at most each supply and each demand."""
    from scipy.optimize import linprog

    allowed = [(i, j) for i in range(len(src)) for j in range(len(dst)) if node_of[src[i]] != node_of[dst[j]]]
    if not allowed:
        return []
    a_ub = np.zeros((len(src) + len(dst), len(allowed)))
    for k, (i, j) in enumerate(allowed):
        a_ub[i, k] = 1.0
        a_ub[len(src) + j, k] = 1.0
    b = np.concatenate([supply, demand]) * (1 + 1e-9) + tol
    res = linprog(-np.ones(len(allowed)), A_ub=a_ub, b_ub=b, bounds=(0, None), method="highs")
    if res.x is None:
        return []
    return [(src[i], e, dst[j], a) for (i, j), a in zip(allowed, res.x, strict=True) if a > tol]
