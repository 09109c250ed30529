"""The planner's budget: how long replica copies may take, and how long the solver may think."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import BudgetError


def _is_real(value) -> bool:
    """A real number: int/float or a numpy integer/float scalar; bool (an ``int`` subclass) is not."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _window_array(value) -> np.ndarray:
    """``window_us`` as a 0-d or 1-D float64 array, or BudgetError naming what it is."""
    if isinstance(value, np.ndarray):
        if isinstance(value, np.ma.MaskedArray):
            raise BudgetError("window_us must be a plain number or array, not a masked array")
        if value.dtype.kind not in "iuf":
            raise BudgetError(f"window_us must be a real number or an array of them; got dtype {value.dtype}")
        arr = value
    elif _is_real(value):
        arr = np.asarray(_float("window_us", value))
    elif isinstance(value, (list, tuple)):
        if not all(_is_real(v) for v in value):
            bad = next(v for v in value if not _is_real(v))
            raise BudgetError(f"window_us entries must be real numbers, got {bad!r} ({type(bad).__name__})")
        arr = np.array([_float("window_us", v) for v in value])
    else:
        raise BudgetError(f"window_us must be a real number or a [G] array of them, got {value!r} "
                          f"({type(value).__name__})")
    if arr.ndim > 1 or arr.size == 0:
        raise BudgetError(f"window_us must be a scalar or a [G] array, got shape {list(arr.shape)}")
    return np.asarray(arr, dtype=np.float64)


def _float(name: str, value) -> float:
    try:
        return float(value)
    except OverflowError as exc:  # an int beyond 1.8e308
        raise BudgetError(f"{name} is beyond the float64 range: {exc}") from exc


@dataclass(frozen=True, eq=False)
class Budget:
    """``window_us``: hiding window per rank in µs — a scalar for every rank or a ``[G]`` array.
    A replica copy must finish inside the window on both its source and its destination rank.
    ``time_limit_s``: wall-clock limit for the solver, model building included.

    Contract (each breach raises :class:`BudgetError`): ``window_us`` is a real number (int/float or
    a numpy integer/float scalar, not bool) ``>= 0``, ``inf`` allowed (no copy limit), or a non-empty
    1-D list/array of such numbers, one per rank (its length is checked against the topology at
    solve time). ``time_limit_s`` is a finite real number ``> 0`` (not bool; no ``inf``: pass a
    large number for "no limit"). Both are stored as float64.
    """

    window_us: float | np.ndarray
    time_limit_s: float = 1.0

    def __post_init__(self) -> None:
        w = _window_array(self.window_us)
        if np.isnan(w).any() or (w < 0).any():
            raise BudgetError(f"window_us must be >= 0 (inf allowed), got {w.tolist()}")
        t = self.time_limit_s
        if not _is_real(t):
            raise BudgetError(f"time_limit_s must be a real number of seconds, got {t!r} ({type(t).__name__})")
        t = _float("time_limit_s", t)
        if not math.isfinite(t) or t <= 0:
            raise BudgetError(f"time_limit_s must be a finite number > 0, got {self.time_limit_s!r}")
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
