"""The one cost model every solver and every report uses (see docs/formulation.md).

A layer runs dispatch -> expert compute -> combine, each phase ending at a barrier, so
``makespan = max_r comm[r] + max_r comp[r] + max_r comm[r]``. The numba primitives below are shared
by the solvers' inner loops and by :func:`evaluate`, so a solver's internal score and the reported
metric are the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from .routes import sole_host
from .topology import Topology
from .window import copies_that_fit

# Indices into the flat parameter vector handed to numba kernels.
ALPHA, BETA, TOK_INTRA, TOK_INTER, COPY_INTRA, COPY_INTER = range(6)


@dataclass(frozen=True)
class CostParams:
    """Per-unit times in µs derived from a topology.

    ``alpha_us``: compute per token per expert (FLOPs / peak); ``beta_us``: streaming one expert's
    weights from HBM (the roofline floor of an active expert); ``tok_*_us``: one token over an
    intra-/inter-node link; ``copy_*_us``: one expert's weights over that link.
    """

    alpha_us: float
    beta_us: float
    tok_intra_us: float
    tok_inter_us: float
    copy_intra_us: float
    copy_inter_us: float

    @classmethod
    def from_topology(cls, topo: Topology) -> CostParams:
        m = topo.model
        return cls(
            alpha_us=m.flops_per_token / topo.peak_flops * 1e6,
            beta_us=m.expert_bytes / topo.hbm_bw * 1e6,
            tok_intra_us=m.token_bytes / topo.intra_node_bw * 1e6,
            tok_inter_us=m.token_bytes / topo.inter_node_bw * 1e6,
            copy_intra_us=m.expert_bytes / topo.intra_node_bw * 1e6,
            copy_inter_us=m.expert_bytes / topo.inter_node_bw * 1e6,
        )

    def vector(self) -> np.ndarray:
        """The flat ``[6]`` float64 form numba kernels take (indexed by ALPHA, BETA, ...)."""
        return np.array([self.alpha_us, self.beta_us, self.tok_intra_us, self.tok_inter_us,
                         self.copy_intra_us, self.copy_inter_us])


@nb.njit(cache=True, inline="always")
def expert_time_us(tokens, alpha, beta):
    """Roofline time of one active expert on one rank: ``max(n·alpha, beta)``; 0 when idle."""
    if tokens <= 0.0:
        return 0.0
    t = tokens * alpha
    return t if t > beta else beta


@nb.njit(cache=True, inline="always")
def link_time_us(in_intra, in_inter, out_intra, out_inter, unit_intra, unit_inter):
    """Time for a rank's traffic: intra/inter links and both directions run concurrently."""
    a = in_intra * unit_intra
    b = in_inter * unit_inter
    c = out_intra * unit_intra
    d = out_inter * unit_inter
    return max(max(a, b), max(c, d))


@nb.njit(cache=True, _nrt=False, fastmath={"reassoc", "nsz"})
def single_host_pass(n, sole, sole_node, weight, node_of, total, ntot, vol):
    """One pass over a layer's ``[G, E]`` loads: every expert's total ``total[e]`` and per-(node,
    expert) totals ``ntot``, and each source's outgoing traffic for the experts with ``weight[e] = 1``
    (those whose every token goes to their sole host ``sole[e]``, on node ``sole_node[e]``), written
    to ``vol[s] = (0, 0, out intra, out inter)``. Reassociated sums vectorize; integral loads sum exactly."""
    g, e_all = n.shape
    for e in range(e_all):
        total[e] = 0.0
    for nd in range(ntot.shape[0]):
        for e in range(e_all):
            ntot[nd, e] = 0.0
    for s in range(g):
        ns = node_of[s]
        row = 0.0
        same = 0.0
        local = 0.0
        for e in range(e_all):
            a = n[s, e]
            total[e] += a
            ntot[ns, e] += a
            m = a * weight[e]
            row += m
            same += m if sole_node[e] == ns else 0.0
            local += m if sole[e] == s else 0.0
        vol[s, 0] = 0.0
        vol[s, 1] = 0.0
        vol[s, 2] = same - local
        vol[s, 3] = row - same


