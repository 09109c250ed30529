"""``place()``: choose the long-lived placement for a window of per-batch loads (docs/formulation.md, "Long-lived placement").

Per layer (layers are independent, searched in parallel threads; the move budget is shared out evenly
over them), from each start — the current placement fitted to the slot count, an EPLB-style placement
of the window's totals when its copies fit the layer's share of the budget, and with ``exact=True`` the
small layer's MILP placement (:mod:`.exact`) — a local search (:mod:`.search`) lowers the mean makespan
over ``max_batches`` sampled batches under the static dispatch (:mod:`.scorer`); the best end is then
kicked and searched again while the layer's time lasts. Current and result are scored on
``eval_batches`` batches of the window (unseen by the search when it is long enough); a layer made
worse keeps its current placement, and when the expected gain is below ``min_gain`` the current
placement is returned unchanged (``status = "kept"``).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..baselines.eplb import EplbPlacement, eplb_placement
from ..cost import CostParams
from ..errors import LoadsError, PlacementError, PlannerError
from ..loads import check_values, spread_uniform
from ..topology import Topology
from ..window import copies_that_fit, copy_times_us
from .exact import MAX_COLUMNS, exact_layer, model_columns
from .placement import Placement
from .scorer import batch_makespans, dispatch_params
from .search import search_layer

# Search defaults (candidates per step): measured on Zipf windows, bench/place_speed.py.
N_SCREEN, N_FULL, N_EXP, N_DEST = 4, 4, 2, 3
EVAL_S_PER_ENTRY = 2e-8  # scoring one batch's [G, E] loads on a placement, per entry, measured (2-core box)
# exact=True: building the layer's MILP in Python costs ~27 us a column here (0.4 s at 15k columns);
# HiGHS is not started with less than EXACT_MIN_S left for it
EXACT_BUILD_S_PER_COLUMN = 3e-5
EXACT_MIN_S = 0.05
MAX_IDLE_KICKS, KICK_MOVES = 30, 3  # iterated local search: restarts without gain before stopping, random swaps each
MAX_TIES = 2  # moves per rank that may only tie the makespan (lowering the spread)


def _real_array(name: str, value, err=LoadsError) -> np.ndarray:
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise err(f"{name} must be a real array: {exc}") from exc
    if a.dtype.kind not in "iuf":
        raise err(f"{name} must hold real numbers (int/float), got dtype {a.dtype}")
    return a


def check_window(window, topo: Topology) -> np.ndarray:
    """The window as ``[T, L, G, E]`` float64 (a ``[T, L, E]`` one spread over uniform sources), or
    :class:`LoadsError` naming the problem: not real, wrong shape, NaN/inf, negative."""
    w = _real_array("window", window)
    G, E = topo.num_ranks, topo.num_experts
    if w.ndim not in (3, 4) or w.shape[-1] != E or (w.ndim == 4 and w.shape[2] != G) or 0 in w.shape:
        raise LoadsError(f"window must be [T, L, E={E}] or [T, L, G={G}, E={E}] per-batch loads, got shape {list(w.shape)}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not np.isfinite(w).all():
        raise LoadsError(f"window holds {int((~np.isfinite(w)).sum())} NaN or infinite entries")
    if (w < 0).any():
        at = tuple(int(i) for i in np.argwhere(w < 0)[0])
        raise LoadsError(f"window{list(at)} = {w[at]}: loads must be >= 0")
    try:  # the one load rule (solve()'s): every batch's layer totals at most MAX_LOAD_TOTAL tokens
        check_values(w.reshape(w.shape[0] * w.shape[1], -1), w.shape[0] * w.shape[1])
    except LoadsError as exc:
        raise LoadsError(f"window (row k = batch k // L, layer k % L, L = {w.shape[1]}): {exc}") from exc
    return w


def _current_hosts(current, topo: Topology, L: int) -> np.ndarray:
    """``[L, G, E]`` bool from ``None`` (the topology's placement), a map, a Placement or a 0/1 array."""
    G, E = topo.num_ranks, topo.num_experts
    if current is None:
        return np.broadcast_to(topo.native, (L, G, E)).copy()
    if isinstance(current, Placement):
        h = current.hosts
    elif isinstance(current, EplbPlacement):
        if current.num_ranks != G or current.logcnt.shape[1] != E:
            raise PlacementError(f"current map is for {current.num_ranks} ranks x {current.logcnt.shape[1]} experts, "
                                 f"the topology has {G} x {E}")
        h = np.stack([current.hosts(lay) for lay in range(current.phy2log.shape[0])])
    else:
        try:
            h = np.asarray(current)
        except (TypeError, ValueError, OverflowError) as exc:
            raise PlacementError(f"current placement must be a 0/1 [G, E] or [L, G, E] host matrix: {exc}") from exc
        if h.dtype.kind not in "biu" or not np.isin(h, (0, 1)).all():
            raise PlacementError(f"current placement must be a 0/1 [G, E] or [L, G, E] host matrix, got {h.dtype}")
    h = h.astype(bool)
    if h.ndim == 2:
        h = np.broadcast_to(h, (L,) + h.shape)
    if h.shape != (L, G, E):
        raise PlacementError(f"current placement must be [G={G}, E={E}] or [L={L}, G, E], got shape {list(h.shape)}")
    orphan = np.argwhere(~h.any(axis=1))
    if orphan.size:
        raise PlacementError(f"current placement leaves expert {orphan[0, 1]} of layer {orphan[0, 0]} without a host")
    return np.ascontiguousarray(h)


def _count(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise PlacementError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _budget(name: str, value) -> float:
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or math.isnan(value) or value < 0:
        raise PlacementError(f"{name} must be a number >= 0 (or None: no limit), got {value!r}")
    return float(value)


def _shares(total: np.ndarray, L: int) -> np.ndarray:
    """``[L, ...]`` even shares of integer ``total`` over ``L`` layers (the first layers take the remainder)."""
    t = np.asarray(total, dtype=np.int64)
    return t[None] // L + (np.arange(L).reshape((L,) + (1,) * t.ndim) < t[None] % L)


def fit_slots(cur: np.ndarray, slots: int, load: np.ndarray, node_of: np.ndarray, out_cap: np.ndarray | None = None) -> np.ndarray:
    """``cur [G, E]`` with every rank holding ``slots`` experts: surplus copies of experts held elsewhere
    dropped (least load per copy first); free slots filled EPLB-style (the expert with the most load
    per copy, onto the least-loaded rank with room that lacks it, preferring one on a node that holds
    it, where its copy is cheap). With ``out_cap [G]`` (a time budget's intra-node copies a rank may
    send) the fill first copies only from a same-node current host with room to send, then anywhere.
    ``load [E]``: the window's load per expert."""
    plc = cur.copy()
    G, E = plc.shape
    cnt = plc.sum(axis=0).astype(np.float64)
    if (plc.sum(axis=1) > slots).any():
        # trim: every expert keeps one holder (fewest holders first, onto the holder with the most room
        # left), then each rank keeps its most loaded other copies while it has room
        keep = np.zeros_like(plc)
        room = np.full(G, slots)
        for e in np.argsort(cnt, kind="stable"):
            have = np.flatnonzero(plc[:, e])
            r = have[np.argmax(room[have])]
            if room[r] <= 0:
                raise PlacementError(f"the current placement cannot be cut to {slots} slots per rank without "
                                     f"losing expert {e}'s last copy")
            keep[r, e] = True
            room[r] -= 1
        for r in range(G):
            extra = np.flatnonzero(plc[r] & ~keep[r])
            keep[r, extra[np.argsort(-load[extra], kind="stable")][:max(room[r], 0)]] = True
        plc = keep
        cnt = plc.sum(axis=0).astype(np.float64)
    free = slots - plc.sum(axis=1)
    rank_load = (plc * (load / np.maximum(cnt, 1))[None]).sum(axis=1)
    nodes = node_of.max() + 1
    on_node = np.zeros((nodes, E), dtype=bool)  # nodes where the current placement holds each expert
    np.logical_or.at(on_node, node_of, cur)
    blocked = np.zeros(E, dtype=bool)
    sent = np.zeros(G, dtype=np.int64)
    for strict in ((True, False) if out_cap is not None else (False,)):
        blocked[:] = False
        while free.sum() > 0:
            score = np.where(blocked | (cnt >= G), -np.inf, load / np.maximum(cnt, 1) + 1e-12 * (E - np.arange(E)))
            e = int(np.argmax(score))
            if not np.isfinite(score[e]):
                break
            room = np.flatnonzero((free > 0) & ~plc[:, e])
            near = on_node[node_of[room], e]
            if strict:  # a same-node current host of e that can still send
                senders = np.flatnonzero(cur[:, e] & (sent < out_cap))
                ok = np.isin(node_of[room], node_of[senders])
                room, near = room[ok], near[ok]
            if not room.size:
                blocked[e] = True
                continue
            r = int(room[np.lexsort((rank_load[room], ~near))[0]])
            if strict:
                u = senders[node_of[senders] == node_of[r]]
                sent[u[np.argmin(sent[u])]] += 1
            plc[r, e] = True
            cnt[e] += 1
            free[r] -= 1
            rank_load[r] += load[e] / cnt[e]
    if free.sum() > 0:
        raise PlacementError("cannot fill the free slots without a second copy of an expert on one rank")
    return plc


def _kick(plc: np.ndarray, rng: np.random.Generator, moves: int) -> np.ndarray:
    """``plc [G, E]`` after ``moves`` random swaps of two ranks' experts (slot counts and every expert's
    copies kept; a swap a rank already holds is skipped)."""
    out = plc.copy()
    G = out.shape[0]
    for _ in range(moves):
        a, c = rng.choice(G, size=2, replace=False) if G > 1 else (0, 0)
        ha, hc = np.flatnonzero(out[a] & ~out[c]), np.flatnonzero(out[c] & ~out[a])
        if a == c or not ha.size or not hc.size:
            continue
        x, y = rng.choice(ha), rng.choice(hc)
        out[a, x], out[c, x], out[c, y], out[a, y] = False, True, False, True
    return np.ascontiguousarray(out)


def _sample(T: int, n: int) -> np.ndarray:
    """``min(n, T)`` batch indices spread evenly over the window, ordered so that every prefix is spread too
    (the search screens candidates on the first few)."""
    idx = np.unique(np.linspace(0, T - 1, min(n, T)).round().astype(np.int64))
    k = len(idx)
    order = np.argsort([int(f"{i:016b}"[::-1], 2) for i in range(k)], kind="stable")  # bit-reversal order
    return idx[order]


def _eval_sample(T: int, n: int, searched: np.ndarray) -> np.ndarray:
    """The batches before/after are scored on: ``n`` spread over those the search did not see when the
    window holds that many more (an honest estimate of the gain on batches to come), else over all."""
    rest = np.setdiff1d(np.arange(T), searched)
    if rest.size >= n:
        return rest[_sample(rest.size, n)]
    return _sample(T, n)


def place(window, topology: Topology, slots: int, *, current=None, reserve: int = 0, move_budget_bytes: float | None = None,
          move_budget_us: float | None = None, min_gain: float = 0.01, max_batches: int = 16, eval_batches: int = 32,
          time_limit_s: float = 8.0, eplb_start: bool = True, exact: bool = False, workers: int | None = None) -> Placement:
    """Choose the long-lived placement for the per-batch loads ``window``.

    window: ``[T, L, E]`` (sources uniform) or ``[T, L, G, E]`` tokens per batch, layer (source rank) and
    expert — many batches, not one total. slots: physical slots per rank; ``reserve`` of them are left
    empty for per-batch planning (:meth:`Placement.topology`), so every rank holds ``slots - reserve``
    experts, no expert twice. current: the placement in service (``None``: the topology's; a map, a
    :class:`Placement` or a 0/1 ``[G, E]`` / ``[L, G, E]`` host matrix); weight copies are counted
    against it. move_budget_bytes: bytes all copies may move; move_budget_us: the longest rank's time
    for all copies at once at the card's bandwidths (each copy from a current host, same node first);
    both optional, each shared out evenly over the layers. min_gain: the relative expected gain below
    which the current placement is returned unchanged. max_batches: batches the search scores each
    candidate on; eval_batches: batches the reported before/after (and the min_gain test) use — batches
    the search did not see when the window has ``max_batches + eval_batches`` or more, else spread over
    all of it (every batch when it is shorter than ``eval_batches``). time_limit_s: the search's wall-time
    budget; eplb_start: also search from an EPLB-style start; exact: also solve each small layer's MILP
    (:mod:`.exact`, half the layer's time share) and search from its placement — ``info["bound_us"]``
    then holds each layer's lower bound on the search batches (``-inf`` where none); workers: threads searching layers at once
    (default: the CPU count; the kernels release the GIL). Objective: the mean over batches of the
    sum over layers of the layer makespan, each batch dispatched over the placement's hosts by the
    static rule (what ``solve(..., "static")`` does on ``Placement.topology``).

    Raises :class:`LoadsError` (window) or :class:`PlacementError` (slots, reserve, budgets, current)
    naming the problem.
    """
    if not isinstance(topology, Topology):
        raise PlacementError(f"topology must be a Topology, got {type(topology).__name__}")
    t0 = time.perf_counter()
    w = check_window(window, topology)
    T, L = w.shape[:2]
    G, E = topology.num_ranks, topology.num_experts
    slots = _count("slots", slots, 1)
    reserve = _count("reserve", reserve, 0)
    if reserve >= slots:
        raise PlacementError(f"reserve ({reserve}) must be below slots ({slots}): a rank needs a slot for its own experts")
    held = slots - reserve
    if held > E:
        raise PlacementError(f"slots - reserve = {held} exceeds the {E} experts: a rank would hold one twice")
    if held * G < E:
        raise PlacementError(f"slots - reserve = {held} per rank x {G} ranks = {held * G} slots cannot hold the {E} experts once")
    budget_b = _budget("move_budget_bytes", move_budget_bytes)
    budget_us = _budget("move_budget_us", move_budget_us)
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0 <= min_gain < 1:
        raise PlacementError(f"min_gain must be a number in [0, 1), got {min_gain!r}")
    max_batches = _count("max_batches", max_batches, 1)
    eval_batches = _count("eval_batches", eval_batches, 1)
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) or not 0 < time_limit_s < math.inf:
        raise PlacementError(f"time_limit_s must be a finite number > 0, got {time_limit_s!r}")
    if workers is not None:
        workers = _count("workers", workers, 1)
    cur = _current_hosts(current, topology, L)

    # the budget as copy counts: in all, and per rank, link kind and direction (the window rule)
    p = CostParams.from_topology(topology)
    most = G * E * L
    copy_cap = most if math.isinf(budget_b) else int(min(most, math.floor(budget_b / topology.model.expert_bytes * (1 + 1e-12))))
    cap = np.full((G, 4), most, dtype=np.int64)
    if not math.isinf(budget_us):
        for link, unit in enumerate((p.copy_intra_us, p.copy_inter_us)):
            k = copies_that_fit(unit, np.full(G, budget_us), most)
            cap[:, link] = k
            cap[:, 2 + link] = k
    caps_l = _shares(cap, L)
    copy_l = _shares(np.int64(copy_cap), L)

    search_idx = _sample(T, max_batches)
    score_idx = _eval_sample(T, eval_batches, search_idx)
    sources_given = w.ndim == 4
    batches = w[search_idx] if sources_given else spread_uniform(w[search_idx], G)  # [B, L, G, E]
    integral = bool(np.all(batches == np.floor(batches)))
    totals = w.sum(axis=(0, 2)) if sources_given else w.sum(axis=0)  # [L, E]
    params = dispatch_params(topology)
    node_of = topology.node_of
    eplb = None
    if eplb_start and held * G > E:
        try:
            eplb = eplb_placement(totals, topology, held * G - E)
        except PlannerError:
            eplb = None  # e.g. the packing cannot avoid a duplicate: search from the current placement only
    n_workers = workers or min(L, os.cpu_count() or 1)
    t_setup = time.perf_counter() - t0
    # the search gets what the setup left, less the final scoring
    search_end = t0 + time_limit_s - EVAL_S_PER_ENTRY * 2 * L * len(score_idx) * G * E / n_workers
    share_s = max(search_end - time.perf_counter(), 0.0) * n_workers / L

    def one(lay: int):
        start = time.perf_counter()
        deadline = min(search_end, start + share_s)
        loads = np.ascontiguousarray(batches[:, lay])
        fitted = fit_slots(cur[lay], held, totals[lay], node_of, None if math.isinf(budget_us) else caps_l[lay][:, 2])
        starts = [("current", fitted)] + ([("eplb", eplb.hosts(lay))] if eplb is not None else [])
        bound = -math.inf
        cols = model_columns(loads) if exact else 0
        # the MILP's placement, then the descent from it — only where building it (Python, ~30 us a
        # column here) and a useful HiGHS run fit what is left of the layer's time
        build_s = EXACT_BUILD_S_PER_COLUMN * cols
        # half the layer's share for build + HiGHS (which returns ~15% late), the rest for the descent
        milp_s = 0.85 * min(share_s / 2 - build_s, deadline - time.perf_counter() - build_s)
        if exact and cols <= MAX_COLUMNS and milp_s >= EXACT_MIN_S:
            h, bound, _ = exact_layer(loads, topology, held, cur[lay], int(copy_l[lay]), milp_s)
            if h is not None and (h.sum(axis=1) == held).all() and h.any(axis=0).all():
                starts.append(("exact", h))
        best = None
        for name, h in starts:
            plc, src, _, end, steps, ok = search_layer(loads, np.ascontiguousarray(h), cur[lay], node_of, topology.ranks_per_node,
                                                       params, integral, min(N_SCREEN, len(search_idx)), N_FULL, N_EXP,
                                                       N_DEST, 10**9, MAX_TIES * G, deadline, copy_l[lay], caps_l[lay])
            if not ok:
                if name == "current":
                    raise PlacementError(f"layer {lay}: filling the current placement to {held} slots per rank needs "
                                         f"{int((fitted & ~cur[lay]).sum())} weight copies, more than the move budget's "
                                         "share for the layer allows")
                continue
            if best is None or end < best[2]:
                best = (plc, src, end, name, steps, bound)
        # iterated local search: kick the best placement with a few random moves, descend again, keep
        # the better end, while the layer's time lasts (single moves stall where a better placement
        # needs several at once: 4x8 layers end 15-20% above the MILP's placement without it)
        rng = np.random.default_rng(lay)
        idle = 0  # kicks since the last improvement
        while time.perf_counter() < deadline and idle < MAX_IDLE_KICKS:
            idle += 1
            h = _kick(best[0], rng, KICK_MOVES)
            plc, src, _, end, steps, ok = search_layer(loads, h, cur[lay], node_of, topology.ranks_per_node, params, integral,
                                                       min(N_SCREEN, len(search_idx)), N_FULL, N_EXP, N_DEST, 10**9,
                                                       MAX_TIES * G, deadline, copy_l[lay], caps_l[lay])
            if ok and end < best[2] * (1 - 1e-9):
                idle = 0
                best = (plc, src, end, best[3] if best[3].endswith("+ils") else best[3] + "+ils", best[4] + steps, bound)
        return best + (fitted,)

    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = list(pool.map(one, range(L)))
    t_search = time.perf_counter()
    hosts = np.stack([r[0] for r in results])

    # score current and result on the evaluation batches (the same ones for both)
    ev = w[score_idx] if sources_given else spread_uniform(w[score_idx], G)
    ev_int = bool(np.all(ev == np.floor(ev)))

    def layer_mean(h: np.ndarray, lay: int) -> float:
        return float(batch_makespans(np.ascontiguousarray(ev[:, lay]), np.ascontiguousarray(h), node_of,
                                     topology.ranks_per_node, params, ev_int).mean())

    # the reference: the current placement, or where a layer of it holds other slot counts (no answer
    # then: the map must have the slots asked for) the current placement fitted to them, the search's start
    fits = (cur.sum(axis=2) == held).all(axis=1)
    ref = np.where(fits[:, None, None], cur, np.stack([r[6] for r in results]))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        before = np.array(list(pool.map(lambda lay: layer_mean(ref[lay], lay), range(L))))
        after = np.array(list(pool.map(lambda lay: layer_mean(hosts[lay], lay), range(L))))
    # a layer the search made worse on the evaluation batches keeps the reference
    worse = after > before
    hosts[worse] = ref[worse]
    after = np.where(worse, before, after)
    copies = []
    for lay, (_, src, *_rest) in enumerate(results):
        dst, e = np.nonzero(hosts[lay] & ~cur[lay])
        s_of = src[e, dst]
        for i in np.flatnonzero(s_of < 0):  # a reverted layer's fitted copies: from a current holder, same node first
            holders = np.flatnonzero(cur[lay, :, e[i]])
            same = holders[node_of[holders] == node_of[dst[i]]]
            s_of[i] = same[0] if same.size else holders[0]
        copies.append(np.stack([np.full(dst.size, lay), e, s_of, dst], axis=1))
    copies = np.concatenate(copies).astype(np.int64) if copies else np.zeros((0, 4), np.int64)
    info = {"bound_us": [float(r[5]) for r in results], "layers_kept": int(worse.sum()),
            "setup_s": t_setup, "search_s": t_search - t0 - t_setup, "starts_won": [r[3] for r in results],
            "steps": [int(r[4]) for r in results], "search_batches": search_idx.tolist(), "scored_batches": len(score_idx)}
    gain = 1.0 - after.sum() / before.sum() if before.sum() > 0 else 0.0
    # "kept" only when the current placement already has the slots asked for: else it is no answer
    if gain < min_gain and fits.all():
        return Placement(hosts=cur, reserve=reserve, before_us=float(before.sum()), after_us=float(before.sum()),
                         layer_before_us=before, layer_after_us=before.copy(), status="kept",
                         message=f"re-placing would gain {gain:.2%} < min_gain {min_gain:.2%}: the current placement is kept",
                         info=dict(info, time_s=time.perf_counter() - t0, rejected_after_us=float(after.sum())))
    t_move = copy_times_us(copies[:, 2], copies[:, 3], topology.ranks_per_node, G, p.copy_intra_us, p.copy_inter_us)
    return Placement(hosts=hosts, reserve=reserve, copies=copies, moved_bytes=float(len(copies) * topology.model.expert_bytes),
                     move_time_us=float(t_move.max(initial=0.0)), before_us=float(before.sum()), after_us=float(after.sum()),
                     layer_before_us=before, layer_after_us=after, status="replaced",
                     message=f"expected gain {gain:.2%} over the current placement, {len(copies)} weight copies",
                     info=dict(info, time_s=time.perf_counter() - t0))


def score_placement(window, hosts, topology: Topology, eval_batches: int = 32, max_batches: int = 16) -> np.ndarray:
    """``[L]`` expected makespan µs per layer of the host matrices ``hosts [L, G, E]`` on the batches of
    ``window`` that :func:`place` with the same ``eval_batches`` / ``max_batches`` reports on, each
    dispatched by the static rule."""
    w = check_window(window, topology)
    h = _current_hosts(hosts, topology, w.shape[1])
    T = w.shape[0]
    idx = _eval_sample(T, _count("eval_batches", eval_batches, 1), _sample(T, _count("max_batches", max_batches, 1)))
    ev = w[idx] if w.ndim == 4 else spread_uniform(w[idx], topology.num_ranks)
    integral = bool(np.all(ev == np.floor(ev)))
    params = dispatch_params(topology)
    return np.array([batch_makespans(np.ascontiguousarray(ev[:, lay]), np.ascontiguousarray(h[lay]), topology.node_of,
                                     topology.ranks_per_node, params, integral).mean() for lay in range(w.shape[1])])
