"""probe-planner: hardware-aware balance planning (HABP) for Mixture-of-Experts expert parallelism.

    from probe_planner import solve, Topology, Budget
    topo = Topology.from_cards(model="qwen3-30b-a3b", cluster="h100x8")
    plan = solve(loads, topo, Budget(window_us=200.0), solver="greedy")
    print(plan.summary())
"""

from .api import solve
from .budget import Budget
from .cost import CostParams, Metrics
from .dispatch import DispatchRule
from .errors import (
                     BudgetError,
                     CardError,
                     LoadsError,
                     MapError,
                     PlanFileError,
                     PlanInvalidError,
                     PlannerError,
                     SolverError,
                     TopologyError,
                     TraceError,
)
from .place import Placement, place  # noqa: F401  (long-lived placement: probe_planner.place)
from .plan import LayerPlan, Plan
from .plan_io import load_plan, save_plan
from .solvers import solver_names
from .topology import ModelShape, Topology

__all__ = [
    "solve", "Topology", "ModelShape", "Budget", "Plan", "LayerPlan", "CostParams", "Metrics",
    "load_plan", "save_plan", "solver_names", "DispatchRule",
    "PlannerError", "LoadsError", "TopologyError", "BudgetError", "CardError", "SolverError",
    "PlanInvalidError", "PlanFileError", "TraceError", "MapError",
]
__version__ = "0.1.0"
