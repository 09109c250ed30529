"""Local search over one layer's replica placement, every neighbour scored exactly.

Neighbours of a placement: drop one replica; add one candidate copy; swap a replica for a candidate
into the same destination rank. Candidates come from the caller (``auto`` passes the copies its LP
relaxation put weight on). The first neighbour that lowers the makespan is taken and the search
restarts from it, until none does or the time is up. Scoring (the caller's ``score``: the token
LP, a few ms at 64x8) dominates the cost, so neighbours that break a slot or window are filtered
here without scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from ..problem import Problem
from ..window import copies_fit_np

_EPS = 1e-9


def placement_fits(prob: Problem, replicas: np.ndarray) -> bool:
    """Whether ``[R, 3]`` (expert, src, dst) copies come from native hosts, go to ranks that do not
    hold the expert (one copy each), fit the slots and both ends' windows per link kind."""
    topo, p = prob.topology, prob.params
    if replicas.shape[0] == 0:
        return True
    e, u, r = replicas.T
    g = topo.num_ranks
    if not np.all(topo.native[u, e]) or np.any(topo.native[r, e]) or np.unique(e * g + r).size != e.size:
        return False
    if np.any(np.bincount(r, minlength=g) > topo.slots):
        return False
    inter = (topo.node_of[u] != topo.node_of[r]).astype(np.int64)
    units = np.array([p.copy_intra_us, p.copy_inter_us])
    for rank in (r, u):  # receiving, then sending end, each link kind on its own
        count = np.bincount(rank * 2 + inter, minlength=2 * g).reshape(g, 2)
        if not np.all(copies_fit_np(count, units[None, :], prob.windows_us[:, None])):
            return False
    return True


def _neighbours(reps: list[tuple[int, int, int]], cands: list[tuple[int, int, int]]) -> Iterator[list]:
    held = set(reps)
    for i in range(len(reps)):
        yield reps[:i] + reps[i + 1:]
    for c in cands:
        if c not in held:
            yield reps + [c]
    for i, old in enumerate(reps):
        for c in cands:
            if c not in held and c[2] == old[2]:
                yield reps[:i] + reps[i + 1:] + [c]


def improve_placement(prob: Problem, start, candidates: np.ndarray, score: Callable, end: float):
    """First-improvement local search from ``start`` (anything with ``.replicas`` and
    ``.makespan_us``); ``score(replicas)`` returns such an object or None; stops by ``end``
    (a ``perf_counter`` time). Returns the best found (``start`` if nothing helps)."""
    best = start
    cands = [tuple(int(v) for v in c) for c in candidates]
    improved = True
    while improved:
        improved = False
        reps = [tuple(int(v) for v in r) for r in best.replicas]
        for mv in _neighbours(reps, cands):
            if time.perf_counter() >= end:
                return best
            arr = np.array(mv, dtype=np.int64).reshape(-1, 3)
            if not placement_fits(prob, arr):
                continue
            cand = score(arr)
            if cand is not None and cand.makespan_us < best.makespan_us * (1 - _EPS):
                best = cand
                improved = True
                break
    return best
