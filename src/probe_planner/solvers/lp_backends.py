"""Backends that solve a :class:`LayerModel`: HiGHS (matrices passed directly) and OR-Tools.

OR-Tools goes through the ``pywraplp`` linear-solver wrapper with SCIP: it ships inside the ortools
wheel, takes hints (warm starts) and reports a best bound, and the wrapper's per-coefficient API is
fast enough for the model sizes where an exact solve is realistic. Every backend honours its time
limit and reports why it stopped; running out of time is a status, never an exception.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..errors import SolverError
from .milp_model import LayerModel


@dataclass
class ModelSolution:
    """``status``: "optimal", "feasible" (an incumbent, optimality not proven), "none" (no
    incumbent in time) or "infeasible". ``bound``: best proven lower bound on the objective."""

    status: str
    x: np.ndarray | None
    objective: float
    bound: float
    wall_s: float


# Across nodes, with inter-node copies among the candidates, the layer LP is degenerate for the dual
# simplex: 128x16 (Qwen3-30B-A3B on h100x16-ib, 300 us windows, 18k columns) 21-55 s for the LP
# relaxation, the interior point (with crossover) 3.5-8 s, and the MILP's root LP likewise (10 s:
# no root bound with the simplex, 284.4 with the interior point). On one node, or at a few thousand
# columns, the simplex is as fast or up to 2x faster.
_IPM_MIN_COLUMNS = 10_000


def lp_solver_for(num_nodes: int, num_cols: int) -> str:
    """HiGHS's LP solver for a layer model: ``"ipm"`` for large multi-node models, else ``"choose"``."""
    return "ipm" if num_nodes > 1 and num_cols > _IPM_MIN_COLUMNS else "choose"


def solve_highs(m: LayerModel, time_limit_s: float, relax: bool = False, warm: np.ndarray | None = None,
                mip_rel_gap: float = 1e-4, cutoff: float | None = None, deadline: float | None = None,
                lp_solver: str = "choose") -> ModelSolution:
    """``cutoff``: the objective of a known solution (a little above it): branches that cannot beat
    it are pruned, 2-4x faster proofs on 64x8 layers. ``deadline``: a ``perf_counter`` time at which
    the solve is interrupted wherever HiGHS next checks (simplex, IPM and MIP callbacks), on top of
    its own ``time_limit``. ``lp_solver``: HiGHS's ``solver`` option for an LP, or ``mip_lp_solver``
    for a MILP (``"choose"``: dual simplex; ``"ipm"``: interior point with crossover)."""
    import highspy

    t0 = time.perf_counter()
    if deadline is not None:
        time_limit_s = min(time_limit_s, deadline - t0)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("solver" if relax or not m.integer.any() else "mip_lp_solver", lp_solver)
    h.setOptionValue("time_limit", max(float(time_limit_s), 1e-3))
    h.setOptionValue("mip_rel_gap", mip_rel_gap)
    h.setOptionValue("threads", 1)
    inf = highspy.kHighsInf
    mip = not relax and bool(m.integer.any())
    if mip and cutoff is not None and math.isfinite(cutoff):
        h.setOptionValue("objective_bound", float(cutoff))
    csc = m.A.tocsc()
    # the array form of passModel: setting HighsLp's fields one by one copies element-wise (18 ms at 23k columns)
    h.passModel(m.num_cols, m.A.shape[0], csc.nnz, 1, 1, 0.0, m.c, m.col_lo, np.where(np.isinf(m.col_hi), inf, m.col_hi),
                np.where(np.isinf(m.row_lo), -inf, m.row_lo), np.where(np.isinf(m.row_hi), inf, m.row_hi),
                csc.indptr.astype(np.int32), csc.indices.astype(np.int32), csc.data,
                m.integer.astype(np.int32) if mip else np.zeros(m.num_cols, np.int32))
    if deadline is not None:
        def stop(e) -> None:
            if time.perf_counter() > deadline:
                e.interrupt()
        h.cbSimplexInterrupt += stop
        h.cbIpmInterrupt += stop
        h.cbMipInterrupt += stop
    # No setSolution warm start: with HiGHS 1.16 a user solution made some runs report "optimal"
    # with an objective and bound below the true optimum (caught by the property tests). Callers
    # keep their heuristic incumbent and take the MILP result only where it is better.
    del warm
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    S = highspy.HighsModelStatus
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value) if has_x else None
    obj = float(info.objective_function_value) if has_x else math.inf
    if status == S.kOptimal:
        name = "optimal"
    elif status == S.kInfeasible:  # with a cutoff: nothing below it (cannot happen when one is known)
        name = "infeasible" if cutoff is None else "none"
    elif has_x:
        name = "feasible"
    else:
        name = "none"
    if x is not None and abs(float(m.c @ x) - obj) > 1e-6 * max(1.0, abs(obj)):
        name, obj = "feasible", float(m.c @ x)  # inconsistent report: trust the point, not the claim
        return ModelSolution(name, x, obj, -math.inf, time.perf_counter() - t0)
    if mip:
        bound = float(info.mip_dual_bound)
        if not math.isfinite(bound):
            bound = -math.inf
    else:
        bound = obj if name == "optimal" else -math.inf
    return ModelSolution(name, x, obj, bound, time.perf_counter() - t0)


