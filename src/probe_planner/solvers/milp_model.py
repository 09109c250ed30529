"""The HABP mixed-integer model of one layer as plain sparse matrices (docs/formulation.md, "Exact").

Built once, handed to any backend (HiGHS, OR-Tools) or relaxed to an LP. Variables:

- ``z[c]`` binary, one per candidate copy ``c = (e, u, r)``: copy expert ``e`` from native host ``u``
  to rank ``r``; candidates are pruned to pairs whose single copy fits both windows.
- ``y[f]`` >= 0, one per flow ``f = (s, e, r)``: tokens of source ``s`` for ``e`` processed on ``r``
  (every source with tokens of ``e`` x every possible host of ``e``).
- ``a[h]`` binary and ``t[h]`` >= 0 per possible host ``h = (e, r)``: ``r`` runs ``e`` (pays the
  weight-streaming floor) and its roofline compute time.
- ``Tm`` (one all-to-all phase) and ``Tc`` (compute phase) epigraph variables.

Objective ``2·Tm + Tc``. With ``fixed`` hosts the copies are constants and every host is active, so
the model is the token-assignment LP (LPLB's problem).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from ..cost import CostParams
from ..topology import Topology
from ..window import copies_fit_np, copies_that_fit


@dataclass
class LayerModel:
    """``min c·v  s.t.  row_lo <= A v <= row_hi,  col_lo <= v <= col_hi,  v[integer] integral``."""

    c: np.ndarray
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray  # bool per column
    copies: np.ndarray  # [C, 3] (expert, src, dst) for the z columns
    flows: np.ndarray | None  # [F, 3] (src, expert, dst) for the y columns; None in the node form
    hosts: np.ndarray  # [H, 2] (expert, rank) for the a and t columns
    z0: int
    y0: int
    a0: int
    t0: int
    tm: int
    tc: int
    l0: int = -1  # node forms: local-token columns l[h] follow the processed-token columns p[h]
    w0: int = -1  # multi-node node form: intra-/inter-node received w[h], v[h] (v0 = w0 + H) ...
    oa0: int = -1  # ... and per (source, expert) pair intra/inter sends oa[q], ob[q] (ob0 = oa0 + P)
    pairs: np.ndarray | None = None  # [P, 2] (source, expert) for oa/ob
    replica_rows: tuple[int, int] = (0, 0)  # rows a[e, r] - Σ_u z[e, u, r] <= 0 of the replica hosts

    @property
    def num_cols(self) -> int:
        return self.c.shape[0]


class _Rows:
    """Accumulates sparse rows ``lo <= Σ coef·v <= hi``."""

    def __init__(self) -> None:
        self.r, self.c, self.v, self.lo, self.hi = [], [], [], [], []
        self.n = 0

    def add(self, cols: np.ndarray, vals: np.ndarray, row_ids: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Add ``len(lo)`` rows; entry i goes to new row ``row_ids[i]`` (0-based within this batch)."""
        self.r.append(np.asarray(row_ids, dtype=np.int64) + self.n)
        self.c.append(np.asarray(cols, dtype=np.int64))
        self.v.append(np.asarray(vals, dtype=np.float64))
        self.lo.append(np.asarray(lo, dtype=np.float64))
        self.hi.append(np.asarray(hi, dtype=np.float64))
        self.n += len(self.lo[-1])

    def matrix(self, ncols: int):
        r, c, v = (np.concatenate(x) if x else np.zeros(0) for x in (self.r, self.c, self.v))
        A = sp.csr_matrix((v, (r.astype(np.int64), c.astype(np.int64))), shape=(self.n, ncols))
        return A, np.concatenate(self.lo), np.concatenate(self.hi)


