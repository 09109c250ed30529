"""probe-runtime: torch.distributed execution of probe-planner plans (replica prefetch, token
dispatch/combine). Depends on probe_planner, never the reverse. Not built yet."""
