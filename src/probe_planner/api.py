"""The front door: ``solve(loads, topology, budget, solver=...)`` -> validated :class:`Plan`."""

from __future__ import annotations

import time

import numpy as np

from . import plan_check
from .budget import Budget
from .cost import evaluate_arrays
from .loads import Sources
from .plan import Plan
from .problem import Problem
from .solvers import get_solver
from .topology import Topology

_prepared = False


def _prepare() -> None:
    """Load the compiled kernels every solve() may use (the cost model, plan validation) once."""
    global _prepared
    if not _prepared:
        native = np.ones((1, 1), dtype=bool)
        native.setflags(write=False)
        evaluate_arrays(np.zeros((1, 1, 1)), np.zeros((0, 4), np.int64), np.zeros(0), np.zeros((0, 4), np.int64),
                        np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(6))
        plan_check.prepare()
        _prepared = True


def solve(loads: np.ndarray, topology: Topology, budget: Budget, solver: str = "greedy", *,
          sources: Sources | None = None, **options) -> Plan:
    """Plan replicas and token routing for ``loads`` on ``topology`` within ``budget``.

    loads: ``[E]`` or ``[L, E]`` (tokens per expert, sources uniform) or ``[G, E]`` / ``[L, G, E]``
    (tokens per source rank per expert); fractional loads (a predictor's expectations) give
    fractional routing. A 2-D array is read as ``[G, E]`` unless ``sources="uniform"``.
    solver: a registered name (``probe_planner.solvers.solver_names()``); ``options`` go to it.

    Returns a validated :class:`Plan` carrying its metrics, the solver's name and its wall time
    (problem building included; validation and one-time kernel compilation excluded). Raises a :class:`PlannerError` subclass on
    bad input; never returns an invalid plan.
    """
    spec = get_solver(solver)
    opts = spec.check_options(options)
    # one-time compilation (or loading from numba's cache) is not the solver's work: keep it off the clock
    _prepare()
    if spec.prepare is not None:
        spec.prepare()
    start = time.perf_counter()
    prob = Problem.build(loads, topology, budget, sources, start=start)
    out = spec.fn(prob, **opts)
    elapsed = time.perf_counter() - start
    plan = Plan(topology, budget, prob.loads, out.replicas, out.route_idx, out.route_tok,
                solver=solver, solve_time_s=elapsed, info=out.info, loads_checked=prob.integral)
    return plan.validate()
