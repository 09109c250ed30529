"""Placement search scored by the compiled token split (:mod:`.split_lp`): fast enough for the
budgets where HiGHS cannot even start (a neighbour costs ~0.1 ms on an 8-rank layer).

A search state is a list of copies ``(expert, src, dst)`` and idle marks ``(expert, -1, rank)`` (a
native host the split gives nothing, so it pays no roofline floor). Every neighbour is scored by the
exact split's LP — the same flows' makespan with idle hosts free, ties broken by the spread of the
ranks' compute — so a copy that only pays once the experts sharing its hosts are re-split is seen as
paying (the case where greedy's one-move-at-a-time scoring misses every copy); copies the split
gives less than the floor are tried without. Starts: the given copies, those with every slot filled,
a fill from scratch (not on floor-bound layers). Neighbours, most promising first: relocation chains
and single relocations (an expert moved to another rank, its native left idle: floor-bound layers);
a hot expert copied onto every rank that can take it, or onto half of them; one copy of a hot expert;
a native left idle; a drop; a swap on one rank; and, when no single move helps, pairs of copies.
First improvement until none helps or the time is up; the best state's LP solution is decoded into
routes and kept only if its plan is better.
"""

from __future__ import annotations

import math
import time
from itertools import combinations

import numba as nb
import numpy as np

from ..plan import LayerPlan
from ..problem import Problem
from ..window import copies_fit
from .layers import hosts_of, remaining
from .placement_search import placement_fits
from .split_lp import prepare as split_prepare
from .split_lp import split_plan, split_solution
from .token_lp import without_idle_floor

_HOT = 6  # experts tried for a copy per round
_DESTS = 3  # destinations per expert
_PAIRS = 4  # best single adds combined into pairs when stuck
_EPS = 1e-9
# Decoding the best placement's LP solution into routes and scoring them (Python, per expert with
# several hosts; measured here ~50 us per such expert on one node, 300-750 us across nodes, plus
# the floor polish's second LP and decode): the search stops early enough to leave this.
_DECODE_FIXED_S = 2e-4
_FILL_NS_PER_ENTRY = 2e-8  # one fill step per [G, E] entry, loaded machine (measured ~5-15 ns quiet)
_DECODE_PER_EXPERT_S = (8e-5, 1e-3)  # one node (compiled decoder), several nodes (Python), with a loaded machine's margin


def _copies(reps: list[tuple[int, int, int]]) -> np.ndarray:
    """The real copies of a search state ``[R, 3]`` (entries ``(e, -1, r)`` mark a native host ``r``
    of ``e`` left idle: the split gives it nothing, so it does not pay the roofline floor)."""
    arr = np.array(reps, dtype=np.int64).reshape(-1, 3)
    return arr[arr[:, 1] >= 0]


def _hosts(prob: Problem, reps: list[tuple[int, int, int]]) -> np.ndarray:
    hosts = hosts_of(prob, _copies(reps))
    for e, u, r in reps:
        if u < 0 and hosts[:, e].sum() > 1:  # never the expert's last host
            hosts[r, e] = False
    return hosts