@nb.njit(cache=True, nogil=True)  # the runtime plans in a worker thread: let the layers run
def evaluate_arrays(loads, route_idx, route_tok, replicas, sole, node_of, p):
    """Per-(layer, rank) tokens processed, compute, comm and transfer µs; see :func:`evaluate`. Checks
    nothing: the arrays must be contiguous float64 / int64 (``evaluate`` makes them so)."""
    num_layers, num_ranks, num_experts = loads.shape
    vol = np.zeros((num_layers, num_ranks, 4))  # in_intra, in_inter, out_intra, out_inter
    processed = np.zeros((num_layers, num_ranks))
    comp = np.zeros((num_layers, num_ranks))
    listed = np.zeros((num_layers, num_experts), np.bool_)
    for i in range(route_idx.shape[0]):
        listed[route_idx[i, 0], route_idx[i, 2]] = True
    # unlisted experts: every token to the sole host (probe_planner.routes)
    sole_node = np.full(num_experts, -1, np.int64)
    for e in range(num_experts):
        if sole[e] >= 0:
            sole_node[e] = node_of[sole[e]]
    weight = np.zeros(num_experts)
    total = np.zeros(num_experts)
    ntot = np.zeros((node_of[num_ranks - 1] + 1, num_experts))
    for lay in range(num_layers):
        for e in range(num_experts):
            weight[e] = 1.0 if sole[e] >= 0 and not listed[lay, e] else 0.0
        single_host_pass(loads[lay], sole, sole_node, weight, node_of, total, ntot, vol[lay])
        for e in range(num_experts):
            if weight[e] > 0.0 and total[e] > 0.0:
                d = sole[e]
                comp[lay, d] += expert_time_us(total[e], p[ALPHA], p[BETA])
                processed[lay, d] += total[e]
                vol[lay, d, 0] += ntot[sole_node[e], e] - loads[lay, d, e]
                vol[lay, d, 1] += total[e] - ntot[sole_node[e], e]
    # listed routes: traffic per entry, compute per (layer, rank, expert) group
    keys = (route_idx[:, 0] * num_ranks + route_idx[:, 3]) * num_experts + route_idx[:, 2]
    order = np.argsort(keys)
    acc = 0.0
    for j in range(order.size):
        i = order[j]
        lay, s, d = route_idx[i, 0], route_idx[i, 1], route_idx[i, 3]
        t = route_tok[i]
        acc += t
        if s != d:
            k = 0 if node_of[s] == node_of[d] else 1
            vol[lay, d, k] += t
            vol[lay, s, 2 + k] += t
        if j + 1 == order.size or keys[order[j + 1]] != keys[i]:  # last entry of its group
            comp[lay, d] += expert_time_us(acc, p[ALPHA], p[BETA])
            processed[lay, d] += acc
            acc = 0.0
    copies = np.zeros((num_layers, num_ranks, 4))
    for i in range(replicas.shape[0]):
        lay, src, dst = replicas[i, 0], replicas[i, 2], replicas[i, 3]
        k = 0 if node_of[src] == node_of[dst] else 1
        copies[lay, dst, k] += 1.0
        copies[lay, src, 2 + k] += 1.0
    comm = np.zeros((num_layers, num_ranks))
    trans = np.zeros((num_layers, num_ranks))
    for lay in range(num_layers):
        for r in range(num_ranks):
            v = vol[lay, r]
            comm[lay, r] = link_time_us(v[0], v[1], v[2], v[3], p[TOK_INTRA], p[TOK_INTER])
            c = copies[lay, r]
            trans[lay, r] = link_time_us(c[0], c[1], c[2], c[3], p[COPY_INTRA], p[COPY_INTER])
    return processed, comp, comm, trans


