"""Capacity-aware inference baselines, written from the published description
(``../shared/design/habp.md``): cap each expert at ``gamma x`` the layer's mean load per expert and
either *drop* the overflow (lossy) or *reroute* it to another expert with room. No replication: the
result is a new ``[L, G, E]`` load matrix that the planner then places and scores like any loads,
plus how many token-expert assignments were dropped or moved (they change the model's output, so
they are reported beside every result).

- :func:`capacity_of` — the cap ``gamma * (layer total / E)``, the one place this formula lives;
- :func:`drop` — every expert over the cap keeps the cap, the sources losing the overflow in
  proportion to their share of that expert;
- :func:`reroute` — counts only: the shared traces hold each token's top-k expert ids, not ranked
  scores, so a token's real next choice is unknown; overflow goes to the experts with room nearest
  its source (own rank, then own node, then anywhere);
- :func:`reroute_tokens` — the per-token rule for the runtime, which has every token's ranked
  choices: admit assignments rank by rank up to the cap, then move each one that did not fit to the
  token's next choice beyond its top-k that has room.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import LoadsError, SolverError, TopologyError
from ..loads import canonical_loads
from ..topology import Topology

__all__ = ["CapacityResult", "capacity_of", "drop", "reroute", "reroute_tokens"]


@dataclass(frozen=True)
class CapacityResult:
    """What capping did to one batch of loads (all arrays float64 and read-only).

    ``loads`` ``[L, G, E]``: tokens each expert processes after capping, per source rank (rerouted
    tokens stay attributed to their source); this is what gets planned and scored. ``dropped``,
    ``rerouted``, ``total`` ``[L]``: token-expert assignments dropped, moved to another expert, and
    present before capping, per layer. ``capacity`` ``[L]``: the per-expert cap enforced (``floor``
    of :func:`capacity_of` when the loads are whole numbers). ``rule``: one line saying how overflow
    was chosen and rerouted, to print beside the results.
    """

    loads: np.ndarray
    dropped: np.ndarray
    rerouted: np.ndarray
    total: np.ndarray
    capacity: np.ndarray
    rule: str

    @property
    def dropped_fraction(self) -> float:
        """Share of all assignments dropped (0 when there were none)."""
        return _fraction(self.dropped, self.total)

    @property
    def rerouted_fraction(self) -> float:
        """Share of all assignments moved to another expert (0 when there were none)."""
        return _fraction(self.rerouted, self.total)


def _fraction(part: np.ndarray, whole: np.ndarray) -> float:
    den = float(whole.sum())
    return float(part.sum()) / den if den > 0 else 0.0


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    arr.setflags(write=False)
    return arr


# --- validation -----------------------------------------------------------------------------------

def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _gamma(gamma) -> float:
    """``gamma`` as a float if it is a finite real number > 0 (bools, strings, arrays refused)."""
    if not isinstance(gamma, numbers.Real) or isinstance(gamma, (bool, np.bool_)):
        raise SolverError(f"gamma must be a finite number > 0, got {_show(gamma)} ({type(gamma).__name__})")
    try:
        out = float(gamma)
    except OverflowError:  # an int beyond float range
        out = math.inf
    if not (math.isfinite(out) and out > 0):
        raise SolverError(f"gamma must be a finite number > 0, got {_show(gamma)}")
    return out


def _count(name: str, value) -> int:
    """``value`` as an int >= 1 (Python or numpy integer; bools and floats refused)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < 1:
        raise SolverError(f"{name} must be an integer >= 1, got {_show(value)} ({type(value).__name__})")
    return int(value)


