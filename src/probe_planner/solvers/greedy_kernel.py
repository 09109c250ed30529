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
When no copy helps: re-split every split expert under the current loads, then (options) swaps and
lookahead. The layer state and the moves on it live in :mod:`.greedy_state`.
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np

from .greedy_state import (
    TOL,
    baseline,
    cheapest_dests,
    commit,
    copy_fits,
    copy_source,
    map_remote,
    move,
    new_scratch,
    new_state,
    rehost,
    revert,
    score,
    snapshot,
)


@nb.njit(cache=True)
def _now():
    with nb.objmode(t="float64"):
        t = time.perf_counter()
    return t


# When the search is stuck, ranks within this fraction of the bottleneck's time count as tied with it ...
STUCK_BAND = 0.95
# ... and each of their candidate experts tries one destination: the stuck search runs whenever the
# plain one fails, and with two it cost 256x64 layers 10% more time for no change in makespan.
STUCK_DEST = 1


@nb.njit(cache=True, _nrt=False, inline="always")
def _listed(cand_e, cand_d, n_cand, e, d):
    """Whether candidate (expert ``e``, destination ``d``; -1: chosen later) is already listed."""
    for c in range(n_cand):
        if cand_e[c] == e and cand_d[c] == d:
            return True
    return False


@nb.njit(cache=True, _nrt=False, inline="always")
def _heaviest_held(kind, r0, g, n, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, n_cand, cand_e, cand_d, send, need_send):
    """The expert held by ``r0`` with the most tokens there (``kind`` 0) or the most received there
    (1), not yet a candidate nor on every rank; with ``need_send``, only one some native host can
    still send (``send[r] > 0``). -1 when none."""
    be = -1
    bv = 0.0
    for j in range(rank_cnt[r0]):
        e = rank_exp[r0, j]
        if nh[e] >= g:
            continue
        if need_send:
            ok = False
            for i in range(nat_cnt[e]):
                if send[hosts[e, i]] > 0.0:
                    ok = True
            if not ok:
                continue
        v = 0.0
        for i in range(nh[e]):
            if hosts[e, i] == r0:
                v = xh[e, i] if kind == 0 else xh[e, i] - n[r0, e]
        if v > bv:
            if not _listed(cand_e, cand_d, n_cand, e, -1):
                bv = v
                be = e
    return be


@nb.njit(cache=True, _nrt=False, inline="always")  # on the hot path: a call here measured 10% slower
def _candidates(kinds, g, e_all, n_exp, slots, n, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, used, comp, ct,
                send, cand_e, cand_d):
    """Fill ``cand_e``/``cand_d`` with the candidate copies of the first ``kinds`` kinds (below);
    ``cand_d`` is the destination, -1 for "the cheapest eligible ranks". Returns their count."""
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
    for kind in range(kinds):
        r0 = rc if kind == 0 else rm
        if kind == 2 and used[r0] >= slots:
            continue
        for _ in range(n_exp):
            be = -1
            bv = 0.0
            if kind < 2:
                be = _heaviest_held(kind, r0, g, n, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, n_cand, cand_e, cand_d,
                                    send, False)
            else:
                for e in range(e_all):
                    if n[r0, e] > bv and not is_host[e, r0]:
                        if not _listed(cand_e, cand_d, n_cand, e, r0):
                            bv = n[r0, e]
                            be = e
            if be < 0:
                break
            cand_e[n_cand] = be
            cand_d[n_cand] = r0 if kind == 2 else -1
            n_cand += 1
    return n_cand