@dataclass(frozen=True)
class Metrics:
    """Cost-model evaluation of a plan; per-layer arrays are ``[L]``, per-rank ``[L, G]``.

    ``makespan_us`` is the sum of layer makespans (one pass through all planned layers);
    ``imbalance_ratio`` is the mean over layers of max/mean tokens processed per rank.
    """

    layer_makespan_us: np.ndarray
    dispatch_us: np.ndarray
    compute_us: np.ndarray
    tokens_processed: np.ndarray
    compute_per_rank_us: np.ndarray
    comm_per_rank_us: np.ndarray
    transfer_per_rank_us: np.ndarray
    layer_imbalance: np.ndarray
    layer_compute_imbalance: np.ndarray

    @property
    def makespan_us(self) -> float:
        return float(self.layer_makespan_us.sum())

    @property
    def imbalance_ratio(self) -> float:
        return float(self.layer_imbalance.mean())

    @property
    def compute_imbalance(self) -> float:
        return float(self.layer_compute_imbalance.mean())


def _ratio_max_mean(a: np.ndarray) -> np.ndarray:
    mean = a.mean(axis=-1)
    out = np.ones_like(mean)
    np.divide(a.max(axis=-1), mean, out=out, where=mean > 0)
    return out


def evaluate(topo: Topology, loads: np.ndarray, route_idx: np.ndarray, route_tok: np.ndarray,
             replicas: np.ndarray, params: CostParams | None = None) -> Metrics:
    """Score a plan given as routes and replicas.

    loads: ``[L, G, E]``; route_idx: ``[N, 4]`` int (layer, source rank, expert, destination rank);
    route_tok: ``[N]`` tokens; replicas: ``[R, 4]`` int (layer, expert, source rank, destination
    rank). Experts without listed routes in a layer send every token to their sole native host
    (:mod:`probe_planner.routes`).
    """
    p = (params or CostParams.from_topology(topo)).vector()
    processed, comp, comm, trans = evaluate_arrays(
        np.ascontiguousarray(loads, dtype=np.float64), np.ascontiguousarray(route_idx, dtype=np.int64),
        np.ascontiguousarray(route_tok, dtype=np.float64), np.ascontiguousarray(replicas, dtype=np.int64),
        sole_host(topo.native), topo.node_of, p)
    dispatch = comm.max(axis=1)
    compute = comp.max(axis=1)
    return Metrics(
        layer_makespan_us=2.0 * dispatch + compute,
        dispatch_us=dispatch,
        compute_us=compute,
        tokens_processed=processed,
        compute_per_rank_us=comp,
        comm_per_rank_us=comm,
        transfer_per_rank_us=trans,
        layer_imbalance=_ratio_max_mean(processed),
        layer_compute_imbalance=_ratio_max_mean(comp),
    )


