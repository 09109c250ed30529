"""``static`` (baseline placement, no replicas) and ``greedy`` (numba, PROBE-style) solvers."""

from __future__ import annotations

import numpy as np

from ..errors import SolverError
from ..problem import Problem
from . import SolverResult, register
from .greedy_kernel import plan_layers


def run_kernel(prob: Problem, max_moves: int, n_dest: int = 4, n_exp: int = 2) -> SolverResult:
    topo = prob.topology
    for name, v in (("max_moves", max_moves), ("n_dest", n_dest), ("n_exp", n_exp)):
        if int(v) != v or v < (0 if name == "max_moves" else 1):
            raise SolverError(f"greedy option {name} must be a non-negative integer (n_dest, n_exp >= 1), got {v!r}")
    loads_t = np.ascontiguousarray(prob.loads.transpose(0, 2, 1))
    rep, ridx, rtok, moves, finished = plan_layers(
        prob.loads, loads_t, int(np.count_nonzero(prob.loads)), topo.native, topo.node_of, topo.ranks_per_node, prob.params.vector(), topo.slots,
        prob.windows_us, prob.integral, int(max_moves), int(n_dest), int(n_exp), prob.deadline)
    return SolverResult(rep, ridx, rtok, {"moves": moves, "finished": bool(finished)})


_ready = False


def prepare() -> None:
    """Compile (or load from cache) the kernel once, outside any solver's time budget."""
    global _ready
    if not _ready:
        z = np.zeros((1, 1, 1))
        native = np.ones((1, 1), dtype=bool)
        native.setflags(write=False)  # same array types as Topology.native, so the same specialization
        plan_layers(z, z, 0, native, np.zeros(1, np.int64), 1, np.ones(6), 1, np.zeros(1), True, 1, 1, 1, float("inf"))
        _ready = True


@register("static")
def solve_static(prob: Problem) -> SolverResult:
    """Baseline placement, no replicas; each expert's tokens go to its native host (water-filled,
    locality first, when the placement hosts it more than once)."""
    return run_kernel(prob, max_moves=0)


solve_static.prepare = prepare


@register("greedy")
def solve_greedy(prob: Problem, max_moves: int | None = None, n_dest: int = 4, n_exp: int = 2) -> SolverResult:
    """Greedy replication: relieve the bottleneck rank move by move while the makespan drops.

    max_moves: cap on replicas per layer (default: every slot); n_dest: destinations tried per
    candidate expert; n_exp: candidate experts per bottleneck rank and kind of move.
    """
    topo = prob.topology
    if max_moves is None:
        max_moves = topo.num_ranks * topo.slots
    return run_kernel(prob, max_moves, n_dest, n_exp)


solve_greedy.prepare = prepare


__all__ = ["solve_static", "solve_greedy", "run_kernel"]