def _loads_any_topology(loads) -> np.ndarray:
    """``[G, E]`` / ``[L, G, E]`` real, finite, non-negative loads as float64 (no topology to check against)."""
    if isinstance(loads, np.ma.MaskedArray):
        raise LoadsError("loads must be a plain array, not a masked array")
    if loads is None or isinstance(loads, (str, bytes, dict, set)):
        raise LoadsError(f"loads must be a real numeric array, got {type(loads).__name__}")
    try:
        arr = np.asarray(loads)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LoadsError(f"loads must be a rectangular real numeric array: {exc}") from exc
    if arr.dtype.kind not in "iuf":
        raise LoadsError(f"loads must be a real numeric array (int, uint or float), got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise LoadsError(f"loads must be [G, E] or [L, G, E], got shape {list(arr.shape)}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size and not np.isfinite(arr).all():
        raise LoadsError(f"loads contain NaN or inf at index {np.argwhere(~np.isfinite(arr))[0].tolist()}")
    if arr.size and arr.min() < 0:
        raise LoadsError(f"loads must be >= 0; found {arr.min()} at index {np.argwhere(arr < 0)[0].tolist()}")
    if arr.shape[-1] == 0:
        raise LoadsError(f"loads have no experts (shape {list(arr.shape)})")
    return arr.reshape((-1, *arr.shape[-2:]))


def _checked(loads, topology, gamma) -> tuple[np.ndarray, bool, float]:
    """Every check :func:`drop` and :func:`reroute` need, once, up front: ``([L, G, E] float64 copy, whole, gamma)``."""
    if not isinstance(topology, Topology):
        raise TopologyError(f"topology must be a probe_planner.Topology, got {type(topology).__name__}")
    gamma = _gamma(gamma)
    g, e = topology.num_ranks, topology.num_experts
    try:  # the shape of numeric input, to name this API's shapes; canonical_loads judges everything else
        probe = loads if isinstance(loads, np.ndarray) else np.asarray(loads)
        shape = probe.shape if probe.dtype.kind in "iuf" else None
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError):
        shape = None
    if shape is not None and (len(shape) not in (2, 3) or tuple(shape[-2:]) != (g, e)):
        raise LoadsError(f"loads must be [G={g}, E={e}] or [L, G={g}, E={e}] (tokens from each source rank "
                         f"to each expert), got shape {list(shape)}")
    # The project's front door: dtype, shape against the topology, finite, >= 0, layer totals <= 2**53.
    arr, whole = canonical_loads(loads, topology, sources="given")
    return np.array(arr, dtype=np.float64), whole, gamma  # a private copy: never write into the caller's array


# --- the cap --------------------------------------------------------------------------------------

def capacity_of(loads: np.ndarray, gamma: float) -> np.ndarray:
    """``[L]`` per-expert cap: ``gamma`` times the layer's mean load per expert, ``gamma * total / E``.

    ``loads`` is ``[G, E]`` (one layer) or ``[L, G, E]``, real, finite, ``>= 0`` (else
    :class:`LoadsError`); ``gamma`` a finite number ``> 0`` (else :class:`SolverError`). The cap is
    real-valued; :func:`drop` and :func:`reroute` enforce its floor when the loads are whole numbers.
    """
    gamma = _gamma(gamma)
    arr = _loads_any_topology(loads)
    return gamma * (arr.sum(axis=(1, 2)) / arr.shape[-1])


def _enforced_cap(arr: np.ndarray, whole: bool, gamma: float) -> np.ndarray:
    cap = capacity_of(arr, gamma)
    return np.floor(cap) if whole else cap  # whole tokens: an expert can only keep a whole number


# --- drop -----------------------------------------------------------------------------------------

