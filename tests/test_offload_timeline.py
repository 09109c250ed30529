"""The offload timeline on tiny cases computed by hand (loads of 10 µs, compute = tokens µs)."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner import ModelShape
from probe_planner.errors import OffloadError
from probe_planner.offload.problem import OffloadProblem
from probe_planner.offload.schedule import OffloadSchedule
from probe_planner.offload.timeline import run_timeline

LOAD = 10.0


def tiny(layers: int, experts: int, slots: int, dense: float = 0.0) -> OffloadProblem:
    """Expert bytes 6 (hidden = ffn = 1, BF16, 3 matrices) over 6e5 B/s: a load takes 10 µs; compute
    is ``max(tokens · 1, 0.5)`` µs."""
    model = ModelShape(name="tiny", num_experts=experts, top_k=1, hidden=1, expert_ffn=1)
    return OffloadProblem(model=model, alpha_us=1.0, beta_us=0.5, host_bw=6e5, cache_slots=slots, batch_tokens=1,
                          num_layers=layers, dense_us_per_token=dense)


def sched(p: OffloadProblem, prefetch, resident=(), evict=None) -> OffloadSchedule:
    big_l = p.num_layers
    return OffloadSchedule(big_l, p.num_experts, p.cache_slots, 1, tuple(np.array(x, dtype=np.int64) for x in prefetch),
                           tuple(np.array(x, dtype=np.int64).reshape(-1, 2) for x in (evict or [[]] * big_l)),
                           np.array(resident, dtype=np.int64).reshape(-1, 2))


def test_tiny_load_time_is_what_we_think():
    assert tiny(1, 2, 2).load_us == pytest.approx(LOAD)


def test_load_hidden_under_compute_adds_nothing():
    p = tiny(2, 2, 4)
    counts = np.array([[[20, 0], [3, 0]]])  # layer 0: expert 0 computes 20 µs; layer 1: expert 0, 3 µs
    tl = run_timeline(p, sched(p, [[], [0]], resident=[(0, 0)]), counts)
    assert tl.total_us == pytest.approx(23.0)  # the 10 µs load of (1, 0) lands while layer 0 computes
    assert tl.exposed_us == pytest.approx(0.0)
    assert (tl.loads, tl.misses) == (1, 0)


def test_partly_hidden_load_exposes_the_rest():
    p = tiny(2, 2, 4)
    counts = np.array([[[4, 0], [3, 0]]])
    tl = run_timeline(p, sched(p, [[], [0]], resident=[(0, 0)]), counts)
    assert tl.total_us == pytest.approx(10.0 + 3.0)  # layer 1 waits for its load until t = 10
    assert tl.exposed_us == pytest.approx(6.0)


def test_one_miss_adds_exactly_its_load_time():
    p = tiny(1, 2, 2)
    counts = np.array([[[0, 3]]])
    tl = run_timeline(p, sched(p, [[]]), counts)
    assert tl.total_us == pytest.approx(3.0 + LOAD)
    assert tl.exposed_us == pytest.approx(LOAD)
    assert (tl.loads, tl.misses) == (1, 1)


def test_misses_share_one_stream_and_resident_experts_compute_first():
    p = tiny(1, 3, 3)
    counts = np.array([[[8, 3, 2]]])  # expert 0 resident (8 µs); 1 and 2 missed (3 and 2 µs)
    tl = run_timeline(p, sched(p, [[]], resident=[(0, 0)]), counts)
    # 0 computes 0..8; miss 1 (longer compute first) lands at 10, computes 10..13; miss 2 lands at 20 -> 22
    assert tl.total_us == pytest.approx(22.0)
    assert tl.misses == 2


def test_dense_part_runs_before_the_router_issues_loads():
    p = tiny(2, 2, 4, dense=5.0)
    counts = np.array([[[1, 0], [1, 0]]])
    tl = run_timeline(p, sched(p, [[], [0]], resident=[(0, 0)]), counts)
    # layer 0: dense 0..5, prefetch issued at 5 lands at 15, expert 5..6; layer 1: dense 6..11, waits to 15, 15..16
    assert tl.total_us == pytest.approx(16.0)
    assert tl.compute_us == pytest.approx(12.0)


def test_full_cache_evicts_the_least_recently_used_outside_the_layer():
    p = tiny(2, 2, 2)
    counts = np.array([[[3, 3], [3, 0]]])
    tl = run_timeline(p, sched(p, [[], []]), counts)
    # layer 0: misses 0, 1 land at 10, 20 -> compute 10..13, 20..23; layer 1's miss evicts (0, 0), the
    # least recently used, lands at 33 -> 33..36
    assert tl.total_us == pytest.approx(36.0)
    assert tl.loads == 3 and tl.peak_slots == 2


def test_passes_chain_and_prefetch_zero_overlaps_the_last_layer():
    p = tiny(2, 2, 4)
    counts = np.array([[[20, 0], [20, 0]]] * 3)
    # streamed (l, 0) each layer: prefetch[1] while layer 0 computes, the next pass's prefetch[0] while layer 1 does
    s = sched(p, [[0], [0]], resident=[(0, 0), (1, 0)], evict=[[(0, 0)], [(1, 0)]])
    tl = run_timeline(p, s, counts)
    # pass 0: evict (0, 0), reload it 0..10, layer 0 10..30, layer 1 30..50; then 40 µs per pass, loads hidden
    assert tl.pass_us == pytest.approx([50.0, 40.0, 40.0])
    assert tl.latency_us == pytest.approx(40.0)
    assert tl.tokens_per_s == pytest.approx(1 / 40e-6)


def test_schedule_of_another_shape_is_refused():
    p = tiny(2, 2, 4)
    other = tiny(3, 2, 4)
    with pytest.raises(OffloadError, match="layers"):
        run_timeline(p, sched(other, [[], [], []]), np.zeros((1, 2, 2)))
    with pytest.raises(OffloadError, match="schedules"):
        run_timeline(p, [sched(p, [[], []])] * 2, np.zeros((1, 2, 2)))
