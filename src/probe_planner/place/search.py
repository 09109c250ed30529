"""Local search over one layer's long-lived placement (numba): moves and swaps of slots, scored over batches.

The layer's state is one placement (``plc [G, E]`` bool and its host lists ``is_host [E, G]``, ``hosts
[E, G]``, ``nh [E]``) and, per sampled batch ``b``, the static dispatch over it (``xh [B, E, G]`` tokens
per host slot, ``comp / ct [B, G]``, ``vol [B, G, 4]``, ``nmc / nmm [B, nodes]``), built by the dispatch
kernel itself (:func:`probe_planner.solvers.greedy_state.baseline`). A candidate is up to four host
changes (``add e@r`` / ``remove e@r``), scored on each batch incrementally with the greedy kernel's
:func:`rehost` / :func:`commit` and undone exactly (snapshot): first on the ``n_screen`` screening
batches, the best ``n_full`` then on all. The best is re-scored from scratch (fresh dispatch of every
batch) and kept only if that lowers the mean makespan, so the search descends :mod:`.scorer`'s objective
exactly, whatever order the incremental re-splits took.

Moves, from the bottleneck ranks (highest mean compute, highest mean link time): a hot expert ``h`` of
theirs gains a slot on a cheap rank or on one of its heaviest sources ``c``, where the least-used copy of
an expert with another host gives it up (*replace*), or ``c`` trades its least-used expert for ``h``
(*swap*: ``h`` moves from the hot rank to ``c``, that expert the other way); and the rank sending the most
takes a slot of the expert it sends most (*replace* on itself). Copies are counted against the current
placement ``cur``: a slot whose expert ``cur`` has on that rank is free; any other is one weight copy from
a host in ``cur`` (same node first, fewest copies out) that must fit ``copy_cap`` copies in all and the
per-rank caps ``cap [G, 4]`` (copies in intra / in inter / out intra / out inter).
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np

from ..solvers.greedy_state import TOL, RankState, baseline, commit, new_scratch, new_state, rehost, snapshot
from .scorer import sole_hosts

INTRA, INTER = 0, 1
MAX_OPS = 4  # host changes per candidate (a swap)
TIE_TOL = 1e-9  # relative: a candidate within this of the mean makespan ties it
# Layers with at most this many replace + swap moves get them all tried when the targeted moves are stuck.
FULL_NEIGHBOURHOOD = 20_000


@nb.njit(cache=True, inline="always")
def _swap_ops(ops_e, ops_d, ops_add, h, y, a, c):
    """The four slot operations of a swap: expert ``h`` moves from rank ``a`` to ``c``, ``y`` from ``c`` to ``a``."""
    ops_e[0], ops_d[0], ops_add[0] = h, c, True
    ops_e[1], ops_d[1], ops_add[1] = h, a, False
    ops_e[2], ops_d[2], ops_add[2] = y, a, True
    ops_e[3], ops_d[3], ops_add[3] = y, c, False


@nb.njit(cache=True, _nrt=False)
def _key(dmk, dsq, mean, sq):
    """Rank of a candidate changing the mean makespan by ``dmk`` and the sum of squares by ``dsq``: < 0
    when it lowers the makespan (the more the lower), in [0, 0.5) when it ties it and lowers the sum of
    squares, 1 otherwise (not taken)."""
    if dmk < -TOL * mean - TOL:
        return dmk / mean
    if dmk <= TIE_TOL * mean and dsq < -1e-6 * sq:
        return 0.5 + 0.5 * dsq / sq
    return 1.0


@nb.njit(cache=True)
def _now():
    with nb.objmode(t="float64"):
        t = time.perf_counter()
    return t


@nb.njit(cache=True, _nrt=False)
def _fill_hosts(plc, is_host, hosts, nh):
    """Host lists of the placement ``plc [G, E]`` (ranks ascending)."""
    g, e_all = plc.shape
    for e in range(e_all):
        nh[e] = 0
        for r in range(g):
            is_host[e, r] = plc[r, e]
            if plc[r, e]:
                hosts[e, nh[e]] = r
                nh[e] += 1


@nb.njit(cache=True, _nrt=False)
def _source(e, r, cur, node_of, cnt, cap):
    """``(source, link)`` of a copy of ``e`` onto ``r``: a host of ``e`` in ``cur`` with room to send,
    same node first, fewest copies out; ``(-1, -1)`` when ``r`` cannot receive or no host can send."""
    g = cur.shape[0]
    for link in range(2):
        if cnt[r, link] + 1 > cap[r, link]:
            continue
        best = -1
        for u in range(g):
            if not cur[u, e] or (node_of[u] == node_of[r]) != (link == INTRA):
                continue
            if cnt[u, 2 + link] + 1 > cap[u, 2 + link]:
                continue
            if best < 0 or cnt[u, 2 + link] < cnt[best, 2 + link]:
                best = u
        if best >= 0:
            return best, link
    return -1, -1


@nb.njit(cache=True, _nrt=False)
def _count(e, d, sign, node_of, cnt, src_of, used):
    u = src_of[e, d]
    link = INTRA if node_of[u] == node_of[d] else INTER
    cnt[d, link] += sign
    cnt[u, 2 + link] += sign
    used[0] += sign


@nb.njit(cache=True, _nrt=False)
def _copies(ops_e, ops_d, ops_add, n_ops, cur, node_of, cnt, cap, src_of, used, copy_cap, check_only):
    """Account a candidate's copies: a removal frees its copy, an addition needs one. Returns whether
    it fits; with ``check_only`` (or when it does not fit) every count is put back."""
    for k in range(n_ops):  # removals first: they free room
        if not ops_add[k] and not cur[ops_d[k], ops_e[k]]:
            _count(ops_e[k], ops_d[k], -1, node_of, cnt, src_of, used)
    ok = True
    done = 0
    for k in range(n_ops):
        e, d = ops_e[k], ops_d[k]
        if ops_add[k] and not cur[d, e]:
            u, link = _source(e, d, cur, node_of, cnt, cap)
            if u < 0 or used[0] + 1 > copy_cap:
                ok = False
                break
            src_of[e, d] = u
            _count(e, d, 1, node_of, cnt, src_of, used)
        done = k + 1
    if check_only or not ok:
        for k in range(done):
            e, d = ops_e[k], ops_d[k]
            if ops_add[k] and not cur[d, e]:
                _count(e, d, -1, node_of, cnt, src_of, used)
                src_of[e, d] = -1
        for k in range(n_ops):
            if not ops_add[k] and not cur[ops_d[k], ops_e[k]]:
                _count(ops_e[k], ops_d[k], 1, node_of, cnt, src_of, used)
    else:
        for k in range(n_ops):
            if not ops_add[k] and not cur[ops_d[k], ops_e[k]]:
                src_of[ops_e[k], ops_d[k]] = -1
    return ok


@nb.njit(cache=True)
def _rebase(loads, plc, hosts, nh, is_host, node_of, rpn, p, integral, xh, total, comp, vol, ct, nmc, nmm, sole,
            sole_node, sole_w, multi, ntot, sc, mks):
    """Fresh static dispatch of every batch over ``plc``; ``mks[b]`` each makespan; returns their mean and the
    mean over batches of ``sum_r (comp + 2 ct)^2`` (the greedy kernel's tie-break: lower spreads the load)."""
    _fill_hosts(plc, is_host, hosts, nh)
    n_multi = sole_hosts(hosts, nh, node_of, sole, sole_node, sole_w, multi)
    nat = nh.copy()
    acc = 0.0
    acc_sq = 0.0
    for b in range(loads.shape[0]):
        st = RankState(comp[b], vol[b], ct[b], nmc[b], nmm[b])
        baseline(loads[b], sole, sole_node, sole_w, multi, n_multi, node_of, rpn, p, integral, total[b], ntot, hosts, nh,
                 nat, is_host, xh[b], st, sc)
        mc = 0.0
        mm = 0.0
        for r in range(comp.shape[1]):
            mc = max(mc, comp[b, r])
            mm = max(mm, ct[b, r])
            t = comp[b, r] + 2.0 * ct[b, r]
            acc_sq += t * t
        mks[b] = 2.0 * mm + mc
        acc += mks[b]
    return acc / loads.shape[0], acc_sq / loads.shape[0]


@nb.njit(cache=True)
def _try(n_b, ops_e, ops_d, ops_add, n_ops, loads, total, hosts, nh, is_host, xh, node_of, rpn, p, integral, comp, vol,
         ct, nmc, nmm, sc, snap, sv_h, sv_x, sv_i, sv_n):
    """Mean makespan of the first ``n_b`` batches after the candidate's host changes, and the mean change of
    the sum of squares; the state is left as it was."""
    acc = 0.0
    acc_sq = 0.0
    for b in range(n_b):
        st = RankState(comp[b], vol[b], ct[b], nmc[b], nmm[b])
        snapshot(st, snap, True)
        for k in range(n_ops):
            e = ops_e[k]
            sv_h[k, :] = hosts[e, :]
            sv_x[k, :] = xh[b, e, :]
            sv_i[k, :] = is_host[e, :]
            sv_n[k] = nh[e]
        mk = 0.0
        for k in range(n_ops):
            mk, dsq, na = rehost(ops_e[k], ops_d[k], ops_add[k], loads[b], total[b], hosts, nh, is_host, xh[b], node_of,
                                 rpn, p, integral, st, sc, 0.0)
            acc_sq += dsq  # each change's sum-of-squares delta against the state it was made on
            commit(ops_e[k], ops_d[k], ops_add[k], nh, rpn, st, sc, na)
        acc += mk
        for k in range(n_ops - 1, -1, -1):  # in reverse: an expert changed twice gets its first saved row back
            e = ops_e[k]
            hosts[e, :] = sv_h[k, :]
            xh[b, e, :] = sv_x[k, :]
            is_host[e, :] = sv_i[k, :]
            nh[e] = sv_n[k]
        snapshot(st, snap, False)
    return acc / n_b, acc_sq / n_b


@nb.njit(cache=True, _nrt=False)
def _push(c, ops_e, ops_d, ops_add, n_ops, ce, cd, ca, cn):
    for k in range(n_ops):
        ce[c, k] = ops_e[k]
        cd[c, k] = ops_d[k]
        ca[c, k] = ops_add[k]
    cn[c] = n_ops
    return c + 1


@nb.njit(cache=True, _nrt=False)
def _victim(c, plc, rank_exp, slots, nh, mproc, h, other, need_multi):
    """The expert on ``c`` (not ``h``; with ``need_multi`` one with another host, else one ``other``
    lacks) whose copy there processes the fewest tokens on average; -1 if none."""
    best = -1
    for j in range(slots):
        x = rank_exp[c, j]
        if x == h or (need_multi and nh[x] < 2) or (not need_multi and plc[other, x]):
            continue
        if best < 0 or mproc[x, c] < mproc[best, c]:
            best = x
    return best


@nb.njit(cache=True, _nrt=False)
def _every_move(plc, rank_exp, slots, nh, cur, node_of, cnt, cap, src_of, used, copy_cap, ops_e, ops_d, ops_add, ce, cd, ca,
                cn):
    """Every replace (rank ``c`` gives its copy of ``x``, which has another host, to ``h``) and every swap
    (``h`` on ``a`` and ``y`` on ``c`` trade ranks) that fits the budget, for small layers."""
    g, e_all = plc.shape
    n_cand = 0
    for c in range(g):
        for j in range(slots):
            x = rank_exp[c, j]
            if nh[x] < 2:
                continue
            for h in range(e_all):
                if plc[c, h]:
                    continue
                ops_e[0], ops_d[0], ops_add[0] = h, c, True
                ops_e[1], ops_d[1], ops_add[1] = x, c, False
                if _copies(ops_e, ops_d, ops_add, 2, cur, node_of, cnt, cap, src_of, used, copy_cap, True):
                    n_cand = _push(n_cand, ops_e, ops_d, ops_add, 2, ce, cd, ca, cn)
    for a in range(g):
        for i in range(slots):
            h = rank_exp[a, i]
            for c in range(a + 1, g):
                if plc[c, h]:
                    continue
                for j in range(slots):
                    y = rank_exp[c, j]
                    if plc[a, y]:
                        continue
                    _swap_ops(ops_e, ops_d, ops_add, h, y, a, c)
                    if _copies(ops_e, ops_d, ops_add, 4, cur, node_of, cnt, cap, src_of, used, copy_cap, True):
                        n_cand = _push(n_cand, ops_e, ops_d, ops_add, 4, ce, cd, ca, cn)
    return n_cand


@nb.njit(cache=True, nogil=True)
def search_layer(loads, start, cur, node_of, rpn, p, integral, n_screen, n_full, n_exp, n_dest, max_steps, max_ties,
                 deadline, copy_cap, cap):
    """Improve ``start [G, E]`` for the batches ``loads [B, G, E]`` (the first ``n_screen`` screen candidates;
    at most ``max_ties`` of the ``max_steps`` moves may only tie the mean makespan, lowering the spread).

    Returns ``(placement [G, E], src_of [E, G] (source of each copy, -1 elsewhere), start mean µs, end mean
    µs, steps, feasible)``; ``feasible`` is False (and nothing is searched) when ``start``'s own copies
    against ``cur`` do not fit ``copy_cap`` / ``cap``.
    """
    n_b, g, e_all = loads.shape
    n_nodes = g // rpn
    plc = start.copy()
    slots = 0
    for e in range(e_all):
        slots += 1 if plc[0, e] else 0
    cnt = np.zeros((g, 4), np.int64)
    src_of = np.full((e_all, g), -1, np.int64)
    used = np.zeros(1, np.int64)
    feasible = True
    for r in range(g):
        for e in range(e_all):
            if plc[r, e] and not cur[r, e]:
                u, link = _source(e, r, cur, node_of, cnt, cap)
                if u < 0 or used[0] + 1 > copy_cap:
                    feasible = False
                else:
                    src_of[e, r] = u
                    _count(e, r, 1, node_of, cnt, src_of, used)
    is_host = np.zeros((e_all, g), np.bool_)
    hosts = np.zeros((e_all, g), np.int64)
    nh = np.zeros(e_all, np.int64)
    xh = np.zeros((n_b, e_all, g))
    total = np.zeros((n_b, e_all))
    comp = np.zeros((n_b, g))
    vol = np.zeros((n_b, g, 4))
    ct = np.zeros((n_b, g))
    nmc = np.zeros((n_b, n_nodes))
    nmm = np.zeros((n_b, n_nodes))
    sole = np.zeros(e_all, np.int64)
    sole_node = np.zeros(e_all, np.int64)
    sole_w = np.zeros(e_all)
    multi = np.zeros(e_all, np.int64)
    ntot = np.zeros((n_nodes, e_all))
    sc = new_scratch(g, n_nodes)
    snap = new_state(g, n_nodes)
    mks = np.zeros(n_b)
    sv_h = np.zeros((MAX_OPS, g), np.int64)
    sv_x = np.zeros((MAX_OPS, g))
    sv_i = np.zeros((MAX_OPS, g), np.bool_)
    sv_n = np.zeros(MAX_OPS, np.int64)
    mean, sq = _rebase(loads, plc, hosts, nh, is_host, node_of, rpn, p, integral, xh, total, comp, vol, ct, nmc, nmm,
                       sole, sole_node, sole_w, multi, ntot, sc, mks)
    start_mean = mean
    ties = 0
    if not feasible:
        return plc, src_of, start_mean, mean, 0, False
    msrc = np.zeros((g, e_all))  # mean tokens each source sends each expert
    for b in range(n_b):
        msrc += loads[b]
    msrc /= n_b
    n_full_moves = g * slots * e_all + (g * slots) ** 2  # every replace and every swap
    top = 3 if n_full_moves <= FULL_NEIGHBOURHOOD else 2  # the last level tried when stuck
    n_cand_max = max(4 * (2 * n_exp) * 3 * (2 * n_dest) * 2 + 4, n_full_moves if top == 3 else 0)
    ce = np.zeros((n_cand_max, MAX_OPS), np.int64)
    cd = np.zeros((n_cand_max, MAX_OPS), np.int64)
    ca = np.zeros((n_cand_max, MAX_OPS), np.bool_)
    cn = np.zeros(n_cand_max, np.int64)
    cscore = np.zeros(n_cand_max)
    ops_e = np.zeros(MAX_OPS, np.int64)
    ops_d = np.zeros(MAX_OPS, np.int64)
    ops_add = np.zeros(MAX_OPS, np.bool_)
    rank_exp = np.zeros((g, max(slots, 1)), np.int64)
    mproc = np.zeros((e_all, g))
    mcomp = np.zeros(g)
    mct = np.zeros(g)
    dests = np.zeros(3 * 2 * n_dest, np.int64)
    nhas = np.zeros(n_nodes, np.bool_)
    hot_e = np.zeros(2 * n_exp, np.int64)
    hot_r = np.zeros(4, np.int64)
    wide = 1  # 2 once the search is stuck: twice the experts and destinations, two more hot ranks
    steps = 0
    while steps < max_steps and _now() < deadline:
        # mean state over the batches: what the candidates are drawn from
        for r in range(g):
            k = 0
            for e in range(e_all):
                if plc[r, e]:
                    rank_exp[r, k] = e
                    k += 1
        mproc[:, :] = 0.0
        mcomp[:] = 0.0
        mct[:] = 0.0
        for b in range(n_b):
            for e in range(e_all):
                for i in range(nh[e]):
                    mproc[e, hosts[e, i]] += xh[b, e, i] / n_b
            for r in range(g):
                mcomp[r] += comp[b, r] / n_b
                mct[r] += ct[b, r] / n_b
        by_comp = np.argsort(-mcomp)
        by_ct = np.argsort(-mct)
        rc = by_comp[0]
        rm = by_ct[0]
        hot_r[0], hot_r[1], hot_r[2], hot_r[3] = rc, rm, by_comp[min(1, g - 1)], by_ct[min(1, g - 1)]
        n_cand = 0
        if wide == 3:
            n_cand = _every_move(plc, rank_exp, slots, nh, cur, node_of, cnt, cap, src_of, used, copy_cap, ops_e, ops_d,
                                 ops_add, ce, cd, ca, cn)
        for ki in range(2 * wide if wide < 3 else 0):
            kind = ki % 2  # 0: a compute-hot rank, 1: a link-hot rank
            a = hot_r[ki]
            dup = False
            for q in range(ki):
                dup = dup or hot_r[q] == a
            if dup:
                continue
            n_hot = 0  # the experts on a with the most tokens there (kind 0) or received there (1)
            for _ in range(n_exp * wide):
                best = -1
                bv = 0.0
                for j in range(slots):
                    e = rank_exp[a, j]
                    v = mproc[e, a] - (msrc[a, e] if kind == 1 else 0.0)
                    taken = False
                    for q in range(n_hot):
                        taken = taken or hot_e[q] == e
                    if v > bv and not taken and nh[e] < g:
                        bv = v
                        best = e
                if best < 0:
                    break
                hot_e[n_hot] = best
                n_hot += 1
            for q in range(n_hot):
                h = hot_e[q]
                n_d = 0
                nhas[:] = False
                for r in range(g):
                    if plc[r, h]:
                        nhas[node_of[r]] = True
                # the cheapest ranks, h's heaviest sources, the cheapest ranks on nodes without h (where a
                # copy keeps that node's tokens of h off the slower inter-node links)
                for pick in range(3):
                    for _ in range(n_dest * wide):
                        bc = -1
                        bv = 0.0
                        for r in range(g):
                            if plc[r, h] or (pick == 2 and nhas[node_of[r]]):
                                continue
                            dup = False
                            for t in range(n_d):
                                dup = dup or dests[t] == r
                            if dup:
                                continue
                            v = -msrc[r, h] if pick == 1 else mcomp[r] + 2.0 * mct[r]
                            if bc < 0 or v < bv:
                                bc = r
                                bv = v
                        if bc < 0 or (pick == 1 and msrc[bc, h] <= 0.0):
                            break
                        dests[n_d] = bc
                        n_d += 1
                for t in range(n_d):
                    c = dests[t]
                    x = _victim(c, plc, rank_exp, slots, nh, mproc, h, a, True)
                    if x >= 0:  # replace: h gains c's slot of x
                        ops_e[0], ops_d[0], ops_add[0] = h, c, True
                        ops_e[1], ops_d[1], ops_add[1] = x, c, False
                        if _copies(ops_e, ops_d, ops_add, 2, cur, node_of, cnt, cap, src_of, used, copy_cap, True):
                            n_cand = _push(n_cand, ops_e, ops_d, ops_add, 2, ce, cd, ca, cn)
                    y = _victim(c, plc, rank_exp, slots, nh, mproc, h, a, False)
                    if y >= 0:  # swap: h to c, y to a
                        _swap_ops(ops_e, ops_d, ops_add, h, y, a, c)
                        if _copies(ops_e, ops_d, ops_add, 4, cur, node_of, cnt, cap, src_of, used, copy_cap, True):
                            n_cand = _push(n_cand, ops_e, ops_d, ops_add, 4, ce, cd, ca, cn)
        # the rank sending the most takes a slot of the expert it sends most
        best = -1
        for e in range(e_all):
            if not plc[rm, e] and (best < 0 or msrc[rm, e] > msrc[rm, best]):
                best = e
        if best >= 0 and wide < 3:
            x = _victim(rm, plc, rank_exp, slots, nh, mproc, best, rm, True)
            if x >= 0:
                ops_e[0], ops_d[0], ops_add[0] = best, rm, True
                ops_e[1], ops_d[1], ops_add[1] = x, rm, False
                if _copies(ops_e, ops_d, ops_add, 2, cur, node_of, cnt, cap, src_of, used, copy_cap, True):
                    n_cand = _push(n_cand, ops_e, ops_d, ops_add, 2, ce, cd, ca, cn)
        if n_cand == 0:
            if wide == top:
                break
            wide += 1
            continue
        # screen on the first batches, then the best few on all of them. Key: a lower mean makespan first;
        # among candidates that tie it (within TIE_TOL), a lower sum of squares (spreads the tied ranks)
        base_s = 0.0
        for b in range(n_screen):
            base_s += mks[b] / n_screen
        for c in range(n_cand):
            mk_c, dsq_c = _try(n_screen, ce[c], cd[c], ca[c], cn[c], loads, total, hosts, nh, is_host, xh, node_of, rpn, p,
                               integral, comp, vol, ct, nmc, nmm, sc, snap, sv_h, sv_x, sv_i, sv_n)
            cscore[c] = _key(mk_c - base_s, dsq_c, base_s, sq)
        order = np.argsort(cscore[:n_cand])
        m = min(n_full, n_cand)
        full = np.zeros(m)
        for j in range(m):
            c = order[j]
            mk_c, dsq_c = _try(n_b, ce[c], cd[c], ca[c], cn[c], loads, total, hosts, nh, is_host, xh, node_of, rpn, p,
                               integral, comp, vol, ct, nmc, nmm, sc, snap, sv_h, sv_x, sv_i, sv_n)
            full[j] = _key(mk_c - mean, dsq_c, mean, sq)
        taken = False
        for j in np.argsort(full):
            if full[j] >= 1.0 or (full[j] >= 0.0 and ties >= max_ties):
                break
            c = order[j]
            for k in range(cn[c]):
                plc[cd[c, k], ce[c, k]] = ca[c, k]
            fresh, fresh_sq = _rebase(loads, plc, hosts, nh, is_host, node_of, rpn, p, integral, xh, total, comp, vol, ct,
                                      nmc, nmm, sole, sole_node, sole_w, multi, ntot, sc, mks)
            if _key(fresh - mean, fresh_sq - sq, mean, sq) < (1.0 if ties < max_ties else 0.0):
                _copies(ce[c], cd[c], ca[c], cn[c], cur, node_of, cnt, cap, src_of, used, copy_cap, False)
                if fresh > mean * (1.0 - TOL) - TOL:
                    ties += 1
                mean = fresh
                sq = fresh_sq
                taken = True
                break
            for k in range(cn[c]):  # the fresh dispatch disagrees: put the placement back
                plc[cd[c, k], ce[c, k]] = not ca[c, k]
            _rebase(loads, plc, hosts, nh, is_host, node_of, rpn, p, integral, xh, total, comp, vol, ct, nmc, nmm, sole,
                    sole_node, sole_w, multi, ntot, sc, mks)
        if not taken:
            if wide == top:
                break
            wide += 1
            continue
        wide = 1
        steps += 1
    return plc, src_of, start_mean, mean, steps, True
