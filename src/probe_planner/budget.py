"""The planner's budget: how long replica copies may take, and how long the solver may think."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import BudgetError


@dataclass(frozen=True, eq=False)
class Budget:
    """``window_us``: hiding window per rank in µs — a scalar for every rank or a ``[G]`` array.
    A replica copy must finish inside the window on both its source and its destination rank.
    ``time_limit_s``: wall-clock limit for the solver, model building included.
    """

    window_us: float | np.ndarray
    time_limit_s: float = 1.0

    def __post_init__(self) -> None:
        w = np.asarray(self.window_us, dtype=np.float64)
        if w.ndim > 1 or w.size == 0:
            raise BudgetError(f"window_us must be a scalar or a [G] array, got shape {list(w.shape)}")
        if np.isnan(w).any() or (w < 0).any():
            raise BudgetError(f"window_us must be >= 0 (inf allowed), got {w.tolist()}")
        t = float(self.time_limit_s)
        if math.isnan(t) or t <= 0:
            raise BudgetError(f"time_limit_s must be > 0, got {self.time_limit_s!r}")
        object.__setattr__(self, "time_limit_s", t)
        object.__setattr__(self, "window_us", float(w) if w.ndim == 0 else w.copy())

    def windows(self, num_ranks: int) -> np.ndarray:
        """``[G]`` hiding window of each rank in µs."""
        w = np.asarray(self.window_us, dtype=np.float64)
        if w.ndim == 0:
            return np.full(num_ranks, float(w))
        if w.shape != (num_ranks,):
            raise BudgetError(f"window_us has {w.shape[0]} entries but the topology has {num_ranks} ranks")
        return w.copy()

    def to_dict(self) -> dict:
        w = self.window_us
        return {"window_us": w if isinstance(w, float) else w.tolist(), "time_limit_s": self.time_limit_s}