def candidate_copies(topo: Topology, windows_us: np.ndarray, params: CostParams) -> np.ndarray:
    """``[C, 3]`` (expert, src, dst) copies that fit a slot and both windows on their own."""
    if topo.slots == 0:
        return np.zeros((0, 3), dtype=np.int64)
    native = topo.native
    e_idx, u_idx = np.nonzero(native.T)  # native hosts of each expert
    g = topo.num_ranks
    e_c = np.repeat(e_idx, g)
    u_c = np.repeat(u_idx, g)
    r_c = np.tile(np.arange(g), e_idx.size)
    node = topo.node_of
    unit = np.where(node[u_c] == node[r_c], params.copy_intra_us, params.copy_inter_us)
    keep = ~native[r_c, e_c] & copies_fit_np(1.0, unit, windows_us[r_c]) & copies_fit_np(1.0, unit, windows_us[u_c])
    return np.stack([e_c[keep], u_c[keep], r_c[keep]], axis=1)


def build_layer_model(loads: np.ndarray, topo: Topology, windows_us: np.ndarray, params: CostParams,
                      fixed_hosts: np.ndarray | None = None, integral_flows: bool = False,
                      form: str = "auto") -> LayerModel:
    """The layer's MILP (``fixed_hosts=None``) or, for a ``[G, E]`` host mask, its token LP.

    loads: ``[G, E]`` tokens of one layer. ``integral_flows``: whole tokens (exact for integral
    loads; otherwise flows are continuous and the model is a relaxation of the integral problem).
    form: ``"flow"`` (per-source flows, any cluster), ``"node"`` (per-host processed and local
    tokens, exact on a single node and several times smaller) or ``"auto"`` (node form on one node).
    """
    if form == "auto":
        form = "node" if topo.num_nodes == 1 or _node_form_smaller(loads, topo, windows_us, params, fixed_hosts) else "flow"
    if form == "node":
        if topo.num_nodes == 1:
            return _build_node_model(loads, topo, windows_us, params, fixed_hosts, integral_flows)
        return _build_multinode_model(loads, topo, windows_us, params, fixed_hosts, integral_flows)
    if form != "flow":
        raise ValueError(f"form must be 'flow', 'node' or 'auto', got {form!r}")
    g, e_all = loads.shape
    node = topo.node_of
    n_e = loads.sum(axis=0)
    copies, hosts, host_id = _copies_and_hosts(topo, windows_us, params, n_e, fixed_hosts)
    h_e, h_r = hosts.T
    # flows: every source with tokens of e x every possible host of e
    s_idx, e_idx = np.nonzero(loads)
    per = np.bincount(h_e, minlength=e_all)[e_idx]
    f_s = np.repeat(s_idx, per)
    f_e = np.repeat(e_idx, per)
    starts = np.concatenate([[0], np.cumsum(np.bincount(h_e, minlength=e_all))])
    offs = np.arange(f_e.size) - np.repeat(np.cumsum(per) - per, per)
    f_h = starts[f_e] + offs
    f_r = h_r[f_h]
    flows = np.stack([f_s, f_e, f_r], axis=1)

    C, F, H = copies.shape[0], flows.shape[0], hosts.shape[0]
    z0, y0, a0 = 0, C, C + F
    t0, tm, tc, c, col_lo, col_hi, integer = _columns(a0, C, H, fixed_hosts is not None)
    integer[y0:a0] = integral_flows and fixed_hosts is None
    ncols = c.size
    rows = _Rows()

    # conservation: Σ_r y[s, e, r] = n[s, e]
    pair = np.unique(f_s * e_all + f_e, return_inverse=True)[1]
    rhs = loads[s_idx, e_idx]  # np.nonzero order == sorted (s, e) order == unique order
    rows.add(y0 + np.arange(F), np.ones(F), pair, rhs, rhs)
    # activation: Σ_s y[s, e, r] - n_e a[e, r] <= 0
    rows.add(np.concatenate([y0 + np.arange(F), a0 + np.arange(H)]),
             np.concatenate([np.ones(F), -n_e[h_e]]),
             np.concatenate([f_h, np.arange(H)]), np.full(H, -np.inf), np.zeros(H))
    # the same per source, y[s, e, r] <= n[s, e] a[e, r]: redundant for integral a, much tighter LP
    if fixed_hosts is None:
        rows.add(np.concatenate([y0 + np.arange(F), a0 + f_h]),
                 np.concatenate([np.ones(F), -loads[f_s, f_e]]),
                 np.concatenate([np.arange(F), np.arange(F)]), np.full(F, -np.inf), np.zeros(F))
    # roofline: t >= alpha Σ_s y ; t >= beta a
    rows.add(np.concatenate([t0 + np.arange(H), y0 + np.arange(F)]),
             np.concatenate([np.ones(H), -params.alpha_us * np.ones(F)]),
             np.concatenate([np.arange(H), f_h]), np.zeros(H), np.full(H, np.inf))
    rows.add(np.concatenate([t0 + np.arange(H), a0 + np.arange(H)]),
             np.concatenate([np.ones(H), -params.beta_us * np.ones(H)]),
             np.concatenate([np.arange(H), np.arange(H)]), np.zeros(H), np.full(H, np.inf))
    # compute phase: Tc >= Σ_e t[e, r] for every rank
    rows.add(np.concatenate([np.full(g, tc), t0 + np.arange(H)]),
             np.concatenate([np.ones(g), -np.ones(H)]),
             np.concatenate([np.arange(g), h_r]), np.zeros(g), np.full(g, np.inf))
    # all-to-all: Tm >= tau_k V^k_in[r] and Tm >= tau_k V^k_out[s]
    remote = f_s != f_r
    inter = (node[f_s] != node[f_r]).astype(np.int64)
    tau = np.where(inter == 1, params.tok_inter_us, params.tok_intra_us)
    fr = np.flatnonzero(remote)
    for rank in (f_r, f_s):  # receivers, then senders
        row = rank[fr] * 2 + inter[fr]  # one row per (rank, link kind)
        rows.add(np.concatenate([np.full(2 * g, tm), y0 + fr]),
                 np.concatenate([np.ones(2 * g), -tau[fr]]),
                 np.concatenate([np.arange(2 * g), row]), np.zeros(2 * g), np.full(2 * g, np.inf))
    rep_rows = _copy_rows(rows, topo, windows_us, params, copies, host_id, z0, a0)
    A, row_lo, row_hi = rows.matrix(ncols)
    return LayerModel(c=c, A=A, row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi, integer=integer,
                      copies=copies, flows=flows, hosts=hosts, z0=z0, y0=y0, a0=a0, t0=t0, tm=tm, tc=tc,
                      replica_rows=rep_rows)


