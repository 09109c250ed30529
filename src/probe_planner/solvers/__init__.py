"""Solvers: interchangeable strategies behind :func:`probe_planner.solve`, one module each.

- ``static`` (:mod:`.static`), ``greedy`` (:mod:`.greedy`; kernel in :mod:`.greedy_kernel`, state
  and moves in :mod:`.greedy_state`)
- ``lp-tokens`` (:mod:`.token_lp`), ``lp-round`` (:mod:`.lp_round`), ``milp`` (:mod:`.milp`),
  ``auto`` (:mod:`.auto`); shared: the layer model (:mod:`.milp_model`), its backends
  (:mod:`.lp_backends`), decoding solutions into routes (:mod:`.decode`), per-layer plumbing and
  time shares (:mod:`.layers`), the placement search (:mod:`.placement_search`).

A solver is ``fn(problem: Problem, **options) -> SolverResult`` registered with
:func:`.registry.register` (name, typed options, one-time preparation); adding one means a new
module that registers itself and one import line below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .registry import Option, SolverSpec, get_solver, register, solver_names


@dataclass
class SolverResult:
    """replicas ``[R, 4]`` (layer, expert, src, dst); route_idx ``[N, 4]`` (layer, src, expert, dst);
    route_tok ``[N]``; info: solver-specific facts (status, bound, moves, ...); ``info["message"]``
    says why the solver stopped."""

    replicas: np.ndarray
    route_idx: np.ndarray
    route_tok: np.ndarray
    info: dict = field(default_factory=dict)


from ..baselines import dispatch_rules  # noqa: E402,F401  (the engines' dispatch rules, registered as solvers)
from . import auto, greedy, lp_round, milp, static, token_lp  # noqa: E402,F401  (registration)

__all__ = ["SolverResult", "Option", "SolverSpec", "get_solver", "register", "solver_names"]
