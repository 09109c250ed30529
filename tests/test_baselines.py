"""EPLB-style placement and the engines' dispatch rules: hand-computed cases from the published
descriptions and properties on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe_planner import Budget, LoadsError, TopologyError, solve
from probe_planner.baselines.eplb import eplb_placement, pack, replicate

from .conftest import make_topology


def _per_rank(plan, layer: int = 0) -> np.ndarray:
    part = plan.layer(layer)
    return np.bincount(part.routes[:, 2], weights=part.tokens, minlength=plan.topology.num_ranks)


def test_global_eplb_matches_the_hand_computed_placement():
    # loads [10, 6, 4, 2], 2 redundant slots: e0 (10/1) then e1 (6/1 > 10/2) get them; replicas
    # 5, 5, 4, 3, 3, 2 largest first into the lighter rank with room and without that expert:
    # e0 r0, e0 r1, e2 r0 (tie), e1 r1, e1 r0 (r1 holds e1), e3 r1
    p = eplb_placement(np.array([10, 6, 4, 2]), make_topology(1, 2, 2, slots=0), redundant=2)
    assert p.logcnt.tolist() == [[2, 2, 1, 1]]
    assert p.phy2log.tolist() == [[0, 1, 2, 0, 1, 3]]
    assert p.log2phy.tolist() == [[[0, 3], [1, 4], [2, -1], [5, -1]]]


def test_hierarchical_eplb_matches_the_hand_computed_placement():
    # 2 nodes x 2 ranks, groups {0,1} (load 16) and {2,3} (6) one per node; each node's 4 slots:
    # node 0 replicates e0 then e1 (5 vs 6 per copy), node 1 e2 then e3 (at most one copy per rank)
    p = eplb_placement(np.array([10, 6, 4, 2]), make_topology(2, 2, 1, slots=0), redundant=4, hierarchical=True)
    assert p.logcnt.tolist() == [[2, 2, 2, 2]]
    assert p.phy2log.tolist() == [[0, 1, 0, 1, 2, 3, 2, 3]]


def test_replicate_and_pack_follow_the_description():
    assert replicate(np.array([9.0, 3.0]), 4, most=4).tolist() == [3, 1]  # 9, 4.5 > 3, then 3 vs 3: lower index
    where = pack(np.array([4.0, 3.0, 2.0, 1.0]), np.arange(4), 2)  # 4 -> a, 3 -> b, 2 -> b, 1 -> a
    assert where.tolist() == [0, 1, 1, 0]


@settings(max_examples=60, deadline=None)
@given(nodes=st.integers(1, 3), rpn=st.integers(1, 4), epr=st.integers(1, 4), extra=st.integers(0, 4),
       layers=st.integers(1, 2), hier=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_eplb_keeps_equal_slots_per_rank_and_never_two_copies_on_a_rank(nodes, rpn, epr, extra, layers, hier, seed):
    topo = make_topology(nodes, rpn, epr, slots=0)
    G, E = topo.num_ranks, topo.num_experts
    rng = np.random.default_rng(seed)
    totals = rng.zipf(1.5, size=(layers, E)).astype(float)
    redundant = min(extra * G, E * (G - 1))
    if hier:
        redundant = min(redundant, E * (rpn - 1))
        redundant -= redundant % G
    p = eplb_placement(totals, topo, redundant, hierarchical=hier)
    P = E + redundant
    assert p.phy2log.shape == (layers, P)
    for lay in range(layers):
        per_rank = p.phy2log[lay].reshape(G, P // G)
        assert all(len(set(row.tolist())) == row.size for row in per_rank)  # no duplicate on a rank
        hosts = p.hosts(lay)
        assert (hosts.sum(axis=1) == P // G).all() and (hosts.sum(axis=0) == p.logcnt[lay]).all()
        assert (p.logcnt[lay] >= 1).all()
        if hier:  # every copy of an expert stays in one node
            node_of = np.arange(G) // rpn
            assert all(len(set(node_of[hosts[:, e]].tolist())) == 1 for e in range(E))
        # the engines' dispatch rules give valid plans on the placement (solve() validates them)
        loads = rng.poisson(totals[lay] / G, size=(G, E)).astype(float)
        for rule in ("even", "local-first", "lplb"):
            plan = solve(loads, p.topology(topo, lay), Budget(window_us=0.0), solver=rule)
            assert plan.num_replicas == 0 and abs(_per_rank(plan).sum() - loads.sum()) < 1e-6
    mig = p.migration(topo)
    assert mig.copies.tolist() == [int((p.hosts(lay) & ~topo.native).sum()) for lay in range(layers)]
    assert ((mig.time_us > 0) == (mig.copies > 0)).all()


def test_eplb_refuses_bad_input():
    topo = make_topology(1, 2, 2, slots=0)
    with pytest.raises(TopologyError, match="multiple"):
        eplb_placement(np.ones(4), topo, redundant=1)
    with pytest.raises(LoadsError, match="experts"):
        eplb_placement(np.ones(5), topo, redundant=2)
    with pytest.raises(LoadsError, match="finite"):
        eplb_placement(np.array([1, -1, 0, 0]), topo, redundant=2)
    with pytest.raises(TopologyError, match="redundant"):
        eplb_placement(np.ones(4), topo, redundant=True)
    with pytest.raises(TopologyError, match="groups"):
        eplb_placement(np.ones(4), make_topology(2, 1, 2, slots=0), redundant=2, hierarchical=True, groups=3)


def test_even_and_local_first_split_as_the_engines_do():
    native = np.zeros((4, 4), dtype=bool)
    native[np.arange(4), np.arange(4)] = True
    native[1, 0] = True  # expert 0 on ranks 0 and 1
    topo = make_topology(1, 4, 1, slots=0, placement=native)
    loads = np.zeros((4, 4))
    loads[:, 0] = [5, 4, 3, 2]
    even = solve(loads, topo, Budget(window_us=0.0), solver="even").layer(0)
    got = {(s, d): t for (s, _, d), t in zip(even.routes.tolist(), even.tokens.tolist(), strict=True)}
    assert got == {(0, 0): 3, (0, 1): 2, (1, 0): 2, (1, 1): 2, (2, 0): 2, (2, 1): 1, (3, 0): 1, (3, 1): 1}
    local = solve(loads, topo, Budget(window_us=0.0), solver="local-first").layer(0)
    got = {(s, d): t for (s, _, d), t in zip(local.routes.tolist(), local.tokens.tolist(), strict=True)}
    assert got == {(0, 0): 5, (1, 1): 4, (2, 0): 3, (3, 1): 2}  # own copy; else copy (source mod 2)


def test_lplb_balances_token_counts():
    native = np.zeros((2, 2), dtype=bool)
    native[:, 0] = True  # expert 0 on both ranks, expert 1 on rank 0 only
    native[0, 1] = True
    topo = make_topology(1, 2, 1, slots=0, placement=native)
    loads = np.array([[6.0, 5.0], [4.0, 5.0]])  # expert 0: 10 tokens, expert 1: 10 (all on rank 0)
    plan = solve(loads, topo, Budget(window_us=0.0), solver="lplb")
    assert _per_rank(plan).tolist() == [10.0, 10.0]  # expert 0 entirely on rank 1
    assert _per_rank(solve(loads, topo, Budget(window_us=0.0), solver="even")).tolist() == [15.0, 5.0]
