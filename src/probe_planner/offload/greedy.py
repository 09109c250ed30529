"""The greedy offload planner: a numba kernel that pins experts one at a time where a pin saves the
most pass time, streams each layer's likeliest remaining experts, and keeps the best pin count.

Within a layer, the experts worth pinning or streaming are the likeliest to be needed (an exchange
argument on the planning objective, :mod:`.plan`), so a layer's choice is two counts over its experts
sorted by need: the first ``pins[l]`` are pinned, the next ``k[l]`` streamed. Given the pins and the
stream budget ``s`` per layer (``P + 2s <= K``: two layers' streams are cached at once), the best
``k[l] <= s`` is found exactly per layer; the pins are added greedily by marginal gain, and every pin
count from 0 to the most that helps is scored, keeping the best. Loads are then ordered by
:func:`.plan.stream_order`. ``O(K · L · E)``; the kernel releases the GIL.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..errors import OffloadError
from .plan import OffloadPlan, build_schedule, planning_objective_us, slots_used
from .problem import GroupForecast, OffloadProblem


@nb.njit(cache=True, nogil=True)
def best_stream_count(prefix, npos, pins, budget, t, hide):
    """``(objective, k)``: a layer's best stream count ``k <= budget`` (the largest on ties) given ``pins`` pinned; ``prefix``
    ``[E + 1]``: cumulative need in need order; ``hide``: the previous layer's compute (µs)."""
    total = prefix[npos]
    best, best_k = math.inf, 0
    top = min(budget, npos - pins)
    for k in range(max(top, 0) + 1):
        v = t * (total - prefix[pins + k]) + max(hide, t * k)
        if v < best - 1e-12:
            best, best_k = v, k
    return best, best_k


@nb.njit(cache=True, nogil=True)
def greedy_counts(prefix, npos, hide, t, slots, stream_ok):
    """The greedy search. ``prefix``: ``[L, E + 1]`` cumulative need per layer in need order; ``npos``:
    ``[L]`` experts with need > 0; ``hide``: ``[L]`` compute of the layer before each layer; ``t``: one
    load (µs); ``slots``: ``K``; ``stream_ok``: False with one layer. Returns ``(pins [L], k [L],
    objective)`` of the best pin count."""
    num_layers = prefix.shape[0]
    pins = np.zeros(num_layers, np.int64)
    best_pins = pins.copy()
    best_k = np.zeros(num_layers, np.int64)
    best_obj = math.inf
    most = min(slots, int(npos.sum()))
    ks = np.zeros(num_layers, np.int64)
    for p in range(most + 1):
        budget = (slots - p) // 2 if stream_ok else 0
        obj = 0.0
        for lay in range(num_layers):
            v, k = best_stream_count(prefix[lay], npos[lay], pins[lay], budget, t, hide[lay])
            obj += v
            ks[lay] = k
        if obj <= best_obj + 1e-9 * max(1.0, best_obj):  # ties: more pins (a pinned expert is never late)
            best_obj = obj
            best_pins[:] = pins
            best_k[:] = ks
        if p == most:
            break
        # the next pin: the layer where one more pin (at the next pin count's budget) gains most
        nbudget = (slots - p - 1) // 2 if stream_ok else 0
        pick, pick_gain, left = -1, -math.inf, -1.0
        for lay in range(num_layers):
            if pins[lay] >= npos[lay]:
                continue
            before, _ = best_stream_count(prefix[lay], npos[lay], pins[lay], nbudget, t, hide[lay])
            after, _ = best_stream_count(prefix[lay], npos[lay], pins[lay] + 1, nbudget, t, hide[lay])
            gain = before - after
            # ties (e.g. every expert sure to be needed): the layer left with the most expected misses,
            # which spreads the pins and keeps the spare slots (the most one layer misses) small
            tie = abs(gain - pick_gain) <= 1e-9 * max(1.0, abs(gain))
            if gain > pick_gain + 1e-9 * max(1.0, abs(gain)) or (tie and prefix[lay, npos[lay]] - prefix[lay, pins[lay]] > left):
                pick, pick_gain = lay, gain
                left = prefix[lay, npos[lay]] - prefix[lay, pins[lay]]
        if pick < 0:
            break
        pins[pick] += 1
    return best_pins, best_k, best_obj