def copy_capacity(topo: Topology, windows_us: np.ndarray, params: CostParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``([G] copies a rank can receive, [G] copies it can send)`` within its window (and slots),
    by the one window rule (:mod:`probe_planner.window`)."""
    p = params or CostParams.from_topology(topo)
    g = topo.num_ranks
    links = []
    if topo.ranks_per_node > 1:
        links.append(p.copy_intra_us)
    if topo.num_nodes > 1:
        links.append(p.copy_inter_us)
    most = g * topo.num_experts  # more copies than any plan can make (keeps inf windows finite)
    cap = np.zeros(g)
    for unit in links:  # the two link kinds run concurrently, so their capacities add
        cap += copies_that_fit(unit, windows_us, most)
    return np.minimum(cap, topo.slots), cap


def lower_bound_us(topo: Topology, loads: np.ndarray, windows_us: np.ndarray,
                   params: CostParams | None = None) -> np.ndarray:
    """``[L]`` lower bound on each layer's makespan that no valid plan can beat.

    compute: max(total roofline work / G, the hottest expert split over every rank that could host
    it); comm: :func:`comm_lower_bound_us`. The two bound different phases, so ``2·comm + compute``
    is a bound. Derivation in docs/formulation.md.
    """
    p = params or CostParams.from_topology(topo)
    g = topo.num_ranks
    n_e = loads.sum(axis=1)  # [L, E]
    work = np.where(n_e > 0, np.maximum(n_e * p.alpha_us, p.beta_us), 0.0)
    hosts = _max_hosts(topo, windows_us, p)
    hottest = np.where(n_e > 0, np.maximum(n_e * p.alpha_us / hosts, p.beta_us), 0.0).max(axis=1)
    comp_lb = np.maximum(work.sum(axis=1) / g, hottest)
    return 2.0 * comm_lower_bound_us(topo, loads, windows_us, p) + comp_lb


def _max_hosts(topo: Topology, windows_us: np.ndarray, p: CostParams) -> np.ndarray:
    """``[E]``: the most ranks that could hold each expert (natives plus copies the windows allow)."""
    native = topo.native
    cap_in, cap_out = copy_capacity(topo, windows_us, p)
    can_receive = (cap_in >= 1)[:, None] & ~native  # [G, E]
    max_copies = np.minimum(can_receive.sum(axis=0), (cap_out[:, None] * native).sum(axis=0))
    return native.sum(axis=0) + max_copies


def comm_lower_bound_us(topo: Topology, loads: np.ndarray, windows_us: np.ndarray,
                        params: CostParams | None = None) -> np.ndarray:
    """``[L]`` lower bound on one all-to-all phase: the tokens a source must send because it cannot
    host their expert, over all its links, and what some host of each expert must receive."""
    p = params or CostParams.from_topology(topo)
    native = topo.native
    cap_in, _ = copy_capacity(topo, windows_us, p)
    # Tokens of s for experts s does not host natively must leave s, except for the cap_in[s]
    # experts it could take replicas of (best case: its heaviest ones).
    foreign = np.where(native[None], 0.0, loads)  # [L, G, E]
    keep = int(min(topo.slots, topo.num_experts))
    if keep:
        top = -np.sort(-foreign, axis=2)[:, :, :keep]  # [L, G, keep]
        mask = np.arange(keep)[None, None, :] < cap_in[None, :, None]
        kept = (top * mask).sum(axis=2)
    else:
        kept = 0.0
    forced = foreign.sum(axis=2) - kept  # [L, G]
    rate = 0.0  # tokens per µs a rank can push out over all its links
    if topo.ranks_per_node > 1:
        rate += 1.0 / p.tok_intra_us
    if topo.num_nodes > 1:
        rate += 1.0 / p.tok_inter_us
    send_lb = (forced.max(axis=1) / rate) if rate > 0 else np.zeros(loads.shape[0])
    return np.maximum(send_lb, _receive_lb(topo, loads, _max_hosts(topo, windows_us, p), p))


def _receive_lb(topo: Topology, loads: np.ndarray, hosts: np.ndarray, p: CostParams) -> np.ndarray:
    """``[L]``: with at most ``h_e`` hosts, expert ``e``'s tokens from other sources (all but the
    ``h_e`` largest source shares) land on some host at ``1/h_e`` of them or more; of those, only what
    ``g_node - 1`` same-node sources can send may use the fast link."""
    g, rpn = topo.num_ranks, topo.ranks_per_node
    desc = -np.sort(-loads, axis=1)  # [L, G, E], sources by share, largest first
    csum = np.concatenate([np.zeros_like(desc[:, :1]), np.cumsum(desc, axis=1)], axis=1)  # [L, G+1, E]
    h = np.minimum(hosts, g).astype(np.int64)  # [E]
    idx = np.broadcast_to(h, csum.shape[:1] + h.shape)[:, None, :]
    kept = np.take_along_axis(csum, idx, axis=1)[:, 0, :]  # [L, E]
    received = (csum[:, -1, :] - kept) / h  # [L, E]
    if topo.num_nodes == 1:
        return (received * p.tok_intra_us).max(axis=1)
    if rpn == 1:
        return (received * p.tok_inter_us).max(axis=1)
    intra_cap = csum[:, rpn - 1, :]  # the most that rpn-1 same-node sources can send
    split = received * p.tok_inter_us / (p.tok_intra_us + p.tok_inter_us)  # balances the two links
    x = np.minimum(intra_cap, split)
    return np.maximum(x * p.tok_intra_us, (received - x) * p.tok_inter_us).max(axis=1)
