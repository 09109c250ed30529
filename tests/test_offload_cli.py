"""``probe-bench offload`` end to end on a small configuration (the --quick run is the README's)."""

from __future__ import annotations

import csv

import pytest

from probe_planner.harness import offload_cli
from probe_planner.harness.cli import main as bench_main


def test_offload_bench_small_run(tmp_path, capsys):
    rc = bench_main(["offload", "--models", "mixtral-8x7b", "--cache-fracs", "0.25", "--passes", "2", "--max-group", "4",
                     "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "× on-demand" in out
    with open(tmp_path / "offload.csv") as fh:
        rows = list(csv.DictReader(fh))
    policies = {r["policy"] for r in rows if r["kind"] == "policy"}
    assert {"on-demand", "whole-layer", "single-batch", "ours", "ours+coact"} <= policies
    assert sorted(int(r["group"]) for r in rows if r["kind"] == "sweep") == [1, 2, 4]
    by = {r["policy"]: float(r["tokens_per_s"]) for r in rows if r["kind"] == "policy"}
    assert by["ours"] >= by["single-batch"]  # the chosen group (b >= 1) runs the same plan search on more tokens


@pytest.mark.parametrize("argv", [["--passes", "1"], ["--cache-fracs", "1.5"], ["--batch-tokens", "0"]])
def test_offload_bench_bad_arguments(tmp_path, argv, capsys):
    assert offload_cli.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 2
    assert "error" in capsys.readouterr().err
