"""Offload planning (Klotski-style): MoE experts in host memory, a GPU expert cache, batch groups whose
compute hides the next layer's loads, and correlation-aware prefetch. Needs numpy, numba, highspy; no torch.

- :mod:`.schedule` — :class:`OffloadSchedule`, the contract with the runtime;
- :mod:`.problem` — :class:`OffloadProblem` (host tier, cache, costs) and :func:`forecast` (a group's predicted needs);
- :mod:`.plan` — :class:`OffloadPlan`, the planning objective, plan → cyclic schedule;
- :mod:`.timeline` — the one timing function that scores every plan on real activations;
- :mod:`.greedy`, :mod:`.exact`, :mod:`.group` — the planners and the batch-group search;
- :mod:`.baselines` — on-demand, whole-next-layer prefetch (FlexGen-style), single-batch pipelining;
- :mod:`.coactivation` — next-layer prediction from a cross-layer co-occurrence matrix.
"""

from .baselines import adaptive, on_demand, single_batch, whole_layer
from .exact import plan_exact
from .greedy import plan_greedy
from .group import GroupChoice, choose_group
from .plan import OffloadPlan, build_schedule, planning_objective_us
from .problem import PCIE_GEN5_X16_BPS, GroupForecast, OffloadProblem, forecast
from .schedule import OffloadSchedule
from .timeline import Timeline, run_timeline

__all__ = ["PCIE_GEN5_X16_BPS", "GroupChoice", "GroupForecast", "OffloadPlan", "OffloadProblem", "OffloadSchedule", "Timeline",
           "adaptive", "build_schedule", "choose_group", "forecast", "on_demand", "plan_exact", "plan_greedy", "planning_objective_us",
           "run_timeline", "single_batch", "whole_layer"]
