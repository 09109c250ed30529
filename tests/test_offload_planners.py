"""Offload planners: memory limits at every point, exact MILP vs greedy vs brute force, group search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe_planner import ModelShape
from probe_planner.errors import OffloadError
from probe_planner.offload.baselines import adaptive, on_demand, single_batch, whole_layer
from probe_planner.offload.exact import plan_exact
from probe_planner.offload.greedy import plan_greedy
from probe_planner.offload.group import candidate_groups, choose_group
from probe_planner.offload.plan import planning_objective_us, slots_used
from probe_planner.offload.problem import OffloadProblem, forecast
from probe_planner.offload.timeline import run_timeline
from probe_planner.predict import CoactivationPredictor


def make_problem(layers: int, experts: int, slots: int, top_k: int = 1, dense: float = 0.0, batch_tokens: int = 4) -> OffloadProblem:
    """Loads of 10 µs, compute ``max(tokens, 0.5)`` µs."""
    model = ModelShape(name="t", num_experts=experts, top_k=top_k, hidden=1, expert_ffn=1)
    return OffloadProblem(model=model, alpha_us=1.0, beta_us=0.5, host_bw=6e5, cache_slots=slots, batch_tokens=batch_tokens,
                          num_layers=layers, dense_us_per_token=dense)


@st.composite
def cases(draw, max_layers: int = 5, max_experts: int = 6):
    """(problem, freq [L, E], group, counts [S, L, E]) with skewed routing and every cache size."""
    layers = draw(st.integers(1, max_layers))
    experts = draw(st.integers(1, max_experts))
    top_k = draw(st.integers(1, experts))
    slots = draw(st.integers(experts, layers * experts))
    p = make_problem(layers, experts, slots, top_k, dense=draw(st.sampled_from([0.0, 0.5, 3.0])),
                     batch_tokens=draw(st.integers(1, 8)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(experts, draw(st.sampled_from([0.2, 1.0, 5.0]))), size=layers)
    freq = np.minimum(w * top_k, 1.0)
    group = draw(st.integers(1, 6))
    tokens = p.group_tokens(group)
    counts = np.stack([np.stack([rng.multinomial(tokens * top_k, w[lay]) for lay in range(layers)]) for _ in range(3)])
    return p, freq, group, counts.astype(float)


def replay_peak(schedule, passes: int = 3) -> int:
    """The most entries the planned cache holds, replaying the schedule cyclically (an independent check of validate)."""
    cache = {tuple(map(int, x)) for x in schedule.resident_start}
    peak = len(cache)
    for _ in range(passes):
        for lay in range(schedule.num_layers):
            cache -= {tuple(map(int, x)) for x in schedule.evict[lay]}
            for e in schedule.prefetch[lay]:
                assert (lay, int(e)) not in cache, "a prefetch reloads a cached expert"
                cache.add((lay, int(e)))
                peak = max(peak, len(cache))
    return peak


@settings(max_examples=60, deadline=None)
@given(cases())
def test_plans_respect_the_memory_limit_at_every_point(case):
    p, freq, group, counts = case
    plan = plan_greedy(p, forecast(p, freq, group))
    assert replay_peak(plan.schedule) <= p.cache_slots
    assert slots_used(plan.pinned, plan.stream) + plan.spare_slots <= p.cache_slots
    # on the real routing, on-demand loads included, the cache never exceeds its slots either
    for s in (plan.schedule, on_demand(p, group), single_batch(p, freq).schedule):
        tl = run_timeline(p, s, counts)
        assert tl.peak_slots <= p.cache_slots
    if p.num_layers > 1:
        cooc = {lay: np.random.default_rng(lay).uniform(size=(p.num_experts,) * 2) for lay in range(1, p.num_layers)}
        adapted = adaptive(p, plan, CoactivationPredictor.from_cooccurrence(cooc, p.num_layers), counts)
        for s in adapted:
            assert replay_peak(s) <= p.cache_slots
        assert run_timeline(p, adapted, counts).peak_slots <= p.cache_slots


@settings(max_examples=40, deadline=None)
@given(cases())
def test_greedy_kernel_objective_is_the_planning_objective(case):
    p, freq, group, _ = case
    fc = forecast(p, freq, group)
    plan = plan_greedy(p, fc)
    assert plan.objective_us == pytest.approx(planning_objective_us(p, fc, plan.pinned, plan.stream), rel=1e-9)
    assert not (plan.pinned & plan.stream).any()
    if p.num_layers == 1:
        assert not plan.stream.any()


@settings(max_examples=40, deadline=None)
@given(cases(max_layers=4, max_experts=5))
def test_exact_is_never_worse_than_greedy(case):
    p, freq, group, _ = case
    fc = forecast(p, freq, group)
    g, x = plan_greedy(p, fc), plan_exact(p, fc, time_limit_s=5.0)
    assert x.objective_us <= g.objective_us * (1 + 1e-9)
    assert x.status == "optimal"
    assert replay_peak(x.schedule) <= p.cache_slots


def brute_force_us(p: OffloadProblem, fc, slots: int) -> float:
    """The planning objective's minimum over every (none / pinned / streamed) choice per expert."""
    big_l, big_e = fc.need.shape
    best = np.inf
    for choice in itertools.product((0, 1, 2), repeat=big_l * big_e):
        c = np.array(choice).reshape(big_l, big_e)
        pinned, stream = c == 1, c == 2
        if big_l == 1 and stream.any():
            continue
        if slots_used(pinned, stream) <= slots:
            best = min(best, planning_objective_us(p, fc, pinned, stream))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_exact_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    layers, experts = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    p = make_problem(layers, experts, int(rng.integers(experts, layers * experts + 1)), dense=float(rng.choice([0.0, 2.0])))
    freq = rng.uniform(0, 1, size=(layers, experts))
    fc = forecast(p, freq, int(rng.integers(1, 4)))
    x = plan_exact(p, fc, spare_slots=0)
    assert x.objective_us == pytest.approx(brute_force_us(p, fc, p.cache_slots), rel=1e-9)


