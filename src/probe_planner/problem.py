"""One HABP instance as every solver sees it: canonical loads, topology, budget and derived constants."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .budget import Budget
from .cost import CostParams
from .errors import BudgetError, TopologyError
from .loads import Sources, canonical_loads
from .topology import Topology

# What solve() does after the solver returns (join the layers, build and validate the plan), measured
# on a 2-core CI-class machine (bench/budgets.py): ~0.1 ms plus a few ns per load entry.
FINISH_FIXED_S = 1e-4
FINISH_PER_ENTRY_S = 5e-9


def finish_reserve_s(entries: int, time_limit_s: float) -> float:
    """Seconds of the budget kept back for assembling and validating the plan (at most half of it)."""
    return min(FINISH_FIXED_S + FINISH_PER_ENTRY_S * entries, 0.5 * time_limit_s)


@dataclass(frozen=True, eq=False)
class Problem:
    """``loads``: ``[L, G, E]`` float64 tokens per (layer, source rank, expert); ``integral``: whether
    they are whole numbers (then every plan routes whole tokens); ``windows_us``: ``[G]``;
    ``deadline``: ``time.perf_counter()`` value by which the solver must return: the budget's end
    less :func:`finish_reserve_s`, the time assembling and validating the plan takes after it."""

    topology: Topology
    budget: Budget
    loads: np.ndarray
    integral: bool
    params: CostParams
    windows_us: np.ndarray
    deadline: float = field(default=float("inf"))
    memo: dict = field(default_factory=dict, repr=False)  # solvers' per-problem scratch (model sizes, ...)

    @classmethod
    def build(cls, loads, topology: Topology, budget: Budget, sources: Sources | None = None,
              start: float | None = None) -> Problem:
        if not isinstance(topology, Topology):
            raise TopologyError(f"topology must be a Topology, got {type(topology).__name__}")
        if not isinstance(budget, Budget):
            raise BudgetError(f"budget must be a Budget, got {type(budget).__name__}")
        start = time.perf_counter() if start is None else start
        arr, integral = canonical_loads(loads, topology, sources)
        return cls(topology=topology, budget=budget, loads=arr, integral=integral,
                   params=CostParams.from_topology(topology), windows_us=budget.windows(topology.num_ranks),
                   deadline=start + budget.time_limit_s - finish_reserve_s(arr.size, budget.time_limit_s))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(L, G, E)``."""
        return self.loads.shape  # type: ignore[return-value]
