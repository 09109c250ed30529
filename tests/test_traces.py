"""Loaders turn the real routing records into load arrays (skipped without ../shared/traces)."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner import Budget, Topology, TraceError, solve
from probe_planner import traces as tr


def test_topk_to_loads_splits_tokens_contiguously():
    ids = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 0]])  # 5 tokens, top-2
    loads = tr.topk_to_loads(ids, num_experts=4, num_ranks=2)
    # np.linspace(0, 5, 3).round() -> chunks [0, 2) and [2, 5)
    np.testing.assert_array_equal(loads, [[1, 2, 1, 0], [3, 0, 1, 2]])
    assert loads.sum() == ids.size
    with pytest.raises(TraceError, match="outside"):
        tr.topk_to_loads(ids, num_experts=3, num_ranks=2)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        tr.qwen3_prefill_loads(trace_dir=tmp_path)


def test_qwen3_prefill(trace_dir):
    loads = tr.qwen3_prefill_loads(8, trace_dir)
    assert loads.shape == (48, 8, 128)
    np.testing.assert_array_equal(loads.sum(axis=(1, 2)), 2050 * 8)
    topo = Topology.from_cards(model="qwen3-30b-a3b", cluster="h100x8")
    budget = Budget(window_us=200.0)
    static = solve(loads[:4], topo, budget, solver="static")
    greedy = solve(loads[:4], topo, budget, solver="greedy")
    assert greedy.imbalance_ratio < static.imbalance_ratio
    assert greedy.makespan_us < static.makespan_us


def test_qwen15_decode_and_prefill(trace_dir):
    steps = tr.qwen15_decode_steps(4, trace_dir)
    assert steps.shape == (127, 5, 4, 60)
    per_step = steps.sum(axis=(2, 3))[:, 0] / 4  # tokens per decode step (top-4)
    assert per_step.max() == 25 and per_step.min() == 11
    assert tr.qwen15_prefill_loads(4, trace_dir).sum(axis=(1, 2))[0] == 1406 * 4


def test_count_traces(trace_dir):
    top1 = tr.qwen15_top1_iterations(trace_dir)
    assert top1.shape == (20, 24, 6, 60)
    np.testing.assert_array_equal(top1.sum(axis=(2, 3)), 98304)
    sw = tr.switch_base_loads(128, trace_dir)
    assert sw.shape == (2, 6, 8, 128)
    domains = tr.domain_counts("olmoe", trace_dir)
    assert set(domains) == {"arxiv", "book", "c4", "github", "wikipedia"}
    assert domains["c4"].shape == (3, 64)
    with pytest.raises(TraceError, match="no Switch-base trace"):
        tr.switch_base_loads(7, trace_dir)
