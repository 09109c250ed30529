"""The methods ``probe-bench`` compares, each scored by the one cost model on the batch's real loads.

- ours, planned for the batch's own loads (an oracle prediction): ``static``, ``greedy``, ``auto``,
  ``milp``, ``lp-round``; ``greedy-history``: planned for the previous step's loads of the layer and
  run on the real ones through :class:`probe_planner.DispatchRule` (what a runtime without a
  predictor gets);
- EPLB-style (:mod:`probe_planner.baselines.eplb`) from the previous steps' per-expert totals with
  ``G × slots`` redundant slots, dispatched as the engines do: ``eplb`` (global, vLLM's even split),
  ``eplb-hierarchical`` (even split), ``eplb-local-first`` (SGLang's static dispatch), ``lplb``
  (EPLB placement + DeepSeek LPLB's per-batch token LP); ``eplb-oracle``: EPLB given this batch's own
  totals (what EPLB could do if it knew the batch). Their placements replace the sharded one, so
  their weight copies are reported against it, with how many would not fit the hiding window;
- capacity-aware inference (:mod:`probe_planner.baselines.capacity`): ``drop`` and ``reroute`` at
  ``γ``, no replication; lossy, so their dropped and rerouted fractions are reported beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..api import solve
from ..budget import Budget
from ..dispatch import DispatchRule
from ..plan import Plan
from ..topology import Topology


@dataclass
class Context:
    """One (step, layer): the real ``loads [G, E]``, the previous step's ``previous [G, E]`` and the
    previous steps' ``history [E]`` totals of the layer, the cluster, budget and ``gamma``;
    ``eplb(kind)`` gives the step's EPLB placement of that kind, its migration from the sharded
    placement and its solve time per layer."""

    loads: np.ndarray
    previous: np.ndarray
    history: np.ndarray
    layer: int
    topology: Topology
    budget: Budget
    gamma: float
    eplb: Callable


@dataclass
class Outcome:
    """A method's plan on the real loads and what it cost: copies (replicas, or weight moves against
    the sharded placement), copies that do not fit the window, tokens dropped/rerouted (fractions)."""

    plan: Plan
    solve_s: float
    copies: int = 0
    outside: int = 0
    dropped: float = 0.0
    rerouted: float = 0.0


def _ours(solver: str):
    def run(ctx: Context) -> Outcome:
        plan = solve(ctx.loads, ctx.topology, ctx.budget, solver=solver)
        return Outcome(plan, plan.solve_time_s, plan.num_replicas)
    return run


def _from_history(solver: str):
    def run(ctx: Context) -> Outcome:
        planned = solve(ctx.previous, ctx.topology, ctx.budget, solver=solver)
        plan = DispatchRule(planned).executed(ctx.loads[None])
        return Outcome(plan, planned.solve_time_s, plan.num_replicas)
    return run


def _eplb(kind: str, dispatch: str):
    def run(ctx: Context) -> Outcome:
        placement, mig, place_s = ctx.eplb(kind)
        plan = solve(ctx.loads, placement.topology(ctx.topology, ctx.layer), ctx.budget, solver=dispatch)
        return Outcome(plan, place_s + plan.solve_time_s, int(mig.copies[ctx.layer]), int(mig.outside[ctx.layer]))
    return run


def _capacity(mode: str):
    def run(ctx: Context) -> Outcome:
        from ..baselines import capacity

        t0 = time.perf_counter()
        res = (capacity.drop if mode == "drop" else capacity.reroute)(ctx.loads, ctx.topology, ctx.gamma)
        cap_s = time.perf_counter() - t0
        plan = solve(res.loads, ctx.topology, ctx.budget, solver="static")
        return Outcome(plan, cap_s + plan.solve_time_s, 0, 0, res.dropped_fraction, res.rerouted_fraction)
    return run


METHODS: dict[str, Callable[[Context], Outcome]] = {
    "static": _ours("static"),
    "greedy": _ours("greedy"),
    "greedy-history": _from_history("greedy"),
    "lp-round": _ours("lp-round"),
    "auto": _ours("auto"),
    "milp": _ours("milp"),
    "eplb": _eplb("global", "even"),
    "eplb-hierarchical": _eplb("hierarchical", "even"),
    "eplb-local-first": _eplb("global", "local-first"),
    "lplb": _eplb("global", "lplb"),
    "eplb-oracle": _eplb("oracle", "even"),
    "drop": _capacity("drop"),
    "reroute": _capacity("reroute"),
}
LOSSY = frozenset({"drop", "reroute"})
EPLB_FAMILY = frozenset({"eplb", "eplb-hierarchical", "eplb-local-first", "lplb", "eplb-oracle"})
