"""Local search over a layer's placement (used by auto after its LP rounding)."""

from __future__ import annotations

import time

import numpy as np

from probe_planner import Budget
from probe_planner.problem import Problem
from probe_planner.solvers.placement_search import improve_placement, placement_fits
from probe_planner.solvers.token_lp import polished_placement, token_lp

from .conftest import make_topology


def _problem(window_us: float, slots: int = 2) -> Problem:
    topo = make_topology(1, 4, 2, slots=slots, ffn=4096)
    loads = np.full((4, 8), 50.0)
    loads[:, 0] = 3000.0  # expert 0 (on rank 0) is hot
    return Problem.build(loads, topo, Budget(window_us=window_us))


def test_placement_fits_checks_slots_windows_duplicates_and_natives():
    prob = _problem(window_us=1e4)
    unit = prob.params.copy_intra_us
    assert placement_fits(prob, np.zeros((0, 3), dtype=np.int64))
    assert placement_fits(prob, np.array([[0, 0, 1], [0, 0, 2], [4, 2, 1]]))
    assert not placement_fits(prob, np.array([[0, 0, 1], [0, 0, 1]]))  # same copy twice
    assert not placement_fits(prob, np.array([[1, 0, 0]]))  # onto its native host
    assert not placement_fits(prob, np.array([[0, 1, 2]]))  # from a rank that does not hold it
    assert not placement_fits(prob, np.array([[0, 0, 1], [4, 2, 1], [6, 3, 1]]))  # 3 copies, 2 slots
    tight = _problem(window_us=1.5 * unit)  # one copy per window
    assert placement_fits(tight, np.array([[0, 0, 1]]))
    assert not placement_fits(tight, np.array([[0, 0, 1], [0, 0, 2]]))  # rank 0 sends two
    assert not placement_fits(tight, np.array([[0, 0, 1], [4, 2, 1]]))  # rank 1 receives two


def test_search_adds_copies_of_the_hot_expert_and_drops_useless_ones():
    prob = _problem(window_us=1e4)
    useless = np.array([[6, 3, 1]])  # a cold expert's copy
    start, _ = token_lp(prob, 0, useless, time.perf_counter() + 30.0)
    cands = np.array([[6, 3, 1], [0, 0, 1], [0, 0, 2], [0, 0, 3]])
    end = time.perf_counter() + 30.0
    best = improve_placement(prob, start, cands, lambda reps: polished_placement(prob, 0, reps, end), end)
    assert best.makespan_us < start.makespan_us
    copies = {tuple(r) for r in best.replicas.tolist()}
    assert {(0, 0, 1), (0, 0, 2), (0, 0, 3)} <= copies
    assert placement_fits(prob, best.replicas)


def test_search_stops_at_its_deadline():
    prob = _problem(window_us=1e4)
    start, _ = token_lp(prob, 0, np.zeros((0, 3), dtype=np.int64), time.perf_counter() + 30.0)
    cands = np.array([[0, 0, 1], [0, 0, 2]])
    best = improve_placement(prob, start, cands, lambda reps: polished_placement(prob, 0, reps, 0.0),
                             time.perf_counter() - 1.0)
    assert best is start
