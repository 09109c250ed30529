"""numba kernel behind the ``static`` and ``greedy`` solvers (PROBE's Algorithm 1, extended).

Per layer, starting from the baseline placement with every expert's tokens water-filled over its
native hosts, repeat while it gains: take the bottleneck ranks (slowest compute, slowest link),
try copying one of their heavy experts to a few of the least-loaded eligible ranks (slot free,
copy inside the window on both ends) — or, for a rank whose *sending* is the bottleneck, copying the
expert it sends most to onto itself — re-water-fill that expert's tokens over its hosts (local
tokens stay local, remote ones fill the least-loaded hosts, same-node sources first), score the
layer with the shared cost model and keep the best move. Integral loads give integral routing.

Speed (bench/greedy_speed.py): the baseline state comes from one branch-free pass over the
``[G, E]`` loads; a candidate is scored incrementally — moving an expert's tokens changes the
traffic of the ranks on its hosts' nodes only (sources elsewhere send inter-node either way), so
only those ranks are re-scored and the rest enter through per-node maxima; routes are written for
split experts only (single-host experts' routes are implied, :mod:`probe_planner.routes`).
Helpers are compiled with ``_nrt=False``: they never allocate, and skipping reference counting on
their many array arguments makes each call ~8x cheaper than an NRT-managed one.

State per layer (flat arrays): ``hosts[e, :nh[e]]`` the ranks holding ``e`` (natives first),
``xh[e, i]`` tokens ``hosts[e, i]`` processes; per rank ``comp`` (µs), ``vol`` (in intra, in inter,
out intra, out inter tokens), ``ct`` (link µs); per node the maxima of ``comp`` and ``ct``.
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np

from ..cost import ALPHA, BETA, COPY_INTER, COPY_INTRA, TOK_INTER, TOK_INTRA, expert_time_us, link_time_us, single_host_pass

_TOL = 1e-9


@nb.njit(cache=True)
def _now():
    with nb.objmode(t="float64"):
        t = time.perf_counter()
    return t


# Extra entries the kernel appends to the cost vector: the weight of a rank's link time in the
# water-fill level, and the expected per-token link time of a remote token.
FILL_W, FILL_TAU = 6, 7


@nb.njit(cache=True, _nrt=False, inline="always")
def _waterfill(e, n, total, hosts, nh, xh, base, p, integral, key, order):
    """Split expert ``e``'s ``total`` tokens over its hosts: each keeps its local tokens; the rest
    raise the hosts with the lowest level to a common level, where ``base[i]`` is host ``i``'s level
    without ``e`` (compute plus ``FILL_W`` x link time) and a remote token adds ``alpha + FILL_W·FILL_TAU``
    to it (it is computed there and crosses that host's link)."""
    alpha = p[ALPHA]
    slope = alpha + p[FILL_W] * p[FILL_TAU]
    for i in range(nh):
        key[i] = base[i] + n[hosts[e, i], e] * alpha
        order[i] = i
    for i in range(1, nh):  # insertion sort by key: nh is small
        j = i
        while j > 0 and key[order[j - 1]] > key[order[j]]:
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    remote = total
    for i in range(nh):
        remote -= n[hosts[e, i], e]
    active_key = 0.0
    lam = 0.0
    for j in range(nh):
        active_key += key[order[j]]
        lam = (slope * remote + active_key) / (j + 1)
        if j + 1 == nh or lam <= key[order[j + 1]]:
            break
    acc = 0.0
    for i in range(nh):
        loc = n[hosts[e, i], e]
        v = (lam - key[i]) / slope
        xh[e, i] = loc + (v if v > 0.0 else 0.0)
        acc += xh[e, i]
    if integral:
        deficit = total
        for i in range(nh):
            loc = n[hosts[e, i], e]
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
                if xh[e, i] > n[hosts[e, i], e] and (best < 0 or key[i] < key[best]):
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
def _map_remote(e, n, is_host, hosts, nh, xh, rpn, rem, quota, o_src, o_dst, o_amt):
    """Which remote source sends how many tokens of ``e`` to which host: same-node sources first
    (in rank order, hosts in host order), then the rest in rank order — so every token left after
    the same-node phase crosses nodes. Writes ``(src, host, amount)`` triples, returns their count.
    :func:`_contrib` computes the traffic this mapping makes without writing it."""
    g = n.shape[0]
    cnt = 0
    for s in range(g):
        rem[s] = 0.0 if is_host[e, s] else n[s, e]
    for i in range(nh):
        quota[i] = xh[e, i] - n[hosts[e, i], e]
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


@nb.njit(cache=True, _nrt=False, inline="always")
def _contrib(e, n, hosts, nh, xh, is_host, node_of, rpn, nodes, nn, cv, supply, left):
    """Expert ``e``'s traffic, as :func:`_map_remote` routes it, on every rank of the nodes
    ``nodes[:nn]`` (which must include each host's node): ``cv[r] = (in intra, in inter, out intra,
    out inter)``. A node without a host sends everything across nodes."""
    for j in range(nn):
        first = nodes[j] * rpn
        sup = 0.0
        for r in range(first, first + rpn):
            cv[r, 0] = 0.0
            cv[r, 1] = 0.0
            cv[r, 2] = 0.0
            if is_host[e, r]:
                cv[r, 3] = 0.0
            else:
                cv[r, 3] = n[r, e]
                sup += n[r, e]
        supply[j] = sup
        left[j] = sup
    for i in range(nh):  # same-node phase: each host takes what its node's sources have left
        h = hosts[e, i]
        q = xh[e, i] - n[h, e]
        if q <= 0.0:
            continue
        j = 0
        while nodes[j] != node_of[h]:
            j += 1
        a = q if q < left[j] else left[j]
        left[j] -= a
        cv[h, 0] += a
        cv[h, 1] += q - a
    for j in range(nn):  # ... and the node's sources give it in rank order
        first = nodes[j] * rpn
        used = supply[j] - left[j]
        for r in range(first, first + rpn):
            if used <= 0.0:
                break
            if not is_host[e, r]:
                a = cv[r, 3] if cv[r, 3] < used else used
                cv[r, 2] = a
                cv[r, 3] -= a
                used -= a


@nb.njit(cache=True, _nrt=False)
def _score(comp, ct):
    """(makespan, sum of squared per-rank cost) of the current state; the second breaks ties."""
    mc = 0.0
    mm = 0.0
    sq = 0.0
    for r in range(comp.shape[0]):
        if ct[r] > mm:
            mm = ct[r]
        if comp[r] > mc:
            mc = comp[r]
        t = comp[r] + 2.0 * ct[r]
        sq += t * t
    return 2.0 * mm + mc, sq


@nb.njit(cache=True, _nrt=False)
def _rehost(e, d, add, n, total, hosts, nh, is_host, xh, node_of, rpn, p, integral, st, sc, sq_all):
    """Tentatively make ``d`` a host of ``e`` (``add``) or stop it hosting ``e`` (``d < 0``: keep the
    hosts); re-split ``e``'s tokens and compute the new values of the ranks this touches (those on the hosts' nodes) into
    the scratch ``sc``. Returns ``(makespan, sum of squares, number of touched ranks)``; the state
    ``st`` is unchanged — follow with :func:`_revert` or :func:`_commit`."""
    comp, vol, ct, node_mc, node_mm = st
    nodes, nflag, aff, cvo, cvn, nc, nv, nct, oldt, base, key, saved_x, supply, left, order, saved_h = sc
    k = nh[e]
    nn = 0
    for i in range(k + 1 if d >= 0 else k):
        nd = node_of[d if i == k else hosts[e, i]]
        if not nflag[nd]:
            nflag[nd] = True
            nodes[nn] = nd
            nn += 1
    _contrib(e, n, hosts, k, xh, is_host, node_of, rpn, nodes, nn, cvo, supply, left)
    for i in range(k):
        h = hosts[e, i]
        saved_x[i] = xh[e, i]
        saved_h[i] = h
        oldt[h] = expert_time_us(xh[e, i], p[ALPHA], p[BETA])
    if d < 0:
        k2 = k
    elif add:
        oldt[d] = 0.0
        hosts[e, k] = d
        is_host[e, d] = True
        k2 = k + 1
    else:
        j = 0
        for i in range(k):
            if hosts[e, i] != d:
                hosts[e, j] = hosts[e, i]
                j += 1
        is_host[e, d] = False
        k2 = k - 1
    w = p[FILL_W]
    for i in range(k2):
        h = hosts[e, i]
        base[i] = comp[h] - oldt[h]
        if w > 0.0:
            base[i] += w * link_time_us(vol[h, 0] - cvo[h, 0], vol[h, 1] - cvo[h, 1], vol[h, 2] - cvo[h, 2],
                                        vol[h, 3] - cvo[h, 3], p[TOK_INTRA], p[TOK_INTER])
    _waterfill(e, n, total[e], hosts, k2, xh, base, p, integral, key, order)
    _contrib(e, n, hosts, k2, xh, is_host, node_of, rpn, nodes, nn, cvn, supply, left)
    na = 0
    for j in range(nn):
        first = nodes[j] * rpn
        for r in range(first, first + rpn):
            aff[na] = r
            na += 1
            nc[r] = comp[r]
            for q in range(4):
                nv[r, q] = vol[r, q] - cvo[r, q] + cvn[r, q]
    for i in range(k):
        nc[saved_h[i]] -= oldt[saved_h[i]]
    for i in range(k2):
        nc[hosts[e, i]] += expert_time_us(xh[e, i], p[ALPHA], p[BETA])
    mc = 0.0
    mm = 0.0
    for nd in range(node_mc.shape[0]):  # untouched nodes enter through their maxima
        if not nflag[nd]:
            if node_mc[nd] > mc:
                mc = node_mc[nd]
            if node_mm[nd] > mm:
                mm = node_mm[nd]
    sq = sq_all
    for i in range(na):
        r = aff[i]
        c = link_time_us(nv[r, 0], nv[r, 1], nv[r, 2], nv[r, 3], p[TOK_INTRA], p[TOK_INTER])
        nct[r] = c
        if nc[r] > mc:
            mc = nc[r]
        if c > mm:
            mm = c
        t_old = comp[r] + 2.0 * ct[r]
        t_new = nc[r] + 2.0 * c
        sq += t_new * t_new - t_old * t_old
    for j in range(nn):
        nflag[nodes[j]] = False
    return 2.0 * mm + mc, sq, na


@nb.njit(cache=True, _nrt=False)
def _revert(e, d, add, hosts, nh, is_host, xh, sc):
    """Undo the tentative part of :func:`_rehost`."""
    saved_x, saved_h = sc[11], sc[15]
    for i in range(nh[e]):
        xh[e, i] = saved_x[i]
        hosts[e, i] = saved_h[i]
    if d >= 0:
        is_host[e, d] = not add


@nb.njit(cache=True, _nrt=False)
def _commit(e, d, add, nh, rpn, st, sc, na):
    """Keep what :func:`_rehost` computed: the touched ranks' new values and their nodes' maxima."""
    comp, vol, ct, node_mc, node_mm = st
    aff, nc, nv, nct = sc[2], sc[5], sc[6], sc[7]
    if d >= 0:
        nh[e] += 1 if add else -1
    for i in range(na):
        r = aff[i]
        comp[r] = nc[r]
        ct[r] = nct[r]
        for q in range(4):
            vol[r, q] = nv[r, q]
    for i in range(0, na, rpn):  # touched ranks come a whole node at a time
        _node_max(aff[i] // rpn, rpn, st)


@nb.njit(cache=True, _nrt=False)
def _node_max(nd, rpn, st):
    comp, ct, node_mc, node_mm = st[0], st[2], st[3], st[4]
    mc = 0.0
    mm = 0.0
    for r in range(nd * rpn, nd * rpn + rpn):
        if comp[r] > mc:
            mc = comp[r]
        if ct[r] > mm:
            mm = ct[r]
    node_mc[nd] = mc
    node_mm[nd] = mm


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
def _cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p, comp, ct, n_dest, dest, dest_cost):
    """The ``n_dest`` eligible ranks (free slot, copy fits both windows) with the lowest cost."""
    nd = 0
    for r in range(g):
        if is_host[e, r] or used[r] >= slots:
            continue
        cost = comp[r] + 2.0 * ct[r]
        if nd == n_dest:
            worst = 0
            for j in range(1, nd):
                if dest_cost[j] > dest_cost[worst]:
                    worst = j
            if cost >= dest_cost[worst]:
                continue
        same_node = False  # fast reject first: most ranks are on other nodes, where a copy is slow
        for i in range(nat_cnt[e]):
            if node_of[hosts[e, i]] == node_of[r]:
                same_node = True
        if not same_node and (copies[r, 1] + 1.0) * p[COPY_INTER] > win[r] * (1.0 + _TOL) + _TOL:
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
def _move(e, src, d, add, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used, copies, node_of, rpn,
          p, st, sc, sq_all):
    """Carry out a copy of ``e`` from ``src`` to ``d`` (``add``) or take it back."""
    na = _rehost(e, d, add, n, total, hosts, nh, is_host, xh, node_of, rpn, p, integral, st, sc, sq_all)[2]
    _commit(e, d, add, nh, rpn, st, sc, na)
    sign = 1.0 if add else -1.0
    link = 0 if node_of[src] == node_of[d] else 1
    copies[d, link] += sign
    copies[src, 2 + link] += sign
    if add:
        used[d] += 1
        rank_exp[d, rank_cnt[d]] = e
        rank_cnt[d] += 1
    else:
        used[d] -= 1
        for j in range(rank_cnt[d]):
            if rank_exp[d, j] == e:
                rank_exp[d, j] = rank_exp[d, rank_cnt[d] - 1]
                break
        rank_cnt[d] -= 1


@nb.njit(cache=True, _nrt=False)
def _search(mk, sq_all, sq_bar, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh,
            rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc, cand_e, cand_d, dest, dest_cost):
    """The best single copy to add: ``(makespan, sum of squares, expert, dst, src)``, expert -1 when
    none beats ``mk`` (or ties it with a sum of squares below ``sq_bar``; ``sq_all`` is the current
    state's). The state is left as it was found."""
    comp, ct = st[0], st[2]
    # bottlenecks: slowest compute rank, slowest link rank
    rc = 0
    rm = 0
    for r in range(g):
        if comp[r] > comp[rc]:
            rc = r
        if ct[r] > ct[rm]:
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
                            v = xh[e, i] if kind == 0 else xh[e, i] - n[r0, e]
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
    best_sq = sq_bar
    best_e = -1
    best_d = -1
    best_s = -1
    for c in range(n_cand):
        e = cand_e[c]
        if cand_d[c] >= 0:
            dest[0] = cand_d[c]
            nd = 1
        else:
            nd = _cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p, comp, ct,
                                 n_dest, dest, dest_cost)
        for j in range(nd):
            d = dest[j]
            src = _copy_source(e, d, nat_cnt, hosts, node_of, copies, win, p)
            if src < 0:
                continue
            new_mk, new_sq, _ = _rehost(e, d, True, n, total, hosts, nh, is_host, xh, node_of, rpn, p, integral, st, sc,
                                        sq_all)
            _revert(e, d, True, hosts, nh, is_host, xh, sc)
            better = new_mk < best_mk * (1.0 - _TOL) - _TOL
            tie_better = new_mk <= best_mk * (1.0 + _TOL) + _TOL and new_sq < best_sq * (1.0 - 1e-6)
            if better or tie_better:
                best_mk = new_mk
                best_sq = new_sq
                best_e = e
                best_d = d
                best_s = src
    return best_mk, best_sq, best_e, best_d, best_s