@nb.njit(cache=True, _nrt=False)
def _stuck_candidates(g, e_all, n_exp, slots, n, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, used, copies, win,
                      node_of, p, comp, ct, send, cand_e, cand_d):
    """Candidates for when :func:`_candidates` found nothing that helps, usually because the
    bottlenecks' experts cannot be copied any more (their sources' windows are spent). The same
    three kinds, but (a) and (b) take the first rank within ``STUCK_BAND`` of the slowest that has
    an expert some native host can still send — ranks tied with the bottleneck (e.g. the hosts of
    one split expert) lower the maximum only once they shed their own experts — and each kind
    passes over experts that cannot be copied for the next ones. ``send`` is ``[G]`` scratch."""
    for r in range(g):  # bit 0: r can send a copy within its node, bit 1: to another node
        send[r] = (1.0 if copy_fits(r, False, 0, copies, win, p) else 0.0) + \
            (2.0 if copy_fits(r, False, 1, copies, win, p) else 0.0)
    n_cand = 0
    for kind in range(2):
        met = comp if kind == 0 else ct
        top = 0.0
        for r in range(g):
            if met[r] > top:
                top = met[r]
        start = n_cand
        for r0 in range(g):
            if met[r0] < STUCK_BAND * top:
                continue
            for _ in range(n_exp):
                be = _heaviest_held(kind, r0, g, n, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, n_cand, cand_e, cand_d,
                                    send, True)
                if be < 0:
                    break
                cand_e[n_cand] = be
                cand_d[n_cand] = -1
                n_cand += 1
            if n_cand > start:
                break
    # (c): the experts the link bottleneck sends most that can still be copied onto it
    rm = 0
    for r in range(g):
        if ct[r] > ct[rm]:
            rm = r
    fit0 = copy_fits(rm, True, 0, copies, win, p)
    fit1 = copy_fits(rm, True, 1, copies, win, p)
    if used[rm] >= slots or not (fit0 or fit1):
        return n_cand
    for _ in range(n_exp):
        be = -1
        bv = 0.0
        for e in range(e_all):
            if n[rm, e] <= bv or is_host[e, rm]:
                continue
            ok = False
            for i in range(nat_cnt[e]):
                u = hosts[e, i]
                if node_of[u] == node_of[rm]:
                    ok = ok or (fit0 and (send[u] == 1.0 or send[u] == 3.0))
                else:
                    ok = ok or (fit1 and send[u] >= 2.0)
            if not ok:
                continue
            if not _listed(cand_e, cand_d, n_cand, e, rm):
                bv = n[rm, e]
                be = e
        if be < 0:
            break
        cand_e[n_cand] = be
        cand_d[n_cand] = rm
        n_cand += 1
    return n_cand


@nb.njit(cache=True, _nrt=False)
def _search(mk, sq_all, sq_bar, deep, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh,
            rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc, cand_e, cand_d, dest, dest_cost):
    """The best single copy to add: ``(makespan, sum of squares, expert, dst, src)``, expert -1 when
    none beats ``mk`` (or ties it with a sum of squares below ``sq_bar``; ``sq_all`` is the current
    state's). ``deep``: the candidates of :func:`_stuck_candidates` instead of :func:`_candidates`.
    The state is left as it was found."""
    comp, ct = st.comp, st.ct
    if deep:
        n_cand = _stuck_candidates(g, e_all, n_exp, slots, n, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, used,
                                   copies, win, node_of, p, comp, ct, sc.oldt, cand_e, cand_d)
    else:
        n_cand = _candidates(3, g, e_all, n_exp, slots, n, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, used, comp,
                             ct, sc.oldt, cand_e, cand_d)
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
            nd = cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p, comp, ct,
                                 n_dest, dest, dest_cost)
        for j in range(nd):
            d = dest[j]
            src = copy_source(e, d, nat_cnt, hosts, node_of, copies, win, p)
            if src < 0:
                continue
            new_mk, new_sq, _ = rehost(e, d, True, n, total, hosts, nh, is_host, xh, node_of, rpn, p, integral, st, sc,
                                        sq_all)
            revert(e, d, True, hosts, nh, is_host, xh, sc)
            better = new_mk < best_mk * (1.0 - TOL) - TOL
            tie_better = new_mk <= best_mk * (1.0 + TOL) + TOL and new_sq < best_sq * (1.0 - 1e-6)
            if better or tie_better:
                best_mk = new_mk
                best_sq = new_sq
                best_e = e
                best_d = d
                best_s = src
    return best_mk, best_sq, best_e, best_d, best_s


