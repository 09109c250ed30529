"""Step-level serving simulator: every policy on the same real routing, timed by the one cost model.

Per step and MoE layer the simulator has the real loads ``[G, E]``. A policy makes a *prediction*
(oracle: the real loads; history: the previous step's; lookahead: the real loads perturbed to a
top-k recall, :func:`perturb`; recorded: the loads a run planned for, e.g. ``probe-run --record``'s
lookahead predictions), a *plan* from it, and the plan is *executed*: its placement and
copies stay as planned, the real tokens are split by its :class:`~probe_planner.DispatchRule`, and
the layer is timed by the cost model. Time is charged, never ignored, for:

- planner wall time and then the copies beyond the window they hide in — the hiding window, or the
  previous layer's time when that is shorter (``exposed_plan_us``: the solver's measured wall time,
  ``Plan.solve_time_s``, over it, measured for every plan, not estimated; ``exposed_copy_us``: what
  the copies, which start once the plan exists, add beyond it);
- long-lived re-placements (EPLB-style and ``place``): every layer's weight moves from the map in
  use, at the card's bandwidths, the longest rank's total as a stall (``stall_us``) in the step that
  re-places (vLLM's default is asynchronous now; the stall is the synchronous case, the upper bound),
  times the policy's ``stall_scale`` (1 by default; ``interval / the engine's real interval`` charges
  a run whose interval is scaled down the stall per step the engine pays at its real interval). One
  rule for both kinds: :func:`replacement_stall_us`. The placement's own compute time (EPLB's
  algorithm, ``place()``'s search) is not charged: engines compute it off the critical path; it is
  recorded (``replace_s``);
- non-MoE time per layer (attention projections, norms): :func:`non_moe_us`, a roofline estimate
  from the model card — ``max(tokens · 8·H² FLOPs / peak, 4·H² weights · bytes / HBM)`` on the
  busiest rank — so end-to-end ratios are not MoE-only ratios.

Policies (:class:`Policy`): ``static``; ``per-batch`` (a solver on a prediction every step);
``eplb`` (EPLB-style placement every ``interval`` steps from the last ``history`` steps' totals,
even dispatch; ``dispatch="lplb"`` for LPLB); ``place`` (:func:`probe_planner.place.place`'s
long-lived placement, re-placed on the same ``interval`` / ``history`` rule from the last
``history`` steps' per-batch loads with ``reserve`` slots per rank left free — the same physical
slots per rank as EPLB's, ``E / G + topology.slots`` — and per-batch planning, as ``per-batch``
does, on top: each layer planned on :meth:`Placement.topology`, so its copies go to the reserved
slots only; before the first re-placement the native placement with ``reserve`` free slots);
both planning kinds wait for a late plan (the runtime's behaviour) or, with ``late="skip"``, run
its layer unplanned instead (``late_plans`` counts them either way) — the planner, one thread, still
finishes the dropped plan, so the next plan starts that much later (``planner_lag_us``);
``online`` (TensorRT-LLM-style: one layer re-placed per step, round robin, from its last
``history`` steps, its weight moves in the background during the step: the part beyond the window
is exposed); ``capacity`` (drop / reroute at ``gamma``, lossy: dropped and rerouted fractions
reported).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .api import solve
from .baselines.eplb import EplbPlacement, eplb_placement
from .budget import Budget
from .cost import CostParams
from .dispatch import DispatchRule
from .errors import LoadsError, SolverError
from .place import Placement, place
from .topology import Topology
from .window import copy_times_us

PREDICTIONS = ("oracle", "history", "lookahead", "recorded")
KINDS = ("static", "per-batch", "eplb", "online", "capacity", "place")
PLANNED = ("per-batch", "place")  # the kinds that plan every batch on a prediction


@dataclass(frozen=True)
class Policy:
    """One policy. ``kind``: see the module doc; ``solver``/``prediction``/``recall`` for
    per-batch and place; ``interval``/``history``/``stall_scale`` for eplb and place;
    ``hierarchical``/``dispatch`` for eplb; ``reserve`` (spare slots per rank left to per-batch
    copies, at most the topology's ``slots``) and ``place_time_s`` (``place()``'s time limit) for
    place; ``late`` for per-batch and place: ``"wait"`` (the runtime's behaviour: the layer waits for a
    plan that takes longer than the window it hides in, the excess exposed) or ``"skip"`` (a plan not
    ready when its layer starts is dropped and the layer runs unplanned — its placement's static
    dispatch, no copies — nothing exposed); ``mode``/``gamma`` for capacity. Bad values raise
    :class:`SolverError` naming the field."""

    name: str
    kind: str = "static"
    solver: str = "greedy"
    prediction: str = "oracle"
    recall: float = 0.9
    interval: int = 3000
    history: int = 1000
    hierarchical: bool = False
    dispatch: str = "even"
    mode: str = "drop"
    gamma: float = 1.5
    plan_window_us: float | None = None  # per-batch: the window plans are made for (None: the real one)
    reserve: int = 1
    place_time_s: float = 1.0
    stall_scale: float = 1.0
    late: str = "wait"  # per-batch / place: a plan later than its window is waited for ("wait") or dropped ("skip")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SolverError(f"policy {self.name}: kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.prediction not in PREDICTIONS:
            raise SolverError(f"policy {self.name}: prediction must be one of {list(PREDICTIONS)}, got {self.prediction!r}")
        if not 0.0 <= self.recall <= 1.0:
            raise SolverError(f"policy {self.name}: recall must lie in [0, 1], got {self.recall!r}")
        if self.interval < 1 or self.history < 1:
            raise SolverError(f"policy {self.name}: interval and history must be >= 1 steps")
        if self.mode not in ("drop", "reroute"):
            raise SolverError(f"policy {self.name}: mode must be drop or reroute, got {self.mode!r}")
        if self.dispatch not in ("even", "local-first", "lplb", "static"):
            raise SolverError(f"policy {self.name}: dispatch must be even, local-first, lplb or static, got {self.dispatch!r}")
        if not (isinstance(self.gamma, (int, float)) and not isinstance(self.gamma, bool) and 0 < self.gamma < float("inf")):
            raise SolverError(f"policy {self.name}: gamma must be a finite number > 0, got {self.gamma!r}")
        if isinstance(self.reserve, bool) or not isinstance(self.reserve, (int, np.integer)) or self.reserve < 0:
            raise SolverError(f"policy {self.name}: reserve must be an integer >= 0 (slots per rank), got {self.reserve!r}")
        if not (_number(self.place_time_s) and 0 < self.place_time_s < float("inf")):
            raise SolverError(f"policy {self.name}: place_time_s must be a finite number > 0, got {self.place_time_s!r}")
        if self.late not in ("wait", "skip"):
            raise SolverError(f"policy {self.name}: late must be wait or skip, got {self.late!r}")
        if not (_number(self.stall_scale) and 0 <= self.stall_scale <= 1):
            raise SolverError(f"policy {self.name}: stall_scale must be a number in [0, 1], got {self.stall_scale!r}")


def _number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass
class StepRecord:
    """One step of one policy (µs; dropped/rerouted are token-assignment counts over every layer)."""

    policy: str
    step: int
    moe_us: float
    non_moe_us: float
    exposed_copy_us: float
    exposed_plan_us: float
    stall_us: float
    imbalance: float
    dropped: float
    rerouted: float
    tokens: float  # tokens in the step's batch (its first layer's assignments / top_k)
    assignments: float = 0.0  # token-expert assignments over every layer (what dropped/rerouted count)
    plan_us: float = 0.0  # the per-batch solver's measured wall time over the step's layers
    last_plan_us: float = 0.0  # the last solve's time: what a policy expects the next one to take
    layer_us: list[float] = field(default_factory=list)
    copies_per_rank: int = 0  # per-batch plans: the most replicas any rank received in any layer of the step
    late_plans: int = 0  # per-batch plans later than their window (late="skip": dropped, the layer ran unplanned)
    planner_lag_us: float = 0.0  # late="skip": how long past the last layer's start the planner is still busy
    moves: int = 0  # eplb / place: weight copies of the re-placement made at this step
    replace_s: float = 0.0  # eplb / place: the placement's compute wall time (not charged, see the module doc)
    hosts: np.ndarray | None = None  # eplb / place: the [L, G, E] long-lived map installed at this step

    @property
    def total_us(self) -> float:
        return self.moe_us + self.non_moe_us + self.exposed_copy_us + self.exposed_plan_us + self.stall_us


def non_moe_us(topology: Topology, tokens_per_rank: np.ndarray) -> float:
    """Roofline estimate of one layer's non-MoE time on the busiest rank (module doc)."""
    m = topology.model
    flops = 8.0 * m.hidden * m.hidden * float(np.max(tokens_per_rank, initial=0.0))
    weights = 4.0 * m.hidden * m.hidden * m.weight_bytes
    return max(flops / topology.peak_flops, weights / topology.hbm_bw) * 1e6


