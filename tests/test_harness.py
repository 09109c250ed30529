"""probe-bench: a small run end to end (table, CSV, JSON, PNGs) and its refusals."""

from __future__ import annotations

import csv
import json

import pytest

from probe_planner.harness.cli import main
from probe_planner.harness.methods import METHODS


@pytest.mark.slow
def test_probe_bench_runs_every_method_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--source", "zipf", "--cluster", "h100x16-ib", "--steps", "2", "--layers", "1", "--budget-s", "0.05",
            "--out", str(out), "--methods", *METHODS]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for m in METHODS:
        assert f"| {m}" in printed
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["method"] for r in rows} == set(METHODS) and len(rows) == len(METHODS)
    doc = json.loads((out / "results.json").read_text())
    by = {s["method"]: s for s in doc["summary"]}
    assert by["static"]["speedup"] == 1.0
    for m, s in by.items():
        assert s["ratio_to_bound"] > 0 and s["solve_ms_median"] >= 0
        if m in ("static", "greedy", "auto", "milp", "lp-round"):  # plans of the same problem: never below its bound
            assert s["ratio_to_bound"] >= 1.0 - 1e-9
    assert by["drop"]["dropped"] > 0 and by["reroute"]["rerouted"] > 0 and by["eplb"]["copies"] > 0
    assert (out / "quality_vs_time.png").stat().st_size > 0 and (out / "over_steps.png").stat().st_size > 0


@pytest.mark.parametrize("argv", [["--methods", "magic"], ["--source", "nowhere"], ["--jobs", "0"],
                                  ["--source", "zipf", "--steps", "1"], ["--source", "qwen15-decode"]])
def test_probe_bench_refuses_bad_arguments_in_one_line(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe-bench: error:") and len(err.strip().splitlines()) == 1
