"""The exact offload planner: the planning model of :mod:`.plan` as a MILP, solved by HiGHS.

Variables per candidate (layer ``l``, expert ``e`` with ``need > 0``): ``x`` (pinned) and ``y``
(streamed) binary; per layer ``z_l >= 0`` the time layer ``l − 1``'s window takes. ::

    min  Σ_{l,e} t·need[l,e]·(1 − x − y)  +  Σ_l z_l
    s.t. x[l,e] + y[l,e] <= 1
         z_l >= C_{l−1},   z_l >= t · Σ_e y[l,e]
         Σ x + Σ_e y[l,e] + Σ_e y[l+1,e] <= K        (every l, cyclic; one layer: Σ x <= K, y = 0)

It starts from the greedy plan (same ``K``: the slots left after greedy's spare) and returns the better
of the two, so its objective is never worse than greedy's. Meant for small instances (hundreds of
candidates); the time limit stops it with the incumbent (status ``feasible``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ..errors import OffloadError
from .greedy import plan_greedy
from .plan import OffloadPlan, build_schedule, planning_objective_us
from .problem import GroupForecast, OffloadProblem


def plan_exact(problem: OffloadProblem, fc: GroupForecast, time_limit_s: float = 10.0, mip_rel_gap: float = 1e-6,
               spare_slots: int | None = None) -> OffloadPlan:
    """The MILP plan (module docstring) for a forecast; ``spare_slots`` as :func:`.greedy.plan_greedy`."""
    import highspy

    if not (isinstance(time_limit_s, (int, float)) and math.isfinite(time_limit_s) and time_limit_s > 0):
        raise OffloadError(f"time_limit_s must be a finite number > 0, got {time_limit_s!r}")
    base = plan_greedy(problem, fc, spare_slots)
    big_l, big_e = fc.need.shape
    slots = problem.cache_slots - base.spare_slots
    t = problem.load_us
    cand = np.argwhere(fc.need > 0)  # [N, 2] (layer, expert)
    n = cand.shape[0]
    # columns: x[0..n), y[n..2n), z[2n..2n+L)
    ncols = 2 * n + big_l
    p = fc.need[cand[:, 0], cand[:, 1]]
    c = np.concatenate([-t * p, -t * p, np.ones(big_l)])
    col_lo = np.concatenate([np.zeros(2 * n), np.roll(fc.layer_us, 1)])
    col_hi = np.concatenate([np.ones(n), np.ones(n) if big_l >= 2 else np.zeros(n), np.full(big_l, np.inf)])
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    idx = np.arange(n)
    rows += [r + idx, r + idx]
    cols += [idx, n + idx]
    vals += [np.ones(n), np.ones(n)]
    lo.append(np.full(n, -np.inf))
    hi.append(np.ones(n))
    r += n
    for lay in range(big_l):  # z_l - t Σ y[l, ·] >= 0
        mine = np.flatnonzero(cand[:, 0] == lay)
        rows += [np.full(mine.size + 1, r)]
        cols += [np.concatenate([n + mine, [2 * n + lay]])]
        vals += [np.concatenate([np.full(mine.size, -t), [1.0]])]
        lo.append([0.0])
        hi.append([np.inf])
        r += 1
    pairs = [(lay, (lay + 1) % big_l) for lay in range(big_l if big_l > 2 else 1)]
    for a, b in pairs:  # Σ x + Σ y[a] + Σ y[b] <= K (one row when L <= 2)
        ys = np.flatnonzero((cand[:, 0] == a) | (cand[:, 0] == b))
        rows += [np.full(n + ys.size, r)]
        cols += [np.concatenate([idx, n + ys])]
        vals += [np.ones(n + ys.size)]
        lo.append([-np.inf])
        hi.append([float(slots)])
        r += 1
    A = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, ncols))
    inf = highspy.kHighsInf
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    h.setOptionValue("threads", 1)
    integrality = np.concatenate([np.ones(2 * n, np.int32), np.zeros(big_l, np.int32)])
    h.passModel(ncols, r, A.nnz, 1, 1, float(t * p.sum()), c, col_lo, np.where(np.isinf(col_hi), inf, col_hi),
                np.where(np.isinf(np.concatenate(lo)), -inf, np.concatenate(lo)),
                np.where(np.isinf(np.concatenate(hi)), inf, np.concatenate(hi)),
                A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data, integrality)
    h.run()
    info = h.getInfo()
    optimal = h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    if info.primal_solution_status != 2:  # no feasible point (time limit before one): keep greedy's
        return _relabel(base, "feasible", f"MILP found no point within {time_limit_s:g} s; greedy's plan")
    x = np.asarray(h.getSolution().col_value)
    pinned = np.zeros((big_l, big_e), bool)
    stream = np.zeros((big_l, big_e), bool)
    pinned[cand[:, 0], cand[:, 1]] = x[:n] > 0.5
    stream[cand[:, 0], cand[:, 1]] = (x[n:2 * n] > 0.5) & ~pinned[cand[:, 0], cand[:, 1]]
    obj = planning_objective_us(problem, fc, pinned, stream)
    status = "optimal" if optimal else "feasible"
    gap = f"MILP {'optimal' if optimal else 'stopped at the time limit'} (objective {obj:.1f} us, bound {info.mip_dual_bound:.1f} us)"
    if obj >= base.objective_us:  # keep greedy's on ties: same objective, known-good loads
        return _relabel(base, status, gap + "; greedy's plan is as good")
    return OffloadPlan(schedule=build_schedule(problem, fc, pinned, stream), pinned=pinned, stream=stream, objective_us=obj,
                       group=fc.group, tokens=base.tokens, solver="exact", status=status, message=gap,
                       spare_slots=base.spare_slots)


def _relabel(plan: OffloadPlan, status: str, message: str) -> OffloadPlan:
    return OffloadPlan(schedule=plan.schedule, pinned=plan.pinned, stream=plan.stream, objective_us=plan.objective_us,
                       group=plan.group, tokens=plan.tokens, solver="exact", status=status, message=message,
                       spare_slots=plan.spare_slots)
