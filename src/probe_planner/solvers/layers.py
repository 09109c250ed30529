"""Per-layer plumbing the optimizers share (layers are :class:`probe_planner.plan.LayerPlan`): splitting a
result into layers and joining them back, greedy's start, the final status, and the time shares.

The optimizers (``lp-tokens``, ``lp-round``, ``milp``, ``auto``) solve one layer at a time, each in
its share of the time left, start from greedy's plan, and keep a layer's new plan only if it is
better; every layer's plan is re-scored with the one cost model (:func:`probe_planner.cost.evaluate`).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..cost import evaluate
from ..plan import LayerPlan
from ..problem import Problem
from ..routes import compact_routes, expand_routes
from . import SolverResult
from .greedy import THOROUGH, run_kernel
from .milp_model import model_columns


def layer_makespan(prob: Problem, lay: int, replicas: np.ndarray, routes: np.ndarray, tokens: np.ndarray) -> float:
    zeros_r = np.zeros((replicas.shape[0], 1), dtype=np.int64)
    zeros_q = np.zeros((routes.shape[0], 1), dtype=np.int64)
    m = evaluate(prob.topology, prob.loads[lay:lay + 1], np.hstack([zeros_q, routes]), tokens, np.hstack([zeros_r, replicas]),
                 prob.params)
    return float(m.layer_makespan_us[0])


def hosts_of(prob: Problem, replicas: np.ndarray) -> np.ndarray:
    """``[G, E]`` the native placement plus ``replicas [R, 3]`` (expert, src, dst)."""
    hosts = prob.topology.native.copy()
    hosts[replicas[:, 2], replicas[:, 0]] = True
    return hosts


def split_layers(prob: Problem, res: SolverResult) -> list[LayerPlan]:
    """A multi-layer :class:`SolverResult` as per-layer parts (routes as compact as the result's),
    each scored (one cost-model pass for all layers)."""
    L = prob.loads.shape[0]
    mk = res.info.get("kernel_makespan_us")  # the kernel's own score is the cost model's (tested)
    if mk is None:
        mk = evaluate(prob.topology, prob.loads, res.route_idx, res.route_tok, res.replicas, prob.params).layer_makespan_us
    order = np.argsort(res.route_idx[:, 0], kind="stable")
    idx, tok_all = res.route_idx[order], res.route_tok[order]
    rep = res.replicas[np.argsort(res.replicas[:, 0], kind="stable")]
    rcut = np.searchsorted(rep[:, 0], np.arange(L + 1))
    qcut = np.searchsorted(idx[:, 0], np.arange(L + 1))
    return [LayerPlan(rep[rcut[i]:rcut[i + 1], 1:], idx[qcut[i]:qcut[i + 1], 1:], tok_all[qcut[i]:qcut[i + 1]], float(mk[i]))
            for i in range(L)]


def explicit_routes(prob: Problem, lay: int, parts: LayerPlan) -> tuple[np.ndarray, np.ndarray]:
    """``(routes [N, 3], tokens [N])`` of one layer with every route explicit."""
    idx = np.hstack([np.zeros((parts.routes.shape[0], 1), dtype=np.int64), parts.routes])
    full, tok = expand_routes(prob.topology.native, prob.loads[lay:lay + 1], idx, parts.tokens)
    return full[:, 1:], tok


def join_layers(prob: Problem, parts: list[LayerPlan], info: dict) -> SolverResult:
    """Per-layer parts as one result, routes listed only for split experts."""
    reps = [np.hstack([np.full((p.replicas.shape[0], 1), i), p.replicas]) for i, p in enumerate(parts)]
    routes = [np.hstack([np.full((p.routes.shape[0], 1), i), p.routes]) for i, p in enumerate(parts)]
    rep = np.vstack(reps).astype(np.int64).reshape(-1, 4)
    idx, tok = compact_routes(prob.topology.native, rep, np.vstack(routes).astype(np.int64).reshape(-1, 4),
                              np.concatenate([p.tokens for p in parts]), len(parts))
    return SolverResult(rep, idx, tok, info)


def greedy_first(prob: Problem) -> SolverResult:
    """Greedy's default plan: where every optimizer starts (valid in microseconds)."""
    return run_kernel(prob, prob.topology.num_ranks * prob.topology.slots)


def greedy_fallback(first: SolverResult, solver: str) -> SolverResult:
    """``first`` (greedy's plan) as the answer of ``solver`` when its budget cannot hold an LP."""
    info = dict(first.info, status="heuristic",
                message=f"budget too short for {solver}'s LP phases: greedy's plan ({first.info['message']})")
    return SolverResult(first.replicas, first.route_idx, first.route_tok, info)


def greedy_start(prob: Problem, first: SolverResult, thorough_cost: float | None = None) -> list[LayerPlan]:
    """Greedy's default plan ``first`` and, where the time left holds ``thorough_cost`` (default
    :data:`THOROUGH_COST`) times the default kernel's, its thorough one (``THOROUGH``), the better
    per layer."""
    default = split_layers(prob, first)
    # thorough costs 3-8x the default kernel (bench/greedy_speed.py): run it only where that fits
    cost = THOROUGH_COST if thorough_cost is None else thorough_cost
    if not first.info["finished"] or remaining(prob.deadline) < cost * first.info["kernel_s"]:
        return default
    thorough = split_layers(prob, run_kernel(prob, prob.topology.num_ranks * prob.topology.slots, **THOROUGH))
    return [t if t.makespan_us < d.makespan_us else d for d, t in zip(default, thorough, strict=True)]


# thorough runs 3-8x the default kernel on Zipf layers, 14-24x on some (a 32x128 layer here); the
# margin covers splitting its result (its kernel also stops at the deadline)
THOROUGH_COST = 25.0


def remaining(deadline: float) -> float:
    return deadline - time.perf_counter()


def finish(prob: Problem, parts: list[LayerPlan], bounds: np.ndarray, proven: list[bool], extra: dict,
           rel_gap: float = 1e-4, message: str = "") -> SolverResult:
    """Assemble the layers; "optimal" when every layer's model was solved to ``rel_gap`` and the
    integral plan is within ``2·rel_gap`` of the bound (token rounding may add a little),
    "heuristic" when no layer has a model bound (``-inf`` everywhere), else "feasible".
    ``message`` says why the solver stopped (replaced by the status when optimal). The analytic
    bound is not taken here (it costs a sort of the loads): :attr:`Plan.bound_us` takes it lazily."""
    mk = np.array([p.makespan_us for p in parts])
    optimal = all(proven) and bool(np.all(mk <= bounds * (1 + 2 * rel_gap) + 1e-9))
    status = "optimal" if optimal else "feasible" if np.isfinite(bounds).any() else "heuristic"  # no bound: no claim
    total_mk, total_b = float(mk.sum()), float(bounds.sum())
    gap = 0.0 if total_mk <= 0 else max(0.0, (total_mk - total_b) / total_mk)
    if optimal:
        message = f"optimal within mip_rel_gap={rel_gap:g}"
    elif not message:
        message = f"feasible: {gap:.2%} above the best bound"
    info = dict(extra, status=status, bound_us=total_b, layer_bound_us=bounds, message=message, gap=gap)
    return join_layers(prob, parts, info)


def model_size(prob: Problem, lay: int, copies: bool = True) -> int:
    """Columns the layer's MILP (or, ``copies=False``, its token LP on the native placement) would
    have, without building it (remembered per problem: it costs ~2 ms at 256x32)."""
    key = ("columns", lay, copies)
    if key not in prob.memo:
        fixed = None if copies else prob.topology.native
        prob.memo[key] = model_columns(prob.loads[lay], prob.topology, prob.windows_us, prob.params, fixed)
    return prob.memo[key]


# Splitting greedy's plan into layers and joining them back costs ~0.2 ms plus ~0.1 ms per layer here
# (before any LP): with less than this left an optimizer returns greedy's plan at once (solve()'s
# promise, 1.1 x budget + 1 ms, absorbs the rest at a 1 ms budget).
OPTIMIZE_FIXED_S = 2.5e-4
OPTIMIZE_PER_LAYER_S = 1e-4


def nothing_fits(prob: Problem) -> bool:
    """Whether the time left cannot hold even the plumbing of an optimizer phase."""
    return remaining(prob.deadline) < OPTIMIZE_FIXED_S + OPTIMIZE_PER_LAYER_S * prob.loads.shape[0]


def too_short_for_lp(prob: Problem) -> bool:
    """Whether the time left cannot hold even the smallest token LP of one layer (at least 4
    columns per active expert; :func:`phase_fits`) — then the optimizers return greedy's plan at once."""
    active = int(np.count_nonzero(prob.loads[0].sum(axis=0)))
    return not phase_fits(prob, math.inf, 4 * active + 2)


# Measured on a 2-core CI-class machine (bench/budgets.py): HiGHS cannot be interrupted while it
# sets up and presolves, and even a token LP stopped at once costs 2-3 us per column (5k columns:
# 10 ms, 23k: 35-60 ms) plus 0.3-1.5 us per column of building; a whole token LP (build, solve,
# decode, score) takes 16-33 ms at 258-514 columns and 60 ms at 4.8k. A phase with less than
# PHASE_FIXED_S plus 10 us per column left is skipped rather than allowed to overrun the budget.
PHASE_FIXED_S = 0.02
SECONDS_PER_COLUMN = 1e-5
# HiGHS's MIP returns ~15% after its time limit plus ~2.5 us per column.
OVERRUN_PER_COLUMN = 2.5e-6


def overrun_s(columns: int, lp_solver: str) -> float:
    """What HiGHS may run past its limit on a model of ``columns`` columns: the interior point answers
    its interrupts less often (a 256x64 MILP given 0.73 s returned after 1.0 s)."""
    return OVERRUN_PER_COLUMN * columns * (4.0 if lp_solver == "ipm" else 1.0)


def phase_fits(prob: Problem, seconds: float, columns: int) -> bool:
    """Whether a HiGHS phase on a model of ``columns`` columns, given ``seconds``, can run and
    return before the deadline (``seconds`` must also not exceed the time left)."""
    return min(seconds, remaining(prob.deadline)) >= PHASE_FIXED_S + SECONDS_PER_COLUMN * columns