def solve_ortools(m: LayerModel, time_limit_s: float, relax: bool = False, warm: np.ndarray | None = None,
                  mip_rel_gap: float = 1e-4, cutoff: float | None = None, deadline: float | None = None,
                  lp_solver: str = "choose") -> ModelSolution:
    """``warm`` becomes SCIP's hint; ``cutoff`` and ``lp_solver`` are not used (the wrapper has no such parameters);
    ``deadline`` caps the time limit (the wrapper builds the model coefficient by coefficient in
    Python first: :func:`backend_cost`)."""
    from ortools.linear_solver import pywraplp

    t0 = time.perf_counter()
    solver = pywraplp.Solver.CreateSolver("GLOP" if relax else "SCIP")
    if solver is None:
        raise SolverError("OR-Tools was built without SCIP/GLOP")
    solver.SetTimeLimit(max(int(time_limit_s * 1000), 1))
    inf = solver.infinity()
    cols = []
    for j in range(m.num_cols):
        lo = m.col_lo[j]
        hi = inf if math.isinf(m.col_hi[j]) else m.col_hi[j]
        cols.append(solver.IntVar(lo, hi, "") if (m.integer[j] and not relax) else solver.NumVar(lo, hi, ""))
    A = m.A.tocsr()
    for i in range(A.shape[0]):
        lo = -inf if math.isinf(m.row_lo[i]) else m.row_lo[i]
        hi = inf if math.isinf(m.row_hi[i]) else m.row_hi[i]
        row = solver.RowConstraint(lo, hi, "")
        for k in range(A.indptr[i], A.indptr[i + 1]):
            row.SetCoefficient(cols[A.indices[k]], float(A.data[k]))
    objective = solver.Objective()
    for j in np.flatnonzero(m.c):
        objective.SetCoefficient(cols[j], float(m.c[j]))
    objective.SetMinimization()
    if warm is not None and not relax:
        solver.SetHint(cols, [float(v) for v in warm])
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, mip_rel_gap)
    remaining = time_limit_s - (time.perf_counter() - t0)
    if deadline is not None:
        remaining = min(remaining, deadline - time.perf_counter())
    solver.SetTimeLimit(max(int(remaining * 1000), 1))
    code = solver.Solve(params)
    has_x = code in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE)
    x = np.array([v.solution_value() for v in cols]) if has_x else None
    obj = objective.Value() if has_x else math.inf
    name = {pywraplp.Solver.OPTIMAL: "optimal", pywraplp.Solver.FEASIBLE: "feasible",
            pywraplp.Solver.INFEASIBLE: "infeasible"}.get(code, "none")
    if relax:
        bound = obj if name == "optimal" else -math.inf
    else:
        bound = objective.BestBound() if has_x or name == "none" else -math.inf
        if name == "optimal":
            bound = max(bound, obj * (1 - mip_rel_gap))
    return ModelSolution(name, x, obj, bound, time.perf_counter() - t0)


BACKENDS = {"highs": solve_highs, "ortools": solve_ortools}


def backend_cost(name: str) -> float:
    """How many times HiGHS's cost per column a backend needs before it can search: OR-Tools sets
    every coefficient from Python and SCIP's presolve overruns short limits (64x8 given 0.2 s:
    0.33 s), so it needs ~120 us per column."""
    return 12.0 if name == "ortools" else 1.0


def get_backend(name: str):
    try:
        return BACKENDS[name]
    except KeyError:
        raise SolverError(f"unknown MILP backend {name!r}; available: {', '.join(sorted(BACKENDS))}") from None
