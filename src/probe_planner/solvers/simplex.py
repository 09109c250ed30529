"""A small dense bounded-variable primal simplex, compiled: the exact LP solver for the planner's
small per-layer LPs (the token split of a fixed placement, :mod:`.split_lp`) where HiGHS's fixed
cost (~1.5 ms to set up even a 100-row LP here) is more than the time a layer has.

Problem: ``min c·x`` s.t. ``row_lo ≤ A x ≤ row_hi``, ``col_lo ≤ x ≤ col_hi`` with every
``col_lo`` finite. Each row gets a variable ``r_i = A_i x`` bounded by the row's bounds, and an
artificial for phase 1 when the start (every ``x`` at its lower bound) breaks the row. The tableau
is dense ``[m, n + 2m]``: meant for m up to a few hundred rows (one pivot is one pass over it).
Dantzig pricing; after a run of degenerate pivots Bland's rule for the entering variable (smallest
index) until progress. Ratio-test ties go to the larger pivot, so cycling is not ruled out in
theory: the iteration cap ends it (the LP then reports ITERATION_LIMIT and the caller falls back).
"""

from __future__ import annotations

import numba as nb
import numpy as np

OPTIMAL, INFEASIBLE, UNBOUNDED, ITERATION_LIMIT = 0, 1, 2, 3
_PIVOT_TOL = 1e-9
_STALL = 50  # degenerate pivots in a row before Bland's rule


@nb.njit(cache=True, nogil=True)
def _iterate(tab, d, xb, basis, val, lo, hi, is_basic, tol, max_iter):
    """Primal simplex iterations on tableau ``tab`` (``[m, ncol]``, ``B^-1 [A | -I | art]``) with
    reduced costs ``d``; ``val`` holds the nonbasic variables' values (at a bound), ``xb`` the basic
    ones. Returns (status, iterations)."""
    m, ncol = tab.shape
    stall = 0
    it = 0
    while it < max_iter:
        it += 1
        bland = stall >= _STALL
        enter = -1
        best = 0.0
        for j in range(ncol):
            if is_basic[j] or hi[j] - lo[j] <= 0.0:
                continue
            dj = d[j]
            at_lo = val[j] <= lo[j]
            if (at_lo and dj < -tol) or (not at_lo and dj > tol):
                if bland:
                    enter = j
                    break
                if abs(dj) > best:
                    best = abs(dj)
                    enter = j
        if enter < 0:
            return OPTIMAL, it
        sign = 1.0 if val[enter] <= lo[enter] else -1.0
        theta = hi[enter] - lo[enter]  # a bound flip
        leave = -1
        leave_piv = 0.0
        for i in range(m):
            a = tab[i, enter] * sign
            if a > _PIVOT_TOL:
                b = basis[i]
                lim = (xb[i] - lo[b]) / a
            elif a < -_PIVOT_TOL:
                b = basis[i]
                lim = (hi[b] - xb[i]) / -a
            else:
                continue
            if lim < 0.0:
                lim = 0.0
            if lim < theta - 1e-12:
                theta = lim
                leave = i
                leave_piv = abs(a)
            elif lim <= theta + 1e-12 and abs(a) > leave_piv:  # a tie: the larger pivot is the stabler one
                theta = min(theta, lim)
                leave = i
                leave_piv = abs(a)
        if theta == np.inf:
            return UNBOUNDED, it
        stall = stall + 1 if theta <= 1e-12 else 0
        if theta > 0.0:
            for i in range(m):
                xb[i] -= sign * theta * tab[i, enter]
        if leave < 0:  # the entering variable reaches its other bound
            val[enter] = hi[enter] if sign > 0 else lo[enter]
            continue
        out = basis[leave]
        entering_value = val[enter] + sign * theta
        # the leaving variable sits at the bound it reached
        a = tab[leave, enter] * sign
        val[out] = lo[out] if a > 0 else hi[out]
        is_basic[out] = False
        basis[leave] = enter
        is_basic[enter] = True
        xb[leave] = entering_value
        piv = tab[leave, enter]
        row = tab[leave]
        for k in range(ncol):
            row[k] /= piv
        for i in range(m):
            if i != leave:
                f = tab[i, enter]
                if f != 0.0:
                    ti = tab[i]
                    for k in range(ncol):
                        ti[k] -= f * row[k]
        f = d[enter]
        for k in range(ncol):
            d[k] -= f * row[k]
    return ITERATION_LIMIT, it


