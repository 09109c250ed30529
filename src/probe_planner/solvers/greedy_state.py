"""The greedy kernel's layer state and the moves on it (numba, ``_nrt=False``).

State (flat arrays): ``hosts[e, :nh[e]]`` the ranks holding ``e`` (natives first), ``xh[e, i]``
tokens ``hosts[e, i]`` processes; per rank and node the :class:`RankState` ``st``; the scratch
arrays of a tentative move in the :class:`Scratch` ``sc``. A move re-splits one expert's tokens over its hosts
(:func:`waterfill`) and re-scores only the ranks on those hosts' nodes (:func:`rehost`): under the
routing rule (:func:`map_remote`) every other source sends that expert's tokens across nodes
whatever the split, so the other nodes enter through their maxima. :func:`revert` undoes a tentative
move, :func:`commit` keeps it. Helpers never allocate; skipping NRT reference counting on their many
array arguments makes each call ~8x cheaper.

Arrays every function here shares, by name (``G`` ranks, ``E`` experts): ``n [G, E]`` the layer's
loads per source; ``total [E]`` per expert; ``hosts [E, G]`` int, ``nh [E]`` int and ``nat_cnt [E]``
int (natives come first in ``hosts``); ``is_host [E, G]`` bool; ``xh [E, G]`` tokens per host slot;
``p [8]`` the cost vector (:data:`probe_planner.cost.ALPHA` ... plus ``FILL_W``, ``FILL_TAU``);
``copies [G, 4]`` copies in intra / in inter / out intra / out inter; ``used [G]`` int slots taken;
``rank_exp [G, E]`` int and ``rank_cnt [G]`` int the experts each rank holds; ``node_of [G]`` int;
``win [G]`` windows µs; ``rpn`` ranks per node; ``st`` a :class:`RankState`, ``sc`` a :class:`Scratch`.
"""

from __future__ import annotations

from collections import namedtuple

import numba as nb
import numpy as np

from ..cost import ALPHA, BETA, COPY_INTER, COPY_INTRA, TOK_INTER, TOK_INTRA, expert_time_us, link_time_us, single_host_pass
from ..window import copies_fit

TOL = 1e-9  # relative tolerance of every comparison of times

# Per-rank state of a layer's plan (numba takes named tuples of arrays): comp [G] compute µs,
# vol [G, 4] tokens in intra / in inter / out intra / out inter, ct [G] link µs, node_mc / node_mm
# [nodes] the maxima of comp / ct per node.
RankState = namedtuple("RankState", ["comp", "vol", "ct", "node_mc", "node_mm"])
# Scratch of one tentative move (:func:`rehost`), all [G] unless noted: nodes touched ([nodes] int)
# and their flags ([nodes] bool), touched ranks (int), one expert's traffic before and after (cvo,
# cvn [G, 4]), the touched ranks' new comp / vol [G, 4] / ct (nc, nv, nct), an expert's old time per
# host (oldt; between moves the candidate search borrows it as ``send``), water-fill levels and keys
# (base, key), the expert's saved split and hosts (saved_x; saved_h int), per-node supply and what is
# left of it (supply, left), and the water-fill's sort order (order, int).
Scratch = namedtuple("Scratch", ["nodes", "nflag", "aff", "cvo", "cvn", "nc", "nv", "nct", "oldt", "base", "key",
                                 "saved_x", "supply", "left", "order", "saved_h"])


@nb.njit(cache=True)
def new_state(g, n_nodes):
    """A zeroed :class:`RankState` for ``g`` ranks on ``n_nodes`` nodes."""
    return RankState(np.zeros(g), np.zeros((g, 4)), np.zeros(g), np.zeros(n_nodes), np.zeros(n_nodes))


@nb.njit(cache=True)
def new_scratch(g, n_nodes):
    """A :class:`Scratch` for ``g`` ranks on ``n_nodes`` nodes."""
    return Scratch(np.zeros(n_nodes, np.int64), np.zeros(n_nodes, np.bool_), np.zeros(g, np.int64), np.zeros((g, 4)),
                   np.zeros((g, 4)), np.zeros(g), np.zeros((g, 4)), np.zeros(g), np.zeros(g), np.zeros(g), np.zeros(g),
                   np.zeros(g), np.zeros(n_nodes), np.zeros(n_nodes), np.zeros(g, np.int64), np.zeros(g, np.int64))

# Extra entries the kernel appends to the cost vector: the weight of a rank's link time in the
# water-fill level, and the expected per-token link time of a remote token.
FILL_W, FILL_TAU = 6, 7