def replacement_stall_us(new: EplbPlacement, topology: Topology, previous: EplbPlacement | None) -> tuple[float, int]:
    """A long-lived re-placement's stall (µs) and weight copies: every layer's moves from
    ``previous`` (None: the native placement) at once, the longest rank's total at the card's
    bandwidths (:meth:`EplbPlacement.migration`) — the one rule the eplb and place policies share."""
    mig = new.migration(topology, previous=previous)
    return mig.all_layers_us, int(mig.copies.sum())


def perturb(loads: np.ndarray, recall: float, rng: np.random.Generator) -> np.ndarray:
    """``loads [G, E]`` with a fraction ``1 - recall`` of each source's assignments (binomially)
    moved to experts drawn uniformly: the counts a predictor with that top-k recall would give if
    its misses were uncorrelated with popularity — the pessimistic case, which flattens the hot
    experts the plan needs to see (misses drawn by popularity would leave the counts nearly as they
    are). A moved assignment may land back on its own expert, so the effective recall is
    ``recall + (1 - recall) / E``. Whole numbers stay whole; each source keeps its total."""
    n = np.asarray(loads, dtype=np.float64)
    if recall >= 1.0:
        return n.copy()
    if not np.all(n == np.floor(n)):  # fractional loads: the expectation of the same draw
        return recall * n + (1.0 - recall) * n.sum(axis=1, keepdims=True) / n.shape[1]
    pop = np.full(n.shape[1], 1.0 / n.shape[1])
    out = np.empty_like(n)
    for s in range(n.shape[0]):
        kept = rng.binomial(n[s].astype(np.int64), recall).astype(np.float64)
        moved = int(n[s].sum() - kept.sum())
        out[s] = kept + rng.multinomial(moved, pop)
    return out