def copies_active(m: LayerModel) -> LayerModel:
    """The same model with every copy an active host (``a[e, r] = Σ_u z[e, u, r]``): an idle copy is
    never better than none (dropping it only frees a slot and windows), so the optimum and every LP
    bound stay valid. Measured: the LP relaxation 20-40% faster (64x8 and 128x8, same value); the
    MILP's proof times mixed (-40% to +165% per 64x8 layer), so the MILP keeps the inequality."""
    lo = m.row_lo.copy()
    lo[m.replica_rows[0]:m.replica_rows[1]] = 0.0
    return replace(m, row_lo=lo)


def _form_columns(loads, topo, windows_us, params, fixed_hosts) -> tuple[int, int]:
    """``(flow form, node form)`` column counts, without building either. Across nodes the node
    form has ~6 columns per possible host and 2 per (source, expert), the flow form one per (source,
    possible host) pair: few hosts per expert favour the flow form."""
    n_e = loads.sum(axis=0)
    copies, hosts, _ = _copies_and_hosts(topo, windows_us, params, n_e, fixed_hosts)
    per_expert = np.bincount(hosts[:, 0], minlength=loads.shape[1])
    sources = np.count_nonzero(loads, axis=0)
    C, H = copies.shape[0], hosts.shape[0]
    flow = C + int((sources * per_expert).sum()) + 2 * H + 2
    node = C + 4 * H + 2 if topo.num_nodes == 1 else C + 6 * H + 2 * int(sources.sum()) + int((n_e > 0).sum()) + 2
    return flow, node


def _node_form_smaller(loads, topo, windows_us, params, fixed_hosts) -> bool:
    flow, node = _form_columns(loads, topo, windows_us, params, fixed_hosts)
    return node < flow