@nb.njit(cache=True, nogil=True)
def _reduced_costs(tab, cost, basis):
    m, ncol = tab.shape
    d = cost.copy()
    for i in range(m):
        cb = cost[basis[i]]
        if cb != 0.0:
            for k in range(ncol):
                d[k] -= cb * tab[i, k]
    return d


@nb.njit(cache=True, nogil=True)
def solve_dense(A, row_lo, row_hi, col_lo, col_hi, cost, tol=1e-9, max_iter=100000):
    """``min cost·x`` s.t. ``row_lo ≤ A x ≤ row_hi``, ``col_lo ≤ x ≤ col_hi`` (``col_lo`` finite).
    Returns ``(status, x, objective, iterations)``; ``x`` is meaningful when status is OPTIMAL."""
    m, n = A.shape
    ncol = n + 2 * m
    lo = np.empty(ncol)
    hi = np.empty(ncol)
    val = np.empty(ncol)
    lo[:n] = col_lo
    hi[:n] = col_hi
    val[:n] = col_lo
    ax = A @ col_lo if m > 0 else np.zeros(0)
    tab = np.zeros((m, ncol))
    basis = np.empty(m, np.int64)
    xb = np.empty(m)
    is_basic = np.zeros(ncol, np.bool_)
    for i in range(m):
        r = n + i
        art = n + m + i
        lo[r] = row_lo[i]
        hi[r] = row_hi[i]
        v = ax[i]
        if v < row_lo[i]:
            rv = row_lo[i]
        elif v > row_hi[i]:
            rv = row_hi[i]
        else:
            rv = v
        resid = v - rv  # A x - r - s·a = 0 with a = |resid| >= 0
        if resid == 0.0:
            # basic r_i: the row A x - r = 0 divided by its basic coefficient -1
            for k in range(n):
                tab[i, k] = -A[i, k]
            tab[i, r] = 1.0
            basis[i] = r
            xb[i] = v
            is_basic[r] = True
            lo[art] = 0.0
            hi[art] = 0.0
            val[art] = 0.0
        else:
            s = 1.0 if resid > 0 else -1.0
            # basic artificial (coefficient -s): divide the row by -s
            for k in range(n):
                tab[i, k] = -A[i, k] / s
            tab[i, r] = 1.0 / s
            tab[i, art] = 1.0
            basis[i] = art
            xb[i] = abs(resid)
            is_basic[art] = True
            val[r] = rv
            lo[art] = 0.0
            hi[art] = np.inf
            val[art] = 0.0
    iters = 0
    phase1 = np.zeros(ncol)
    phase1[n + m:] = 1.0
    if np.any(is_basic[n + m:]):
        d = _reduced_costs(tab, phase1, basis)
        status, it = _iterate(tab, d, xb, basis, val, lo, hi, is_basic, tol, max_iter)
        iters += it
        if status != OPTIMAL:
            return status, np.zeros(n), np.inf, iters
        infeas = 0.0
        for i in range(m):
            if basis[i] >= n + m:
                infeas += xb[i]
        scale = 1.0
        for i in range(m):
            scale = max(scale, abs(row_lo[i]) if np.isfinite(row_lo[i]) else 0.0,
                        abs(row_hi[i]) if np.isfinite(row_hi[i]) else 0.0)
        if infeas > 1e-7 * scale:
            return INFEASIBLE, np.zeros(n), np.inf, iters
    for i in range(m):  # artificials are done: fixed at 0 (a basic one leaves at the next touch)
        hi[n + m + i] = 0.0
        if not is_basic[n + m + i]:
            val[n + m + i] = 0.0
    full = np.zeros(ncol)
    full[:n] = cost
    d = _reduced_costs(tab, full, basis)
    status, it = _iterate(tab, d, xb, basis, val, lo, hi, is_basic, tol, max_iter - iters)
    iters += it
    x = val[:n].copy()
    for i in range(m):
        if basis[i] < n:
            x[basis[i]] = xb[i]
    x = np.minimum(np.maximum(x, col_lo), col_hi)
    return status, x, float(cost @ x), iters
