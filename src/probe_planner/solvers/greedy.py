"""``greedy`` (numba, PROBE-style) and its presets; the kernel lives in :mod:`.greedy_kernel`."""

from __future__ import annotations

import time

import numpy as np

from ..problem import Problem
from . import SolverResult
from .greedy_kernel import plan_layers
from .registry import Option, register

# Presets. The optimizers start from the better of DEFAULT and THOROUGH per layer (~0.3 ms per
# layer together): THOROUGH is up to 20% better on layers where a hot rank's copy window is the
# constraint, and not better everywhere.
DEFAULT: dict = {}
THOROUGH = {"n_dest": 4, "max_swaps": 4, "lookahead": 4, "stuck_ties": 4}


def kernel_params(prob: Problem, comm_weight: float = 2.0) -> np.ndarray:
    """The cost vector plus the water-fill's link weight and expected link time of a remote token."""
    topo, pr = prob.topology, prob.params
    g, rpn = topo.num_ranks, topo.ranks_per_node
    tau = pr.tok_intra_us if g == rpn else ((rpn - 1) * pr.tok_intra_us + (g - rpn) * pr.tok_inter_us) / (g - 1)
    return np.concatenate([pr.vector(), [comm_weight, tau]])


def run_kernel(prob: Problem, max_moves: int, n_dest: int = 2, n_exp: int = 2, comm_weight: float | None = None,
               max_swaps: int = 0, lookahead: int = 0, stuck_ties: int = 0) -> SolverResult:
    """The kernel on every layer of ``prob`` with checked options (:func:`solve_greedy`'s),
    clamped to what the shape can use (more destinations than ranks, more moves than slots, ...
    change nothing but the arrays the kernel allocates)."""
    topo = prob.topology
    g, e_all = topo.num_ranks, topo.num_experts
    most = g * min(topo.slots, e_all)  # replicas a layer can hold
    if comm_weight is None:
        comm_weight = 0.0 if topo.num_nodes == 1 else 2.0
    t0 = time.perf_counter()
    rep, ridx, rtok, moves, layer_mk, finished = plan_layers(
        prob.loads, topo.native, topo.node_of, topo.ranks_per_node, kernel_params(prob, comm_weight), topo.slots,
        prob.windows_us, prob.integral, min(max_moves, most), min(n_dest, g), min(n_exp, e_all), min(max_swaps, most),
        min(lookahead, most), min(stuck_ties, most), prob.deadline)
    message = "search complete" if finished else "time limit: layers not searched keep the baseline placement"
    return SolverResult(rep, ridx, rtok, {"moves": moves, "kernel_makespan_us": layer_mk, "finished": bool(finished),
                                          "kernel_s": time.perf_counter() - t0, "message": message})


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


GREEDY_OPTIONS = (
    Option("max_moves", "int", None, lo=0, none_ok=True),
    Option("n_dest", "int", 2, lo=1),
    Option("n_exp", "int", 2, lo=1),
    Option("comm_weight", "float", None, lo=0.0, none_ok=True),
    Option("max_swaps", "int", 0, lo=0),
    Option("lookahead", "int", 0, lo=0),
    Option("stuck_ties", "int", 0, lo=0),
)


@register("greedy", *GREEDY_OPTIONS, prepare=prepare)
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
    window — and costs ~15% more time where nothing helps. ``THOROUGH`` in this module is
    ``n_dest=4, max_swaps=4, lookahead=4, stuck_ties=4``.
    """
    topo = prob.topology
    if max_moves is None:
        max_moves = topo.num_ranks * topo.slots
    return run_kernel(prob, max_moves, n_dest, n_exp, comm_weight, max_swaps, lookahead, stuck_ties)


__all__ = ["solve_greedy", "run_kernel", "prepare", "DEFAULT", "THOROUGH", "GREEDY_OPTIONS"]