def model_columns(loads: np.ndarray, topo: Topology, windows_us: np.ndarray, params: CostParams,
                  fixed_hosts: np.ndarray | None = None) -> int:
    """Columns of the model ``build_layer_model(..., form="auto")`` would build."""
    flow, node = _form_columns(loads, topo, windows_us, params, fixed_hosts)
    return node if topo.num_nodes == 1 else min(flow, node)


def _columns(a0: int, C: int, H: int, token_lp: bool):
    """The layout both forms share: copies ``z`` at 0..C (binary), the form's token columns up to
    ``a0``, then ``a`` (binary; fixed to 1 in the token LP) and ``t`` per host, then ``Tm``, ``Tc``.
    Returns ``(t0, tm, tc, cost, col_lo, col_hi, integer)``."""
    t0 = a0 + H
    tm, tc = t0 + H, t0 + H + 1
    ncols = tc + 1
    c = np.zeros(ncols)
    c[tm], c[tc] = 2.0, 1.0
    col_lo = np.zeros(ncols)
    col_hi = np.full(ncols, np.inf)
    col_hi[:C] = 1.0
    col_hi[a0:t0] = 1.0
    integer = np.zeros(ncols, dtype=bool)
    if token_lp:  # every host active
        col_lo[a0:t0] = 1.0
    else:
        integer[:C] = True
        integer[a0:t0] = True
    return t0, tm, tc, c, col_lo, col_hi, integer


def _copies_and_hosts(topo, windows_us, params, n_e, fixed_hosts):
    """Candidate copies ``[C, 3]``, possible hosts ``[H, 2]`` (expert, rank) of experts with tokens,
    sorted by expert then rank, and ``host_id [E, G]`` (their index, -1 elsewhere)."""
    if fixed_hosts is None:
        copies = candidate_copies(topo, windows_us, params)
        copies = copies[n_e[copies[:, 0]] > 0]  # copying an idle expert never helps
        possible = topo.native.copy()
        possible[copies[:, 2], copies[:, 0]] = True
    else:
        copies = np.zeros((0, 3), dtype=np.int64)
        possible = np.asarray(fixed_hosts, dtype=bool) | topo.native
    h_e, h_r = np.nonzero((possible & (n_e > 0)[None, :]).T)
    host_id = -np.ones(possible.T.shape, dtype=np.int64)
    host_id[h_e, h_r] = np.arange(h_e.size)
    return copies, np.stack([h_e, h_r], axis=1), host_id


def _copy_rows(rows: _Rows, topo, windows_us, params, copies, host_id, z0, a0) -> tuple[int, int]:
    """Replica hosts active only when copied, one copy per (expert, rank), slots, both windows.
    Returns the row range of the replica-host rows."""
    g = topo.num_ranks
    node = topo.node_of
    C = copies.shape[0]
    if C:
        ce, cu, cr = copies.T
        # replica hosts are active only when copied: a[e, r] - Σ_u z[e, u, r] <= 0 (and one copy each)
        hid = host_id[ce, cr]
        rep_hosts = np.unique(hid[hid >= 0])
        nr = rep_hosts.size
        rid = np.searchsorted(rep_hosts, hid)
        m = hid >= 0
        first = rows.n
        rows.add(np.concatenate([a0 + rep_hosts, z0 + np.flatnonzero(m)]),
                 np.concatenate([np.ones(nr), -np.ones(int(m.sum()))]),
                 np.concatenate([np.arange(nr), rid[m]]), np.full(nr, -np.inf), np.zeros(nr))
        pair_er = np.unique(ce * g + cr, return_inverse=True)[1]
        npair = int(pair_er.max()) + 1
        rows.add(z0 + np.arange(C), np.ones(C), pair_er, np.full(npair, -np.inf), np.ones(npair))
        # slots
        rows.add(z0 + np.arange(C), np.ones(C), cr, np.full(g, -np.inf), np.full(g, float(topo.slots)))
        # windows on both ends, per link kind. Every copy over one link kind costs the same, so
        # kappa_k Σ z <= W is Σ z <= floor(W / kappa_k): the same integer points, a tighter LP.
        kinter = (node[cu] != node[cr]).astype(np.int64)
        cap = np.stack([copies_that_fit(u, windows_us, C) for u in (params.copy_intra_us, params.copy_inter_us)],
                       axis=1).ravel().astype(np.float64)  # [G*2]
        for rank in (cr, cu):
            rows.add(z0 + np.arange(C), np.ones(C), rank * 2 + kinter, np.full(2 * g, -np.inf), cap)
        return first, first + nr
    return rows.n, rows.n


