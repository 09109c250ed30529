"""The greedy kernel's pieces on their own: its running score is the cost model's, the water-fill
levels hosts as documented, the remote mapping and its traffic agree, swaps work without lookahead."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe_planner import Budget, ModelShape, Topology, solve
from probe_planner.problem import Problem
from probe_planner.solvers.greedy import THOROUGH, kernel_params, run_kernel
from probe_planner.solvers.greedy_state import contrib, map_remote, waterfill

from .conftest import problems

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems(), st.booleans())
def test_kernel_score_is_the_cost_models(case, thorough):
    loads, topo, budget = case
    prob = Problem.build(loads, topo, budget)
    opts = THOROUGH if thorough else {}
    res = run_kernel(prob, topo.num_ranks * topo.slots, **opts)
    plan = solve(loads, topo, budget, solver="greedy", **opts)
    np.testing.assert_allclose(res.info["kernel_makespan_us"], plan.metrics.layer_makespan_us, rtol=1e-9, atol=1e-9)


def _layer(seed: int, g: int, e: int, rpn: int, integral: bool):
    rng = np.random.default_rng(seed)
    n = rng.poisson(rng.uniform(1, 60, size=(g, e))).astype(float)
    if not integral:
        n *= rng.uniform(0.2, 1.0, size=n.shape)
    model = ModelShape(name="k", num_experts=e, top_k=1, hidden=1024, expert_ffn=512)
    topo = Topology(num_ranks=g, ranks_per_node=rpn, intra_node_bw=450e9, inter_node_bw=50e9, peak_flops=989.5e12,
                    hbm_bw=3.35e12, model=model, slots=2)
    return rng, n, topo


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.booleans(), st.integers(1, 6), st.sampled_from([0.0, 2.0]))
def test_waterfill_keeps_local_tokens_and_levels_the_receivers(seed, integral, nh, w):
    g, e = 8, 8
    rng, n, topo = _layer(seed, g, e, 4, integral)
    prob = Problem.build(n, topo, Budget(window_us=0.0))
    p = kernel_params(prob, w)
    hosts = np.zeros((e, g), np.int64)
    hosts[0, :nh] = rng.permutation(g)[:nh]
    xh = np.zeros((e, g))
    base = rng.uniform(0, 50, g)
    key, order = np.zeros(g), np.zeros(g, np.int64)
    total = float(n[:, 0].sum())
    waterfill(0, n, total, hosts, nh, xh, base, p, integral, key, order)
    x = xh[0, :nh]
    loc = n[hosts[0, :nh], 0]
    assert np.all(x >= loc - 1e-12)
    if integral:
        assert np.all(x == np.floor(x)) and x.sum() == total
        return
    assert abs(x.sum() - total) <= 1e-9 * max(1.0, total)
    slope = p[0] + p[6] * p[7]
    level = base[:nh] + loc * p[0] + slope * (x - loc)
    recv = x > loc + 1e-9
    if recv.any():  # receivers share one level, and nobody idle sits below it
        lam = level[recv].max()
        np.testing.assert_allclose(level[recv], lam, rtol=1e-6, atol=1e-6)
        assert np.all(level[~recv] >= lam - 1e-6)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.booleans(), st.integers(1, 5), st.sampled_from([1, 2, 4]))
def test_remote_mapping_conserves_tokens_and_contrib_counts_its_traffic(seed, integral, nh, rpn):
    g, e = 8, 8
    rng, n, topo = _layer(seed, g, e, rpn, integral)
    node_of = topo.node_of
    hosts = np.zeros((e, g), np.int64)
    hosts[1, :nh] = rng.permutation(g)[:nh]
    is_host = np.zeros((e, g), np.bool_)
    is_host[1, hosts[1, :nh]] = True
    loc = n[hosts[1, :nh], 1]
    remote = n[:, 1].sum() - loc.sum()
    share = rng.dirichlet(np.ones(nh)) * remote
    if integral:
        share = np.floor(share)
        share[0] += remote - share.sum()
    xh = np.zeros((e, g))
    xh[1, :nh] = loc + share
    rem, quota = np.zeros(g), np.zeros(g)
    o_src, o_dst, o_amt = np.zeros(4 * g + 4, np.int64), np.zeros(4 * g + 4, np.int64), np.zeros(4 * g + 4)
    cnt = map_remote(1, n, is_host, hosts, nh, xh, rpn, rem, quota, o_src, o_dst, o_amt)
    src, dst, amt = o_src[:cnt], o_dst[:cnt], o_amt[:cnt]
    assert not is_host[1, src].any() and is_host[1, dst].all()
    np.testing.assert_allclose(np.bincount(src, weights=amt, minlength=g)[~is_host[1]], n[~is_host[1], 1], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(np.bincount(dst, weights=amt, minlength=g)[hosts[1, :nh]], share, rtol=1e-12, atol=1e-9)
    if integral:
        assert np.all(amt == np.floor(amt))
    # the traffic this mapping makes, as contrib computes it without writing the mapping
    want = np.zeros((g, 4))
    inter = (node_of[src] != node_of[dst]).astype(int)
    np.add.at(want, (dst, inter), amt)
    np.add.at(want, (src, 2 + inter), amt)
    nodes = np.arange(g // rpn, dtype=np.int64)
    cv, supply, left = np.zeros((g, 4)), np.zeros(g), np.zeros(g)
    contrib(1, n, hosts, nh, xh, is_host, node_of, rpn, nodes, nodes.size, cv, supply, left)
    np.testing.assert_allclose(cv, want, rtol=1e-12, atol=1e-9)


def test_swaps_without_lookahead_stay_valid_and_pay():
    # a 16x4 Zipf(1.2) layer (bench/greedy_speed.py's generator, seed 5) where taking a copy back
    # and spending its slot and windows elsewhere lowers the makespan 2.4% with no lookahead at all
    rng = np.random.default_rng(5)
    loads = np.zeros((4, 16))
    pop = 1.0 / np.arange(1, 17) ** 1.2
    pop = pop[rng.permutation(16)]
    for r in range(4):
        loads[r] = rng.multinomial(256 * 8, rng.dirichlet(pop / pop.sum() * 100.0))
    model = ModelShape(name="zipf-16", num_experts=16, top_k=8, hidden=4096, expert_ffn=1536)
    topo = Topology(num_ranks=4, ranks_per_node=4, intra_node_bw=450e9, inter_node_bw=50e9, peak_flops=989.5e12,
                    hbm_bw=3.35e12, model=model, slots=3)
    budget = Budget(window_us=200.0)
    plain = solve(loads, topo, budget, solver="greedy")
    swapped = solve(loads, topo, budget, solver="greedy", max_swaps=4)
    assert swapped.makespan_us < 0.99 * plain.makespan_us
