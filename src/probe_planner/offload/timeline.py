"""The one timing function: an offload schedule run on the REAL routing of a sequence of passes.

Every policy (ours and the baselines) is scored here, so their times are the same arithmetic.
Model, per layer ``l`` of a pass (times in µs):

- the layer starts when layer ``l - 1`` has finished; its dense part (attention, router) takes
  ``dense_us(group)``; at its end the layer's routing is known (its *router time*);
- at the router time ``evict[l + 1]`` is applied (the planners' evictions hold finished layers'
  entries only), the layer's misses (needed, not cached, not in flight) are queued on the one PCIe
  stream, then ``prefetch[l + 1]`` (for the last layer: the next pass's ``evict[0]`` /
  ``prefetch[0]``); the stream is FIFO, one load of ``load_us`` at a time;
- the layer's experts compute one after another, those already loaded first, then in the order their
  loads land; an expert starts at ``max(previous end, its load end)``;
- a load into a full cache evicts the least recently used entry the current layer does not need (the
  runtime's on-demand rule, applied to prefetches too, since on-demand entries may have filled the
  slots); a prefetch that finds no such victim is skipped; evicting an entry the current layer needs,
  or one that is not cached, does nothing.

Pass 0 starts from ``resident_start`` with ``evict[0]`` / ``prefetch[0]`` issued at time 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OffloadError
from .problem import OffloadProblem
from .schedule import OffloadSchedule


@dataclass(frozen=True)
class Timeline:
    """What a run of passes took. ``pass_us``: ``[S]`` each pass's latency (end minus the previous end);
    ``compute_us``: expert + dense compute of all passes; ``exposed_us``: the rest (bubbles: waiting
    for loads); ``loads`` / ``misses``: host → GPU loads in all (misses: on-demand ones);
    ``tokens_per_pass``: tokens the group routes per pass; ``peak_slots``: the most entries the cache
    held at any point (never more than the schedule's ``cache_slots``)."""

    pass_us: np.ndarray
    compute_us: float
    exposed_us: float
    loads: int
    misses: int
    tokens_per_pass: int
    peak_slots: int

    @property
    def total_us(self) -> float:
        return float(self.pass_us.sum())

    @property
    def steady_pass_us(self) -> np.ndarray:
        """Pass latencies after the first (which pays the cold start), or the one pass there is."""
        return self.pass_us[1:] if self.pass_us.size > 1 else self.pass_us

    @property
    def latency_us(self) -> float:
        """Mean steady-state latency of one pass (one decode step of the whole group)."""
        return float(self.steady_pass_us.mean())

    @property
    def tokens_per_s(self) -> float:
        """Steady-state throughput: the group's tokens per pass over the mean pass latency (inf when a
        pass takes no time: nothing to load or compute)."""
        return self.tokens_per_pass / (self.latency_us * 1e-6) if self.latency_us > 0 else float("inf")

    @property
    def bubble_fraction(self) -> float:
        return self.exposed_us / self.total_us if self.total_us > 0 else 0.0


def _schedules(problem: OffloadProblem, schedule, passes: int) -> list[OffloadSchedule]:
    scheds = [schedule] * passes if isinstance(schedule, OffloadSchedule) else list(schedule)
    if len(scheds) != passes:
        raise OffloadError(f"got {len(scheds)} schedules for {passes} passes of counts")
    for i, s in enumerate(scheds):
        if not isinstance(s, OffloadSchedule):
            raise OffloadError(f"schedule {i} must be an OffloadSchedule, got {type(s).__name__}")
        if (s.num_layers, s.num_experts) != (problem.num_layers, problem.num_experts):
            raise OffloadError(f"schedule {i} is for {s.num_layers} layers x {s.num_experts} experts, the problem "
                               f"{problem.num_layers} x {problem.num_experts}")
        if not problem.num_experts <= s.cache_slots <= problem.cache_slots or s.group != scheds[0].group:
            raise OffloadError(f"schedule {i}: cache_slots={s.cache_slots} must lie in [num_experts, {problem.cache_slots}] "
                               f"and group={s.group} (first: {scheds[0].group}) must fit the problem and agree")
        problem.check_group(s.group)
    return scheds


def run_timeline(problem: OffloadProblem, schedule: OffloadSchedule | Sequence[OffloadSchedule],
                 counts: np.ndarray) -> Timeline:
    """Time ``S`` passes of a batch group: ``counts`` ``[S, L, E]`` are the group's real tokens per
    (pass, layer, expert); ``schedule`` one schedule for every pass or one per pass (an adaptive policy).
    Schedules are validated first; see the module docstring for the model."""
    c = problem.check_counts(counts)
    scheds = _schedules(problem, schedule, c.shape[0])
    for s in dict.fromkeys(scheds):
        s.validate()
    passes, num_layers, _ = c.shape
    comp = problem.compute_us(c)  # [S, L, E]
    dense = problem.dense_us(scheds[0].group)
    slots = scheds[0].cache_slots
    t_load = problem.load_us
    cache: OrderedDict[tuple[int, int], float] = OrderedDict()  # (layer, expert) -> load end; order = recency
    for a, b in scheds[0].resident_start:
        cache[(int(a), int(b))] = -np.inf
    io_free = 0.0
    n_loads = n_misses = 0
    peak = len(cache)

    def load(key: tuple[int, int], issue: float, protect: set) -> bool:
        nonlocal io_free, n_loads, peak
        if key in cache:
            return True
        if len(cache) >= slots:
            victim = next((k for k in cache if k not in protect), None)
            if victim is None:
                return False
            del cache[victim]
        io_free = max(io_free, issue) + t_load
        cache[key] = io_free
        n_loads += 1
        peak = max(peak, len(cache))
        return True

    def evict(sched: OffloadSchedule, layer: int, protect: set) -> None:
        for a, b in sched.evict[layer]:
            key = (int(a), int(b))
            if key not in protect:
                cache.pop(key, None)

    def prefetch(sched: OffloadSchedule, layer: int, at: float, protect: set) -> None:
        for e in sched.prefetch[layer]:
            load((layer, int(e)), at, protect)

    evict(scheds[0], 0, set())
    prefetch(scheds[0], 0, 0.0, set())
    t = 0.0
    ends = np.zeros(passes)
    total_comp = 0.0
    for s in range(passes):
        for lay in range(num_layers):
            t_router = t + dense
            need = np.flatnonzero(c[s, lay] > 0)
            need = need[np.argsort(-comp[s, lay, need], kind="stable")]  # misses: longest compute first
            protect = {(lay, int(e)) for e in need}
            nxt = (scheds[s], lay + 1) if lay + 1 < num_layers else (scheds[s + 1], 0) if s + 1 < passes else None
            if nxt is not None:  # evict[l + 1] holds finished layers' entries: free their slots before the misses
                evict(*nxt, protect)
            for e in need:
                key = (lay, int(e))
                if key not in cache:
                    load(key, t_router, protect)  # always finds a victim: slots >= num_experts
                    n_misses += 1
            if nxt is not None:
                prefetch(*nxt, t_router, protect)
            ready = np.array([cache[(lay, int(e))] for e in need])
            tt = t_router
            for i in np.argsort(ready, kind="stable"):
                tt = max(tt, ready[i]) + comp[s, lay, need[i]]
                cache.move_to_end((lay, int(need[i])))
            total_comp += dense + float(comp[s, lay, need].sum())
            t = tt
        ends[s] = t
    pass_us = np.diff(np.concatenate([[0.0], ends]))
    return Timeline(pass_us=pass_us, compute_us=total_comp, exposed_us=max(0.0, float(ends[-1] - total_comp)), loads=n_loads,
                    misses=n_misses, tokens_per_pass=problem.group_tokens(scheds[0].group), peak_slots=peak)