@nb.njit(cache=True, _nrt=False)
def _snapshot(st, snap, to_snap):
    """Copy the ranks' state into ``snap`` (``to_snap``) or back (explicit loops: no NRT here)."""
    a, b = (st, snap) if to_snap else (snap, st)
    for r in range(a[0].shape[0]):
        b[0][r] = a[0][r]
        b[2][r] = a[2][r]
        for q in range(4):
            b[1][r, q] = a[1][r, q]
    for q in range(a[3].shape[0]):
        b[3][q] = a[3][q]
        b[4][q] = a[4][q]


@nb.njit(cache=True, _nrt=False)
def _lookahead(mk, g, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt,
               used, copies, win, node_of, rpn, p, st, sc, snap, cand_e, dest, dest_cost, sv_e, sv_h, sv_x):
    """When no single copy helps: try each candidate copy together with re-splitting the split
    experts that share a host with it — a split made earlier, under other loads, may be what makes
    the copy look useless (e.g. a hot expert's second host kept the share it took while the source
    was busier). Keeps the first combination that lowers the makespan ``mk`` and returns
    ``(expert, dst, src)``; expert -1 and the state unchanged when none does."""
    comp, ct = st[0], st[2]
    rc = 0
    rm = 0
    for r in range(g):
        if comp[r] > comp[rc]:
            rc = r
        if ct[r] > ct[rm]:
            rm = r
    n_cand = 0
    for kind in range(2):  # the heaviest experts on the compute bottleneck, the most received on the link one
        r0 = rc if kind == 0 else rm
        for _ in range(n_exp):
            be = -1
            bv = 0.0
            for j in range(rank_cnt[r0]):
                e = rank_exp[r0, j]
                if nh[e] >= g:
                    continue
                v = 0.0
                for i in range(nh[e]):
                    if hosts[e, i] == r0:
                        v = xh[e, i] if kind == 0 else xh[e, i] - n[r0, e]
                dup = False
                for c in range(n_cand):
                    if cand_e[c] == e:
                        dup = True
                if v > bv and not dup:
                    bv = v
                    be = e
            if be < 0:
                break
            cand_e[n_cand] = be
            n_cand += 1
    for c in range(n_cand):
        e = cand_e[c]
        nd = _cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p, comp, ct, n_dest, dest,
                             dest_cost)
        for j in range(nd):
            d = dest[j]
            src = _copy_source(e, d, nat_cnt, hosts, node_of, copies, win, p)
            if src < 0:
                continue
            _snapshot(st, snap, True)
            k = nh[e]
            for i in range(k):
                sv_h[0, i] = hosts[e, i]
                sv_x[0, i] = xh[e, i]
            ns = 1
            cur_sq = _score(comp, ct)[1]
            _move(e, src, d, True, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used, copies, node_of,
                  rpn, p, st, sc, cur_sq)
            cur_mk, cur_sq = _score(comp, ct)
            for i in range(nh[e]):
                h = hosts[e, i]
                for q in range(rank_cnt[h]):
                    e2 = rank_exp[h, q]
                    if e2 == e or nh[e2] < 2:
                        continue
                    seen = False
                    for t in range(1, ns):
                        if sv_e[t] == e2:
                            seen = True
                    if seen:
                        continue
                    sv_e[ns] = e2
                    for t in range(nh[e2]):
                        sv_x[ns, t] = xh[e2, t]
                    ns += 1
                    new_mk, new_sq, na = _rehost(e2, -1, False, n, total, hosts, nh, is_host, xh, node_of, rpn, p,
                                                 integral, st, sc, cur_sq)
                    if new_mk < cur_mk * (1.0 - _TOL) - _TOL or (new_mk <= cur_mk * (1.0 + _TOL) + _TOL
                                                                 and new_sq < cur_sq * (1.0 - 1e-6)):
                        _commit(e2, -1, False, nh, rpn, st, sc, na)
                        cur_mk, cur_sq = _score(comp, ct)
                    else:
                        _revert(e2, -1, False, hosts, nh, is_host, xh, sc)
            if cur_mk < mk * (1.0 - _TOL) - _TOL:
                return e, d, src
            # undo: the copy's bookkeeping, the experts' rows, the ranks' state
            link = 0 if node_of[src] == node_of[d] else 1
            copies[d, link] -= 1.0
            copies[src, 2 + link] -= 1.0
            used[d] -= 1
            rank_cnt[d] -= 1  # the copy was appended last
            is_host[e, d] = False
            nh[e] = k
            for i in range(k):
                hosts[e, i] = sv_h[0, i]
                xh[e, i] = sv_x[0, i]
            for t in range(1, ns):
                e2 = sv_e[t]
                for i in range(nh[e2]):
                    xh[e2, i] = sv_x[t, i]
            _snapshot(st, snap, False)
    return -1, -1, -1