def test_exact_beats_greedy_somewhere():
    """The greedy's uniform stream budgets are a restriction the MILP does not have: find a case where it
    costs something (so the comparison above is not vacuous)."""
    gaps = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        p = make_problem(4, 4, int(rng.integers(4, 12)), dense=float(rng.choice([0.0, 5.0, 20.0])), batch_tokens=8)
        fc = forecast(p, np.minimum(rng.dirichlet(np.full(4, 0.3), size=4) * 2, 1.0), int(rng.integers(1, 6)))
        g, x = plan_greedy(p, fc, spare_slots=0), plan_exact(p, fc, spare_slots=0)
        gaps.append(g.objective_us - x.objective_us)
    assert min(gaps) >= -1e-6
    assert max(gaps) > 1e-6


def test_pins_follow_need_and_streams_fill_the_window():
    # a layer's compute (dense 25 µs per token x 4 tokens) hides the next layer's loads: stream them; the
    # 4 slots hold less than the 6 experts a pass needs, so an LRU cache misses every one of them
    p = make_problem(3, 4, 4, top_k=1, dense=25.0)
    freq = np.tile([0.9, 0.5, 0.05, 0.0], (3, 1))
    plan = plan_greedy(p, forecast(p, freq, 1), spare_slots=0)
    assert not plan.pinned[:, 3].any() and not plan.stream[:, 3].any()  # never needed: never loaded
    assert plan.stream.sum() + plan.pinned.sum() >= 5
    tl = run_timeline(p, plan.schedule, np.array([[[1, 1, 0, 0]] * 3] * 4, float))
    od = run_timeline(p, on_demand(p), np.array([[[1, 1, 0, 0]] * 3] * 4, float))
    assert tl.latency_us < od.latency_us


def test_group_search_respects_the_latency_cap():
    p = make_problem(4, 4, 8, top_k=2, batch_tokens=2)
    freq = np.full((4, 4), 0.5)
    loose = choose_group(p, freq, np.inf, groups=[1, 2, 4, 8, 16])
    assert loose.plan.group > 1
    cap = sorted(t[1] for t in loose.tried)[1]  # admits some groups, not all
    tight = choose_group(p, freq, cap, groups=[1, 2, 4, 8, 16])
    assert tight.plan.objective_us <= cap
    ok = [t for t in tight.tried if t[1] <= cap]
    assert tight.plan.tokens_per_s >= 0.99 * max(t[2] for t in ok)
    none = choose_group(p, freq, 1e-3, groups=[2, 4])
    assert none.plan.group == 2 and "no group" in none.message


def test_candidate_groups_are_powers_of_two_and_the_bound():
    p = make_problem(2, 2, 2)
    assert candidate_groups(p, 12) == [1, 2, 4, 8, 12]
    assert candidate_groups(p, 8) == [1, 2, 4, 8]


def test_whole_layer_streams_everything_not_resident():
    p = make_problem(4, 4, 12)
    s = whole_layer(p)
    assert sum(x.size for x in s.prefetch) + 4 * ((12 - 8) // 2) == 16
    with pytest.raises(OffloadError, match="two layers"):
        whole_layer(make_problem(4, 4, 7))


def test_coactivation_prefetch_hides_what_frequency_cannot_know():
    """A token keeps its expert from layer to layer: frequencies are uniform, so a static plan streams
    a guess, while the co-activation prediction off the previous layer's real routing is exact."""
    p = make_problem(4, 4, 4, top_k=1, dense=25.0, batch_tokens=1)
    plan = plan_greedy(p, forecast(p, np.full((4, 4), 0.25), 1))
    rng = np.random.default_rng(0)
    counts = np.zeros((8, 4, 4))
    for s, e in enumerate(rng.integers(0, 4, size=8)):
        counts[s, :, e] = 1
    pred = CoactivationPredictor.from_cooccurrence({lay: np.eye(4) for lay in range(1, 4)}, 4)
    static = run_timeline(p, plan.schedule, counts)
    adapted = run_timeline(p, adaptive(p, plan, pred, counts), counts)
    assert adapted.misses < static.misses
    assert adapted.total_us < static.total_us
    assert adapted.peak_slots <= p.cache_slots


def test_pins_spread_over_layers_when_every_expert_is_needed():
    # every expert sure to be needed, nothing hides a load: pins are worth the same everywhere, and the
    # spare slots are what the worst layer misses, so the pins must spread evenly over the layers
    p = make_problem(6, 8, 30, top_k=8, batch_tokens=8)
    plan = plan_greedy(p, forecast(p, np.ones((6, 8)), 1))
    per_layer = plan.pinned.sum(axis=1)
    assert per_layer.max() - per_layer.min() <= 1
    assert plan.spare_slots == (8 - per_layer - plan.stream.sum(axis=1)).max()  # what the worst layer misses
