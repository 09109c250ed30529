"""``probe-bench``: the solver and baseline benchmarking harness.

A scenario is a model card × cluster card × load source × hiding window × methods (our solvers and
the baselines of :mod:`probe_planner.baselines`); :func:`run_scenario` scores every method on every
(step, layer) with the one cost model and :mod:`.report` writes the table, CSV, JSON and plots.
"""

from .methods import METHODS, Outcome
from .runner import Row, Scenario, run_scenario
from .sources import SOURCES, load_source

__all__ = ["METHODS", "SOURCES", "Outcome", "Row", "Scenario", "load_source", "run_scenario"]