@nb.njit(cache=True, _nrt=False)
def _lookahead(mk, g, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt,
               used, copies, win, node_of, rpn, p, st, sc, snap, cand_e, cand_d, dest, dest_cost, sv_e, sv_h, sv_x):
    """When no single copy helps: try each candidate copy together with re-splitting the split
    experts that share a host with it — a split made earlier, under other loads, may be what makes
    the copy look useless (e.g. a hot expert's second host kept the share it took while the source
    was busier). Keeps the first combination that lowers the makespan ``mk`` and returns
    ``(expert, dst, src)``; expert -1 and the state unchanged when none does."""
    comp, ct = st.comp, st.ct
    # the heaviest experts on the compute bottleneck, the most received on the link one
    n_cand = _candidates(2, g, n.shape[1], n_exp, slots, n, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt, used, comp,
                         ct, sc.oldt, cand_e, cand_d)
    for c in range(n_cand):
        e = cand_e[c]
        nd = cheapest_dests(e, g, is_host, used, slots, nat_cnt, hosts, node_of, copies, win, p, comp, ct, n_dest, dest,
                             dest_cost)
        for j in range(nd):
            d = dest[j]
            src = copy_source(e, d, nat_cnt, hosts, node_of, copies, win, p)
            if src < 0:
                continue
            snapshot(st, snap, True)
            k = nh[e]
            for i in range(k):
                sv_h[0, i] = hosts[e, i]
                sv_x[0, i] = xh[e, i]
            ns = 1
            cur_sq = score(comp, ct)[1]
            move(e, src, d, True, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used, copies, node_of,
                  rpn, p, st, sc, cur_sq)
            cur_mk, cur_sq = score(comp, ct)
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
                    new_mk, new_sq, na = rehost(e2, -1, False, n, total, hosts, nh, is_host, xh, node_of, rpn, p,
                                                 integral, st, sc, cur_sq)
                    if new_mk < cur_mk * (1.0 - TOL) - TOL or (new_mk <= cur_mk * (1.0 + TOL) + TOL
                                                                 and new_sq < cur_sq * (1.0 - 1e-6)):
                        commit(e2, -1, False, nh, rpn, st, sc, na)
                        cur_mk, cur_sq = score(comp, ct)
                    else:
                        revert(e2, -1, False, hosts, nh, is_host, xh, sc)
            if cur_mk < mk * (1.0 - TOL) - TOL:
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
            snapshot(st, snap, False)
    return -1, -1, -1


