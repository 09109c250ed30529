"""Expert maps in the engines' formats: round trips and refusals that name the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probe_planner import MapError
from probe_planner.baselines.eplb import eplb_placement
from probe_planner.engine_maps import from_phy2log, load_map, load_window, save_map

from .conftest import make_topology


def _map():
    topo = make_topology(2, 2, 2, slots=1)  # 4 ranks, 8 experts, 4 redundant slots: 3 slots a rank
    rng = np.random.default_rng(0)
    return eplb_placement(rng.zipf(1.5, size=(3, 8)).astype(float), topo, 4), topo


@pytest.mark.parametrize("suffix", [".npz", ".json", ".yaml", ".pt"])
def test_maps_round_trip_in_every_format(suffix, tmp_path):
    if suffix == ".pt":
        pytest.importorskip("torch")
    m, topo = _map()
    path = save_map(m, tmp_path / f"map{suffix}")
    back = load_map(path, topo.num_ranks, topo.num_experts, num_layers=3)
    assert np.array_equal(back.phy2log, m.phy2log) and np.array_equal(back.logcnt, m.logcnt)
    assert np.array_equal(back.log2phy, m.log2phy)


def test_the_trtllm_yaml_reader_needs_no_pyyaml(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_yaml(name, *a, **k):
        if name == "yaml":
            raise ImportError("no yaml")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    m, topo = _map()
    back = load_map(save_map(m, tmp_path / "m.yaml"), topo.num_ranks, topo.num_experts)
    assert np.array_equal(back.phy2log, m.phy2log)


@pytest.mark.parametrize("rows, match", [
    ([[0, 1, 2, 3, 4, 5, 6]], "multiple of the 4 ranks"),           # 7 slots: unequal slots per rank
    ([[0, 1, 2, 3, 4, 5, 6, 6]], "no slot"),                         # expert 7 missing
    ([[0, 0, 1, 2, 3, 4, 5, 7, 6, 6, 6, 6]], "twice"),               # rank 0 holds expert 0 twice
    ([[0, 1, 2, 3, 4, 5, 6, 9]], "outside"),                         # an id past the model's experts
    ([[0.5] * 8], "integer"),
])
def test_a_malformed_map_is_refused_naming_the_problem(rows, match):
    with pytest.raises(MapError, match=match):
        from_phy2log(np.array(rows), 4, 8)


def test_mismatched_files_are_refused(tmp_path):
    m, topo = _map()
    path = save_map(m, tmp_path / "m.json")
    with pytest.raises(MapError, match="layers"):
        load_map(path, topo.num_ranks, topo.num_experts, num_layers=4)
    doc = json.loads(path.read_text())
    doc["physical_to_logical_map"][1] = doc["physical_to_logical_map"][1][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(MapError, match="different slot counts"):
        load_map(path, topo.num_ranks, topo.num_experts)
    y = save_map(m, tmp_path / "m.yaml")
    y.write_text(y.read_text().replace(f"num_slots: {m.phy2log.shape[1]}", "num_slots: 4"))
    with pytest.raises(MapError, match="num_slots"):
        load_map(y, topo.num_ranks, topo.num_experts)
    z = tmp_path / "m.npz"
    np.savez(z, phy2log=m.phy2log, logcnt=m.logcnt + 1)
    with pytest.raises(MapError, match="logcnt"):
        load_map(z, topo.num_ranks, topo.num_experts)
    with pytest.raises(MapError, match="format"):
        load_map(tmp_path / "m.txt", topo.num_ranks, topo.num_experts)


def test_load_windows_come_in_plain_or_as_sglang_dumps(tmp_path):
    w = np.random.default_rng(1).poisson(3.0, size=(5, 2, 8)).astype(float)
    np.save(tmp_path / "w.npy", w)
    np.savez(tmp_path / "d.npz", logical_count=w.astype(np.int64))
    assert np.array_equal(load_window(tmp_path / "w.npy"), w) and np.array_equal(load_window(tmp_path / "d.npz"), w)
    torch = pytest.importorskip("torch")
    torch.save({"logical_count": torch.as_tensor(w)}, tmp_path / "dump.pt")
    assert np.array_equal(load_window(tmp_path / "dump.pt"), w)
    np.save(tmp_path / "bad.npy", -w)
    with pytest.raises(MapError, match="T, L, E"):
        load_window(tmp_path / "bad.npy")


def test_engine_written_files_as_the_engines_write_them(tmp_path):
    m, topo = _map()
    # vLLM pads log2phy to the redundancy + 1 and lists replicas in the order it made them
    wide = np.full((3, 8, 5), -1, dtype=np.int64)
    wide[:, :, :m.log2phy.shape[2]] = m.log2phy[:, :, ::-1]
    z = tmp_path / "vllm.npz"
    np.savez(z, phy2log=m.phy2log, log2phy=wide, logcnt=m.logcnt)
    assert np.array_equal(load_map(z, topo.num_ranks, topo.num_experts).phy2log, m.phy2log)
    # TensorRT-LLM keys MoE layers by index (dense layers first) and has other keys
    y = save_map(m, tmp_path / "lb.yaml", layer_ids=[3, 4, 5])
    y.write_text(y.read_text() + "layer_updates_per_iter: 0\nep_size: 4\n")
    assert np.array_equal(load_map(y, topo.num_ranks, topo.num_experts).phy2log, m.phy2log)
    y.write_text(y.read_text().replace("ep_size: 4", "ep_size: 8"))
    with pytest.raises(MapError, match="ep_size"):
        load_map(y, topo.num_ranks, topo.num_experts)
    assert save_map(m, tmp_path / "map.bin", fmt="eplb").exists()  # the path it says it wrote


def test_corrupt_files_are_a_map_error_not_a_crash(tmp_path):
    m, topo = _map()
    bad = tmp_path / "m.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(MapError, match="cannot read"):
        load_map(bad, topo.num_ranks, topo.num_experts)
    y = save_map(m, tmp_path / "m.yaml")
    lines = y.read_text().splitlines()
    y.write_text("\n".join([*lines, lines[-1]]) + "\n")  # a layer listed twice
    with pytest.raises(MapError):
        load_map(y, topo.num_ranks, topo.num_experts)
    with pytest.raises(MapError, match="num_ranks"):
        from_phy2log(m.phy2log, 0, 8)
