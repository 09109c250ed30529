"""Baselines: what users would pick instead of probe-planner, written from the published
descriptions (``../shared/design/habp.md``), scored by the same cost model as every plan.

- :mod:`.eplb` — DeepSeek EPLB-style placement (global and hierarchical) from load totals;
- :mod:`.dispatch_rules` — the engines' token dispatch on a fixed placement: ``even`` (vLLM),
  ``local-first`` (SGLang static), ``lplb`` (DeepSeek LPLB: a per-batch token LP, counts only);
  registered as solvers behind :func:`probe_planner.solve`;
- :mod:`.capacity` — capacity-aware inference: ``drop`` and ``reroute`` (lossy: they change which
  experts process tokens, and say by how much).
"""
