"""An offload plan (pinned and streamed experts → a cyclic :class:`OffloadSchedule`) and the planning
objective every planner minimises (docs/formulation.md, "Offload planning").

Planning model of one pass, layer ``l`` (indices mod ``L``; ``t`` the load time of one expert):
``pinned[l, e]`` stays cached across passes; ``stream[l, e]`` is prefetched while layer ``l - 1``
computes and evicted when layer ``l + 1`` starts; any other needed expert is a miss, loaded on demand
and exposed. The pass takes ``Σ_l  t · Σ_e need[l, e] · (1 − pinned − stream)  +  max(C_{l−1}, t · Σ_e stream[l, e])``:
the misses, plus layer ``l − 1``'s compute ``C_{l−1}`` or the loads it must hide, whichever is longer.
Memory: ``Σ pinned + Σ_e stream[l, e] + Σ_e stream[l + 1, e] <= K`` for every ``l`` (``K`` the slots
planned for; the rest is spare for on-demand loads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OffloadError
from .problem import GroupForecast, OffloadProblem
from .schedule import OffloadSchedule


@dataclass(frozen=True, eq=False)
class OffloadPlan:
    """A planner's answer. ``pinned`` / ``stream``: ``[L, E]`` bool; ``objective_us``: the planning
    model's pass time; ``status``: ``"optimal"`` | ``"feasible"`` | ``"heuristic"``; ``message``: why
    the solver stopped."""

    schedule: OffloadSchedule
    pinned: np.ndarray
    stream: np.ndarray
    objective_us: float
    group: int
    tokens: int
    solver: str
    status: str = "heuristic"
    message: str = ""
    spare_slots: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Throughput the planning model predicts for the group."""
        return self.tokens / (self.objective_us * 1e-6) if self.objective_us > 0 else float("inf")


def stream_order(compute_us: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Load order of one layer's streamed experts: longest expected compute first. Loads take the same
    time, so by Johnson's rule for a two-stage (load, compute) flow shop this order finishes the layer
    soonest; expected compute also puts likely-needed experts ahead."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids[np.argsort(-compute_us[ids], kind="stable")]


def build_schedule(problem: OffloadProblem, fc: GroupForecast, pinned: np.ndarray, stream: np.ndarray) -> OffloadSchedule:
    """The cyclic schedule of a (pinned, stream) choice: ``prefetch[l]`` = layer ``l``'s streamed experts
    in :func:`stream_order`; ``evict[l]`` = every non-pinned expert of layer ``l − 2`` (its streamed ones,
    and any on-demand loads of it still cached); the cache starts as it ends a pass: the pinned experts
    and the streamed ones of the last two layers. Validated before it is returned."""
    big_l, big_e = pinned.shape
    if big_l == 1 and stream.any():
        raise OffloadError("with one layer nothing can be streamed (the layer's own loads cannot hide behind it)")
    prefetch = tuple(stream_order(fc.compute_us[lay], np.flatnonzero(stream[lay])) for lay in range(big_l))
    evict = []
    for lay in range(big_l):
        back = (lay - 2) % big_l
        ids = np.flatnonzero(~pinned[back])
        evict.append(np.stack([np.full(ids.size, back), ids], axis=1) if ids.size else np.zeros((0, 2), np.int64))
    start = set(zip(*np.nonzero(pinned), strict=True))
    if big_l >= 2:
        for lay in (big_l - 2, big_l - 1):
            start |= {(lay, int(e)) for e in np.flatnonzero(stream[lay])}
    resident = np.array(sorted((int(a), int(b)) for a, b in start), dtype=np.int64).reshape(-1, 2)
    return OffloadSchedule(num_layers=big_l, num_experts=big_e, cache_slots=problem.cache_slots, group=fc.group,
                           prefetch=prefetch, evict=tuple(evict), resident_start=resident).validate()


def planning_objective_us(problem: OffloadProblem, fc: GroupForecast, pinned: np.ndarray, stream: np.ndarray) -> float:
    """The planning model's pass time (module docstring) of a (pinned, stream) choice. The greedy kernel
    computes the same sum from prefix sums; tests hold the two together."""
    t = problem.load_us
    miss = (fc.need * ~(pinned | stream)).sum(axis=1) * t
    hide = np.maximum(np.roll(fc.layer_us, 1), stream.sum(axis=1) * t)
    return float(miss.sum() + hide.sum())


def slots_used(pinned: np.ndarray, stream: np.ndarray) -> int:
    """The most cache slots the plan holds at once: ``Σ pinned + max_l (|stream_l| + |stream_{l+1}|)``."""
    per = stream.sum(axis=1)
    pair = per + np.roll(per, -1) if per.size > 1 else per
    return int(pinned.sum() + pair.max())