@nb.njit(cache=True, _nrt=False, inline="always")
def waterfill(e, n, total, hosts, nh, xh, base, p, integral, key, order):
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
            f = np.floor(xh[e, i] + TOL)
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
def map_remote(e, n, is_host, hosts, nh, xh, rpn, rem, quota, o_src, o_dst, o_amt):
    """Which remote source sends how many tokens of ``e`` to which host: same-node sources first
    (in rank order, hosts in host order), then the rest in rank order — so every token left after
    the same-node phase crosses nodes. Writes ``(src, host, amount)`` triples, returns their count.
    :func:`contrib` computes the traffic this mapping makes without writing it."""
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
def contrib(e, n, hosts, nh, xh, is_host, node_of, rpn, nodes, nn, cv, supply, left):
    """Expert ``e``'s traffic, as :func:`map_remote` routes it, on every rank of the nodes
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
def score(comp, ct):
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
def rehost(e, d, add, n, total, hosts, nh, is_host, xh, node_of, rpn, p, integral, st, sc, sq_all):
    """Tentatively make ``d`` a host of ``e`` (``add``) or stop it hosting ``e`` (``d < 0``: keep the
    hosts); re-split ``e``'s tokens and compute the new values of the ranks this touches (those on the hosts' nodes) into
    the scratch ``sc``. Returns ``(makespan, sum of squares, number of touched ranks)``; the state
    ``st`` is unchanged — follow with :func:`revert` or :func:`commit`."""
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
    contrib(e, n, hosts, k, xh, is_host, node_of, rpn, nodes, nn, cvo, supply, left)
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
    waterfill(e, n, total[e], hosts, k2, xh, base, p, integral, key, order)
    contrib(e, n, hosts, k2, xh, is_host, node_of, rpn, nodes, nn, cvn, supply, left)
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
def revert(e, d, add, hosts, nh, is_host, xh, sc):
    """Undo the tentative part of :func:`rehost`."""
    saved_x, saved_h = sc.saved_x, sc.saved_h
    for i in range(nh[e]):
        xh[e, i] = saved_x[i]
        hosts[e, i] = saved_h[i]
    if d >= 0:
        is_host[e, d] = not add


@nb.njit(cache=True, _nrt=False)
def commit(e, d, add, nh, rpn, st, sc, na):
    """Keep what :func:`rehost` computed: the touched ranks' new values and their nodes' maxima."""
    comp, vol, ct, node_mc, node_mm = st
    aff, nc, nv, nct = sc.aff, sc.nc, sc.nv, sc.nct
    if d >= 0:
        nh[e] += 1 if add else -1
    for i in range(na):
        r = aff[i]
        comp[r] = nc[r]
        ct[r] = nct[r]
        for q in range(4):
            vol[r, q] = nv[r, q]
    for i in range(0, na, rpn):  # touched ranks come a whole node at a time
        node_max(aff[i] // rpn, rpn, st)


@nb.njit(cache=True, _nrt=False)
def node_max(nd, rpn, st):
    comp, ct, node_mc, node_mm = st.comp, st.ct, st.node_mc, st.node_mm
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
def copy_fits(r, incoming, link, copies, win, p):
    """Would one more copy in (``incoming``) or out of rank ``r`` over ``link`` fit its window?
    (Each end and link kind on its own: :mod:`probe_planner.window`.)"""
    count = copies[r, (0 if incoming else 2) + link] + 1.0
    return copies_fit(count, p[COPY_INTRA] if link == 0 else p[COPY_INTER], win[r])


@nb.njit(cache=True, _nrt=False)
def copy_source(e, d, nat_cnt, hosts, node_of, copies, win, p):
    """Best native host to copy ``e`` from onto ``d`` (same node first, fewest copies out), or -1."""
    best = -1
    best_key = 1e300
    for i in range(nat_cnt[e]):
        s = hosts[e, i]
        link = 0 if node_of[s] == node_of[d] else 1
        if not copy_fits(d, True, link, copies, win, p) or not copy_fits(s, False, link, copies, win, p):
            continue
        k = link * 1e6 + copies[s, 2] + copies[s, 3]
        if k < best_key:
            best_key = k
            best = s
    return best


@nb.njit(cache=True, _nrt=False)
def cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p, comp, ct, n_dest, dest, dest_cost):
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
        if not same_node and not copies_fit(copies[r, 1] + 1.0, p[COPY_INTER], win[r]):
            continue
        if copy_source(e, r, nat_cnt, hosts, node_of, copies, win, p) < 0:
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
def move(e, src, d, add, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used, copies, node_of, rpn,
          p, st, sc, sq_all):
    """Carry out a copy of ``e`` from ``src`` to ``d`` (``add``) or take it back."""
    na = rehost(e, d, add, n, total, hosts, nh, is_host, xh, node_of, rpn, p, integral, st, sc, sq_all)[2]
    commit(e, d, add, nh, rpn, st, sc, na)
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
def snapshot(st, snap, to_snap):
    """Copy the ranks' state into ``snap`` (``to_snap``) or back (explicit loops: no NRT here)."""
    a, b = (st, snap) if to_snap else (snap, st)
    for r in range(a.comp.shape[0]):
        b.comp[r] = a.comp[r]
        b.ct[r] = a.ct[r]
        for q in range(4):
            b.vol[r, q] = a.vol[r, q]
    for q in range(a.node_mc.shape[0]):
        b.node_mc[q] = a.node_mc[q]
        b.node_mm[q] = a.node_mm[q]


@nb.njit(cache=True, _nrt=False)
def baseline(n, sole, sole_node, sole_w, multi, n_multi, node_of, rpn, p, integral, total, ntot, hosts, nh, nat_cnt,
              is_host, xh, st, sc):
    """The layer's state under the baseline placement (no replicas)."""
    comp, vol, ct = st.comp, st.vol, st.ct
    nodes, nflag, cvn, base, key, supply, left, order = sc.nodes, sc.nflag, sc.cvn, sc.base, sc.key, sc.supply, sc.left, sc.order
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
        waterfill(e, n, total[e], hosts, k, xh, base, p, integral, key, order)
        contrib(e, n, hosts, k, xh, is_host, node_of, rpn, nodes, nn, cvn, supply, left)
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
        node_max(nd, rpn, st)
