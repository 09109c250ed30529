"""``static`` (baseline placement, no replicas) and ``greedy`` (numba, PROBE-style) solvers."""

from __future__ import annotations

import numpy as np

from ..errors import SolverError
from ..problem import Problem
from . import SolverResult, register
from .greedy_kernel import plan_layers


def kernel_params(prob: Problem, comm_weight: float = 2.0) -> np.ndarray:
    """The cost vector plus the water-fill's link weight and expected link time of a remote token."""
    topo, pr = prob.topology, prob.params
    g, rpn = topo.num_ranks, topo.ranks_per_node
    tau = pr.tok_intra_us if g == rpn else ((rpn - 1) * pr.tok_intra_us + (g - rpn) * pr.tok_inter_us) / (g - 1)
    return np.concatenate([pr.vector(), [comm_weight, tau]])


def run_kernel(prob: Problem, max_moves: int, n_dest: int = 2, n_exp: int = 2,
               comm_weight: float | None = None, max_swaps: int = 0, lookahead: int = 0,
               stuck_ties: int = 0) -> SolverResult:
    topo = prob.topology
    for name, v in (("max_moves", max_moves), ("n_dest", n_dest), ("n_exp", n_exp), ("max_swaps", max_swaps),
                    ("lookahead", lookahead), ("stuck_ties", stuck_ties)):
        least = 1 if name in ("n_dest", "n_exp") else 0
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise SolverError(f"greedy option {name} must be an integer >= {least}, got {v!r}")
    if comm_weight is None:
        comm_weight = 0.0 if topo.num_nodes == 1 else 2.0
    if not isinstance(comm_weight, (int, float)) or not (comm_weight >= 0 and np.isfinite(comm_weight)):
        raise SolverError(f"greedy option comm_weight must be a finite number >= 0, got {comm_weight!r}")
    rep, ridx, rtok, moves, finished = plan_layers(
        prob.loads, topo.native, topo.node_of, topo.ranks_per_node,
        kernel_params(prob, comm_weight), topo.slots, prob.windows_us, prob.integral, int(max_moves), int(n_dest),
        int(n_exp), int(max_swaps), int(lookahead), int(stuck_ties), prob.deadline)
    return SolverResult(rep, ridx, rtok, {"moves": moves, "finished": bool(finished)})


_ready = False


def prepare() -> None:
    """Compile (or load from cache) the kernel once, outside any solver's time budget."""
    global _ready
    if not _ready:
        z = np.zeros((1, 1, 1))
        native = np.ones((1, 1), dtype=bool)
        native.setflags(write=False)  # same array types as Topology.native, so the same specialization
        plan_layers(z, native, np.zeros(1, np.int64), 1, np.ones(8), 1, np.zeros(1), True, 1, 1, 1, 0, 0, 0, float("inf"))
        _ready = True


@register("static")
def solve_static(prob: Problem) -> SolverResult:
    """Baseline placement, no replicas; each expert's tokens go to its native host (water-filled,
    locality first, when the placement hosts it more than once)."""
    return run_kernel(prob, max_moves=0)


solve_static.prepare = prepare


@register("greedy")
def solve_greedy(prob: Problem, max_moves: int | None = None, n_dest: int = 2, n_exp: int = 2,
                 comm_weight: float | None = None, max_swaps: int = 0, lookahead: int = 0,
                 stuck_ties: int = 0) -> SolverResult:
    """Greedy replication: relieve the bottleneck rank move by move while the makespan drops.

    max_moves: cap on replicas per layer (default: every slot); n_dest: destinations tried per
    candidate expert; n_exp: candidate experts per bottleneck rank and kind of move; comm_weight:
    weight of a host's link time when splitting an expert's tokens (0: balance compute only;
    default 0 on one node, where NVLink makes compute the scarce resource, and 2 across nodes, where
    the slower NIC does — measured best on Zipf loads and the Qwen3 trace, bench/greedy_speed.py);
    max_swaps: swaps per layer when stuck (take back a copy and spend its slot and windows better);
    lookahead: attempts per layer to add a copy together with re-splitting the split experts it
    shares hosts with (also used by swaps). Both off by default: with ``max_swaps=4, lookahead=4``
    window-starved layers (a hot rank that can send only a copy or two) get up to 20% shorter
    makespans, Zipf loads 1.3-1.7% on average, for 3-8x the time (bench/greedy_speed.py). When no
    copy helps, every split expert is re-split once under the current loads (always on: an earlier
    split was made under loads that later copies changed), and the ranks within 5% of the
    bottlenecks are searched for copies that lower the makespan (the bottlenecks' own experts may
    have no window left to copy them); stuck_ties: how many copies per layer that search may make
    that only tie the makespan (lowering the spread of the tied ranks). Off by default: it pays
    where many ranks are tied — up to 49% shorter makespans on 256x32 Zipf layers with a 2 ms
    window — and costs ~15% more time where nothing helps.
    """
    topo = prob.topology
    if max_moves is None:
        max_moves = topo.num_ranks * topo.slots
    return run_kernel(prob, max_moves, n_dest, n_exp, comm_weight, max_swaps, lookahead, stuck_ties)


solve_greedy.prepare = prepare


__all__ = ["solve_static", "solve_greedy", "run_kernel"]