@nb.njit(cache=True, _nrt=False)
def _baseline(n, sole, sole_node, sole_w, multi, n_multi, node_of, rpn, p, integral, total, ntot, hosts, nh, nat_cnt,
              is_host, xh, st, sc):
    """The layer's state under the baseline placement (no replicas)."""
    comp, vol, ct = st[0], st[1], st[2]
    nodes, nflag, cvn, base, key, supply, left, order = sc[0], sc[1], sc[4], sc[9], sc[10], sc[12], sc[13], sc[14]
    g, e_all = n.shape
    single_host_pass(n, sole, sole_node, sole_w, node_of, total, ntot, vol)
    for r in range(g):
        comp[r] = 0.0
    for e in range(e_all):
        nh[e] = nat_cnt[e]
        h = sole[e]
        if h < 0:
            continue
        xh[e, 0] = total[e]
        comp[h] += expert_time_us(total[e], p[ALPHA], p[BETA])
        nd = sole_node[e]
        vol[h, 0] += ntot[nd, e] - n[h, e]
        vol[h, 1] += total[e] - ntot[nd, e]
    # experts the given placement hosts more than once are split last, heaviest first, so each
    # fill sees every single-host expert's load in place
    for i in range(1, n_multi):  # insertion sort by load, descending
        j = i
        while j > 0 and total[multi[j - 1]] < total[multi[j]]:
            multi[j - 1], multi[j] = multi[j], multi[j - 1]
            j -= 1
    w = p[FILL_W]
    for i in range(n_multi):
        e = multi[i]
        k = nh[e]
        nn = 0
        for j in range(k):
            h = hosts[e, j]
            base[j] = comp[h]
            if w > 0.0:
                base[j] += w * link_time_us(vol[h, 0], vol[h, 1], vol[h, 2], vol[h, 3], p[TOK_INTRA], p[TOK_INTER])
            if not nflag[node_of[h]]:
                nflag[node_of[h]] = True
                nodes[nn] = node_of[h]
                nn += 1
        _waterfill(e, n, total[e], hosts, k, xh, base, p, integral, key, order)
        _contrib(e, n, hosts, k, xh, is_host, node_of, rpn, nodes, nn, cvn, supply, left)
        for s in range(g):
            if nflag[node_of[s]]:
                for q in range(4):
                    vol[s, q] += cvn[s, q]
            else:
                vol[s, 3] += n[s, e]
        for j in range(k):
            comp[hosts[e, j]] += expert_time_us(xh[e, j], p[ALPHA], p[BETA])
        for j in range(nn):
            nflag[nodes[j]] = False
    for r in range(g):
        ct[r] = link_time_us(vol[r, 0], vol[r, 1], vol[r, 2], vol[r, 3], p[TOK_INTRA], p[TOK_INTER])
    for nd in range(g // rpn):
        _node_max(nd, rpn, st)


@nb.njit(cache=True)
def plan_layers(loads, native, node_of, rpn, p, slots, win, integral, max_moves, n_dest, n_exp, max_swaps, max_look,
                deadline):
    """Plan every layer of ``loads [L, G, E]``.

    Returns ``(replicas [R, 4] (layer, expert, src, dst), route_idx [N, 4] (layer, src, expert, dst),
    route_tok [N], moves [L], finished)`` with routes listed for split experts only;
    ``finished`` is False when the deadline cut the search short (every layer still gets a valid
    plan: unsearched layers keep the baseline placement).
    """
    n_layers, g, e_all = loads.shape
    n_nodes = g // rpn
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
    sole = np.full(e_all, -1, np.int64)
    sole_node = np.full(e_all, -1, np.int64)
    sole_w = np.zeros(e_all)
    multi = np.zeros(e_all, np.int64)
    n_multi = 0
    for e in range(e_all):
        if nat_cnt[e] == 1:
            sole[e] = hosts[e, 0]
            sole_node[e] = node_of[hosts[e, 0]]
            sole_w[e] = 1.0
        else:
            multi[n_multi] = e
            n_multi += 1
    rank_cnt = rank_cnt_nat.copy()
    nh = np.zeros(e_all, np.int64)
    xh = np.zeros((e_all, g))
    total = np.zeros(e_all)
    ntot = np.zeros((n_nodes, e_all))
    st = (np.zeros(g), np.zeros((g, 4)), np.zeros(g), np.zeros(n_nodes), np.zeros(n_nodes))
    sc = (np.zeros(g, np.int64), np.zeros(n_nodes, np.bool_), np.zeros(g, np.int64), np.zeros((g, 4)), np.zeros((g, 4)),
          np.zeros(g), np.zeros((g, 4)), np.zeros(g), np.zeros(g), np.zeros(g), np.zeros(g), np.zeros(g), np.zeros(g),
          np.zeros(g), np.zeros(g, np.int64), np.zeros(g, np.int64))
    comp = st[0]
    ct = st[2]
    copies = np.zeros((g, 4))
    used = np.zeros(g, np.int64)
    rem = np.zeros(g)
    quota = np.zeros(g)
    o_src = np.zeros(4 * g + 4, np.int64)
    o_dst = np.zeros(4 * g + 4, np.int64)
    o_amt = np.zeros(4 * g + 4)
    cand_e = np.zeros(3 * n_exp, np.int64)
    cand_d = np.zeros(3 * n_exp, np.int64)  # -1: try the cheapest eligible ranks
    dest = np.zeros(n_dest, np.int64)
    dest_cost = np.zeros(n_dest)
    snap = (np.zeros(g), np.zeros((g, 4)), np.zeros(g), np.zeros(n_nodes), np.zeros(n_nodes))
    snap2 = (np.zeros(g), np.zeros((g, 4)), np.zeros(g), np.zeros(n_nodes), np.zeros(n_nodes))
    n_sv = min(e_all, g * min(slots, e_all) + e_all) + 1
    sv_e = np.zeros(n_sv, np.int64)
    sv_h = np.zeros((n_sv, g), np.int64)
    sv_x = np.zeros((n_sv, g))

    rep = np.empty((max(n_layers * g * min(slots, e_all), 1), 4), np.int64)  # a rank copies each expert once at most
    n_rep = 0
    # split experts per layer: the natively multi-hosted plus one per replica at most; each lists
    # its local entries (<= g) and remote ones (each zeroes a source, exhausts a host's quota or
    # carries float residue: <= 3g)
    n_split = min(e_all, n_multi + g * min(slots, e_all))
    cap = n_layers * n_split * 4 * g + 4 * g + 4
    ridx = np.empty((cap, 4), np.int64)
    rtok = np.empty(cap)
    n_route = 0
    moves = np.zeros(n_layers, np.int64)
    finished = True
    work = 0

    for lay in range(n_layers):
        n = loads[lay]
        copies[:, :] = 0.0
        used[:] = 0
        _baseline(n, sole, sole_node, sole_w, multi, n_multi, node_of, rpn, p, integral, total, ntot, hosts, nh, nat_cnt,
                  is_host, xh, st, sc)
        rep_start = n_rep
        searching = finished and max_moves > 0 and slots > 0
        # the clock costs ~0.6 us (numba objmode): read it every 4th unit of work (a layer's
        # baseline or a move, each a few us at most)
        work += 1
        if searching and work % 4 == 1 and _now() > deadline:
            finished = False
            searching = False
        mk, sq = _score(comp, ct)
        swaps = 0
        resplit_from = -1  # the replica count at the last re-split pass
        looks = 0
        while searching and moves[lay] < max_moves:
            best_mk, best_sq, best_e, best_d, best_s = _search(
                mk, sq, sq, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh,
                rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc, cand_e, cand_d, dest, dest_cost)
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
                swapped = False
                for i in range(rep_start, n_rep):
                    if rep[i, 2] != rc:
                        continue
                    e_i, d_i = rep[i, 1], rep[i, 3]
                    k_i = nh[e_i]
                    for t in range(k_i):  # the last save row: _lookahead uses the others
                        sv_h[n_sv - 1, t] = hosts[e_i, t]
                        sv_x[n_sv - 1, t] = xh[e_i, t]
                    _snapshot(st, snap2, True)
                    _move(e_i, rc, d_i, False, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used,
                          copies, node_of, rpn, p, st, sc, sq)
                    sq_i = _score(comp, ct)[1]
                    if max_look > 0:  # spend the freed window on a copy plus the re-splits it needs
                        le, ld, ls = _lookahead(mk, g, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh,
                                                nat_cnt, xh, rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st,
                                                sc, snap, cand_e, dest, dest_cost, sv_e, sv_h, sv_x)
                        if le >= 0:
                            rep[i, 1] = le
                            rep[i, 2] = ls
                            rep[i, 3] = ld
                            swaps += 1
                            mk, sq = _score(comp, ct)
                            swapped = True
                            break
                    cand = _search(mk, sq_i, 0.0, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh,
                                   nat_cnt, xh, rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc, cand_e,
                                   cand_d, dest, dest_cost)
                    if cand[2] == e_i and cand[3] == d_i:  # the copy just taken back: look past it
                        used_d = used[d_i]
                        used[d_i] = slots
                        cand = _search(mk, sq_i, 0.0, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts,
                                       nh, nat_cnt, xh, rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc,
                                       cand_e, cand_d, dest, dest_cost)
                        used[d_i] = used_d
                    if cand[2] >= 0 and not (cand[2] == e_i and cand[3] == d_i):
                        best_mk, best_sq, best_e, best_d, best_s = cand
                        rep[i, :] = rep[n_rep - 1, :]  # the taken-back copy leaves the list
                        n_rep -= 1
                        moves[lay] -= 1
                        swaps += 1
                        break
                    # no better use of the window: put the copy back exactly as it was
                    link = 0 if node_of[rc] == node_of[d_i] else 1
                    copies[d_i, link] += 1.0
                    copies[rc, 2 + link] += 1.0
                    used[d_i] += 1
                    rank_exp[d_i, rank_cnt[d_i]] = e_i
                    rank_cnt[d_i] += 1
                    is_host[e_i, d_i] = True
                    nh[e_i] = k_i
                    for t in range(k_i):
                        hosts[e_i, t] = sv_h[n_sv - 1, t]
                        xh[e_i, t] = sv_x[n_sv - 1, t]
                    _snapshot(st, snap2, False)
                if swapped:
                    continue
            if best_e < 0 and resplit_from < n_rep:
                # stuck: the splits of earlier copies were made under loads that later moves
                # changed; re-split every split expert once and search again if that helped
                resplit_from = n_rep
                better = False
                for e in range(e_all):
                    if nh[e] < 2:
                        continue
                    new_mk, new_sq, na = _rehost(e, -1, False, n, total, hosts, nh, is_host, xh, node_of, rpn, p,
                                                 integral, st, sc, sq)
                    if new_mk < mk * (1.0 - _TOL) - _TOL or (new_mk <= mk * (1.0 + _TOL) + _TOL and new_sq < sq * (1.0 - 1e-6)):
                        _commit(e, -1, False, nh, rpn, st, sc, na)
                        mk, sq = _score(comp, ct)
                        better = True
                    else:
                        _revert(e, -1, False, hosts, nh, is_host, xh, sc)
                if better:
                    continue
            if best_e < 0 and looks < max_look:
                looks += 1
                best_e, best_d, best_s = _lookahead(
                    mk, g, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt,
                    used, copies, win, node_of, rpn, p, st, sc, snap, cand_e, dest, dest_cost, sv_e, sv_h, sv_x)
                if best_e >= 0:  # already carried out, with the re-splits it needed
                    rep[n_rep, 0] = lay
                    rep[n_rep, 1] = best_e
                    rep[n_rep, 2] = best_s
                    rep[n_rep, 3] = best_d
                    n_rep += 1
                    moves[lay] += 1
                    mk, sq = _score(comp, ct)
                    continue
            if best_e < 0:
                break
            _move(best_e, best_s, best_d, True, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used,
                  copies, node_of, rpn, p, st, sc, sq)
            rep[n_rep, 0] = lay
            rep[n_rep, 1] = best_e
            rep[n_rep, 2] = best_s
            rep[n_rep, 3] = best_d
            n_rep += 1
            moves[lay] += 1
            mk, sq = _score(comp, ct)
            work += 1
            if work % 4 == 1 and _now() > deadline:
                finished = False
                break
        # emit the routes of split experts (local tokens first, then the remote mapping); a
        # single-host expert's routes are implied (probe_planner.routes)
        for e in range(e_all):
            if nh[e] == 1:
                continue
            for i in range(nh[e]):
                r = hosts[e, i]
                if n[r, e] > 0.0:
                    ridx[n_route, 0] = lay
                    ridx[n_route, 1] = r
                    ridx[n_route, 2] = e
                    ridx[n_route, 3] = r
                    rtok[n_route] = n[r, e]
                    n_route += 1
            cnt = _map_remote(e, n, is_host, hosts, nh[e], xh, rpn, rem, quota, o_src, o_dst, o_amt)
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
