"""Shared fixtures and hypothesis strategies for random HABP problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st

from probe_planner import Budget, ModelShape, Topology
from probe_planner.cost import CostParams

# The same examples on every run: CI gates a merge, so a test must not pass or fail by the draw.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

TRACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "traces"


@pytest.fixture
def trace_dir() -> Path:
    if not TRACE_DIR.is_dir():
        pytest.skip(f"real routing traces not found at {TRACE_DIR} (they live in ../shared/traces)")
    return TRACE_DIR


def make_topology(nodes: int, rpn: int, experts_per_rank: int, slots: int, placement=None,
                  hidden: int = 1024, ffn: int = 512, top_k: int = 1) -> Topology:
    g = nodes * rpn
    model = ModelShape(name="test", num_experts=g * experts_per_rank, top_k=top_k, hidden=hidden, expert_ffn=ffn)
    return Topology(num_ranks=g, ranks_per_node=rpn, intra_node_bw=450e9, inter_node_bw=50e9,
                    peak_flops=989.5e12, hbm_bw=3.35e12, model=model, slots=slots, placement=placement)


@st.composite
def problems(draw, max_nodes: int = 3, max_rpn: int = 4, max_layers: int = 2, fractional: bool | None = None,
             redundant: bool | None = None, max_epr: int = 4):
    """(loads [L, G, E], topology, budget) with skewed loads, all window regimes, any slot count."""
    nodes = draw(st.integers(1, max_nodes))
    rpn = draw(st.integers(1, max_rpn))
    epr = draw(st.integers(1, max_epr))
    slots = draw(st.integers(0, 3))
    g, e = nodes * rpn, nodes * rpn * epr
    placement = None
    if redundant if redundant is not None else draw(st.booleans()):
        native = np.zeros((g, e), dtype=bool)
        native[np.arange(e) // epr, np.arange(e)] = True
        extra = draw(st.lists(st.tuples(st.integers(0, g - 1), st.integers(0, e - 1)), max_size=4))
        for r, x in extra:
            native[r, x] = True
        placement = native
    topo = make_topology(nodes, rpn, epr, slots, placement)
    p = CostParams.from_topology(topo)
    # exact multiples of either copy time too: the window rule must agree everywhere at the boundary
    window = draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0, 5.0, 8.0, np.inf]))
    unit = draw(st.sampled_from([p.copy_intra_us, p.copy_inter_us]))
    window_us = window * unit if np.isfinite(window) else np.inf
    layers = draw(st.integers(1, max_layers))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    skew = draw(st.sampled_from([0.0, 1.0, 2.0]))
    pop = 1.0 / np.arange(1, e + 1) ** skew
    pop = pop[rng.permutation(e)]
    scale = draw(st.sampled_from([3, 40, 2000]))
    loads = rng.poisson(pop / pop.mean() * scale, size=(layers, g, e)).astype(np.float64)
    if fractional if fractional is not None else draw(st.booleans()):
        loads = loads * rng.uniform(0.1, 1.0, size=loads.shape)
    return loads, topo, Budget(window_us=window_us, time_limit_s=5.0)
