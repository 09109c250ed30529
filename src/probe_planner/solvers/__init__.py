"""Solvers are interchangeable strategies registered by name; :func:`probe_planner.solve` picks one.

A solver is ``fn(problem: Problem, **options) -> SolverResult``. Adding one means a new module here
that decorates its function with ``@register("name")`` and one import line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import SolverError


@dataclass
class SolverResult:
    """replicas ``[R, 4]`` (layer, expert, src, dst); route_idx ``[N, 4]`` (layer, src, expert, dst);
    route_tok ``[N]``; info: solver-specific facts (moves, whether the deadline cut it short, ...)."""

    replicas: np.ndarray
    route_idx: np.ndarray
    route_tok: np.ndarray
    info: dict = field(default_factory=dict)


Solver = Callable[..., SolverResult]
_REGISTRY: dict[str, Solver] = {}


def register(name: str) -> Callable[[Solver], Solver]:
    def deco(fn: Solver) -> Solver:
        _REGISTRY[name] = fn
        return fn
    return deco


def get_solver(name: str) -> Solver:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SolverError(f"unknown solver {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def solver_names() -> list[str]:
    return sorted(_REGISTRY)


from . import greedy, milp  # noqa: E402,F401  (registration)
