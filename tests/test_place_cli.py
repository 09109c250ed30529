"""``probe-plan place``: a load window in, an engine map out; bad input is one clean line."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner.cli import main
from probe_planner.engine_maps import load_map, save_map
from probe_planner.topology import Topology


@pytest.fixture
def window_file(tmp_path):
    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, 129) ** 1.2
    lam = np.stack([pop[rng.permutation(128)] for _ in range(2)]) * 200  # [L 2, E 128]
    path = tmp_path / "window.npy"
    np.save(path, rng.poisson(lam[None] * rng.uniform(0.5, 1.5, size=(12, 2, 1))).astype(np.float64))
    return path


ARGS = ["--cluster", "h100x8", "--model", "qwen3-30b-a3b", "--time-limit-s", "2"]


@pytest.mark.parametrize("fmt, suffix", [("eplb", ".npz"), ("sglang", ".json"), ("trtllm", ".yaml")])
def test_place_writes_a_map_and_prints_before_after_and_eplb(fmt, suffix, window_file, tmp_path, capsys):
    out = tmp_path / f"map{suffix}"
    assert main(["place", str(window_file), *ARGS, "--slots", "17", "--format", fmt, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("current", "place", "eplb-style", "copies", "expected makespan"):
        assert word in text
    m = load_map(out, 8, 128, num_layers=2)
    assert m.slots_per_rank == 17
    # the current map round trip: placing again from it keeps it
    out2 = tmp_path / f"again{suffix}"
    assert main(["place", str(window_file), *ARGS, "--slots", "17", "--current", str(out), "--format", fmt,
                 "--out", str(out2)]) == 0
    assert "kept" in capsys.readouterr().out
    assert np.array_equal(load_map(out2, 8, 128).phy2log, m.phy2log)


def test_place_with_reserve_and_budget(window_file, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["place", str(window_file), *ARGS, "--slots", "18", "--reserve", "1", "--move-budget-us", "500",
                 "--format", "sglang", "--out", str(out)]) == 0
    capsys.readouterr()
    assert load_map(out, 8, 128).slots_per_rank in (16, 17)  # kept (16, sharded) or placed on 18 - 1


@pytest.mark.parametrize("extra, match", [
    (["--slots", "17", "--reserve", "17"], "reserve"),
    (["--slots", "15"], "cannot hold"),
    (["--slots", "17", "--move-budget-us", "-1"], "move_budget_us"),
    (["--slots", "17", "--current", "nowhere.json"], "nowhere.json"),
    (["--slots", "x"], "invalid int"),
])
def test_bad_input_is_one_clean_line(extra, match, window_file, tmp_path, capsys):
    rc = main(["place", str(window_file), *ARGS, *extra, "--format", "eplb", "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("probe-plan: error:") and match in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_a_bad_window_or_out_path_is_one_clean_line(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, -np.ones((3, 2, 128)))
    rc = main(["place", str(bad), *ARGS, "--slots", "17", "--format", "eplb", "--out", str(tmp_path / "m.npz")])
    assert rc == 2 and ">= 0" in capsys.readouterr().err
    good = tmp_path / "w.npy"
    np.save(good, np.ones((3, 2, 128)))
    rc = main(["place", str(good), *ARGS, "--slots", "17", "--format", "eplb", "--out", str(tmp_path / "no" / "m.npz")])
    assert rc == 2 and "writable" in capsys.readouterr().err
    topo = Topology.from_cards(model="qwen3-30b-a3b", cluster="h100x16-ib")
    wrong = tmp_path / "wrong.json"
    from probe_planner.baselines.eplb import eplb_placement
    save_map(eplb_placement(np.ones((2, 128)), topo, 16), wrong)  # a 16-rank map
    rc = main(["place", str(good), *ARGS, "--slots", "17", "--current", str(wrong), "--format", "eplb",
               "--out", str(tmp_path / "m.npz")])
    assert rc == 2 and "probe-plan: error:" in capsys.readouterr().err