def _apportion(cols: np.ndarray, keep: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Largest-remainder split of ``keep[n]`` whole tokens over the whole counts ``cols[n, G]``
    (row sums ``totals[n] > keep[n]``): each source keeps ``floor(n * keep / total)``, plus one for
    the largest remainders (ties: lower source), so the row keeps exactly ``keep`` and no source more
    than it had. Integer arithmetic: float shares would break exact ties by rounding noise."""
    # int64 unless n * keep could pass 2**63 (counts are <= 2**53); then Python ints, slow but exact
    big = float(cols.max()) * float(keep.max()) >= 2.0**62
    kind = object if big else np.int64
    n = cols.astype(np.int64).astype(kind)
    k = keep.astype(np.int64).astype(kind)[:, None]
    t = totals.astype(np.int64).astype(kind)[:, None]
    prod = n * k
    base, rem = prod // t, prod % t
    short = k[:, 0] - base.sum(axis=1)  # in [0, G): the remainders sum to short * total
    # the `short` largest remainders are all > 0, so those sources had a token more to keep
    rank = np.argsort(np.argsort(-rem, axis=1, kind="stable"), axis=1, kind="stable")
    return (base + (rank < short[:, None])).astype(np.float64)


def _cap_kept(arr: np.ndarray, cap: np.ndarray, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(kept [L, G, E], over [L, E])``: every expert over ``cap`` cut to exactly ``cap``, its
    sources losing tokens in proportion to their share; the others untouched."""
    totals = arr.sum(axis=1)
    over = totals > cap[:, None]
    kept = arr.copy()
    lay, ex = np.nonzero(over)
    if lay.size:
        cols = arr[lay, :, ex]  # [N, G]
        if whole:
            kept[lay, :, ex] = _apportion(cols, cap[lay], totals[lay, ex])
        else:
            kept[lay, :, ex] = cols * (cap[lay] / totals[lay, ex])[:, None]
    return kept, over


def drop(loads: np.ndarray, topology: Topology, gamma: float) -> CapacityResult:
    """Cap each expert at ``gamma x`` the layer's mean load per expert and drop the overflow (lossy).

    An expert whose total over sources exceeds the cap ``C`` (:func:`capacity_of`) keeps exactly
    ``C`` — ``floor(C)`` when every load is a whole number — and the dropped tokens come from its
    sources in proportion to their share of it (whole numbers: largest-remainder apportionment, ties
    to the lower source rank, so each source keeps a whole count). Result: kept ``<=`` loads
    entrywise, every expert ``<= C`` (exactly for whole numbers, to float rounding otherwise).

    ``loads`` is ``[G, E]`` or ``[L, G, E]`` matching ``topology`` (else :class:`LoadsError`);
    ``gamma`` a finite number ``> 0`` (else :class:`SolverError`).
    """
    arr, whole, gamma = _checked(loads, topology, gamma)
    cap = _enforced_cap(arr, whole, gamma)
    kept, _ = _cap_kept(arr, cap, whole)
    total = arr.sum(axis=(1, 2))
    how = "largest-remainder, ties to the lower source rank" if whole else "exact proportional shares"
    rule = (f"drop: each expert capped at {'floor(' if whole else ''}{gamma:g} x mean load{')' if whole else ''}; "
            f"overflow dropped from its sources in proportion to their share ({how}); no rerouting")
    return CapacityResult(_frozen(kept), _frozen((arr - kept).sum(axis=(1, 2))), _frozen(np.zeros_like(total)),
                          _frozen(total), _frozen(cap), rule)


# --- reroute (counts) -----------------------------------------------------------------------------

def _preference(topology: Topology) -> np.ndarray:
    """``[G, E]`` 0 where the expert is native on the source's rank, 1 on another rank of its node, 2 elsewhere."""
    native = np.asarray(topology.native, dtype=bool)
    g, e = native.shape
    rpn = topology.ranks_per_node
    on_node = native.reshape(g // rpn, rpn, e).any(axis=1)  # [nodes, E]; ranks of a node are contiguous
    node = np.arange(g) // rpn
    return np.where(native, 0, np.where(on_node[node], 1, 2)).astype(np.int64)


def reroute(loads: np.ndarray, topology: Topology, gamma: float) -> CapacityResult:
    """Cap each expert as :func:`drop` does, then move the overflow to experts with room.

    Counts only: the shared routing traces hold each token's top-k expert ids, not ranked router
    scores, so a token's real next-choice expert is unknown (and so is whether it already holds the
    expert its overflow moves to). Instead each overflow ``(source, expert)`` amount — in source
    rank order, then expert id — goes to other experts with room (``room = C - current total``,
    ``0`` for the experts that were capped), preferring an expert native on the source's own rank,
    then one on the source's node, then any; within a tier the one with the most room, ties to the
    lower expert id; an amount may split over several experts. What finds no room is dropped.

    Result: per (layer, source) kept + rerouted + dropped tokens equal the original; no expert ends
    above ``C`` (``floor(C)`` for whole numbers); tokens only go to experts that were under ``C``;
    whole numbers stay whole. Deterministic. Errors as :func:`drop`.
    """
    arr, whole, gamma = _checked(loads, topology, gamma)
    cap = _enforced_cap(arr, whole, gamma)
    kept, over = _cap_kept(arr, cap, whole)
    overflow = arr - kept
    room = np.where(over, 0.0, np.maximum(cap[:, None] - kept.sum(axis=1), 0.0))  # [L, E]
    pref = _preference(topology)
    out = kept.copy()
    dropped = np.zeros(arr.shape[0])
    moved = np.zeros(arr.shape[0])
    ids = np.arange(arr.shape[2])
    for lay in range(arr.shape[0]):
        free = room[lay]
        for s, e in zip(*np.nonzero(overflow[lay] > 0), strict=True):  # row-major: source, then expert
            left = overflow[lay, s, e]
            cand = ids[(free > 0) & (ids != e)]
            # lexsort: last key first -> tier, then most room, then lower id
            for d in cand[np.lexsort((cand, -free[cand], pref[s, cand]))]:
                take = min(left, free[d])
                out[lay, s, d] += take
                free[d] -= take
                left -= take
                moved[lay] += take
                if left <= 0:
                    break
            dropped[lay] += max(left, 0.0)
    total = arr.sum(axis=(1, 2))
    rule = (f"reroute (counts only: traces hold top-k ids, not ranked scores, so a token's next choice is unknown): "
            f"experts capped at {'floor(' if whole else ''}{gamma:g} x mean load{')' if whole else ''} as in drop; "
            "overflow per (source, expert), in source then expert order, moved to other experts with room: native on "
            "the source's rank, then its node, then any; most room first, ties to the lower id; the rest dropped")
    return CapacityResult(_frozen(out), _frozen(dropped), _frozen(moved), _frozen(total), _frozen(cap), rule)


# --- reroute (per token) --------------------------------------------------------------------------

def _choices(choices, top_k: int, num_experts: int) -> np.ndarray:
    """``choices`` as an int64 ``[T, m]`` array, or :class:`LoadsError` naming what is wrong."""
    if isinstance(choices, np.ma.MaskedArray):
        raise LoadsError("choices must be a plain array, not a masked array")
    try:
        arr = np.asarray(choices)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LoadsError(f"choices must be a rectangular integer [T, m] array: {exc}") from exc
    if arr.dtype.kind not in "iu":
        raise LoadsError(f"choices must hold integer expert ids, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise LoadsError(f"choices must be [T, m] (tokens x ranked choices), got shape {list(arr.shape)}")
    if arr.shape[1] <= top_k:
        raise LoadsError(f"choices need more than top_k={top_k} columns (the top-k plus further choices), "
                         f"got shape {list(arr.shape)}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= num_experts:
            raise LoadsError(f"choices must be expert ids in [0, {num_experts}), got range [{lo}, {hi}]")
    arr = arr.astype(np.int64)
    srt = np.sort(arr, axis=1)
    dup = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if dup.size:
        raise LoadsError(f"choices of token {int(dup[0])} repeat an expert: {arr[dup[0]].tolist()}")
    return arr


def _admit(experts: np.ndarray, room: np.ndarray) -> np.ndarray:
    """``[n]`` bool: which requests fit, in array order, each expert taking its first ``room[e]`` requests."""
    order = np.argsort(experts, kind="stable")
    srt = experts[order]
    place = np.arange(srt.size) - np.searchsorted(srt, srt, side="left")  # position among the same expert's requests
    ok = np.empty(srt.size, dtype=bool)
    ok[order] = place < room[srt]
    return ok


def reroute_tokens(choices: np.ndarray, top_k: int, capacity: float, num_experts: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-token capacity-aware routing: each expert takes at most ``floor(capacity)`` assignments.

    ``choices`` ``[T, m]``: every token's expert ids ranked best first, distinct within a row, with
    ``m > top_k``; its first ``top_k`` are its assignments. First a maximal matching by rank: every
    token's rank-1 choice is admitted while its expert has room (tokens in index order), then rank 2,
    ..., rank ``top_k``. Then, one round per further rank ``j = top_k+1 .. m``, each token with an
    assignment that did not fit offers it (its lowest such slot) to its rank-``j`` choice; the expert
    admits tokens in index order while it has room. Rows are distinct, so a token never lands on an
    expert it already holds. Whatever is still unplaced after the last rank is dropped.

    Returns ``(assigned [T, top_k] int64 expert id or -1 where dropped, moved [T, top_k] bool,
    dropped count, rerouted count)``. Bad ``choices`` raise :class:`LoadsError`; ``top_k`` or
    ``num_experts`` not an integer ``>= 1``, ``capacity`` not a finite number ``>= 0``:
    :class:`SolverError`.
    """
    top_k = _count("top_k", top_k)
    num_experts = _count("num_experts", num_experts)
    if not isinstance(capacity, numbers.Real) or isinstance(capacity, (bool, np.bool_)):
        raise SolverError(f"capacity must be a finite number >= 0, got {_show(capacity)} ({type(capacity).__name__})")
    try:
        cap_f = float(capacity)
    except OverflowError:
        cap_f = math.inf
    if not (math.isfinite(cap_f) and cap_f >= 0):
        raise SolverError(f"capacity must be a finite number >= 0, got {_show(capacity)}")
    ch = _choices(choices, top_k, num_experts)
    tokens, ranks = ch.shape
    cap = min(math.floor(cap_f), tokens * top_k)  # beyond every assignment there is: no overflow in int64
    count = np.zeros(num_experts, dtype=np.int64)
    assigned = np.full((tokens, top_k), -1, dtype=np.int64)
    moved = np.zeros((tokens, top_k), dtype=bool)
    for r in range(top_k):
        ok = _admit(ch[:, r], cap - count)
        assigned[ok, r] = ch[ok, r]
        count += np.bincount(ch[ok, r], minlength=num_experts)
    for j in range(top_k, ranks):
        pending = assigned < 0
        who = np.flatnonzero(pending.any(axis=1))
        if not who.size:
            break
        slot = pending[who].argmax(axis=1)  # each token offers its lowest unplaced slot once per round
        want = ch[who, j]
        ok = _admit(want, cap - count)
        assigned[who[ok], slot[ok]] = want[ok]
        moved[who[ok], slot[ok]] = True
        count += np.bincount(want[ok], minlength=num_experts)
    return assigned, moved, int((assigned < 0).sum()), int(moved.sum())