def simulate(loads: np.ndarray, topology: Topology, window_us: float, policies: list[Policy], *,
             budget_s: float = 0.05, seed: int = 0, progress=None, recorded: np.ndarray | None = None) -> list[StepRecord]:
    """Every policy over ``loads [S, L, G, E]`` (see the module doc); one record per policy and
    step. ``budget_s``: each solve's time budget; ``progress(n)`` after each policy step;
    ``recorded [S, L, G, E]``: the predictions ``prediction="recorded"`` plans for (NaN: static)."""
    x = np.asarray(loads, dtype=np.float64)
    if x.ndim != 4 or x.shape[2:] != topology.native.shape:
        raise LoadsError(f"loads must be [S, L, G={topology.num_ranks}, E={topology.num_experts}], got {list(x.shape)}")
    if not np.isfinite(x).all() or (x < 0).any():
        raise LoadsError("loads must be finite and >= 0")
    if recorded is not None:
        recorded = np.asarray(recorded, dtype=np.float64)
        if recorded.shape != x.shape or (recorded < 0).any() or np.isinf(recorded).any():
            raise LoadsError(f"recorded predictions must be >= 0 (NaN: none) and shaped like the loads {list(x.shape)}")
    if recorded is None and any(p.kind in PLANNED and p.prediction == "recorded" for p in policies):
        raise SolverError("a policy plans for recorded predictions but none were given")
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise SolverError(f"policy names must be distinct, got {names}")
    for p in policies:
        if p.kind == "place" and p.reserve > topology.slots:
            raise SolverError(f"policy {p.name}: reserve ({p.reserve}) exceeds the topology's {topology.slots} spare slots "
                              "per rank (the place policy holds E / G + slots per rank, reserve of them free)")
        if p.kind in ("eplb", "place") and topology.num_experts % topology.num_ranks:
            raise SolverError(f"policy {p.name}: a long-lived map needs the {topology.num_experts} experts to divide "
                              f"over the {topology.num_ranks} ranks")
    budget = Budget(window_us=window_us, time_limit_s=budget_s)
    window = float(np.min(budget.window_us))
    top_k = topology.model.top_k
    out = []
    L = x.shape[1]
    for pol in policies:
        rng = np.random.default_rng(seed)
        placed: dict[int, tuple] = {}  # layer -> (long-lived placement, its row) the layer runs on
        in_use: EplbPlacement | None = None  # eplb / place: the map in service (None: the native placement)
        last_us = float("inf")  # the previous layer's time (none before the first)
        redundant = topology.num_ranks * topology.slots
        if pol.kind == "place":  # until the first re-placement: the native placement, reserve slots free
            layout = Placement(hosts=np.broadcast_to(topology.native, (L,) + topology.native.shape).copy(), reserve=pol.reserve)
            placed = {lay: (layout, lay) for lay in range(L)}
        for s in range(x.shape[0]):
            rec = StepRecord(pol.name, s, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(x[s, 0].sum()) / top_k,
                             float(x[s].sum()))
            if s > 0:  # the policy's expectation and its planner's backlog carry over steps
                rec.last_plan_us, rec.planner_lag_us = out[-1].last_plan_us, out[-1].planner_lag_us
            lo = max(0, s - pol.history)
            if pol.kind in ("eplb", "place") and s % pol.interval == 0 and s > 0:
                t0 = time.perf_counter()
                if pol.kind == "eplb":
                    new = eplb_placement(x[lo:s].sum(axis=(0, 2)), topology, redundant, hierarchical=pol.hierarchical)
                    placed = {lay: (new, lay) for lay in range(L)}
                    rec.hosts = np.stack([new.hosts(lay) for lay in range(L)])
                else:  # the same slots per rank as EPLB's, reserve of them left free, moves counted from the map in use
                    layout = place(x[lo:s], topology, redundant // topology.num_ranks + topology.num_experts // topology.num_ranks,
                                   current=layout, reserve=pol.reserve, time_limit_s=pol.place_time_s)
                    new = layout.to_map()
                    placed = {lay: (layout, lay) for lay in range(L)}
                    rec.hosts = layout.hosts.copy()
                rec.replace_s = time.perf_counter() - t0
                stall, rec.moves = replacement_stall_us(new, topology, in_use)
                rec.stall_us = pol.stall_scale * stall
                in_use = new
            elif pol.kind == "online" and s > 0:
                lay = (s - 1) % x.shape[1]
                new = eplb_placement(x[lo:s, lay].sum(axis=1), topology, redundant, hierarchical=pol.hierarchical)
                old = placed[lay][0].topology(topology, placed[lay][1]) if lay in placed else topology
                # the moves from what the layer holds now, in the background during this step's window
                rec.exposed_copy_us += max(0.0, float(new.migration(old, window_us).time_us[0]) - window)
                placed[lay] = (new, 0)
            imb = []
            for lay in range(L):
                real = x[s, lay]
                mk, ib = _layer(pol, s, lay, x, real, topology, budget, placed.get(lay), rng, rec, recorded, min(window, last_us))
                rec.layer_us.append(mk)
                rec.moe_us += mk
                imb.append(ib)
                other = non_moe_us(topology, real.sum(axis=1) / top_k)
                rec.non_moe_us += other
                last_us = mk + other  # the next layer's plan and copies hide in this layer's time
            rec.imbalance = float(np.mean(imb))
            out.append(rec)
            if progress is not None:
                progress(1)
    return out


