"""What offloading systems do instead, as schedules the same timeline scores (:mod:`.timeline`).

- :func:`on_demand` — nothing prefetched: every needed expert not in the LRU cache loads when its
  layer reaches it (HF Accelerate / DeepSpeed-style offload with an LRU expert cache).
- :func:`whole_layer` — FlexGen-style: the same share of every layer resident, the rest of layer
  ``l + 1`` loaded whole while layer ``l`` computes, whatever the routing.
- single-batch pipelining is our greedy with a group of one: :func:`single_batch`.
- :func:`adaptive` — ours with correlation-aware prefetch: the plan's pins and per-layer stream counts,
  each layer's streamed experts re-chosen from the co-activation prediction off the previous layer's
  real routing (known when those loads are issued).
"""

from __future__ import annotations

import numpy as np

from ..errors import OffloadError
from ..predict import CoactivationPredictor
from .coactivation import next_layer_freq
from .greedy import best_stream_count, plan_greedy
from .plan import OffloadPlan, build_schedule, stream_order
from .problem import GroupForecast, OffloadProblem, forecast, need_probability
from .schedule import OffloadSchedule


def on_demand(problem: OffloadProblem, group: int = 1) -> OffloadSchedule:
    """No plan: an empty cache, no prefetch, no evictions (the LRU rule does everything)."""
    g = problem.check_group(group)
    big_l = problem.num_layers
    none = tuple(np.zeros(0, np.int64) for _ in range(big_l))
    return OffloadSchedule(big_l, problem.num_experts, problem.cache_slots, g, none,
                           tuple(np.zeros((0, 2), np.int64) for _ in range(big_l)), np.zeros((0, 2), np.int64)).validate()


def whole_layer(problem: OffloadProblem, group: int = 1) -> OffloadSchedule:
    """FlexGen-style: ``q`` experts of every layer resident (the most that leaves room for two streamed
    layers: ``L·q + 2(E − q) <= slots``), the other ``E − q`` of the next layer loaded in id order."""
    g = problem.check_group(group)
    big_l, big_e, slots = problem.num_layers, problem.num_experts, problem.cache_slots
    if big_l <= 2 or slots >= big_l * big_e:
        q = big_e if slots >= big_l * big_e else 0
    else:
        q = int(np.clip((slots - 2 * big_e) // (big_l - 2), 0, big_e))
    if q < big_e and (big_l < 2 or big_l * q + 2 * (big_e - q) > slots):
        raise OffloadError(f"whole-layer prefetch needs room for two layers' experts: {2 * big_e} slots > cache_slots={slots}")
    pinned = np.zeros((big_l, big_e), bool)
    pinned[:, :q] = True
    fc = GroupForecast(group=g, need=np.ones((big_l, big_e)), compute_us=np.zeros((big_l, big_e)), layer_us=np.zeros(big_l))
    return build_schedule(problem, fc, pinned, ~pinned)


def single_batch(problem: OffloadProblem, freq: np.ndarray) -> OffloadPlan:
    """Layer-by-layer pipelining of one batch at a time: the greedy plan for a group of one."""
    return plan_greedy(problem, forecast(problem, freq, 1))


def adaptive(problem: OffloadProblem, plan: OffloadPlan, predictor: CoactivationPredictor, counts: np.ndarray) -> list[OffloadSchedule]:
    """One schedule per pass of ``counts`` ``[S, L, E]``, keeping ``plan``'s pins. When layer ``l − 1``'s
    router has run (when ``prefetch[l]`` is issued), its real counts give the predictor's need for layer
    ``l`` and the exact compute the loads can hide behind; layer ``l``'s streamed experts are then the
    likeliest non-pinned ones, as many as the planning model's per-layer rule picks within the plan's
    stream budget ``⌊(K − P)/2⌋`` (for a plan with non-uniform stream counts, e.g. the MILP's: its own
    counts). Layer 0 keeps the plan's loads. Memory stays within the plan's, by construction."""
    c = problem.check_counts(counts)
    tokens = problem.group_tokens(plan.group)
    k_plan = plan.stream.sum(axis=1)
    budget = (problem.cache_slots - plan.spare_slots - int(plan.pinned.sum())) // 2 if problem.num_layers > 1 else 0
    flexible = bool((k_plan <= budget).all())
    ids = np.arange(problem.num_experts)
    first = plan.schedule.prefetch[0]
    dense = problem.dense_us(plan.group)
    out = []
    for s in range(c.shape[0]):
        stream = plan.stream.copy()
        order = np.zeros(stream.shape)  # load order key, largest first
        order[0, first] = np.arange(first.size, 0, -1)  # layer 0 has no previous layer: the plan's loads
        for lay in range(1, problem.num_layers):
            f = next_layer_freq(predictor, lay, c[s, lay - 1], tokens)
            if f is None:
                continue
            need = need_probability(f, tokens)
            free = ids[~plan.pinned[lay]]
            rank = free[np.lexsort((free, ~plan.stream[lay, free], -need[free]))]
            k = k_plan[lay]
            if flexible:
                ranked = need[rank]
                prefix = np.concatenate([[0.0], np.cumsum(ranked)])
                hide = dense + float(problem.compute_us(c[s, lay - 1]).sum())
                _, k = best_stream_count(prefix, int((ranked > 0).sum()), 0, budget, problem.load_us, hide)
            stream[lay] = False
            stream[lay, rank[:k]] = True
            order[lay] = need
        fc = GroupForecast(plan.group, order, order, np.zeros(problem.num_layers))
        out.append(build_schedule(problem, fc, plan.pinned, stream))
    return out


__all__ = ["adaptive", "on_demand", "single_batch", "stream_order", "whole_layer"]
