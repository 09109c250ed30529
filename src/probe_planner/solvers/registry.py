"""The solver registry: each solver registers its name, its options (typed, checked once at the
front door) and its one-time preparation in one place, with :func:`register`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import SolverError

# Integer options are counts the compiled kernels hold in int64 and size arrays by: anything above
# this is a typo, not a setting (and 10**9 destinations would allocate gigabytes).
INT_OPTION_MAX = 2**31 - 1


@dataclass(frozen=True)
class Option:
    """One solver option. ``kind``: ``"int"``, ``"float"`` or ``"choice"``; ``lo``/``hi`` bound
    numbers (inclusive); ``choices`` lists a choice option's values; ``none_ok``: ``None`` is a
    value (it means "decide for me", documented by the solver)."""

    name: str
    kind: str
    default: object
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    none_ok: bool = False

    def check(self, solver: str, value):
        """``value`` as the solver takes it; :class:`SolverError` naming the option otherwise."""
        if value is None and self.none_ok:
            return None
        where = f"{solver} option {self.name}"
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise SolverError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        hi = INT_OPTION_MAX if self.hi is None and self.kind == "int" else self.hi
        what = "an integer" if self.kind == "int" else "a finite number"
        bounds = f"{what} >= {self.lo}" + (f" and <= {hi}" if hi is not None else "")
        bad = SolverError(f"{where} must be {bounds}, got {value!r}")
        if self.kind == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise bad
            value = int(value)
        else:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise bad
            try:
                value = float(value)
            except OverflowError:
                raise bad from None
            if not math.isfinite(value):
                raise bad
        if (self.lo is not None and value < self.lo) or (hi is not None and value > hi):
            raise bad
        return value


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver: ``fn(problem, **options) -> SolverResult``."""

    name: str
    fn: Callable
    options: tuple[Option, ...] = ()
    prepare: Callable[[], None] | None = None
    _by_name: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({o.name: o for o in self.options})

    def check_options(self, given: dict) -> dict:
        """Every option, checked, defaults filled in."""
        unknown = sorted(set(given) - set(self._by_name))
        if unknown:
            raise SolverError(f"solver {self.name!r} takes no option(s) {unknown}; its options: {list(self._by_name)}")
        return {o.name: o.check(self.name, given[o.name]) if o.name in given else o.default for o in self.options}


_REGISTRY: dict[str, SolverSpec] = {}


def register(name: str, *options: Option, prepare: Callable[[], None] | None = None) -> Callable:
    """Decorator: register ``fn`` as solver ``name`` taking ``options``; ``prepare`` compiles what
    it needs once, outside any budget."""
    def deco(fn: Callable) -> Callable:
        _REGISTRY[name] = SolverSpec(name, fn, tuple(options), prepare)
        return fn
    return deco


def get_solver(name) -> SolverSpec:
    if not isinstance(name, str):
        raise SolverError(f"solver must be a name (a str), got {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SolverError(f"unknown solver {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def solver_names() -> list[str]:
    return sorted(_REGISTRY)
