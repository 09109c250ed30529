"""numba kernel behind the ``static`` and ``greedy`` solvers (PROBE's Algorithm 1, extended).

Per layer, starting from the baseline placement with every expert's tokens water-filled over its
native hosts, repeat while it gains: take the bottleneck ranks (slowest compute, slowest link),
try copying one of their heavy experts to a few of the least-loaded eligible ranks (slot free,
copy inside the window on both ends) — or, for a rank whose *sending* is the bottleneck, copying the
expert it sends most to onto itself — re-water-fill that expert's tokens over its hosts (local
tokens stay local, remote ones fill the least-loaded hosts, same-node sources first), score the
layer with the shared cost model and keep the best move. Integral loads give integral routing.

Helpers are compiled with ``_nrt=False``: they never allocate, and skipping reference counting on
their many array arguments makes each call ~8x cheaper than an NRT-managed one.

State per layer (all flat arrays): ``hosts[e, :nh[e]]`` the ranks holding ``e`` (natives first),
``xh[e, i]`` tokens ``hosts[e, i]`` processes, and per-rank compute µs and traffic volumes.
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np

from ..cost import ALPHA, BETA, COPY_INTER, COPY_INTRA, TOK_INTER, TOK_INTRA, expert_time_us, link_time_us

_TOL = 1e-9


@nb.njit(cache=True)
def _now():
    with nb.objmode(t="float64"):
        t = time.perf_counter()
    return t


# Extra entries the kernel appends to the cost vector: the weight of a rank's link time in the
# water-fill level, and the expected per-token link time of a remote token.
FILL_W, FILL_TAU = 6, 7


@nb.njit(cache=True, _nrt=False)
def _waterfill(e, nt, total, hosts, nh, xh, comp, vol, p, integral, base, key, order):
    """Split expert ``e``'s ``total`` tokens over its hosts: each keeps its local tokens; the rest
    raise the hosts with the lowest level to a common level, where a host's level is its compute
    time plus ``FILL_W`` x its link time, and a remote token adds ``alpha + FILL_W·FILL_TAU`` to it
    (it is computed there and crosses that host's link). ``comp``/``vol`` must exclude ``e``."""
    alpha = p[ALPHA]
    slope = alpha + p[FILL_W] * p[FILL_TAU]
    w = p[FILL_W]
    for i in range(nh):
        r = hosts[e, i]
        base[i] = comp[r]
        if w > 0.0:
            base[i] += w * link_time_us(vol[r, 0], vol[r, 1], vol[r, 2], vol[r, 3], p[TOK_INTRA], p[TOK_INTER])
        key[i] = base[i] + nt[e, r] * alpha
        order[i] = i
    for i in range(1, nh):  # insertion sort by key: nh is small
        j = i
        while j > 0 and key[order[j - 1]] > key[order[j]]:
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    remote = total
    for i in range(nh):
        remote -= nt[e, hosts[e, i]]
    active_key = 0.0
    lam = 0.0
    for j in range(nh):
        active_key += key[order[j]]
        lam = (slope * remote + active_key) / (j + 1)
        if j + 1 == nh or lam <= key[order[j + 1]]:
            break
    acc = 0.0
    for i in range(nh):
        loc = nt[e, hosts[e, i]]
        v = (lam - key[i]) / slope
        xh[e, i] = loc + (v if v > 0.0 else 0.0)
        acc += xh[e, i]
    if integral:
        deficit = total
        for i in range(nh):
            loc = nt[e, hosts[e, i]]
            f = np.floor(xh[e, i] + _TOL)
            if f < loc:
                f = loc
            key[i] = xh[e, i] - f  # fractional part left behind
            xh[e, i] = f
            deficit -= f
        while deficit > 0.5:  # largest remainder first
            best = 0
            for i in range(1, nh):
                if key[i] > key[best]:
                    best = i
            xh[e, best] += 1.0
            key[best] = -1e300
            deficit -= 1.0
        while deficit < -0.5:  # float overshoot: take back from hosts above their local share
            best = -1
            for i in range(nh):
                if xh[e, i] > nt[e, hosts[e, i]] and (best < 0 or key[i] < key[best]):
                    best = i
            xh[e, best] -= 1.0
            key[best] = 1e300
            deficit += 1.0
    else:
        # push rounding residue onto the largest share so the split sums to total
        big = 0
        for i in range(1, nh):
            if xh[e, i] > xh[e, big]:
                big = i
        xh[e, big] += total - acc


@nb.njit(cache=True, _nrt=False)
def _map_remote(e, nt, is_host, hosts, nh, xh, rpn, rem, quota, o_src, o_dst, o_amt):
    """Which remote source sends how many tokens of ``e`` to which host: same-node sources first,
    then the rest in rank order. Deterministic, so removing a mapping replays it exactly.
    Writes ``(src, host, amount)`` triples and returns their count."""
    g = nt.shape[1]
    cnt = 0
    if nh == 1:  # the common case: every remote token goes to the one host
        r = hosts[e, 0]
        for s in range(g):
            if nt[e, s] > 0.0 and s != r:
                o_src[cnt] = s
                o_dst[cnt] = r
                o_amt[cnt] = nt[e, s]
                cnt += 1
        return cnt
    for s in range(g):
        rem[s] = 0.0 if is_host[e, s] else nt[e, s]
    for i in range(nh):
        quota[i] = xh[e, i] - nt[e, hosts[e, i]]
    for i in range(nh):
        if quota[i] <= 0.0:
            continue
        r = hosts[e, i]
        first = (r // rpn) * rpn
        for s in range(first, first + rpn):
            if rem[s] > 0.0:
                a = min(rem[s], quota[i])
                o_src[cnt] = s
                o_dst[cnt] = r
                o_amt[cnt] = a
                cnt += 1
                rem[s] -= a
                quota[i] -= a
                if quota[i] <= 0.0:
                    break
    s = 0
    for i in range(nh):
        while quota[i] > 0.0 and s < g:
            if rem[s] > 0.0:
                a = min(rem[s], quota[i])
                o_src[cnt] = s
                o_dst[cnt] = hosts[e, i]
                o_amt[cnt] = a
                cnt += 1
                rem[s] -= a
                quota[i] -= a
            if rem[s] <= 0.0:
                s += 1
    for s in range(g):  # float residue (fractional loads only): onto s's last entry, else the first host
        if rem[s] > 0.0:
            k = cnt - 1
            while k >= 0 and o_src[k] != s:
                k -= 1
            if k >= 0:
                o_amt[k] += rem[s]
            else:
                o_src[cnt] = s
                o_dst[cnt] = hosts[e, 0]
                o_amt[cnt] = rem[s]
                cnt += 1
    return cnt


@nb.njit(cache=True, _nrt=False)
def _apply(e, sign, nt, is_host, hosts, nh, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt):
    """Add (sign=+1) or remove (sign=-1) expert ``e``'s compute and traffic from the rank state."""
    for i in range(nh):
        comp[hosts[e, i]] += sign * expert_time_us(xh[e, i], p[ALPHA], p[BETA])
    cnt = _map_remote(e, nt, is_host, hosts, nh, xh, rpn, rem, quota, o_src, o_dst, o_amt)
    for k in range(cnt):
        s, d, a = o_src[k], o_dst[k], sign * o_amt[k]
        link = 0 if node_of[s] == node_of[d] else 1
        vol[d, link] += a
        vol[s, 2 + link] += a


@nb.njit(cache=True, _nrt=False)
def _score(comp, vol, p):
    """(makespan, sum of squared per-rank cost) of the current state; the second breaks ties."""
    g = comp.shape[0]
    mc = 0.0
    mm = 0.0
    sq = 0.0
    for r in range(g):
        c = link_time_us(vol[r, 0], vol[r, 1], vol[r, 2], vol[r, 3], p[TOK_INTRA], p[TOK_INTER])
        if c > mm:
            mm = c
        if comp[r] > mc:
            mc = comp[r]
        t = comp[r] + 2.0 * c
        sq += t * t
    return 2.0 * mm + mc, sq


@nb.njit(cache=True, _nrt=False)
def _copy_fits(r, incoming, link, copies, win, p):
    """Would one more copy in (``incoming``) or out of rank ``r`` over ``link`` fit its window?"""
    c0, c1, c2, c3 = copies[r, 0], copies[r, 1], copies[r, 2], copies[r, 3]
    k = (0 if incoming else 2) + link
    if k == 0:
        c0 += 1.0
    elif k == 1:
        c1 += 1.0
    elif k == 2:
        c2 += 1.0
    else:
        c3 += 1.0
    return link_time_us(c0, c1, c2, c3, p[COPY_INTRA], p[COPY_INTER]) <= win[r] * (1.0 + _TOL) + _TOL


@nb.njit(cache=True, _nrt=False)
def _copy_source(e, d, nat_cnt, hosts, node_of, copies, win, p):
    """Best native host to copy ``e`` from onto ``d`` (same node first, fewest copies out), or -1."""
    best = -1
    best_key = 1e300
    for i in range(nat_cnt[e]):
        s = hosts[e, i]
        link = 0 if node_of[s] == node_of[d] else 1
        if not _copy_fits(d, True, link, copies, win, p) or not _copy_fits(s, False, link, copies, win, p):
            continue
        k = link * 1e6 + copies[s, 2] + copies[s, 3]
        if k < best_key:
            best_key = k
            best = s
    return best


@nb.njit(cache=True, _nrt=False)
def _cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p, comp, vol, n_dest, dest, dest_cost):
    """The ``n_dest`` eligible ranks (free slot, copy fits both windows) with the lowest cost."""
    nd = 0
    for r in range(g):
        if is_host[e, r] or used[r] >= slots:
            continue
        cost = comp[r] + 2.0 * link_time_us(vol[r, 0], vol[r, 1], vol[r, 2], vol[r, 3], p[TOK_INTRA], p[TOK_INTER])
        if nd == n_dest:
            worst = 0
            for j in range(1, nd):
                if dest_cost[j] > dest_cost[worst]:
                    worst = j
            if cost >= dest_cost[worst]:
                continue
        if _copy_source(e, r, nat_cnt, hosts, node_of, copies, win, p) < 0:
            continue
        if nd < n_dest:
            dest[nd] = r
            dest_cost[nd] = cost
            nd += 1
        else:
            dest[worst] = r
            dest_cost[worst] = cost
    return nd


@nb.njit(cache=True, _nrt=False)
def _add_copy(e, src, d, integral, nt, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used, copies, node_of, rpn, p,
              comp, vol, rem, quota, o_src, o_dst, o_amt, base, key, order):
    """Make ``d`` a host of ``e`` (copied from ``src``) and re-split ``e``'s tokens."""
    k = nh[e]
    _apply(e, -1.0, nt, is_host, hosts, k, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
    hosts[e, k] = d
    is_host[e, d] = True
    nh[e] = k + 1
    _waterfill(e, nt, total[e], hosts, k + 1, xh, comp, vol, p, integral, base, key, order)
    _apply(e, 1.0, nt, is_host, hosts, k + 1, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
    link = 0 if node_of[src] == node_of[d] else 1
    copies[d, link] += 1.0
    copies[src, 2 + link] += 1.0
    used[d] += 1
    rank_exp[d, rank_cnt[d]] = e
    rank_cnt[d] += 1


@nb.njit(cache=True, _nrt=False)
def _remove_copy(e, src, d, integral, nt, total, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, used, copies,
                 node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt, base, key, order):
    """Undo :func:`_add_copy`: ``d`` stops hosting ``e``; ``e``'s tokens are re-split."""
    k = nh[e]
    _apply(e, -1.0, nt, is_host, hosts, k, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
    for i in range(nat_cnt[e], k):
        if hosts[e, i] == d:
            for j in range(i, k - 1):
                hosts[e, j] = hosts[e, j + 1]
            break
    is_host[e, d] = False
    nh[e] = k - 1
    _waterfill(e, nt, total[e], hosts, k - 1, xh, comp, vol, p, integral, base, key, order)
    _apply(e, 1.0, nt, is_host, hosts, k - 1, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
    link = 0 if node_of[src] == node_of[d] else 1
    copies[d, link] -= 1.0
    copies[src, 2 + link] -= 1.0
    used[d] -= 1
    for j in range(rank_cnt[d]):
        if rank_exp[d, j] == e:
            rank_exp[d, j] = rank_exp[d, rank_cnt[d] - 1]
            break
    rank_cnt[d] -= 1


@nb.njit(cache=True, _nrt=False)
def _search(mk, sq, g, e_all, n_exp, n_dest, slots, integral, n, nt, total, is_host, hosts, nh, nat_cnt, xh, rank_exp,
            rank_cnt, used, copies, win, node_of, rpn, p, comp, vol, comp0, vol0, rem, quota, o_src, o_dst, o_amt, base,
            key, order, saved, cand_e, cand_d, dest, dest_cost):
    """The best single copy to add: ``(makespan, sum of squares, expert, dst, src)``, expert -1 when
    none beats ``mk`` (or ties it with a smaller ``sq``). The state is left as it was found."""
    # bottlenecks: slowest compute rank, slowest link rank
    rc = 0
    rm = 0
    cm_best = -1.0
    for r in range(g):
        if comp[r] > comp[rc]:
            rc = r
        c = link_time_us(vol[r, 0], vol[r, 1], vol[r, 2], vol[r, 3], p[TOK_INTRA], p[TOK_INTER])
        if c > cm_best:
            cm_best = c
            rm = r
    # candidates: (a) heaviest experts on the compute bottleneck and (b) most-received experts on
    # the link bottleneck, each copied to cheap ranks; (c) experts the link bottleneck sends most,
    # copied onto it
    n_cand = 0
    for kind in range(3):
        r0 = rc if kind == 0 else rm
        if kind == 2 and used[r0] >= slots:
            continue
        for _ in range(n_exp):
            be = -1
            bv = 0.0
            if kind < 2:
                for j in range(rank_cnt[r0]):
                    e = rank_exp[r0, j]
                    if nh[e] >= g:
                        continue
                    v = 0.0
                    for i in range(nh[e]):
                        if hosts[e, i] == r0:
                            v = xh[e, i] if kind == 0 else xh[e, i] - nt[e, r0]
                    if v > bv:
                        dup = False
                        for c in range(n_cand):
                            if cand_e[c] == e and cand_d[c] < 0:
                                dup = True
                        if not dup:
                            bv = v
                            be = e
            else:
                for e in range(e_all):
                    if n[r0, e] > bv and not is_host[e, r0]:
                        dup = False
                        for c in range(n_cand):
                            if cand_e[c] == e and cand_d[c] == r0:
                                dup = True
                        if not dup:
                            bv = n[r0, e]
                            be = e
            if be < 0:
                break
            cand_e[n_cand] = be
            cand_d[n_cand] = r0 if kind == 2 else -1
            n_cand += 1
    best_mk = mk
    best_sq = sq
    best_e = -1
    best_d = -1
    best_s = -1
    for c in range(n_cand):
        e = cand_e[c]
        if cand_d[c] >= 0:
            dest[0] = cand_d[c]
            nd = 1
        else:
            nd = _cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p,
                                 comp, vol, n_dest, dest, dest_cost)
        if nd == 0:
            continue
        k = nh[e]
        for i in range(k):
            saved[i] = xh[e, i]
        _apply(e, -1.0, nt, is_host, hosts, k, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
        for r in range(g):  # snapshot (explicit loops: this helper runs without NRT)
            comp0[r] = comp[r]
            for q in range(4):
                vol0[r, q] = vol[r, q]
        for j in range(nd):
            d = dest[j]
            src = _copy_source(e, d, nat_cnt, hosts, node_of, copies, win, p)
            if src < 0:
                continue
            hosts[e, k] = d
            is_host[e, d] = True
            xh[e, k] = 0.0
            _waterfill(e, nt, total[e], hosts, k + 1, xh, comp, vol, p, integral, base, key, order)
            _apply(e, 1.0, nt, is_host, hosts, k + 1, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
            new_mk, new_sq = _score(comp, vol, p)
            for r in range(g):
                comp[r] = comp0[r]
                for q in range(4):
                    vol[r, q] = vol0[r, q]
            is_host[e, d] = False
            better = new_mk < best_mk * (1.0 - _TOL) - _TOL
            tie_better = new_mk <= best_mk * (1.0 + _TOL) + _TOL and new_sq < best_sq * (1.0 - 1e-6)
            if better or tie_better:
                best_mk = new_mk
                best_sq = new_sq
                best_e = e
                best_d = d
                best_s = src
        for i in range(k):
            xh[e, i] = saved[i]
        _apply(e, 1.0, nt, is_host, hosts, k, xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
    return best_mk, best_sq, best_e, best_d, best_s


@nb.njit(cache=True)
def plan_layers(loads, loads_t, nnz, native, node_of, rpn, p, slots, win, integral, max_moves, n_dest, n_exp, max_swaps, deadline):
    """Plan every layer of ``loads [L, G, E]`` (``loads_t``: the same as ``[L, E, G]``; ``nnz``: its
    count of non-zeros, which sizes the output).

    Returns ``(replicas [R, 4] (layer, expert, src, dst), route_idx [N, 4] (layer, src, expert, dst),
    route_tok [N], moves [L], finished)``; ``finished`` is False when the deadline cut the search
    short (every layer still gets a valid plan: unsearched layers keep the baseline placement).
    """
    n_layers, g, e_all = loads.shape
    is_host = native.T.copy()  # [E, G]
    nat_cnt = np.zeros(e_all, np.int64)
    hosts = np.zeros((e_all, g), np.int64)
    rank_cnt_nat = np.zeros(g, np.int64)
    rank_exp = np.zeros((g, e_all), np.int64)  # experts each rank holds: natives, then this layer's replicas
    for e in range(e_all):
        for r in range(g):
            if native[r, e]:
                hosts[e, nat_cnt[e]] = r
                nat_cnt[e] += 1
                rank_exp[r, rank_cnt_nat[r]] = e
                rank_cnt_nat[r] += 1
    rank_cnt = rank_cnt_nat.copy()
    nh = np.zeros(e_all, np.int64)
    xh = np.zeros((e_all, g))
    total = np.zeros(e_all)
    comp = np.zeros(g)
    vol = np.zeros((g, 4))
    comp0 = np.zeros(g)
    vol0 = np.zeros((g, 4))
    copies = np.zeros((g, 4))
    used = np.zeros(g, np.int64)
    base = np.zeros(g)
    key = np.zeros(g)
    order = np.zeros(g, np.int64)
    rem = np.zeros(g)
    quota = np.zeros(g)
    o_src = np.zeros(4 * g + 4, np.int64)
    o_dst = np.zeros(4 * g + 4, np.int64)
    o_amt = np.zeros(4 * g + 4)
    cand_e = np.zeros(3 * n_exp, np.int64)
    cand_d = np.zeros(3 * n_exp, np.int64)  # -1: try the cheapest eligible ranks
    dest = np.zeros(n_dest, np.int64)
    dest_cost = np.zeros(n_dest)
    saved = np.zeros(g)
    multi = np.zeros(e_all, np.int64)

    rep = np.empty((max(n_layers * g * min(slots, e_all), 1), 4), np.int64)  # a rank copies each expert once at most
    n_rep = 0
    # a split expert's (source, expert) pair is local or remote; each remote entry zeroes a source,
    # exhausts a host's quota, or (fractional loads only) carries float residue
    n_split = 0
    for e in range(e_all):
        if nat_cnt[e] > 1:
            n_split += 1
    n_split = min(e_all, n_split + g * min(slots, e_all))
    cap = n_layers * n_split * (2 * g + 2 * g) + 4 * g + 4
    ridx = np.empty((cap, 4), np.int64)
    rtok = np.empty(cap)
    n_route = 0
    moves = np.zeros(n_layers, np.int64)
    finished = True

    for lay in range(n_layers):
        n = loads[lay]
        nt = loads_t[lay]
        comp[:] = 0.0
        vol[:, :] = 0.0
        copies[:, :] = 0.0
        used[:] = 0
        for e in range(e_all):
            nh[e] = nat_cnt[e]
            t = 0.0
            for s in range(g):
                t += nt[e, s]
            total[e] = t
        for e in range(e_all):
            if nh[e] == 1:  # the common case, inlined: every remote token goes to the one host
                r = hosts[e, 0]
                xh[e, 0] = total[e]
                comp[r] += expert_time_us(total[e], p[ALPHA], p[BETA])
                in_intra = 0.0  # accumulate locally: no store-to-load chain through vol[r]
                in_inter = 0.0
                for s in range(g):
                    a = nt[e, s]
                    if a > 0.0 and s != r:
                        if node_of[s] == node_of[r]:
                            in_intra += a
                            vol[s, 2] += a
                        else:
                            in_inter += a
                            vol[s, 3] += a
                vol[r, 0] += in_intra
                vol[r, 1] += in_inter
        # experts hosted more than once by the given placement are split last, heaviest first, so
        # each fill sees every single-host expert's load already in place
        n_multi = 0
        for e in range(e_all):
            if nh[e] > 1:
                multi[n_multi] = e
                n_multi += 1
        for i in range(1, n_multi):  # insertion sort by load, descending
            j = i
            while j > 0 and total[multi[j - 1]] < total[multi[j]]:
                multi[j - 1], multi[j] = multi[j], multi[j - 1]
                j -= 1
        for i in range(n_multi):
            e = multi[i]
            _waterfill(e, nt, total[e], hosts, nh[e], xh, comp, vol, p, integral, base, key, order)
            _apply(e, 1.0, nt, is_host, hosts, nh[e], xh, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt)
        rep_start = n_rep
        searching = finished and max_moves > 0 and slots > 0
        if searching and _now() > deadline:
            finished = False
            searching = False
        mk, sq = _score(comp, vol, p)
        swaps = 0
        while searching and moves[lay] < max_moves:
            best_mk, best_sq, best_e, best_d, best_s = _search(
                mk, sq, g, e_all, n_exp, n_dest, slots, integral, n, nt, total, is_host, hosts, nh, nat_cnt, xh,
                rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, comp, vol, comp0, vol0, rem, quota, o_src,
                o_dst, o_amt, base, key, order, saved, cand_e, cand_d, dest, dest_cost)
            if best_e < 0 and swaps < max_swaps:
                # stuck: the bottleneck's copies may have gone to the wrong experts (a source's window
                # holds few copies). Try taking back one copy sent by the compute bottleneck and
                # spending the freed window better; keep the swap only if it beats the current plan.
                rc = 0
                for r in range(g):
                    if comp[r] > comp[rc]:
                        rc = r
                if _copy_fits(rc, False, 0, copies, win, p) or _copy_fits(rc, False, 1, copies, win, p):
                    break  # rc could still send a copy: its window is not what holds the plan back
                for i in range(rep_start, n_rep):
                    if rep[i, 2] != rc:
                        continue
                    e_i, d_i = rep[i, 1], rep[i, 3]
                    _remove_copy(e_i, rc, d_i, integral, nt, total, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt,
                                 used, copies, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt, base, key, order)
                    cand = _search(mk, 0.0, g, e_all, n_exp, n_dest, slots, integral, n, nt, total, is_host, hosts, nh,
                                   nat_cnt, xh, rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, comp, vol, comp0,
                                   vol0, rem, quota, o_src, o_dst, o_amt, base, key, order, saved, cand_e, cand_d, dest,
                                   dest_cost)
                    if cand[2] >= 0 and not (cand[2] == e_i and cand[3] == d_i):
                        best_mk, best_sq, best_e, best_d, best_s = cand
                        rep[i, :] = rep[n_rep - 1, :]  # the taken-back copy leaves the list
                        n_rep -= 1
                        moves[lay] -= 1
                        swaps += 1
                        break
                    _add_copy(e_i, rc, d_i, integral, nt, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used,
                              copies, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt, base, key, order)
            if best_e < 0:
                break
            _add_copy(best_e, best_s, best_d, integral, nt, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used,
                      copies, node_of, rpn, p, comp, vol, rem, quota, o_src, o_dst, o_amt, base, key, order)
            rep[n_rep, 0] = lay
            rep[n_rep, 1] = best_e
            rep[n_rep, 2] = best_s
            rep[n_rep, 3] = best_d
            n_rep += 1
            moves[lay] += 1
            mk, sq = _score(comp, vol, p)
            if (moves[lay] + swaps) % 4 == 0 and _now() > deadline:
                finished = False
                break
        # emit the routes of split experts (local tokens first, then the remote mapping); a
        # single-host expert's routes are implied (probe_planner.routes)
        for e in range(e_all):
            if nh[e] == 1:
                continue
            for i in range(nh[e]):
                r = hosts[e, i]
                if nt[e, r] > 0.0:
                    ridx[n_route, 0] = lay
                    ridx[n_route, 1] = r
                    ridx[n_route, 2] = e
                    ridx[n_route, 3] = r
                    rtok[n_route] = nt[e, r]
                    n_route += 1
            cnt = _map_remote(e, nt, is_host, hosts, nh[e], xh, rpn, rem, quota, o_src, o_dst, o_amt)
            for k in range(cnt):
                if o_amt[k] > 0.0:
                    ridx[n_route, 0] = lay
                    ridx[n_route, 1] = o_src[k]
                    ridx[n_route, 2] = e
                    ridx[n_route, 3] = o_dst[k]
                    rtok[n_route] = o_amt[k]
                    n_route += 1
        for i in range(rep_start, n_rep):  # back to the baseline placement for the next layer
            is_host[rep[i, 1], rep[i, 3]] = False
        rank_cnt[:] = rank_cnt_nat
    return rep[:n_rep], ridx[:n_route], rtok[:n_route], moves, finished
