"""Expected per-batch makespan of a long-lived placement: the project's static dispatch rule on each batch.

A long-lived placement is a ``[G, E]`` host matrix (an expert may live on several ranks). Each batch of
the window is dispatched over those hosts exactly as ``solve(..., solver="static")`` does on a topology
with that placement (locality first, the rest water-filled, :func:`probe_planner.solvers.greedy_state.baseline`)
and scored by the one cost model; the placement's score is the mean over the batches. The kernel below
calls the greedy kernel's own state functions, so the two cannot disagree (tests/test_place.py checks it).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..budget import Budget
from ..problem import Problem
from ..solvers.greedy import kernel_params
from ..solvers.greedy_state import baseline, new_scratch, new_state, score
from ..topology import Topology


def dispatch_params(topo: Topology) -> np.ndarray:
    """The ``[8]`` cost vector the dispatch kernels take, with the static solver's water-fill weight
    (``run_kernel``'s default: 0 on one node, 2 across nodes)."""
    prob = Problem.build(np.zeros(topo.num_experts), topo, Budget(window_us=0.0))
    return kernel_params(prob, 0.0 if topo.num_nodes == 1 else 2.0)


@nb.njit(cache=True)
def placement_arrays(native):
    """``native [G, E]`` bool -> ``(is_host [E, G], hosts [E, G], nh [E], sole [E], sole_node`` filled later ``)``:
    the host lists the dispatch kernels take (ranks ascending)."""
    g, e_all = native.shape
    is_host = native.T.copy()
    hosts = np.zeros((e_all, g), np.int64)
    nh = np.zeros(e_all, np.int64)
    for e in range(e_all):
        for r in range(g):
            if native[r, e]:
                hosts[e, nh[e]] = r
                nh[e] += 1
    return is_host, hosts, nh


@nb.njit(cache=True, _nrt=False)
def sole_hosts(hosts, nh, node_of, sole, sole_node, sole_w, multi):
    """Split experts into single-host ones (``sole``, ``sole_node``, ``sole_w = 1``) and the rest
    (``multi[:count]``, in index order, as ``plan_layers`` lists them); returns the count."""
    n_multi = 0
    for e in range(nh.shape[0]):
        if nh[e] == 1:
            sole[e] = hosts[e, 0]
            sole_node[e] = node_of[hosts[e, 0]]
            sole_w[e] = 1.0
        else:
            sole[e] = -1
            sole_node[e] = -1
            sole_w[e] = 0.0
            multi[n_multi] = e
            n_multi += 1
    return n_multi


@nb.njit(cache=True, nogil=True)
def batch_makespans(loads, native, node_of, rpn, p, integral):
    """``[B]`` makespan µs of each batch ``loads [B, G, E]`` under the static dispatch over the hosts
    ``native [G, E]`` — what ``solve(loads, topo.with_(placement=native, slots=0), ..., "static")``
    gives per layer (the batches play the layers, in order)."""
    n_b, g, e_all = loads.shape
    n_nodes = g // rpn
    is_host, hosts, nh = placement_arrays(native)
    nat_cnt = nh.copy()
    sole = np.full(e_all, -1, np.int64)
    sole_node = np.full(e_all, -1, np.int64)
    sole_w = np.zeros(e_all)
    multi = np.zeros(e_all, np.int64)
    n_multi = sole_hosts(hosts, nh, node_of, sole, sole_node, sole_w, multi)
    xh = np.zeros((e_all, g))
    total = np.zeros(e_all)
    ntot = np.zeros((n_nodes, e_all))
    st = new_state(g, n_nodes)
    sc = new_scratch(g, n_nodes)
    out = np.zeros(n_b)
    for b in range(n_b):
        baseline(loads[b], sole, sole_node, sole_w, multi, n_multi, node_of, rpn, p, integral, total, ntot, hosts, nh,
                 nat_cnt, is_host, xh, st, sc)
        out[b] = score(st.comp, st.ct)[0]
    return out


def expected_makespan_us(batches: np.ndarray, hosts: np.ndarray, topo: Topology) -> np.ndarray:
    """``[B]`` makespans of the batches ``[B, G, E]`` (one layer) on the host matrix ``hosts [G, E]``."""
    b = np.ascontiguousarray(batches, dtype=np.float64)
    integral = bool(np.all(b == np.floor(b)))
    return batch_makespans(b, np.ascontiguousarray(hosts, dtype=np.bool_), topo.node_of, topo.ranks_per_node,
                           dispatch_params(topo), integral)