def _layer(pol: Policy, s: int, lay: int, x: np.ndarray, real: np.ndarray, topo: Topology, budget: Budget, placement,
           rng: np.random.Generator, rec: StepRecord, recorded: np.ndarray | None = None,
           hide_us: float = float("inf")) -> tuple[float, float]:
    """One layer under ``pol``: its makespan on the real loads (µs) and imbalance; charges exposed
    time and lossy counts to ``rec``. ``placement``: ``(long-lived placement, row)`` the layer runs on
    (an EPLB-style map, or for place a :class:`Placement` whose topology keeps its reserved slots), or None."""
    if pol.kind == "static" or (pol.kind in ("eplb", "online") and placement is None):
        plan = solve(real, topo, budget, solver="static")
        return plan.makespan_us, plan.imbalance_ratio
    if pol.kind in ("eplb", "online"):
        where, row = placement
        plan = solve(real, where.topology(topo, row), budget, solver=pol.dispatch)
        return plan.makespan_us, plan.imbalance_ratio
    if pol.kind == "capacity":
        from .baselines import capacity

        res = (capacity.drop if pol.mode == "drop" else capacity.reroute)(real, topo, pol.gamma)
        rec.dropped += float(res.dropped.sum())
        rec.rerouted += float(res.rerouted.sum())
        plan = solve(res.loads, topo, budget, solver="static")
        return plan.makespan_us, plan.imbalance_ratio
    if pol.kind == "place":  # per-batch planning on the long-lived placement, copies to its reserved slots
        where, row = placement
        topo = where.topology(topo, row)
    # per-batch: predict, plan, run the real tokens through the plan's dispatch rule
    if pol.prediction == "oracle":
        guess = real
    elif pol.prediction == "history":
        guess = x[s - 1, lay] if s > 0 else None
    elif pol.prediction == "recorded":
        guess = None if np.isnan(recorded[s, lay]).any() else recorded[s, lay]
    else:
        guess = perturb(real, pol.recall, rng)
    if guess is None:
        plan = solve(real, topo, budget, solver="static")
        return plan.makespan_us, plan.imbalance_ratio
    hide = min(float(np.min(budget.window_us)), hide_us)
    lag = rec.planner_lag_us  # late="skip": the planner still busy with a dropped plan when this one was due to start
    if pol.plan_window_us is not None:
        copy_window = pol.plan_window_us
    else:  # the copies get what the previous layer's time leaves after planning (the last solve's time)
        copy_window = max(0.0, hide - lag - rec.last_plan_us)
    plan_budget = Budget(window_us=copy_window, time_limit_s=budget.time_limit_s)
    planned = solve(guess, topo, plan_budget, solver=pol.solver)
    # planning (the solver's measured wall time, problem building included, compilation not) and
    # then the copies share one window: the window, or the previous layer's time if shorter
    plan_us, copy_us = planned.solve_time_s * 1e6, copy_time_us(planned, topo)
    rec.plan_us += plan_us
    rec.last_plan_us = plan_us
    done = lag + plan_us  # when the plan is ready, from the start of the window it hides in
    if done > hide:
        rec.late_plans += 1
        if pol.late == "skip":  # not ready when the layer starts: run without it; the planner finishes it regardless
            rec.planner_lag_us = done - hide
            plan = solve(real, topo, budget, solver="static")
            return plan.makespan_us, plan.imbalance_ratio
    rec.planner_lag_us = 0.0
    rec.exposed_plan_us += max(0.0, done - hide)
    rec.exposed_copy_us += max(0.0, done + copy_us - hide) - max(0.0, done - hide)
    rec.copies_per_rank = max(rec.copies_per_rank, int(np.bincount(planned.replicas[:, 3], minlength=1).max()))
    plan = planned if guess is real else DispatchRule(planned).executed(real[None])
    return plan.makespan_us, plan.imbalance_ratio


def copy_time_us(plan, topo: Topology) -> float:
    """The longest rank's time for a one-layer plan's copies (the window rule's model)."""
    p = CostParams.from_topology(topo)
    rep = plan.replicas
    t = copy_times_us(rep[:, 2], rep[:, 3], topo.ranks_per_node, topo.num_ranks, p.copy_intra_us, p.copy_inter_us)
    return float(t.max(initial=0.0))