def need_order(fc: GroupForecast) -> np.ndarray:
    """``[L, E]`` each layer's experts by need (then expected compute), likeliest first."""
    return np.stack([np.lexsort((-fc.compute_us[lay], -fc.need[lay])) for lay in range(fc.need.shape[0])])


def masks_from_counts(order: np.ndarray, pins: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pinned, stream)`` ``[L, E]`` masks: per layer the first ``pins`` experts of ``order``, then the next ``k``."""
    big_l, big_e = order.shape
    pinned = np.zeros((big_l, big_e), bool)
    stream = np.zeros((big_l, big_e), bool)
    for lay in range(big_l):
        pinned[lay, order[lay, :pins[lay]]] = True
        stream[lay, order[lay, pins[lay]:pins[lay] + ks[lay]]] = True
    return pinned, stream


def expected_misses(fc: GroupForecast, pinned: np.ndarray, stream: np.ndarray) -> np.ndarray:
    """``[L]`` expected on-demand loads per layer."""
    return (fc.need * ~(pinned | stream)).sum(axis=1)


def spare_for(misses: np.ndarray) -> int:
    """Slots to leave for on-demand loads: the most one layer is expected to miss (its misses stay
    cached until the next layer starts and ``evict`` clears their layer)."""
    return int(math.ceil(float(misses.max()) - 1e-9))


def plan_greedy(problem: OffloadProblem, fc: GroupForecast, spare_slots: int | None = None) -> OffloadPlan:
    """The greedy plan for a forecast. ``spare_slots``: cache slots kept free for on-demand loads
    (``None``: as many as the layer missing most is expected to miss, found by re-planning until it settles)."""
    if not isinstance(fc, GroupForecast) or fc.need.shape != (problem.num_layers, problem.num_experts):
        raise OffloadError("fc must be a GroupForecast of this problem (see offload.problem.forecast)")
    order = need_order(fc)
    need_sorted = np.take_along_axis(fc.need, order, axis=1)
    prefix = np.concatenate([np.zeros((need_sorted.shape[0], 1)), np.cumsum(need_sorted, axis=1)], axis=1)
    npos = (need_sorted > 0).sum(axis=1).astype(np.int64)
    hide = np.roll(fc.layer_us, 1)
    stream_ok = problem.num_layers >= 2
    fixed = spare_slots is not None
    if fixed and (not isinstance(spare_slots, int) or isinstance(spare_slots, bool) or not 0 <= spare_slots <= problem.cache_slots):
        raise OffloadError(f"spare_slots must be an integer in [0, cache_slots={problem.cache_slots}], got {spare_slots!r}")
    spare = spare_slots if fixed else 0
    seen = set()
    while True:
        pins, ks, obj = greedy_counts(prefix, npos, hide, problem.load_us, problem.cache_slots - spare, stream_ok)
        pinned, stream = masks_from_counts(order, pins, ks)
        want = min(spare_for(expected_misses(fc, pinned, stream)), problem.cache_slots - problem.num_experts)
        if fixed or want <= spare or want in seen:
            break
        seen.add(spare)
        spare = want
    sched = build_schedule(problem, fc, pinned, stream)
    return OffloadPlan(schedule=sched, pinned=pinned, stream=stream, objective_us=planning_objective_us(problem, fc, pinned, stream),
                       group=fc.group, tokens=problem.group_tokens(fc.group), solver="greedy", status="heuristic",
                       message=f"search complete: {int(pins.sum())} pinned, {int(ks.sum())} streamed per pass, "
                               f"{slots_used(pinned, stream)} of {problem.cache_slots} slots planned, {spare} spare",
                       spare_slots=spare)
