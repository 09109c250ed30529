"""Load predictors: history and co-activation (planner side, numpy) and the gate-initialised
lookahead predictor (runtime side, torch)."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner import LoadsError
from probe_planner.predict import CoactivationPredictor, HistoryPredictor, count_error


def test_count_error_is_relative_l1():
    assert count_error(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert count_error(np.zeros(2), np.zeros(2)) == 0.0
    with pytest.raises(LoadsError):
        count_error(np.zeros(2), np.zeros(3))


def test_history_predicts_the_last_batch_or_its_moving_average():
    h = HistoryPredictor(2, 3)
    assert h.predict(0) is None  # nothing seen: the caller plans static
    h.observe(0, [1, 2, 3])
    h.observe(0, [3, 2, 1])
    assert h.predict(0).tolist() == [3, 2, 1] and h.predict(1) is None
    ema = HistoryPredictor(1, 2, decay=0.5)
    ema.observe(0, [4, 0])
    ema.observe(0, [0, 4])
    assert ema.predict(0).tolist() == [2, 2]
    with pytest.raises(LoadsError):
        HistoryPredictor(1, 2, decay=1.0)


def test_coactivation_learns_the_next_layers_experts_from_token_ids():
    rng = np.random.default_rng(0)
    E, k = 6, 2
    follow = rng.permutation(E)  # every token's expert e at layer 0 is followed by follow[e] at layer 1
    ids0 = np.stack([rng.choice(E, k, replace=False) for _ in range(200)])
    p = CoactivationPredictor(2, E)
    assert p.predict(1, np.ones(E)) is None  # nothing learnt yet
    p.observe_tokens(1, ids0, follow[ids0])
    test = np.stack([rng.choice(E, k, replace=False) for _ in range(50)])
    counts0 = np.bincount(test.reshape(-1), minlength=E).astype(float)
    counts1 = np.bincount(follow[test].reshape(-1), minlength=E).astype(float)
    got = p.predict(1, counts0)
    assert got.sum() == pytest.approx(counts0.sum())
    # each token's pair spreads over the next pair: half of each count lands right, so the error is bounded
    assert count_error(got, counts1) < 1.0 and p.predict(0, counts0) is None


def test_coactivation_from_a_given_matrix():
    m = np.array([[3.0, 1.0], [0.0, 0.0]])  # expert 1 never seen at layer 0: spreads evenly
    p = CoactivationPredictor.from_cooccurrence({1: m}, 2)
    assert p.predict(1, np.array([4.0, 2.0])).tolist() == [4.0, 2.0]
    with pytest.raises(LoadsError):
        CoactivationPredictor.from_cooccurrence({1: -m}, 2)


@pytest.mark.traces
def test_coactivation_on_the_real_olmoe_matrices(trace_dir):
    z = np.load(trace_dir / "olmoe_domain_counts.npz", allow_pickle=False)
    cooc, counts = z["crosslayer_cooccurrence"], z["counts_topk"]  # [domain, pair (0->7, 7->15), E, E]; [domain, layer, E]
    for d in range(cooc.shape[0]):
        p = CoactivationPredictor.from_cooccurrence({1: cooc[d, 0], 2: cooc[d, 1]}, 3)
        got = p.predict(1, counts[d, 0].astype(float))
        # the matrices are the domain's own statistics: they map layer 0's counts onto layer 7's
        assert count_error(got, counts[d, 1]) < 0.05
        assert count_error(got, counts[d, 1]) < count_error(counts[d, 0], counts[d, 1])


torch = pytest.importorskip("torch")


def test_the_lookahead_predictor_starts_as_the_cloned_router():
    from probe_runtime.predictor import LookaheadPredictor

    g = torch.Generator().manual_seed(0)
    router, bias, h = torch.randn(16, 8, generator=g), torch.randn(8, generator=g), torch.randn(5, 16, generator=g)
    p = LookaheadPredictor(router, bias, 2)
    assert torch.equal(p.logits(h), h @ router + bias)  # the residual's last layer is zero
    c = p.expected_counts(h)
    assert c.sum() == pytest.approx(10.0) and (c >= 0).all()


def test_distillation_raises_held_out_top_k_recall():
    """Layer 1's routing predicted from layer 0's hidden state in a seeded stack: the cloned router
    misses what attention and the MoE change; distilling on other batches recovers part of it."""
    from probe_runtime.experts import reference_moe
    from probe_runtime.predictor import LookaheadPredictor, topk_recall
    from probe_runtime.stack import StackWeights, rms_norm

    torch.manual_seed(0)
    E, k, H = 32, 4, 32
    w = StackWeights.seeded(E, H, 16, np.zeros((2, E)), seed=1)

    def batch(seed: int, n: int):
        x = torch.randn(n, H, generator=torch.Generator().manual_seed(seed))
        x = x + w.attention[0](x)
        h0 = rms_norm(x)
        x = x + reference_moe(h0, w.routers[0], w.banks[0], k)
        x = x + w.attention[1](x)
        return h0, rms_norm(x) @ w.routers[1]

    train = [batch(s, 512) for s in range(6)]
    h_test, z_test = batch(100, 1024)
    truth = torch.topk(z_test, k, dim=-1).indices  # layer 1's real routing
    p = LookaheadPredictor(w.routers[1], None, k)
    before = topk_recall(p.topk(h_test), truth)
    losses = p.distill(torch.cat([h for h, _ in train]), torch.cat([z for _, z in train]), steps=300)
    after = topk_recall(p.topk(h_test), truth)
    assert losses[-1] < losses[0] and after > before + 0.01, (before, after)
    assert 0 < p.noise < float(z_test.std())  # the measured logit error feeds the expected counts


def test_expected_counts_keep_the_batch_total_in_every_corner():
    from probe_runtime.predictor import LookaheadPredictor

    g = torch.Generator().manual_seed(1)
    router, h = torch.randn(16, 128, generator=g), torch.randn(1, 16, generator=g)
    p = LookaheadPredictor(router, None, 2)
    p.noise = 10.0  # one token, very uncertain: every expected count under half a token
    assert p.expected_counts(h).sum() == pytest.approx(2.0)
    p.noise = float("nan")  # a diverged distillation must not turn the loads into NaN
    assert np.isfinite(p.expected_counts(h)).all() and p.expected_counts(h).sum() == pytest.approx(2.0)
    every = LookaheadPredictor(torch.randn(16, 4, generator=g), None, 4)  # top-k = every expert
    assert every.expected_counts(torch.randn(3, 16, generator=g)).tolist() == [3.0] * 4