def _relocations(prob: Problem, lay: int, reps: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Single relocations: an expert on one of the two most loaded ranks (compute under an even
    split, the floor included) copied onto one of the least loaded ranks that can take it, its
    native host left idle — on floor-bound layers a rank's compute is its count of active experts,
    and moving one from the busiest rank to the idlest is what lowers the maximum."""
    topo, p = prob.topology, prob.params
    g = topo.num_ranks
    n_e = prob.loads[lay].sum(axis=0)
    hosts = _hosts(prob, reps)
    count = hosts.sum(axis=0)
    share = np.where(count > 0, n_e / np.maximum(count, 1), 0.0)
    cost = np.where(n_e > 0, np.maximum(p.alpha_us * share, p.beta_us), 0.0)
    est = (hosts * cost[None, :]).sum(axis=1)
    free = topo.slots - np.bincount(_copies(reps)[:, 2], minlength=g)
    out = []
    for u in np.argsort(-est, kind="stable")[:2]:
        own = np.flatnonzero(topo.native[u] & hosts[u] & (count == 1) & (n_e > 0))
        for e in own[np.argsort(-share[own], kind="stable")][:_HOT]:
            dests = [r for r in np.argsort(est, kind="stable") if r != u and free[r] > 0 and not hosts[r, e] and not topo.native[r, e]]
            out += [[(int(e), int(u), int(r)), (int(e), -1, int(u))] for r in dests[:_DESTS]]
    return out


def _chains(prob: Problem, lay: int, reps: list[tuple[int, int, int]], stop: float) -> list[list[tuple[int, int, int]]]:
    """Relocation chains: expert ``e`` moves from its native host ``u`` (left idle) to the rank
    holding most of its tokens; that rank, now one expert busier, moves one of its own natives to
    where that expert's tokens are, and so on until a chain returns to a rank an expert left or no
    move gains. On floor-bound layers (every active expert costs ``β``: decode, small batches) each
    rank's compute is its count of active experts, and only a cycle of such moves keeps every count
    while making most tokens local — no single move pays (the MILP's optimum there). Built until
    ``stop`` (a ``perf_counter`` time)."""
    topo = prob.topology
    g = topo.num_ranks
    loads = prob.loads[lay]
    hosts = _hosts(prob, reps)
    free = topo.slots - np.bincount(_copies(reps)[:, 2], minlength=g)
    native_active = topo.native & hosts
    gain = loads.max(axis=0)[None, :] - loads  # tokens made local by moving e from r to its best rank
    starts = [(int(e), int(u)) for u, e in zip(*np.nonzero(native_active & (hosts.sum(axis=0) == 1)[None, :]), strict=True)]
    starts.sort(key=lambda eu: -gain[eu[1], eu[0]])
    out = []
    for e0, u0 in starts[:2 * _HOT]:
        if time.perf_counter() >= stop:
            break
        moves, taken, moved = [], free.copy(), {e0}
        e, u = e0, u0
        for _ in range(g):
            if time.perf_counter() >= stop:
                break
            cand = [r for r in range(g) if r != u and taken[r] > 0 and not hosts[r, e] and not topo.native[r, e]]
            if not cand:
                break
            r = max(cand, key=lambda r: loads[r, e])
            if loads[r, e] <= loads[u, e]:
                break
            moves += [(e, u, r), (e, -1, u)]
            taken[r] -= 1
            if r == u0:  # closed: u0 freed the place the last expert takes
                break
            own = [x for x in np.flatnonzero(native_active[r]) if x not in moved and hosts[:, x].sum() == 1]
            if not own:
                break
            e = int(max(own, key=lambda x: gain[r, x]))
            if gain[r, e] <= 0:
                break
            moved.add(e)
            u = r
        if len(moves) > 2:
            out.append(moves)
    return out


def _idles(prob: Problem, lay: int, reps: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Native hosts that could be left idle: those of experts with another active host, the ones
    with the fewest tokens of their own for it first (on dust-load layers every active host pays the
    floor ``β``, and the optimum often moves a native expert's tokens to a copy)."""
    hosts = _hosts(prob, reps)
    count = hosts.sum(axis=0)
    r_idx, e_idx = np.nonzero(prob.topology.native & hosts & (count >= 2)[None, :])
    order = np.argsort(prob.loads[lay][r_idx, e_idx], kind="stable")
    return [(int(e_idx[i]), -1, int(r_idx[i])) for i in order[:_HOT]]


def _decode_s(prob: Problem, lay: int, reps: list[tuple[int, int, int]]) -> float:
    """What decoding a state's LP solution costs (:data:`_DECODE_PER_EXPERT_S`)."""
    hosts = _hosts(prob, reps)
    split = int(np.count_nonzero((hosts.sum(axis=0) > 1) & (prob.loads[lay].sum(axis=0) > 0)))
    return _DECODE_FIXED_S + _DECODE_PER_EXPERT_S[prob.topology.num_nodes > 1] * split


def _objective(prob: Problem, lay: int, reps: list[tuple[int, int, int]], end: float):
    """``((makespan, spread), solution)`` of a state, ``((inf, inf), None)`` when its LP does not fit:
    compared lexicographically, so a move that only evens out ranks tied at the maximum counts (on
    floor-bound layers one relocation lowers one of several equally busy ranks)."""
    sol = split_solution(prob, lay, _hosts(prob, reps), end)
    return ((math.inf, math.inf), None) if sol is None else ((sol.effective_us, sol.spread), sol)


def _scored(prob: Problem, lay: int, mv: list[tuple[int, int, int]], stop: float):
    """``(state, score, solution)`` of ``mv``, or of ``mv`` without the copies its split gave less
    than the roofline floor (``α·p < β``) if that scores better: the token LP makes every host pay
    ``β``, so on floor-bound layers it spreads tokens over copies that are not worth keeping."""
    f, sol = _objective(prob, lay, mv, stop)
    if sol is None:
        return mv, f, sol
    small = {(int(e), int(r)) for e, r in sol.hv[sol.work < prob.params.beta_us, :2]}
    fewer = [c for c in mv if not (c[1] >= 0 and (c[0], c[2]) in small)]
    if len(fewer) == len(mv) or time.perf_counter() >= stop:
        return mv, f, sol
    f2, sol2 = _objective(prob, lay, fewer, stop)
    return (fewer, f2, sol2) if sol2 is not None and _better(f2, f) else (mv, f, sol)


def _better(f: tuple[float, float], best: tuple[float, float]) -> bool:
    return f[0] < best[0] * (1 - _EPS) or (f[0] <= best[0] * (1 + _EPS) and f[1] < best[1] * (1 - 1e-6))


def _hot(prob: Problem, lay: int, reps: list[tuple[int, int, int]]) -> list[int]:
    """The :data:`_HOT` experts with the most tokens per host, hottest first."""
    n_e = prob.loads[lay].sum(axis=0)
    count = _hosts(prob, reps).sum(axis=0)
    per_host = np.where(count > 0, n_e / np.maximum(count, 1), 0.0)
    return [int(e) for e in np.argsort(-per_host, kind="stable")[:_HOT] if per_host[e] > 0]


def _adds(prob: Problem, lay: int, reps: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Candidate copies per hot expert (the hottest by tokens per host first): onto every rank that
    can take it (a free slot, not a host), least loaded first; the source a native host, on the
    destination's node when one is."""
    topo = prob.topology
    hosts = _hosts(prob, reps)
    n_e = prob.loads[lay].sum(axis=0)
    count = hosts.sum(axis=0)
    per_host = np.where(count > 0, n_e / np.maximum(count, 1), 0.0)
    est = (hosts * per_host[None, :]).sum(axis=1)  # tokens a rank would process under an even split
    used = np.bincount(_copies(reps)[:, 2], minlength=topo.num_ranks)
    free = used < topo.slots
    node = topo.node_of
    out = []
    for e in np.argsort(-per_host, kind="stable")[:_HOT]:
        if per_host[e] <= 0:
            break
        natives = np.flatnonzero(topo.native[:, e])
        row = []
        for r in np.argsort(est, kind="stable"):
            if free[r] and not hosts[r, e] and not topo.native[r, e]:
                same = natives[node[natives] == node[r]]
                row.append((int(e), int(same[0] if same.size else natives[0]), int(r)))
        if row:
            out.append(row)
    return out


def _neighbours(prob: Problem, lay: int, reps: list[tuple[int, int, int]], stop: float):
    """Moves as (new copies, how many of the last ones may be shed to fit the windows): a relocation
    chain (:func:`_chains`, shed from its end); a single relocation (:func:`_relocations`); a hot
    expert onto every rank that can take it, and onto half of them (traffic falls on every rank at
    once, the only way to lower a maximum many ranks share); one copy; a native host left idle; a
    drop (of a copy, or of an idle mark); a copy swapped for one of a hot expert on the same rank. Each kind is generated only when the
    search reaches it (generating one costs a pass over the layer in Python)."""
    for ch in _chains(prob, lay, reps, stop):
        yield reps + ch, len(ch) - 2
    for mv in _relocations(prob, lay, reps):
        yield reps + mv, 0
    adds = _adds(prob, lay, reps)
    for row in adds:
        if len(row) > 1:
            yield reps + row, len(row) - 1
        if len(row) > 3:
            yield reps + row[:len(row) // 2], len(row) // 2 - 1
    for row in adds:
        for c in row[:_DESTS]:
            yield reps + [c], 0
    for c in _idles(prob, lay, reps):
        yield reps + [c], 0
    for i in range(len(reps)):
        yield reps[:i] + reps[i + 1:], 0
    hot = _hot(prob, lay, reps)
    node, native = prob.topology.node_of, prob.topology.native
    for i, old in enumerate(reps):  # the old copy's slot is the one taken, so full ranks swap too
        if old[1] < 0:
            continue
        r = old[2]
        for e in hot:
            if e == old[0] or native[r, e] or any(c[0] == e and c[2] == r for c in reps if c[1] >= 0):
                continue
            natives = np.flatnonzero(native[:, e])
            same = natives[node[natives] == node[r]]
            yield reps[:i] + reps[i + 1:] + [(e, int(same[0] if same.size else natives[0]), r)], 0


def _fitting(prob: Problem, mv: list, shed: int) -> np.ndarray | None:
    """The move's copies, shedding up to ``shed`` of the last ones until they fit slots and windows."""
    for k in range(shed + 1):
        arr = np.array(mv[:len(mv) - k], dtype=np.int64).reshape(-1, 3)
        if placement_fits(prob, arr[arr[:, 1] >= 0]):
            return arr
    return None


@nb.njit(cache=True, nogil=True)
def _fill_kernel(n_e, hosts, native, node_of, slots, used, cnt, unit, windows, out):
    """Add copies of the hottest expert per host onto the least loaded rank (tokens under an even
    split) that can take it, until none fits; ``cnt [G, 4]``: copies received intra/inter and sent
    intra/inter per rank so far. Writes ``(expert, src, dst)`` rows to ``out``; returns how many."""
    g, e_all = hosts.shape
    k = 0
    while k < out.shape[0]:
        per_host = np.zeros(e_all)
        for e in range(e_all):
            h = 0
            for r in range(g):
                h += hosts[r, e]
            per_host[e] = n_e[e] / h if h > 0 else 0.0
        est = np.zeros(g)
        for r in range(g):
            for e in range(e_all):
                if hosts[r, e]:
                    est[r] += per_host[e]
        by_rank = np.argsort(est)
        added = False
        for e in np.argsort(-per_host):
            if per_host[e] <= 0.0:
                break
            for r in by_rank:
                if used[r] >= slots or hosts[r, e]:
                    continue
                for same in (True, False):  # a source on the destination's node first
                    for u in range(g):
                        if not native[u, e] or (node_of[u] == node_of[r]) != same:
                            continue
                        kd = 0 if same else 1
                        if copies_fit(cnt[r, kd] + 1, unit[kd], windows[r]) and copies_fit(cnt[u, 2 + kd] + 1, unit[kd], windows[u]):
                            out[k, 0], out[k, 1], out[k, 2] = e, u, r
                            k += 1
                            hosts[r, e] = True
                            used[r] += 1
                            cnt[r, kd] += 1
                            cnt[u, 2 + kd] += 1
                            added = True
                            break
                    if added:
                        break
                if added:
                    break
            if added:
                break
        if not added:
            break
    return k


def _filled(prob: Problem, lay: int, reps: list[tuple[int, int, int]], stop: float) -> list[tuple[int, int, int]]:
    """``reps`` plus copies of the hottest expert per host, one at a time onto the least loaded rank
    that can take it, until no copy fits a slot and both windows (an EPLB-like start: on layers
    where traffic is spread over every rank no single copy pays, a full set of them does). As many
    copies as the time left before ``stop`` allows (each costs a pass over the ``[G, E]`` layer)."""
    topo, p = prob.topology, prob.params
    g = topo.num_ranks
    arr = _copies(reps)
    inter = (topo.node_of[arr[:, 1]] != topo.node_of[arr[:, 2]]).astype(np.int64)
    cnt = np.zeros((g, 4), dtype=np.int64)
    np.add.at(cnt, (arr[:, 2], inter), 1)
    np.add.at(cnt, (arr[:, 1], 2 + inter), 1)
    used = np.bincount(arr[:, 2], minlength=g).astype(np.int64)
    most = int(max(0.0, remaining(stop)) / (_FILL_NS_PER_ENTRY * g * topo.num_experts))
    out = np.zeros((max(0, min(most, g * topo.slots - arr.shape[0])), 3), dtype=np.int64)
    k = _fill_kernel(prob.loads[lay].sum(axis=0), _hosts(prob, reps) | topo.native, topo.native, topo.node_of, topo.slots, used, cnt,
                     np.array([p.copy_intra_us, p.copy_inter_us]), prob.windows_us, out)
    return reps + [tuple(int(v) for v in c) for c in out[:k]]


def search_split_placement(prob: Problem, lay: int, start: LayerPlan, end: float) -> LayerPlan:
    """First-improvement search (see the module docstring) by ``end`` (a ``perf_counter`` time) from
    the best of ``start``'s copies, those with every slot filled (:func:`_filled`), and a filled
    placement from scratch; returns the better of ``start`` and the best placement's plan (decoded
    from its LP solution, kept for that, so the end needs no new LP). With no move found that is the
    exact token split of ``start``'s own placement."""
    reps = [tuple(int(v) for v in r) for r in start.replicas]
    stop = end - _decode_s(prob, lay, reps)  # keep time to decode the result
    reps, best, sol = _scored(prob, lay, reps, stop)
    if sol is None:
        return start
    moved = False
    p = prob.params
    # floor-bound layers (most experts below beta/alpha tokens: decode, small batches) want fewer
    # active experts per rank, not more: no filled starts there
    n_e = prob.loads[lay].sum(axis=0)
    dust = np.mean(n_e[n_e > 0] * p.alpha_us < p.beta_us) > 0.5 if np.any(n_e > 0) else True
    for base in ([] if dust else (reps, [])):  # also start from the slots filled, on top of the plan and from scratch
        full = _filled(prob, lay, base, stop)
        if len(full) > len(base):
            f, s = _objective(prob, lay, full, stop)
            if _better(f, best) and remaining(end) > _decode_s(prob, lay, full):
                reps, best, sol, moved = full, f, s, True
                stop = end - _decode_s(prob, lay, reps)
    while time.perf_counter() < stop:
        found = None
        single = []
        for mv, shed in _neighbours(prob, lay, reps, stop):
            if time.perf_counter() >= stop:
                break
            arr = _fitting(prob, mv, shed)
            if arr is None:
                continue
            mv = [tuple(int(v) for v in c) for c in arr]
            mv, f, s = _scored(prob, lay, mv, stop)
            if len(mv) == len(reps) + 1 and s is not None:
                single.append((f, mv[-1]))
            if _better(f, best) and remaining(end) > _decode_s(prob, lay, mv):
                found, best, sol = mv, f, s
                break
        if found is None:  # stuck: pairs of the best single adds
            single.sort()
            for a, b in combinations([c for _, c in single[:_PAIRS]], 2):
                if time.perf_counter() >= stop:
                    break
                mv = reps + [a, b]
                if a[0] == b[0] and a[2] == b[2] or not placement_fits(prob, _copies(mv)):
                    continue
                f, s = _objective(prob, lay, mv, stop)
                if _better(f, best) and remaining(end) > _decode_s(prob, lay, mv):
                    found, best, sol = mv, f, s
                    break
        if found is None:
            break
        reps, moved = found, True
        stop = end - _decode_s(prob, lay, reps)
    if not moved and best[0] >= start.makespan_us * (1 - _EPS):  # not even the exact split of the start pays
        return start
    arr = _copies(reps)
    t0 = time.perf_counter()
    cand = split_plan(prob, lay, arr, sol, _hosts(prob, reps))
    if remaining(end) > 2.5 * (time.perf_counter() - t0):  # an LP and a decode: replicas under the floor dropped
        cand = without_idle_floor(prob, lay, cand, end)
    return cand if cand.makespan_us < start.makespan_us else start


_ready = False


def prepare() -> None:
    """Compile (or load) the kernels ``auto`` uses once, outside any budget: :mod:`.split_lp`'s and
    the fill kernel."""
    global _ready
    split_prepare()
    if not _ready:
        hosts = np.ones((1, 1), dtype=bool)
        native = hosts.copy()
        native.setflags(write=False)  # Topology.native is read-only: the same specialization
        _fill_kernel(np.ones(1), hosts, native, np.zeros(1, np.int64), 1, np.zeros(1, np.int64), np.zeros((1, 4), np.int64),
                     np.ones(2), np.ones(1), np.zeros((0, 3), np.int64))
        _ready = True
