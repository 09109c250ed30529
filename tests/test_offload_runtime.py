"""probe_runtime.offload on CPU: an offloaded MoE stack (experts in host memory, a cache of C device
slots filled by a copy thread) against the all-in-memory reference, under exact, empty and random
schedules, and the refusals of schedules that do not fit the stack."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from probe_planner.errors import OffloadError, PlannerError  # noqa: E402
from probe_planner.offload import OffloadSchedule  # noqa: E402
from probe_runtime.experts import reference_moe, seeded_experts  # noqa: E402
from probe_runtime.offload import CacheTooSmallError, OffloadedStack, as_schedule  # noqa: E402
from probe_runtime.offload_cache import ExpertCache, HostExperts, Loader  # noqa: E402
from probe_runtime.stack import StackWeights, rms_norm  # noqa: E402

L, E, HIDDEN, FFN, K, TOKENS = 4, 16, 32, 16, 2, 5
SLOTS = 40  # built; a schedule may use fewer


def _weights() -> StackWeights:
    # skewed routers (as real routing is): a layer of a small group needs a subset of the experts
    rng = np.random.default_rng(0)
    bias = np.log(1.0 / np.arange(1, E + 1) ** 1.2)[rng.permuted(np.tile(np.arange(E), (L, 1)), axis=1)]
    return StackWeights.seeded(E, HIDDEN, FFN, bias, seed=3)


def _group(b: int, seed: int = 0) -> list[torch.Tensor]:
    return [torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(100 * seed + i)) for i in range(b)]


def _pairs(rows) -> np.ndarray:
    return np.array(sorted(rows), dtype=np.int64).reshape(-1, 2)


def _empty(slots: int, group: int, resident=()) -> OffloadSchedule:
    return OffloadSchedule(L, E, slots, group, tuple(np.zeros(0, np.int64) for _ in range(L)),
                           tuple(_pairs([]) for _ in range(L)), _pairs(resident))


def _exact(need: list[np.ndarray], group: int) -> OffloadSchedule:
    """Prefetch exactly each layer's needed experts while the layer before computes; evict layer l-2's
    (finished) before prefetch[l]."""
    ev = [_pairs([]), _pairs([])] + [_pairs((lay - 2, int(e)) for e in need[lay - 2]) for lay in range(2, L)]
    slots = max(len(need[lay]) + (len(need[lay - 1]) if lay else 0) for lay in range(L))
    return OffloadSchedule(L, E, slots, group, tuple(need), tuple(ev), _pairs([])).validate()


def _ref(stack: OffloadedStack, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """The all-in-memory outputs and each layer's needed experts."""
    ref, counts = stack.reference(xs)
    assert counts.shape == (L, E) and (counts.sum(axis=1) == len(xs) * TOKENS * K).all()
    return ref, [np.flatnonzero(c) for c in counts]


