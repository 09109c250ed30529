"""The HABP layer model written plainly in cvxpy, line for line with docs/formulation.md ("Exact
form"), to cross-check the hand-built sparse matrices. Relaxed (z, a in [0, 1]) it is the LP whose
value lower-bounds the MILP; with fixed hosts it is the token-assignment LP."""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from probe_planner.cost import CostParams
from probe_planner.topology import Topology


def reference_lp_value(loads: np.ndarray, topo: Topology, windows_us: np.ndarray, fixed_hosts: np.ndarray | None = None) -> float:
    p = CostParams.from_topology(topo)
    G, E = loads.shape
    node = topo.node_of
    N = topo.native
    n_e = loads.sum(axis=0)
    link = lambda s, r: "intra" if node[s] == node[r] else "inter"  # noqa: E731
    tau = {"intra": p.tok_intra_us, "inter": p.tok_inter_us}
    kappa = {"intra": p.copy_intra_us, "inter": p.copy_inter_us}

    # copies (e, u, r): from a native host u to a non-host r, fitting both windows on its own
    copies = [] if fixed_hosts is not None or topo.slots == 0 else [
        (e, u, r) for e in range(E) if n_e[e] > 0 for u in range(G) if N[u, e] for r in range(G)
        if not N[r, e] and kappa[link(u, r)] <= min(windows_us[r], windows_us[u]) * (1 + 1e-9) + 1e-9]
    z = {c: cp.Variable(nonneg=True) for c in copies}
    host = N | (fixed_hosts if fixed_hosts is not None else False)
    for e, _, r in copies:
        host[r, e] = True
    H = [(e, r) for e in range(E) if n_e[e] > 0 for r in range(G) if host[r, e]]
    a = {h: cp.Variable(nonneg=True) for h in H}
    t = {h: cp.Variable(nonneg=True) for h in H}
    y = {(s, e, r): cp.Variable(nonneg=True) for s in range(G) for e in range(E) if loads[s, e] > 0
         for r in range(G) if (e, r) in a}
    Tm, Tc = cp.Variable(), cp.Variable()
    cons = []
    for (e, r) in H:
        proc = sum(y[s, e, r] for s in range(G) if (s, e, r) in y)
        copied = sum(z[c] for c in copies if c[0] == e and c[2] == r)
        cons += [a[e, r] <= 1, proc <= n_e[e] * a[e, r], t[e, r] >= p.alpha_us * proc, t[e, r] >= p.beta_us * a[e, r]]
        cons += [y[s, e, r] <= loads[s, e] * a[e, r] for s in range(G) if (s, e, r) in y] if fixed_hosts is None else []
        if fixed_hosts is not None:
            cons.append(a[e, r] == 1)
        elif not N[r, e]:
            cons += [a[e, r] <= copied, copied <= 1]
    for s in range(G):
        for e in range(E):
            if loads[s, e] > 0:
                cons.append(sum(y[s, e, r] for r in range(G) if (s, e, r) in y) == loads[s, e])
    for r in range(G):
        cons.append(Tc >= sum(t[e, r] for e in range(E) if (e, r) in t))
        for k in ("intra", "inter"):
            v_in = [y[s, e, r] for (s, e, rr) in y if rr == r and s != r and link(s, r) == k]
            v_out = [y[s, e, d] for (s, e, d) in y if s == r and d != r and link(s, d) == k]
            cons += [Tm >= tau[k] * sum(v_in)] if v_in else []
            cons += [Tm >= tau[k] * sum(v_out)] if v_out else []
            c_in = [z[c] for c in copies if c[2] == r and link(c[1], r) == k]
            c_out = [z[c] for c in copies if c[1] == r and link(r, c[2]) == k]
            fit = np.floor(windows_us[r] / kappa[k] * (1 + 1e-9) + 1e-9)  # copies over k that fit the window
            cons += [sum(c_in) <= fit] if c_in and np.isfinite(windows_us[r]) else []
            cons += [sum(c_out) <= fit] if c_out and np.isfinite(windows_us[r]) else []
        slots = [z[c] for c in copies if c[2] == r]
        cons += [sum(slots) <= topo.slots] if slots else []
    cons += [Tm >= 0, Tc >= 0]
    prob = cp.Problem(cp.Minimize(2 * Tm + Tc), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return float(prob.value)
