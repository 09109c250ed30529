"""Exact long-lived placement of one layer for small problems (a MILP solved by HiGHS).

Placement and, per batch, the token routing are chosen together, each batch routed optimally for the
placement (as the MILP of ``docs/formulation.md`` does for one layer) rather than by the static rule
:func:`probe_planner.place.place` scores with. Any placement's static-rule cost is at least its
optimally routed cost, so the optimum is a **lower bound** on the objective ``place()`` minimizes, and
its placement is one more candidate (``place(..., exact=True)`` scores it by the static rule and keeps
the better). Model, for batches ``t``, ranks ``r, s``, experts ``e`` (``n_t[s, e] > 0`` flows only):

- ``X[r, e] ∈ {0, 1}``: ``Σ_e X[r, e] = S``, ``Σ_r X[r, e] ≥ 1``, ``Σ_{X⁰[r,e]=0} X[r, e] ≤ max_copies``;
- ``a_t[e, r] ∈ {0, 1}`` (host active) ``≤ X[r, e]``; flows ``y_t[s, e, r] ≥ 0``, ``Σ_r y_t = n_t[s, e]``,
  ``y_t[s, e, r] ≤ n_t[s, e] a_t[e, r]``;
- ``c_t[e, r] ≥ α Σ_s y_t[s, e, r]``, ``c_t[e, r] ≥ β a_t[e, r]`` (the roofline); ``Tc_t ≥ Σ_e c_t[e, r]``;
  ``Tm_t ≥ τ_k V^k_in,t[r]`` and ``≥ τ_k V^k_out,t[r]`` per rank and link kind;
- ``min (1/B) Σ_t (2 Tm_t + Tc_t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..cost import CostParams
from ..solvers.lp_backends import solve_highs
from ..topology import Topology

# Above this many columns the model is not "small": HiGHS would not prove it in seconds.
MAX_COLUMNS = 20_000


@dataclass
class _Model:
    """The array form :func:`probe_planner.solvers.lp_backends.solve_highs` takes."""

    c: np.ndarray
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray

    @property
    def num_cols(self) -> int:
        return self.c.shape[0]


def model_columns(batches: np.ndarray) -> int:
    """Columns of the model for ``batches [B, G, E]`` (compare with :data:`MAX_COLUMNS`)."""
    B, G, E = batches.shape
    return G * E + int((batches > 0).sum()) * G + 2 * B * E * G + 2 * B


def exact_layer(batches: np.ndarray, topo: Topology, slots: int, current: np.ndarray, max_copies: int,
                time_limit_s: float) -> tuple[np.ndarray | None, float, str]:
    """``(hosts [G, E] or None, lower bound µs, status)`` for one layer's ``batches [B, G, E]`` with
    ``slots`` experts per rank and at most ``max_copies`` pairs outside ``current [G, E]``; status is
    HiGHS's ("optimal", "feasible", "none", "infeasible")."""
    B, G, E = batches.shape
    p = CostParams.from_topology(topo)
    node = topo.node_of
    cols_lo, cols_hi, integer, cost = [], [], [], []

    def new(n, lo, hi, integral, c=0.0):
        start = sum(len(x) for x in cols_lo)
        cols_lo.append(np.full(n, lo, float))
        cols_hi.append(np.full(n, hi, float))
        integer.append(np.full(n, integral))
        cost.append(np.full(n, c, float))
        return start

    x0 = new(G * E, 0.0, 1.0, True)  # X[r, e] at x0 + r * E + e
    rows_r, rows_c, rows_v, lo, hi = [], [], [], [], []

    def row(cols, vals, rlo, rhi):
        rows_r.append(np.full(len(cols), len(lo)))
        rows_c.append(np.asarray(cols, np.int64))
        rows_v.append(np.asarray(vals, float))
        lo.append(rlo)
        hi.append(rhi)

    for r in range(G):
        row(x0 + r * E + np.arange(E), np.ones(E), slots, slots)
    for e in range(E):
        row(x0 + np.arange(G) * E + e, np.ones(G), 1.0, np.inf)
    new_pairs = np.flatnonzero(~current.reshape(-1))
    if new_pairs.size:
        row(x0 + new_pairs, np.ones(new_pairs.size), -np.inf, float(max_copies))
    for t in range(B):
        n = batches[t]
        a0 = new(E * G, 0.0, 1.0, True)  # a_t[e, r] at a0 + e * G + r
        c0 = new(E * G, 0.0, np.inf, False)
        tm = new(1, 0.0, np.inf, False, 2.0 / B)
        tc = new(1, 0.0, np.inf, False, 1.0 / B)
        s_idx, e_idx = np.nonzero(n > 0)
        y0 = new(len(s_idx) * G, 0.0, np.inf, False)  # y_t[s, e, r] at y0 + q * G + r for pair q
        for e in range(E):
            for r in range(G):
                row([a0 + e * G + r, x0 + r * E + e], [1.0, -1.0], -np.inf, 0.0)
                row([c0 + e * G + r, a0 + e * G + r], [1.0, -p.beta_us], 0.0, np.inf)
        proc = [[[] for _ in range(G)] for _ in range(E)]  # y columns into (e, r)
        v_in = [[[], []] for _ in range(G)]
        v_out = [[[], []] for _ in range(G)]
        for q, (s, e) in enumerate(zip(s_idx.tolist(), e_idx.tolist(), strict=True)):
            ys = y0 + q * G + np.arange(G)
            row(ys, np.ones(G), n[s, e], n[s, e])
            for r in range(G):
                row([ys[r], a0 + e * G + r], [1.0, -n[s, e]], -np.inf, 0.0)
                proc[e][r].append(ys[r])
                if r != s:
                    k = 0 if node[r] == node[s] else 1
                    v_in[r][k].append(ys[r])
                    v_out[s][k].append(ys[r])
        for e in range(E):
            for r in range(G):
                cols = proc[e][r]
                row([c0 + e * G + r, *cols], [1.0, *([-p.alpha_us] * len(cols))], 0.0, np.inf)
        for r in range(G):
            row([tc, *(c0 + np.arange(E) * G + r)], [1.0, *([-1.0] * E)], 0.0, np.inf)
            for k, tau in ((0, p.tok_intra_us), (1, p.tok_inter_us)):
                for vol in (v_in[r][k], v_out[r][k]):
                    if vol:
                        row([tm, *vol], [1.0, *([-tau] * len(vol))], 0.0, np.inf)
    ncols = sum(len(x) for x in cols_lo)
    A = sp.csr_matrix((np.concatenate(rows_v), (np.concatenate(rows_r), np.concatenate(rows_c))), shape=(len(lo), ncols))
    m = _Model(np.concatenate(cost), A, np.array(lo, float), np.array(hi, float), np.concatenate(cols_lo),
               np.concatenate(cols_hi), np.concatenate(integer))
    sol = solve_highs(m, time_limit_s)
    hosts = None if sol.x is None else sol.x[x0:x0 + G * E].reshape(G, E) > 0.5
    return hosts, sol.bound, sol.status
