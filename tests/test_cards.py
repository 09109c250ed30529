"""Built-in cards load and give the published shapes."""

from __future__ import annotations

import pytest

from probe_planner import Topology
from probe_planner.cards import card_names, load_cluster_card, load_model_card

MODELS = ["mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "qwen3-235b-a22b", "gpt-oss-120b",
          "qwen1.5-moe-a2.7b", "olmoe-1b-7b", "switch-base-128"]
CLUSTERS = ["h100x8", "h100x16-ib", "h200x8"]


def test_every_named_card_is_built_in():
    assert set(MODELS) <= set(card_names("moe"))
    assert set(CLUSTERS) <= set(card_names("clusters"))


@pytest.mark.parametrize("name, experts, top_k, layers", [
    ("mixtral-8x7b", 8, 2, 32), ("deepseek-v3", 256, 8, 58), ("qwen3-30b-a3b", 128, 8, 48),
    ("qwen3-235b-a22b", 128, 8, 94), ("gpt-oss-120b", 128, 4, 36), ("qwen1.5-moe-a2.7b", 60, 4, 24),
    ("olmoe-1b-7b", 64, 8, 16), ("switch-base-128", 128, 1, 12),
])
def test_model_shapes(name, experts, top_k, layers):
    m = load_model_card(name)
    assert (m.num_experts, m.top_k, m.moe_layers) == (experts, top_k, layers)


def test_derived_sizes():
    mixtral = load_model_card("mixtral-8x7b")
    assert mixtral.expert_bytes == 3 * 4096 * 14336 * 2  # ~352 MB of BF16 per expert
    assert mixtral.token_bytes == 4096 * 2
    assert mixtral.flops_per_token == 2 * 3 * 4096 * 14336
    assert load_model_card("deepseek-v3").expert_bytes == 3 * 7168 * 2048  # FP8


def test_cluster_cards_in_si_units():
    c = load_cluster_card("h100x16-ib")
    assert c["num_ranks"] == 16 and c["ranks_per_node"] == 8
    assert c["intra_node_bw"] == 450e9 and c["inter_node_bw"] == 50e9
    assert load_cluster_card("h200x8")["hbm_bw"] == 4.8e12


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_from_cards_combinations(model, cluster):
    m = load_model_card(model)
    g = load_cluster_card(cluster)["num_ranks"]
    if m.num_experts % g:
        with pytest.raises(ValueError, match="divisible"):
            Topology.from_cards(model=model, cluster=cluster)
    else:
        topo = Topology.from_cards(model=model, cluster=cluster, slots=2)
        assert topo.slots == 2 and topo.native.sum() == m.num_experts


def test_card_from_path(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\nnum_experts = 4\ntop_k = 1\nhidden = 8\nexpert_ffn = 8\n')
    topo = Topology.from_cards(model=path, cluster="h100x8", num_ranks=4, ranks_per_node=4)
    assert topo.model.name == "tiny" and topo.num_ranks == 4


def test_from_cards_resizes_the_cluster_to_a_rank_count():
    from probe_planner import Topology

    t = Topology.from_cards("qwen3-30b-a3b", "h100x16-ib", ranks=32)
    assert (t.num_ranks, t.ranks_per_node) == (32, 8)  # nodes of the card's size
    t = Topology.from_cards("qwen3-30b-a3b", "h100x8", ranks=4)
    assert (t.num_ranks, t.ranks_per_node) == (4, 4)  # fewer ranks than a node: one node
    assert Topology.from_cards("qwen1.5-moe-a2.7b", "h100x8", ranks=6).ranks_per_node == 6
