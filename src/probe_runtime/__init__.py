"""probe-runtime: torch.distributed execution of probe-planner plans. Depends on probe_planner, never
the reverse.

- :class:`EPMoELayer` — the expert-parallel MoE layer that dispatches by a plan's
  :class:`probe_planner.DispatchRule` and copies its replicas split-phase into a :class:`SlotPool`;
- :class:`MoEStack` — attention + MoE layers under a policy (static, history, coactivation,
  lookahead, oracle): layer l+1 planned in a worker thread and its copies overlapped with layer
  l's compute; :class:`EmbeddedPlanner` plans each layer; :class:`LookaheadPredictor` predicts;
- ``probe-run`` (:mod:`probe_runtime.launcher`) spawns the processes and reports.
"""

from .experts import ExpertBank, reference_moe, seeded_experts
from .moe_layer import EPMoELayer, LayerStats, Routed
from .offload import CacheTooSmallError, GroupStats, OffloadedStack, OffloadLayerStats
from .offload_cache import ExpertCache, HostExperts
from .planner import EmbeddedPlanner
from .predictor import LookaheadPredictor
from .slots import SlotPool
from .stack import POLICIES, MoEStack, StackWeights

__all__ = ["POLICIES", "CacheTooSmallError", "EPMoELayer", "EmbeddedPlanner", "ExpertBank", "ExpertCache", "GroupStats", "HostExperts",
           "LayerStats", "LookaheadPredictor", "MoEStack", "OffloadLayerStats", "OffloadedStack", "Routed", "SlotPool",
           "StackWeights", "reference_moe", "seeded_experts"]