def _close(out: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(out) == len(ref)
    for y, r in zip(out, ref, strict=True):
        torch.testing.assert_close(y, r, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls beside the copy thread: one intra-op thread, so a busy box does not oversubscribe its cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def weights() -> StackWeights:
    return _weights()


@pytest.fixture(scope="module")
def stack(weights):
    with OffloadedStack(weights, K, SLOTS) as s:
        yield s


@pytest.mark.parametrize("b", [1, 3])
def test_an_exact_schedule_has_no_misses_and_equals_the_reference(stack, weights, b):
    xs = _group(b)
    ref, need = _ref(stack, xs)
    for x, r in zip(xs, ref, strict=True):  # the stack's reference is the existing one
        torch.testing.assert_close(weights.reference(x, K), r, atol=0, rtol=0)
    assert all(0 < len(n) < E for n in need)  # the layers need a subset: the schedule matters
    sched = _exact(need, b)
    loads0 = stack.cache.loads
    out, stats = stack.run(xs, sched)
    _close(out, ref)
    assert stats.misses == 0
    for lay, s in enumerate(stats.layers):
        assert (s.needed, s.hits, s.prefetched, s.prefetch_used) == (len(need[lay]),) * 4
        assert s.evicted == len(sched.evict[lay]) and s.evict_skipped == s.prefetch_skipped == s.lru_evicted == 0
        assert s.bytes_loaded == len(need[lay]) * stack.host.expert_bytes
    assert stack.cache.loads - loads0 == sum(map(len, need)) + stats.start_loaded
    assert stats.max_occupancy <= sched.cache_slots and len(stack.cache) <= sched.cache_slots


@pytest.mark.parametrize("b", [1, 3])
def test_an_empty_schedule_loads_everything_on_demand(stack, b):
    xs = _group(b, seed=1)
    ref, need = _ref(stack, xs)
    slots = max(map(len, need))  # tight: later layers must evict earlier layers' experts by LRU
    out, stats = stack.run(xs, _empty(slots, b))
    _close(out, ref)
    assert [s.misses for s in stats.layers] == [len(n) for n in need]
    assert stats.prefetched == 0 and all(s.hits == 0 for s in stats.layers)
    assert sum(s.lru_evicted for s in stats.layers) > 0
    assert stats.max_occupancy == slots  # reached, never exceeded
    assert stats.bytes_loaded == (sum(map(len, need)) + stats.start_loaded) * stack.host.expert_bytes


@st.composite
def _wrong_schedules(draw):
    """Group size, input seed, spare slots, and the generator :func:`_random_schedule` makes a valid schedule
    with (prefetches and evictions unrelated to the routing)."""
    b = draw(st.sampled_from([1, 3]))
    seed = draw(st.integers(0, 5))
    slack = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return b, seed, slack, rng


def _random_schedule(rng: np.random.Generator, slots: int, b: int) -> OffloadSchedule:
    every = [(lay, e) for lay in range(L) for e in range(E)]
    start = [every[i] for i in rng.choice(len(every), size=rng.integers(0, slots + 1), replace=False)]
    cache = set(start)
    prefetch, evict = [], []
    for lay in range(L):
        held = sorted(cache)
        ev = [held[i] for i in rng.choice(len(held), size=rng.integers(0, len(held) + 1), replace=False)] if held else []
        cache -= set(ev)
        # the contract lets a plan evict what it has not cached (on-demand loads may hold it): a no-op or an eviction
        ev += [k for k in (every[i] for i in rng.choice(len(every), size=3, replace=False)) if k not in cache and k not in ev]
        free = [e for e in range(E) if (lay, e) not in cache]
        pf = rng.choice(free, size=min(len(free), int(rng.integers(0, slots - len(cache) + 1))), replace=False)
        cache |= {(lay, int(e)) for e in pf}
        prefetch.append(pf.astype(np.int64))
        evict.append(_pairs(ev))
    return OffloadSchedule(L, E, slots, b, tuple(prefetch), tuple(evict), _pairs(start)).validate()


@settings(max_examples=12, deadline=None)
@given(_wrong_schedules())
def test_a_random_schedule_still_equals_the_reference(stack, case):
    b, seed, slack, rng = case
    xs = _group(b, seed=seed)
    ref, need = _ref(stack, xs)
    sched = _random_schedule(rng, max(map(len, need)) + slack, b)
    seen = []  # the cache's entries after every load, watched from outside the cache
    load = stack.cache.load
    stack.cache.load = lambda key: (load(key), seen.append(len(stack.cache)))[0]
    try:
        out, stats = stack.run(xs, sched)
    finally:
        del stack.cache.load
    _close(out, ref)
    assert seen and max(seen) <= sched.cache_slots and stats.max_occupancy == max(seen + [len(sched.resident_start)])
    for lay, s in enumerate(stats.layers):
        assert s.hits + s.misses == s.needed == len(need[lay])
        assert s.prefetched + s.prefetch_skipped == len(sched.prefetch[lay])
        assert s.evicted + s.evict_skipped == len(sched.evict[lay])
        assert s.prefetch_used <= s.prefetched
    assert stats.start_loaded + stats.prefetched + stats.misses == stats.bytes_loaded // stack.host.expert_bytes


def test_a_fresh_pass_aligns_the_cache_to_resident_start(stack):
    xs = _group(1, seed=2)
    ref, need = _ref(stack, xs)
    slots = sum(map(len, need))  # room for every needed expert: nothing is evicted
    stack.run(xs, _empty(slots, 1))
    held = stack.cache.resident()
    assert held == {(lay, int(e)) for lay in range(L) for e in need[lay]}
    out, stats = stack.run(xs, _empty(slots, 1, resident=held))  # the cache as the last pass left it
    _close(out, ref)
    assert (stats.start_loaded, stats.start_evicted, stats.misses) == (0, 0, 0)
    assert all(s.hits == len(n) for s, n in zip(stats.layers, need, strict=True))
    start = {(0, int(need[0][0])), (3, (int(need[3][0]) + 1) % E)}
    out, stats = stack.run(xs, _empty(slots, 1, resident=start))
    _close(out, ref)
    assert (stats.start_evicted, stats.start_loaded) == (len(held - start), len(start - held)) == (len(held) - 1, 1)
    assert stats.layers[0].hits == 1 and stats.misses == sum(map(len, need)) - 1


def test_a_pass_run_with_then_issues_the_next_pass_first_loads_during_its_last_layer(stack):
    groups = [_group(2, seed=20 + i) for i in range(3)]
    (ref0, _), (ref1, need1), (ref2, _) = (_ref(stack, g) for g in groups)
    # cyclic, exact for the second group: prefetch its needs; evict all of layer l - 2 (mostly not cached: no-ops)
    every = [_pairs(((lay - 2) % L, e) for e in range(E)) for lay in range(L)]
    sched = OffloadSchedule(L, E, SLOTS, 2, tuple(need1), tuple(every), _pairs([])).validate()
    out, first = stack.run(groups[0], sched, then=sched)
    _close(out, ref0)
    loads = stack.cache.loads
    assert (first.start_loaded, first.layers[0].prefetched) == (0, len(need1[0]))
    out, second = stack.run(groups[1], sched)  # continued: no alignment; its prefetch[0] ran in the first pass
    _close(out, ref1)
    assert (second.start_loaded, second.start_evicted, second.misses) == (0, 0, 0)
    assert second.layers[0].prefetched == second.layers[0].prefetch_used == len(need1[0])
    assert stack.cache.loads - loads == sum(len(n) for n in need1[1:])  # layer 0's loads were the first pass's
    assert all(s.evicted + s.evict_skipped == E for s in second.layers) and sum(s.evict_skipped for s in second.layers) > 0
    out, third = stack.run(groups[2], sched)  # not continued (no then): a fresh start empties the cache first
    _close(out, ref2)
    assert third.start_evicted > 0
    loads = stack.cache.loads
    with pytest.raises(OffloadError, match="must agree"):
        stack.run(groups[0], sched, then=_empty(8, 2))
    with pytest.raises(OffloadError, match="already cached"):
        stack.run(groups[0], sched, then=_bad("cached")[0])
    assert stack.cache.loads == loads


def test_an_eviction_of_what_the_computing_layer_needs_is_skipped(stack):
    xs = _group(3, seed=7)
    ref, need = _ref(stack, xs)
    s = _exact(need, 3)
    # evict[1] runs while layer 0 computes: evicting layer 0's experts then would turn them into misses
    evict = (s.evict[0], _pairs((0, int(e)) for e in need[0])) + s.evict[2:]
    out, stats = stack.run(xs, OffloadSchedule(L, E, s.cache_slots, 3, s.prefetch, evict, s.resident_start).validate())
    _close(out, ref)
    assert stats.misses == 0 and stats.layers[1].evict_skipped == len(need[0]) and stats.layers[1].evicted == 0


@pytest.mark.parametrize("spare", [0, 8])
def test_the_runtime_counts_the_loads_the_planners_timeline_counts(weights, spare):
    from probe_planner.offload.greedy import plan_greedy
    from probe_planner.offload.problem import OffloadProblem, forecast
    from probe_planner.offload.timeline import run_timeline
    from probe_planner.topology import ModelShape

    b, passes = 2, 4
    model = ModelShape("tiny", E, K, HIDDEN, FFN, moe_layers=L, weight_bytes=4.0)
    # loads slow against compute, so the plan streams and pins experts and leaves the rest to misses
    problem = OffloadProblem(model, alpha_us=0.05, beta_us=2.0, host_bw=2e8, cache_slots=E + spare, batch_tokens=TOKENS,
                             num_layers=L, dense_us_per_token=1.0)
    with OffloadedStack(weights, K, E + spare) as s:
        groups = [_group(b, seed=40 + i) for i in range(passes)]
        counts = np.stack([s.reference(g)[1] for g in groups])
        sched = plan_greedy(problem, forecast(problem, counts.sum(axis=0) / (passes * b * TOKENS), b)).schedule
        assert sched.loads_per_pass > 0 and len(sched.resident_start) > 0
        stats = []
        for i, g in enumerate(groups):
            out, st_ = s.run(g, sched, then=sched if i + 1 < passes else None)
            _close(out, s.reference(g)[0])
            stats.append(st_)
    tl = run_timeline(problem, sched, counts)
    assert sum(st_.misses for st_ in stats) == tl.misses > 0
    assert sum(s_.lru_evicted for st_ in stats for s_ in st_.layers) > 0  # the LRU rule ran, and chose as the timeline's
    assert sum(st_.prefetched + st_.misses for st_ in stats) == tl.loads
    assert stats[0].start_loaded == len(sched.resident_start) and all(st_.start_loaded == 0 for st_ in stats[1:])


def test_a_layer_needing_more_than_the_cache_raises_and_the_stack_recovers(stack):
    xs = _group(3, seed=3)
    ref, need = _ref(stack, xs)
    with pytest.raises(CacheTooSmallError, match="distinct experts") as err:
        stack.run(xs, _empty(max(map(len, need)) - 1, 3))
    assert isinstance(err.value, OffloadError) and isinstance(err.value, ValueError)
    out, _ = stack.run(xs, _exact(need, 3))
    _close(out, ref)


def _bad(kind: str):
    e = np.zeros(0, np.int64)
    ok = dict(num_layers=L, num_experts=E, cache_slots=8, group=1, prefetch=(e,) * L, evict=(_pairs([]),) * L, resident_start=_pairs([]))
    if kind == "layers":
        return OffloadSchedule(**{**ok, "num_layers": L - 1, "prefetch": (e,) * (L - 1), "evict": (_pairs([]),) * (L - 1)}), "layers"
    if kind == "experts":
        return OffloadSchedule(**{**ok, "num_experts": E + 1}), "experts"
    if kind == "slots":
        return OffloadSchedule(**{**ok, "cache_slots": SLOTS + 1}), "built with"
    if kind == "group":
        return OffloadSchedule(**{**ok, "group": 2}), "groups of 2"
    if kind == "cached":
        return OffloadSchedule(**{**ok, "resident_start": _pairs([(0, 3)]), "prefetch": (np.array([3]),) + (e,) * (L - 1)}), "already cached"
    if kind == "twice":
        return OffloadSchedule(**{**ok, "evict": (np.array([[0, 3], [0, 3]]),) + (_pairs([]),) * (L - 1)}), "twice"
    if kind == "overflow":
        return OffloadSchedule(**{**ok, "cache_slots": 2, "prefetch": (np.arange(3),) + (e,) * (L - 1)}), "more than cache_slots"
    if kind == "range":
        return SimpleNamespace(**{**ok, "prefetch": (np.array([E]),) + (e,) * (L - 1)}), "outside"
    if kind == "shape":
        return SimpleNamespace(**{**ok, "evict": (np.zeros((1, 3), np.int64),) + (_pairs([]),) * (L - 1)}), r"\[k, 2\]"
    return SimpleNamespace(num_layers=L, prefetch=()), "not an offload schedule"


@pytest.mark.parametrize("kind", ["layers", "experts", "slots", "group", "cached", "twice", "overflow", "range", "shape", "partial"])
def test_a_bad_schedule_is_refused_before_any_load(stack, kind):
    xs = _group(1)
    stack.run(xs, _empty(8, 1, resident=[(1, 2)]))
    held, loads = stack.cache.resident(), stack.cache.loads
    sched, match = _bad(kind)
    with pytest.raises(OffloadError, match=match) as err:
        stack.run(xs, sched)
    assert isinstance(err.value, PlannerError)
    assert stack.cache.resident() == held and stack.cache.loads == loads  # nothing evicted or loaded


def test_bad_batches_are_refused_before_any_load(stack):
    loads = stack.cache.loads
    for xs in ([], [torch.randn(3, HIDDEN + 1)], [torch.randn(3, HIDDEN, dtype=torch.float64)], torch.randn(3, HIDDEN)):
        with pytest.raises(OffloadError, match="batch"):
            stack.run(xs, _empty(8, 1))
    assert stack.cache.loads == loads


def test_a_duck_typed_schedule_is_read(stack):
    xs = _group(1, seed=4)
    ref, need = _ref(stack, xs)
    s = _exact(need, 1)
    duck = SimpleNamespace(**{n: getattr(s, n) for n in ("num_layers", "num_experts", "cache_slots", "group", "prefetch", "evict",
                                                         "resident_start")})
    assert isinstance(as_schedule(duck), OffloadSchedule)
    out, stats = stack.run(xs, duck)
    _close(out, ref)
    assert stats.misses == 0


def test_without_attention_the_stack_is_routers_and_experts_only(weights):
    xs = _group(2, seed=5)
    with OffloadedStack(weights, K, 20, attention=False) as s:
        _, need = _ref(s, xs)
        out, stats = s.run(xs, _exact(need, 2))
    for x, y in zip(xs, out, strict=True):  # computed here from the weights, not by the stack's reference
        for router, bias, bank in zip(weights.routers, weights.biases, weights.banks, strict=True):
            x = x + reference_moe(rms_norm(x), router, bank, K, bias)
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
    assert stats.misses == 0


class _SlowLoader(Loader):
    """Loads that land late: a computation that did not wait for its expert would read another's weights."""

    def _run(self, jobs) -> None:
        while (job := jobs.get()) is not None:
            time.sleep(0.003)
            dst, src, t = job
            for d, s in zip(dst, src, strict=True):
                d.copy_(s)
            t.done.set()


def test_compute_waits_for_each_load_when_loads_are_slow(weights):
    xs = _group(3, seed=6)
    with OffloadedStack(weights, K, 12) as s:
        s.cache.loader.close()
        s.cache.loader = _SlowLoader(s.device)
        ref, need = _ref(s, xs)
        slots = max(map(len, need))  # tight: slots are reused by other experts as the pass goes
        out, stats = s.run(xs, _random_schedule(np.random.default_rng(7), slots, 3))
        _close(out, ref)
        out, _ = s.run(xs, _empty(slots, 3))
        _close(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path (pinned host memory, side stream, events) needs a GPU")
def test_on_a_gpu_the_stack_equals_the_reference(weights):
    with OffloadedStack(weights, K, SLOTS, device="cuda") as s:
        assert s.host.pinned and s.cache.loader.stream is not None
        for b, seed in ((1, 8), (3, 9)):
            xs = _group(b, seed=seed)
            ref, need = _ref(s, xs)
            out, stats = s.run(xs, _exact(need, b))
            _close(out, ref)
            assert stats.misses == 0
            slots = max(map(len, need))  # tight: slots are reloaded while earlier computations may still be queued
            for sched in (_empty(slots, b), _random_schedule(np.random.default_rng(seed), slots, b)):
                out, stats = s.run(xs, sched)
                _close(out, ref)
                assert stats.max_occupancy <= slots


# ---- the cache on its own -----------------------------------------------------------------------
@pytest.fixture
def host() -> HostExperts:
    return HostExperts([seeded_experts(4, 8, 6, seed=s) for s in range(2)])


def test_host_experts_check_their_banks(host):
    assert (host.num_layers, host.num_experts, host.pinned) == (2, 4, False)
    assert host.expert_bytes == 3 * 8 * 6 * 4
    assert not HostExperts.for_device(host.banks, "cpu").pinned
    with pytest.raises(OffloadError, match="same experts' shapes"):
        HostExperts([seeded_experts(4, 8, 6, seed=0), seeded_experts(5, 8, 6, seed=1)])
    with pytest.raises(OffloadError, match="at least one"):
        HostExperts([])


def test_the_cache_loads_evicts_and_never_exceeds_its_capacity(host):
    cache = ExpertCache(3, host)
    try:
        j = cache.load((1, 2))
        cache.wait((1, 2))
        bank, i = cache.weights((1, 2))
        assert i == j and all(torch.equal(w[i], h) for w, h in zip(bank.tensors, host.expert(1, 2), strict=True))
        cache.load((0, 0))
        cache.load((0, 1))
        with pytest.raises(OffloadError, match="full"):
            cache.load((0, 3))
        with pytest.raises(OffloadError, match="already cached"):
            cache.load((0, 0))
        with pytest.raises(OffloadError, match="not cached"):
            cache.evict((1, 1))
        with pytest.raises(OffloadError, match="no expert"):
            ExpertCache(1, host).load((2, 0))
        cache.weights((1, 2))  # a use: (0, 0) is now the least recently used
        assert cache.victim(set()) == (0, 0) and cache.victim({(0, 0)}) == (0, 1)
        cache.pin({(0, 0), (0, 1)})
        assert cache.victim(set()) == (1, 2)
        with pytest.raises(RuntimeError, match="pinned"):
            cache.evict((0, 0))
        cache.release()
        cache.evict((0, 0))
        with pytest.raises(OffloadError, match="evict some"):
            cache.capacity = 1
        cache.capacity = 2
        with pytest.raises(OffloadError, match="full"):
            cache.load((0, 3))
        with pytest.raises(OffloadError, match="slots built"):
            cache.capacity = 4
        assert cache.peak == 3 and cache.loads == 3 and cache.bytes_loaded == 3 * host.expert_bytes
        cache.drain()
        assert not any(cache.pending(k) for k in cache.resident())
    finally:
        cache.close()
    with pytest.raises(OffloadError, match="at least one slot"):
        ExpertCache(0, host)
