"""The planner embedded in the runtime: per layer, loads (all-gathered counts, the same on every
rank) -> :func:`probe_planner.solve` under the window budget -> one plan every rank runs.

Solvers with a time budget are not deterministic across processes (an anytime solver stops where its
clock says), so by default rank 0 solves and broadcasts the plan's arrays. ``replicated=True`` has
every rank solve and compare a fingerprint of its plan, falling back to rank 0's plan where they
differ: no broadcast of the plan when the solver agrees with itself (e.g. static or a greedy that
finishes), at the price of every rank spending the planning CPU.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
import torch.distributed as dist

from probe_planner import Budget, Plan, PlannerError, Topology, errors, solve
from probe_planner.solvers import get_solver


class EmbeddedPlanner:
    """Makes each layer's plan for a stack on ``topology`` under ``budget`` with ``solver``
    (and its ``options``). :meth:`plan` is a collective for non-static loads."""

    def __init__(self, topology: Topology, budget: Budget, solver: str = "greedy", options: dict | None = None,
                 replicated: bool = False, device: torch.device | str = "cpu", group=None) -> None:
        # an unknown solver or a bad option is refused here, on every rank alike
        self.options = get_solver(solver).check_options(dict(options or {}))
        self.topology, self.budget, self.solver = topology, budget, solver
        self.replicated = replicated
        self.device = torch.device(device)
        self.group = group  # the planner's collectives' group (None: the default one); a stack that
        # plans in a worker thread gives it a gloo group of its own (and a CPU device), so they never
        # interleave with the layers
        self._static: Plan | None = None
        self.last_s = 0.0  # wall time of the last plan(), this rank (the solve, and the broadcast)
        self.agreed = True  # replicated: whether the ranks' last plans agreed

    def static(self) -> Plan:
        """The static plan (natives only): no collective, the same everywhere."""
        if self._static is None:
            self._static = solve(np.zeros(self.topology.native.shape), self.topology, self.budget, solver="static")
        return self._static

    def plan(self, loads: np.ndarray | None) -> Plan:
        """The plan for ``loads [G, E]`` (``None``: the static plan). Every rank must call it with the
        same loads (all-gathered counts are)."""
        t0 = time.perf_counter()
        if loads is None:
            out = self.static()
        elif self.replicated:
            out = self._solve(loads)
            mine = torch.tensor([_fingerprint(out)], dtype=torch.int64, device=self.device)
            every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
            dist.all_gather(every, mine, group=self.group)
            self.agreed = len({int(t.item()) for t in every}) == 1
            if not self.agreed:
                out = self._broadcast(out)
        else:
            out = self._broadcast(self._solve_or_error(loads) if dist.get_rank() == 0 else None)
        self.last_s = time.perf_counter() - t0
        return out

    def _solve(self, loads: np.ndarray) -> Plan:
        return solve(loads, self.topology, self.budget, solver=self.solver, **self.options)

    def _solve_or_error(self, loads: np.ndarray) -> Plan | PlannerError:
        try:
            return self._solve(loads)
        except PlannerError as exc:  # sent to every rank, which all raise it (not a timeout on the others)
            return exc

    def _broadcast(self, plan: Plan | PlannerError | None) -> Plan:
        box = [None]
        if isinstance(plan, PlannerError):
            box = [(type(plan).__name__, str(plan))]
        elif dist.get_rank() == 0:
            box = [(plan.loads, plan.replicas, plan.route_idx, plan.route_tok, plan.solver, plan.solve_time_s, plan.info)]
        dist.broadcast_object_list(box, src=0, group=self.group, device=self.device if self.device.type == "cuda" else None)
        if len(box[0]) == 2:
            kind, message = box[0]
            raise getattr(errors, kind, PlannerError)(f"rank 0's planner: {message}")
        loads, rep, idx, tok, solver, solve_s, info = box[0]
        # validated on arrival: a plan from another process is checked like any other input
        return Plan(self.topology, self.budget, loads, rep, idx, tok, solver=solver, solve_time_s=solve_s,
                    info=info).validate()


def _fingerprint(plan: Plan) -> int:
    h = hashlib.blake2b(digest_size=8)
    for a in (plan.replicas, plan.route_idx, plan.route_tok):
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)
