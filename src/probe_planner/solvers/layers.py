"""Per-layer plumbing the optimizers share: a layer's answer (:class:`LayerParts`), splitting a
result into layers and joining them back, greedy's start, the final status, and the time shares.

The optimizers (``lp-tokens``, ``lp-round``, ``milp``, ``auto``) solve one layer at a time, each in
its share of the time left, start from greedy's plan, and keep a layer's new plan only if it is
better; every layer's plan is re-scored with the one cost model (:func:`probe_planner.cost.evaluate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..cost import evaluate, lower_bound_us
from ..problem import Problem
from ..routes import compact_routes, expand_routes
from . import SolverResult
from .greedy import THOROUGH, run_kernel
from .milp_model import model_columns


@dataclass
class LayerParts:
    """One layer's answer: replicas ``[R, 3]`` (expert, src, dst), routes ``[N, 3]`` (src, expert, dst),
    tokens ``[N]``, and its makespan under the cost model."""

    replicas: np.ndarray
    routes: np.ndarray
    tokens: np.ndarray
    makespan_us: float


def layer_makespan(prob: Problem, lay: int, replicas: np.ndarray, routes: np.ndarray, tokens: np.ndarray) -> float:
    zeros_r = np.zeros((replicas.shape[0], 1), dtype=np.int64)
    zeros_q = np.zeros((routes.shape[0], 1), dtype=np.int64)
    m = evaluate(prob.topology, prob.loads[lay:lay + 1], np.hstack([zeros_q, routes]), tokens, np.hstack([zeros_r, replicas]),
                 prob.params)
    return float(m.layer_makespan_us[0])


def split_layers(prob: Problem, res: SolverResult) -> list[LayerParts]:
    """A multi-layer :class:`SolverResult` as per-layer parts with every route explicit, each scored
    (one cost-model pass for all layers)."""
    L = prob.loads.shape[0]
    mk = evaluate(prob.topology, prob.loads, res.route_idx, res.route_tok, res.replicas, prob.params).layer_makespan_us
    idx, tok_all = expand_routes(prob.topology.native, prob.loads, res.route_idx, res.route_tok)  # sorted by layer
    rep = res.replicas[np.argsort(res.replicas[:, 0], kind="stable")]
    rcut = np.searchsorted(rep[:, 0], np.arange(L + 1))
    qcut = np.searchsorted(idx[:, 0], np.arange(L + 1))
    return [LayerParts(rep[rcut[i]:rcut[i + 1], 1:], idx[qcut[i]:qcut[i + 1], 1:], tok_all[qcut[i]:qcut[i + 1]], float(mk[i]))
            for i in range(L)]


def join_layers(prob: Problem, parts: list[LayerParts], info: dict) -> SolverResult:
    """Per-layer parts as one result, routes listed only for split experts."""
    reps = [np.hstack([np.full((p.replicas.shape[0], 1), i), p.replicas]) for i, p in enumerate(parts)]
    routes = [np.hstack([np.full((p.routes.shape[0], 1), i), p.routes]) for i, p in enumerate(parts)]
    rep = np.vstack(reps).astype(np.int64).reshape(-1, 4)
    idx, tok = compact_routes(prob.topology.native, rep, np.vstack(routes).astype(np.int64).reshape(-1, 4),
                              np.concatenate([p.tokens for p in parts]), len(parts))
    return SolverResult(rep, idx, tok, info)


def greedy_start(prob: Problem) -> tuple[list[LayerParts], SolverResult]:
    """Greedy's default plan and, where the time left holds it, its thorough one (``THOROUGH``),
    the better per layer; also the default run's result (its ``info`` says whether it finished)."""
    moves = prob.topology.num_ranks * prob.topology.slots
    t0 = time.perf_counter()
    first = run_kernel(prob, moves)
    default = split_layers(prob, first)
    # thorough costs 3-8x the default (bench/greedy_speed.py): run it only where that fits
    if not first.info["finished"] or remaining(prob.deadline) < THOROUGH_COST * (time.perf_counter() - t0):
        return default, first
    thorough = split_layers(prob, run_kernel(prob, moves, **THOROUGH))
    return [t if t.makespan_us < d.makespan_us else d for d, t in zip(default, thorough, strict=True)], first


THOROUGH_COST = 10.0


def remaining(deadline: float) -> float:
    return deadline - time.perf_counter()


def finish(prob: Problem, parts: list[LayerParts], bounds: np.ndarray, proven: list[bool], extra: dict,
           rel_gap: float = 1e-4, message: str = "") -> SolverResult:
    """Assemble the layers; "optimal" when every layer's model was solved to ``rel_gap`` and the
    integral plan is within ``2·rel_gap`` of the bound (token rounding may add a little).
    ``message`` says why the solver stopped (the status prefixes it when optimal)."""
    analytic = lower_bound_us(prob.topology, prob.loads, prob.windows_us, prob.params)
    bounds = np.maximum(bounds, analytic)
    mk = np.array([p.makespan_us for p in parts])
    optimal = all(proven) and bool(np.all(mk <= bounds * (1 + 2 * rel_gap) + 1e-9))
    status = "optimal" if optimal else "feasible"
    total_mk, total_b = float(mk.sum()), float(bounds.sum())
    if optimal:
        message = f"optimal within mip_rel_gap={rel_gap:g}"
    info = dict(extra, status=status, bound_us=total_b, layer_bound_us=bounds, message=message,
                gap=0.0 if total_mk <= 0 else max(0.0, (total_mk - total_b) / total_mk))
    return join_layers(prob, parts, info)


def model_size(prob: Problem, lay: int, copies: bool = True) -> int:
    """Columns the layer's MILP (or, ``copies=False``, its token LP on the native placement) would
    have, without building it."""
    fixed = None if copies else prob.topology.native
    return model_columns(prob.loads[lay], prob.topology, prob.windows_us, prob.params, fixed)


# Measured on a 2-core CI-class machine (bench/budgets.py): HiGHS cannot be interrupted while it
# sets up and presolves, and even a token LP stopped at once costs 2-3 us per column (5k columns:
# 10 ms, 23k: 35-60 ms) plus 0.3-1.5 us per column of building; a phase with less than 10 us per
# column left is skipped rather than allowed to overrun the budget.
SECONDS_PER_COLUMN = 1e-5
# HiGHS's MIP returns ~15% after its time limit plus ~2.5 us per column.
OVERRUN_PER_COLUMN = 2.5e-6


def phase_fits(prob: Problem, seconds: float, columns: int) -> bool:
    """Whether a HiGHS phase on a model of ``columns`` columns, given ``seconds``, can run and
    return before the deadline (``seconds`` must also not exceed the time left)."""
    return min(seconds, remaining(prob.deadline)) >= SECONDS_PER_COLUMN * columns