def _build_node_model(loads, topo, windows_us, params, fixed_hosts, integral) -> LayerModel:
    """Single-node form. On one node every remote token crosses the same kind of link, so only how
    many tokens each host processes (``p``) and keeps from its own source (``l``) matter:
    ``in[r] = Σ_e (p - l)``, ``out[r] = n_r - Σ_e l``. Any (p, l) with ``l <= min(n[r, e], p)`` is
    routable, and keeping more tokens local never hurts (exchange argument in docs/formulation.md),
    so the form is exact; :func:`node_flows` turns a solution back into per-source routes."""
    g, e_all = loads.shape
    n_e = loads.sum(axis=0)
    copies, hosts, host_id = _copies_and_hosts(topo, windows_us, params, n_e, fixed_hosts)
    h_e, h_r = hosts.T
    C, H = copies.shape[0], hosts.shape[0]
    z0, p0 = 0, C
    l0 = p0 + H
    a0 = l0 + H
    t0, tm, tc, c, col_lo, col_hi, integer = _columns(a0, C, H, fixed_hosts is not None)
    n_loc = loads[h_r, h_e]
    col_hi[l0:a0] = n_loc
    integer[p0:a0] = integral and fixed_hosts is None
    ncols = c.size
    rows = _Rows()
    hh = np.arange(H)
    experts = np.unique(h_e)
    rows.add(p0 + hh, np.ones(H), np.searchsorted(experts, h_e), n_e[experts], n_e[experts])  # Σ_r p = n_e
    neg = np.full(H, -np.inf)
    zero = np.zeros(H)
    pair = np.concatenate([hh, hh])
    rows.add(np.concatenate([p0 + hh, a0 + hh]), np.concatenate([np.ones(H), -n_e[h_e]]), pair, neg, zero)
    rows.add(np.concatenate([p0 + hh, l0 + hh, a0 + hh]),  # remote received <= other sources' tokens
             np.concatenate([np.ones(H), -np.ones(H), -(n_e[h_e] - n_loc)]), np.concatenate([hh, hh, hh]), neg, zero)
    rows.add(np.concatenate([l0 + hh, a0 + hh]), np.concatenate([np.ones(H), -n_loc]), pair, neg, zero)
    rows.add(np.concatenate([l0 + hh, p0 + hh]), np.concatenate([np.ones(H), -np.ones(H)]), pair, neg, zero)
    inf_h = np.full(H, np.inf)
    rows.add(np.concatenate([t0 + hh, p0 + hh]), np.concatenate([np.ones(H), -params.alpha_us * np.ones(H)]), pair, zero, inf_h)
    rows.add(np.concatenate([t0 + hh, a0 + hh]), np.concatenate([np.ones(H), -params.beta_us * np.ones(H)]), pair, zero, inf_h)
    ranks = np.arange(g)
    rows.add(np.concatenate([np.full(g, tc), t0 + hh]), np.concatenate([np.ones(g), -np.ones(H)]),
             np.concatenate([ranks, h_r]), np.zeros(g), np.full(g, np.inf))
    tau = params.tok_intra_us
    rows.add(np.concatenate([np.full(g, tm), p0 + hh, l0 + hh]),  # Tm >= tau in[r]
             np.concatenate([np.ones(g), -tau * np.ones(H), tau * np.ones(H)]),
             np.concatenate([ranks, h_r, h_r]), np.zeros(g), np.full(g, np.inf))
    rows.add(np.concatenate([np.full(g, tm), l0 + hh]),  # Tm >= tau out[r] = tau (n_r - Σ_e l)
             np.concatenate([np.ones(g), tau * np.ones(H)]),
             np.concatenate([ranks, h_r]), tau * loads.sum(axis=1), np.full(g, np.inf))
    rep_rows = _copy_rows(rows, topo, windows_us, params, copies, host_id, z0, a0)
    A, row_lo, row_hi = rows.matrix(ncols)
    return LayerModel(c=c, A=A, row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi, integer=integer,
                      copies=copies, flows=None, hosts=hosts, z0=z0, y0=p0, a0=a0, t0=t0, tm=tm, tc=tc, l0=l0,
                      replica_rows=rep_rows)


