"""Correlation-aware prediction of the next layer's experts from the experts the current layer uses.

The prediction itself is :class:`probe_planner.predict.CoactivationPredictor` (``counts_l @ P_l``, ``P_l``
the row-normalised cross-layer co-occurrence matrix): the runtime and the simulator share it. This
module adds what offloading needs around it: per-token probabilities for :func:`.problem.forecast`,
top-k recall against a frequency-only baseline on the real OLMoE / Mixtral matrices
(``crosslayer_cooccurrence[domain, pair, e_i, e_j]``: layer pairs 0→7 and 7→15, slot-aligned; the traces
hold no lookahead gate, so no gate-based predictor can be scored on them), and a synthetic multi-layer
routing built from those statistics for the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OffloadError, TraceError
from ..predict import CoactivationPredictor
from ..traces import DOMAINS, _open


@dataclass(frozen=True)
class DomainStats:
    """One model's routing statistics per domain: ``counts[d, 3, E]`` (layers 0/7/15), ``cooc[d, 2, E, E]``
    (pairs 0→7, 7→15), ``domains`` names, ``top_k``."""

    domains: tuple[str, ...]
    counts: np.ndarray
    cooc: np.ndarray
    top_k: int


def load_domain_stats(model: str, trace_dir: str | Path | None = None) -> DomainStats:
    """The shared ``{olmoe,mixtral}_domain_counts.npz`` statistics; :class:`TraceError` if absent."""
    if model not in DOMAINS:
        raise TraceError(f"model must be one of {sorted(DOMAINS)}, got {model!r}")
    with _open(DOMAINS[model], trace_dir) as z:
        counts = z["counts_topk"].astype(np.float64)
        cooc = z["crosslayer_cooccurrence"].astype(np.float64)
        top1 = z["counts_top1"].astype(np.float64)
        domains = tuple(str(d) for d in z["domains"])
    top_k = int(round(counts[0, 0].sum() / top1[0, 0].sum()))
    return DomainStats(domains=domains, counts=counts, cooc=cooc, top_k=top_k)


def transition(cooc: np.ndarray) -> np.ndarray:
    """``[E, E]`` row-normalised co-occurrence: ``P[e, f]`` the share of layer-l assignments to ``e`` whose
    token takes ``f`` next (the matrix :class:`CoactivationPredictor` uses; unseen rows uniform)."""
    m = np.asarray(cooc, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.isfinite(m).all() or (m < 0).any():
        raise OffloadError(f"a co-occurrence matrix must be a finite >= 0 [E, E] array, got shape {list(m.shape)}")
    rows = m.sum(axis=1, keepdims=True)
    return np.divide(m, rows, out=np.full_like(m, 1.0 / m.shape[1]), where=rows > 0)


def next_layer_freq(predictor: CoactivationPredictor, layer: int, counts: np.ndarray, tokens: int) -> np.ndarray | None:
    """Per-token probabilities ``[E]`` for ``layer`` from the previous layer's real ``counts`` of a group
    of ``tokens`` tokens (expected assignments over tokens, at most 1), or ``None`` without evidence."""
    pred = predictor.predict(layer, counts)
    return None if pred is None else np.minimum(pred / max(tokens, 1), 1.0)


def pair_recall(test: np.ndarray, ranking: np.ndarray, k: int) -> float:
    """Share of the (token, slot) pairs of ``test`` ``[E, E]`` (first-layer expert, second-layer expert)
    whose second expert is among the ``k`` a predictor ranks first for their first expert
    (``ranking[e]``: second-layer experts, best first)."""
    hit = 0.0
    for e in range(test.shape[0]):
        hit += test[e, ranking[e, :k]].sum()
    return float(hit / test.sum())


@dataclass(frozen=True)
class RecallRow:
    """Top-k recall of one held-out (domain, layer pair): ``coactivation`` (rows of the co-occurrence of
    the other domains) and ``frequency`` (their second-layer frequencies, the same for every first expert)."""

    domain: str
    pair: str
    k: int
    coactivation: float
    frequency: float


def recall_table(stats: DomainStats, k: int | None = None, held_out: bool = True) -> list[RecallRow]:
    """Per domain and layer pair, top-``k`` recall (default ``k = top_k``) of the next-layer expert.
    ``held_out``: the predictors learn from the other domains (a workload the model was not profiled on);
    else from the same domain (the in-sample upper bound)."""
    k = stats.top_k if k is None else k
    num_e = stats.cooc.shape[-1]
    if not 1 <= k <= num_e:
        raise OffloadError(f"k must lie in [1, {num_e}], got {k!r}")
    pairs = ("0->7", "7->15")
    out = []
    for d, name in enumerate(stats.domains):
        for p in range(stats.cooc.shape[1]):
            test = stats.cooc[d, p]
            train = stats.cooc[np.arange(len(stats.domains)) != d, p].sum(axis=0) if held_out else test
            cond = np.argsort(-transition(train), axis=1, kind="stable")
            freq = np.broadcast_to(np.argsort(-train.sum(axis=0), kind="stable"), (num_e, num_e))
            out.append(RecallRow(name, pairs[p], k, pair_recall(test, cond, k), pair_recall(test, freq, k)))
    return out


def batch_recall(stats: DomainStats, tokens: int, samples: int = 50, seed: int = 0) -> tuple[float, float]:
    """``(coactivation, frequency)`` recall of the set of experts a batch of ``tokens`` tokens needs at the
    second layer of each pair, predicting as many experts as it needs: from the batch's real first-layer
    counts through the other domains' transitions, or from the other domains' frequencies alone. Batches
    are sampled (seeded) from the held-out domain's joint pair distribution, ``top_k`` slots per token."""
    rng = np.random.default_rng(seed)
    num_d, num_p, num_e, _ = stats.cooc.shape
    hits = np.zeros(2)
    total = 0.0
    for d in range(num_d):
        for p in range(num_p):
            joint = stats.cooc[d, p].reshape(-1) / stats.cooc[d, p].sum()
            train = stats.cooc[np.arange(num_d) != d, p].sum(axis=0)
            trans, freq_rank = transition(train), np.argsort(-train.sum(axis=0), kind="stable")
            for _ in range(samples):
                draw = rng.choice(joint.size, size=tokens * stats.top_k, p=joint)
                first = np.bincount(draw // num_e, minlength=num_e)
                needed = np.flatnonzero(np.bincount(draw % num_e, minlength=num_e))
                m = needed.size
                co_rank = np.argsort(-(first @ trans), kind="stable")
                hits += [np.isin(co_rank[:m], needed).sum(), np.isin(freq_rank[:m], needed).sum()]
                total += m
    return float(hits[0] / total), float(hits[1] / total)


@dataclass(frozen=True)
class SyntheticRouting:
    """Routing of ``L`` layers built from one domain's real statistics: ``counts[S, L, E]`` per pass;
    ``freq[L, E]`` the long-run per-token probabilities (what a frequency-only predictor knows at best);
    ``transitions[L, E, E]``: ``transitions[l]`` maps layer ``l − 1``'s expert to layer ``l``'s (0: unused)."""

    counts: np.ndarray
    freq: np.ndarray
    transitions: np.ndarray


def synthetic_routing(stats: DomainStats, domain: int, num_layers: int, passes: int, tokens: int, seed: int = 0,
                      transitions_from: str = "same") -> SyntheticRouting:
    """A ``num_layers``-layer routing whose statistics are the real ones: each of a token's ``top_k`` slots
    starts at layer 0 from the domain's layer-0 frequencies and moves layer to layer through the domain's
    real transitions (0→7, then 7→15, alternating), each layer's experts relabelled by a fixed random
    permutation so hot experts differ by layer. Slots move independently (a token may repeat an expert), so counts are drawn as sums of multinomials.
    ``transitions_from``: ``"same"`` — the returned transitions are the generating ones (what an online
    learner converges to); ``"other"`` — learnt from the other domains (a workload never profiled)."""
    if transitions_from not in ("same", "other"):
        raise OffloadError(f"transitions_from must be 'same' or 'other', got {transitions_from!r}")
    rng = np.random.default_rng(seed)
    num_d, _, num_e, _ = stats.cooc.shape
    perm = np.stack([rng.permutation(num_e) for _ in range(num_layers)])  # base label -> layer label
    gen = [transition(stats.cooc[domain, p]) for p in (0, 1)]
    other = stats.cooc[np.arange(num_d) != domain].sum(axis=0)
    learnt = gen if transitions_from == "same" else [transition(other[p]) for p in (0, 1)]
    start = stats.counts[domain, 0] / stats.counts[domain, 0].sum()
    # long-run frequencies per layer (base labels), then per-token probabilities in layer labels
    dist = np.zeros((num_layers, num_e))
    dist[0] = start
    for lay in range(1, num_layers):
        dist[lay] = dist[lay - 1] @ gen[(lay - 1) % 2]
    freq = np.zeros((num_layers, num_e))
    trans = np.zeros((num_layers, num_e, num_e))
    for lay in range(num_layers):
        freq[lay, perm[lay]] = np.minimum(dist[lay] * stats.top_k, 1.0)
        if lay:
            t = np.zeros((num_e, num_e))
            t[np.ix_(perm[lay - 1], perm[lay])] = learnt[(lay - 1) % 2]
            trans[lay] = t
    counts = np.zeros((passes, num_layers, num_e))
    for s in range(passes):
        # slots move independently, so a layer's counts given the previous layer's are a sum of multinomials
        base = rng.multinomial(tokens * stats.top_k, start)
        for lay in range(num_layers):
            if lay:
                base = sum(rng.multinomial(n, gen[(lay - 1) % 2][e]) for e, n in enumerate(base) if n)
            counts[s, lay, perm[lay]] = base
    return SyntheticRouting(counts=counts, freq=freq, transitions=trans)


def predictor_for(routing: SyntheticRouting) -> CoactivationPredictor:
    """The shared predictor over a synthetic routing's transitions (rows are already normalised)."""
    num_layers = routing.transitions.shape[0]
    return CoactivationPredictor.from_cooccurrence({lay: routing.transitions[lay] for lay in range(1, num_layers)}, num_layers)
