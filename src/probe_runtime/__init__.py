"""probe-runtime: torch.distributed execution of probe-planner plans. Depends on probe_planner, never
the reverse. So far :mod:`probe_runtime.moe_layer` (the expert-parallel MoE layer that dispatches by
a plan's :class:`probe_planner.DispatchRule` and copies its replicas)."""