def _build_multinode_model(loads, topo, windows_us, params, fixed_hosts, integral) -> LayerModel:
    """Node form across nodes. Per host: processed ``p = l + w + v`` (local, intra-node and
    inter-node received); per (source, expert): ``n = l + oa + ob`` (kept, sent within the node,
    sent to other nodes). Intra sends and receives balance per node; inter sends and receives
    balance per expert, and no node may need more inter traffic than the others can absorb
    (``Σ_{s∈N} ob + Σ_{r∈N} v <= T_e``: the transport's Hall condition). A rank that both sends and
    receives an expert over one link kind can keep its own tokens instead (volumes only drop), so
    every solution routes at no higher cost: the form is exact. Columns: O(G·E·(1 + copies)) instead
    of the flow form's O(G²·E)."""
    g, e_all = loads.shape
    node = topo.node_of
    k_nodes = topo.num_nodes
    n_e = loads.sum(axis=0)
    copies, hosts, host_id = _copies_and_hosts(topo, windows_us, params, n_e, fixed_hosts)
    h_e, h_r = hosts.T
    s_idx, e_idx = np.nonzero(loads)
    pairs = np.stack([s_idx, e_idx], axis=1)
    experts = np.unique(h_e)
    C, H, P, X = copies.shape[0], hosts.shape[0], pairs.shape[0], experts.size
    z0, p0 = 0, C
    l0, w0 = p0 + H, p0 + 2 * H
    v0 = w0 + H
    a0 = v0 + H
    t0, tm, tc, c, col_lo, col_hi, integer = _columns(a0, C, H, fixed_hosts is not None)
    oa0 = tc + 1
    ob0 = oa0 + P
    te0 = ob0 + P
    ncols = te0 + X
    extra = ncols - c.size
    c = np.concatenate([c, np.zeros(extra)])
    col_lo = np.concatenate([col_lo, np.zeros(extra)])
    col_hi = np.concatenate([col_hi, np.full(extra, np.inf)])
    integer = np.concatenate([integer, np.zeros(extra, dtype=bool)])
    n_loc = loads[h_r, h_e]
    col_hi[l0:w0] = n_loc
    whole = integral and fixed_hosts is None
    integer[p0:a0] = whole
    integer[oa0:te0] = whole
    rows = _Rows()
    hh, qq = np.arange(H), np.arange(P)
    ones_h, zero_h, neg_h, inf_h = np.ones(H), np.zeros(H), np.full(H, -np.inf), np.full(H, np.inf)
    x_of_h = np.searchsorted(experts, h_e)
    rows.add(p0 + hh, ones_h, x_of_h, n_e[experts], n_e[experts])  # Σ_r p = n_e
    rows.add(np.concatenate([p0 + hh, l0 + hh, w0 + hh, v0 + hh]),  # p = l + w + v
             np.concatenate([ones_h, -ones_h, -ones_h, -ones_h]), np.tile(hh, 4), zero_h, zero_h)
    pair2 = np.concatenate([hh, hh])
    rows.add(np.concatenate([p0 + hh, a0 + hh]), np.concatenate([ones_h, -n_e[h_e]]), pair2, neg_h, zero_h)
    rows.add(np.concatenate([p0 + hh, l0 + hh, a0 + hh]),
             np.concatenate([ones_h, -ones_h, -(n_e[h_e] - n_loc)]), np.tile(hh, 3), neg_h, zero_h)
    rows.add(np.concatenate([l0 + hh, a0 + hh]), np.concatenate([ones_h, -n_loc]), pair2, neg_h, zero_h)
    # sources: n[s, e] = l + oa + ob (l only where s may host e)
    q_host = host_id[e_idx, s_idx]
    has_l = q_host >= 0
    rhs = loads[s_idx, e_idx]
    rows.add(np.concatenate([oa0 + qq, ob0 + qq, l0 + q_host[has_l]]),
             np.ones(2 * P + int(has_l.sum())), np.concatenate([qq, qq, qq[has_l]]), rhs, rhs)
    # intra balance per (node, expert): Σ_{s∈N} oa = Σ_{r∈N} w
    ne_q = node[s_idx] * e_all + e_idx
    ne_h = node[h_r] * e_all + h_e
    keys = np.unique(np.concatenate([ne_q, ne_h]))
    rows.add(np.concatenate([oa0 + qq, w0 + hh]), np.concatenate([np.ones(P), -ones_h]),
             np.concatenate([np.searchsorted(keys, ne_q), np.searchsorted(keys, ne_h)]),
             np.zeros(keys.size), np.zeros(keys.size))
    # inter totals and the Hall condition per (node, expert)
    x_of_q = np.searchsorted(experts, e_idx)
    rows.add(np.concatenate([ob0 + qq, te0 + np.arange(X)]), np.concatenate([np.ones(P), -np.ones(X)]),
             np.concatenate([x_of_q, np.arange(X)]), np.zeros(X), np.zeros(X))
    rows.add(np.concatenate([v0 + hh, te0 + np.arange(X)]), np.concatenate([ones_h, -np.ones(X)]),
             np.concatenate([x_of_h, np.arange(X)]), np.zeros(X), np.zeros(X))
    nk = X * k_nodes
    row_q = x_of_q * k_nodes + node[s_idx]
    row_h = x_of_h * k_nodes + node[h_r]
    rows.add(np.concatenate([ob0 + qq, v0 + hh, np.repeat(te0 + np.arange(X), k_nodes)]),
             np.concatenate([np.ones(P), ones_h, -np.ones(nk)]),
             np.concatenate([row_q, row_h, np.arange(nk)]), np.full(nk, -np.inf), np.zeros(nk))
    # roofline and the compute phase
    rows.add(np.concatenate([t0 + hh, p0 + hh]), np.concatenate([ones_h, -params.alpha_us * ones_h]), pair2, zero_h, inf_h)
    rows.add(np.concatenate([t0 + hh, a0 + hh]), np.concatenate([ones_h, -params.beta_us * ones_h]), pair2, zero_h, inf_h)
    ranks = np.arange(g)
    rows.add(np.concatenate([np.full(g, tc), t0 + hh]), np.concatenate([np.ones(g), -ones_h]),
             np.concatenate([ranks, h_r]), np.zeros(g), np.full(g, np.inf))
    # all-to-all: Tm >= tau_k x (received or sent over link k) for every rank
    for col0, tau, owner, n_cols in ((w0, params.tok_intra_us, h_r, H), (v0, params.tok_inter_us, h_r, H),
                                     (oa0, params.tok_intra_us, s_idx, P), (ob0, params.tok_inter_us, s_idx, P)):
        rows.add(np.concatenate([np.full(g, tm), col0 + np.arange(n_cols)]),
                 np.concatenate([np.ones(g), -tau * np.ones(n_cols)]),
                 np.concatenate([ranks, owner]), np.zeros(g), np.full(g, np.inf))
    rep_rows = _copy_rows(rows, topo, windows_us, params, copies, host_id, z0, a0)
    A, row_lo, row_hi = rows.matrix(ncols)
    return LayerModel(c=c, A=A, row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi, integer=integer,
                      copies=copies, flows=None, hosts=hosts, z0=z0, y0=p0, a0=a0, t0=t0, tm=tm, tc=tc, l0=l0,
                      w0=w0, oa0=oa0, pairs=pairs, replica_rows=rep_rows)