@nb.njit(cache=True, nogil=True)  # the runtime plans in a worker thread: let the layers run
def plan_layers(loads, native, node_of, rpn, p, slots, win, integral, max_moves, n_dest, n_exp, max_swaps, max_look,
                max_ties, deadline):
    """Plan every layer of ``loads [L, G, E]``.

    Returns ``(replicas [R, 4] (layer, expert, src, dst), route_idx [N, 4] (layer, src, expert, dst),
    route_tok [N], moves [L], layer_mk [L] (the kernel's own makespan of each layer, which must equal
    the cost model's), finished)`` with routes listed for split experts only;
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
    st = new_state(g, n_nodes)
    sc = new_scratch(g, n_nodes)
    comp = st.comp
    ct = st.ct
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
    snap = new_state(g, n_nodes)  # saved states of tentative multi-move changes (lookahead, swaps)
    snap2 = new_state(g, n_nodes)
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
    layer_mk = np.zeros(n_layers)  # the kernel's own score of each layer's plan
    finished = True
    work = 0

    for lay in range(n_layers):
        n = loads[lay]
        copies[:, :] = 0.0
        used[:] = 0
        baseline(n, sole, sole_node, sole_w, multi, n_multi, node_of, rpn, p, integral, total, ntot, hosts, nh, nat_cnt,
                  is_host, xh, st, sc)
        rep_start = n_rep
        searching = finished and max_moves > 0 and slots > 0
        # the clock costs ~0.6 us (numba objmode): read it every 4th unit of work (a layer's
        # baseline or a move, each a few us at most)
        work += 1
        if searching and work % 4 == 1 and _now() > deadline:
            finished = False
            searching = False
        mk, sq = score(comp, ct)
        swaps = 0
        resplit_from = -1  # the replica count at the last re-split pass
        stuck_at = -1  # ... and at the last stuck search
        stuck_ties = 0
        looks = 0
        while searching and moves[lay] < max_moves:
            # at the top, so the paths that `continue` (a swap, a re-split, a lookahead) are timed too
            work += 1
            if work % 4 == 1 and _now() > deadline:
                finished = False
                break
            best_mk, best_sq, best_e, best_d, best_s = _search(
                mk, sq, sq, False, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh,
                rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc, cand_e, cand_d, dest, dest_cost)
            if best_e < 0 and stuck_at < n_rep:
                # stuck at the bottlenecks: look at the ranks tied with them (once per copy made).
                # A move that only ties the makespan is taken at most max_ties times per layer: it
                # pays where many ranks are tied (up to 49% shorter makespans on 256x32 Zipf
                # layers with a large window) but costs ~15% more time where nothing helps.
                stuck_at = n_rep
                tie_bar = sq if stuck_ties < max_ties else 0.0
                best_mk, best_sq, best_e, best_d, best_s = _search(
                    mk, sq, tie_bar, True, g, e_all, n_exp, STUCK_DEST, slots, integral, n, total, is_host, hosts, nh, nat_cnt,
                    xh, rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc, cand_e, cand_d, dest, dest_cost)
                if best_e >= 0 and best_mk > mk * (1.0 - TOL) - TOL:
                    stuck_ties += 1
            if best_e < 0 and swaps < max_swaps:
                # stuck: earlier copies may have gone to the wrong experts or ranks (a source's
                # window holds few copies). Take back one copy at a time and spend its slot and
                # windows better; keep the swap only if it beats the current plan.
                swapped = False
                for i in range(rep_start, n_rep):
                    if _now() > deadline:  # each take-back costs a search or a lookahead
                        break
                    e_i, u_i, d_i = rep[i, 1], rep[i, 2], rep[i, 3]
                    k_i = nh[e_i]
                    for t in range(k_i):  # the last save row: _lookahead uses the others
                        sv_h[n_sv - 1, t] = hosts[e_i, t]
                        sv_x[n_sv - 1, t] = xh[e_i, t]
                    snapshot(st, snap2, True)
                    move(e_i, u_i, d_i, False, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used,
                          copies, node_of, rpn, p, st, sc, sq)
                    sq_i = score(comp, ct)[1]
                    if max_look > 0:  # spend the freed window on a copy plus the re-splits it needs
                        le, ld, ls = _lookahead(mk, g, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh,
                                                nat_cnt, xh, rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st,
                                                sc, snap, cand_e, cand_d, dest, dest_cost, sv_e, sv_h, sv_x)
                        if le >= 0:
                            rep[i, 1] = le
                            rep[i, 2] = ls
                            rep[i, 3] = ld
                            swaps += 1
                            mk, sq = score(comp, ct)
                            swapped = True
                            break
                    cand = _search(mk, sq_i, 0.0, False, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh,
                                   nat_cnt, xh, rank_exp, rank_cnt, used, copies, win, node_of, rpn, p, st, sc, cand_e,
                                   cand_d, dest, dest_cost)
                    if cand[2] == e_i and cand[3] == d_i:  # the copy just taken back: look past it
                        used_d = used[d_i]
                        used[d_i] = slots
                        cand = _search(mk, sq_i, 0.0, False, g, e_all, n_exp, n_dest, slots, integral, n, total, is_host, hosts,
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
                    link = 0 if node_of[u_i] == node_of[d_i] else 1
                    copies[d_i, link] += 1.0
                    copies[u_i, 2 + link] += 1.0
                    used[d_i] += 1
                    rank_exp[d_i, rank_cnt[d_i]] = e_i
                    rank_cnt[d_i] += 1
                    is_host[e_i, d_i] = True
                    nh[e_i] = k_i
                    for t in range(k_i):
                        hosts[e_i, t] = sv_h[n_sv - 1, t]
                        xh[e_i, t] = sv_x[n_sv - 1, t]
                    snapshot(st, snap2, False)
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
                    new_mk, new_sq, na = rehost(e, -1, False, n, total, hosts, nh, is_host, xh, node_of, rpn, p,
                                                 integral, st, sc, sq)
                    if new_mk < mk * (1.0 - TOL) - TOL or (new_mk <= mk * (1.0 + TOL) + TOL and new_sq < sq * (1.0 - 1e-6)):
                        commit(e, -1, False, nh, rpn, st, sc, na)
                        mk, sq = score(comp, ct)
                        better = True
                    else:
                        revert(e, -1, False, hosts, nh, is_host, xh, sc)
                if better:
                    continue
            if best_e < 0 and looks < max_look:
                looks += 1
                best_e, best_d, best_s = _lookahead(
                    mk, g, n_exp, n_dest, slots, integral, n, total, is_host, hosts, nh, nat_cnt, xh, rank_exp, rank_cnt,
                    used, copies, win, node_of, rpn, p, st, sc, snap, cand_e, cand_d, dest, dest_cost, sv_e, sv_h, sv_x)
                if best_e >= 0:  # already carried out, with the re-splits it needed
                    rep[n_rep, 0] = lay
                    rep[n_rep, 1] = best_e
                    rep[n_rep, 2] = best_s
                    rep[n_rep, 3] = best_d
                    n_rep += 1
                    moves[lay] += 1
                    mk, sq = score(comp, ct)
                    continue
            if best_e < 0:
                break
            move(best_e, best_s, best_d, True, integral, n, total, is_host, hosts, nh, xh, rank_exp, rank_cnt, used,
                  copies, node_of, rpn, p, st, sc, sq)
            rep[n_rep, 0] = lay
            rep[n_rep, 1] = best_e
            rep[n_rep, 2] = best_s
            rep[n_rep, 3] = best_d
            n_rep += 1
            moves[lay] += 1
            mk, sq = score(comp, ct)
        layer_mk[lay] = score(comp, ct)[0]
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
            cnt = map_remote(e, n, is_host, hosts, nh[e], xh, rpn, rem, quota, o_src, o_dst, o_amt)
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
    return rep[:n_rep], ridx[:n_route], rtok[:n_route], moves, layer_mk, finished
