"""The co-activation predictor: recall on toy matrices, and on the real OLMoE / Mixtral ones against a
frequency-only baseline (held-out domains; the traces have no lookahead gate to compare with)."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner.errors import OffloadError, TraceError
from probe_planner.offload.coactivation import (
    batch_recall,
    load_domain_stats,
    next_layer_freq,
    pair_recall,
    predictor_for,
    recall_table,
    synthetic_routing,
    transition,
)
from probe_planner.traces import default_trace_dir


@pytest.fixture
def trace_dir():
    d = default_trace_dir()
    if not d.is_dir():
        pytest.skip(f"real routing traces not found at {d} (set PROBE_TRACES or put them in ../shared/traces)")
    return d


def test_transition_rows_and_recall_on_a_toy_matrix():
    cooc = np.array([[9.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 8.0]])
    p = transition(cooc)
    assert p.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert p[1] == pytest.approx([1 / 3] * 3)  # an unseen row: no evidence either way
    ranking = np.argsort(-p, axis=1, kind="stable")
    assert pair_recall(cooc, ranking, 1) == pytest.approx(17 / 20)
    freq = np.broadcast_to(np.argsort(-cooc.sum(axis=0), kind="stable"), (3, 3))
    assert pair_recall(cooc, freq, 1) == pytest.approx(9 / 20)  # always predicts expert 0
    with pytest.raises(OffloadError):
        transition(np.ones((2, 3)))


def test_missing_traces_raise_trace_error(tmp_path):
    with pytest.raises(TraceError):
        load_domain_stats("olmoe", tmp_path)
    with pytest.raises(TraceError):
        load_domain_stats("gpt-9", tmp_path)


@pytest.mark.traces
@pytest.mark.parametrize("model", ["olmoe", "mixtral"])
def test_coactivation_recall_beats_frequency_on_real_matrices(trace_dir, model):
    stats = load_domain_stats(model, trace_dir)
    assert stats.top_k == {"olmoe": 8, "mixtral": 2}[model]
    held = recall_table(stats)
    co, fr = np.mean([r.coactivation for r in held]), np.mean([r.frequency for r in held])
    print(f"{model}: held-out top-{stats.top_k} recall co-activation {co:.3f} vs frequency {fr:.3f}")
    assert co > fr
    # in-sample, each first expert's own row ranks its pairs best: never below frequency
    for r in recall_table(stats, held_out=False):
        assert r.coactivation >= r.frequency - 1e-12


@pytest.mark.traces
def test_batch_recall_olmoe(trace_dir):
    stats = load_domain_stats("olmoe", trace_dir)
    co, fr = batch_recall(stats, tokens=4, samples=10)
    print(f"olmoe 4-token batches: needed-set recall co-activation {co:.3f} vs frequency {fr:.3f}")
    assert co > fr


@pytest.mark.traces
def test_synthetic_routing_keeps_the_real_statistics(trace_dir):
    stats = load_domain_stats("olmoe", trace_dir)
    r = synthetic_routing(stats, 0, num_layers=5, passes=3, tokens=512, seed=3)
    assert r.counts.shape == (3, 5, 64)
    assert (r.counts.sum(axis=2) == 512 * 8).all()
    # layer 0 of many tokens follows the domain's real layer-0 frequencies (relabelled)
    big = synthetic_routing(stats, 0, num_layers=1, passes=1, tokens=20000, seed=3)
    assert np.sort(big.counts[0, 0] / big.counts[0, 0].sum()) == pytest.approx(
        np.sort(stats.counts[0, 0] / stats.counts[0, 0].sum()), abs=0.01)
    # the predictor over the generating transitions beats the long-run frequencies at layer 1
    pred = predictor_for(r)
    f = next_layer_freq(pred, 1, r.counts[0, 0], 512)
    assert f is not None and f.max() <= 1.0
    err_co = np.abs(f * 512 * 8 / f.sum() - r.counts[0, 1]).sum()
    err_fr = np.abs(r.freq[1] * 512 * 8 / r.freq[1].sum() - r.counts[0, 1]).sum()
    assert err_co < err_fr
    with pytest.raises(OffloadError):
        synthetic_routing(stats, 0, 2, 1, 4, transitions_from="mystery")
