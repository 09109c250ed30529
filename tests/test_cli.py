"""The probe-plan CLI: demo and solve, and the package's import floor (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from probe_planner import load_plan
from probe_planner.cli import main


def test_demo(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "static" in out and "greedy" in out and "imbalance before -> after" in out


def test_solve_npy_and_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    loads = rng.poisson(20, size=(8, 128)).astype(float)
    loads[:, 3] *= 30
    np.save(tmp_path / "l.npy", loads)
    out = tmp_path / "plan.npz"
    code = main(["solve", str(tmp_path / "l.npy"), "--cluster", "h100x8", "--model", "qwen3-30b-a3b",
                 "--window-us", "150", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "bound" in text and "greedy" in text
    assert load_plan(out).solver == "greedy"
    (tmp_path / "l.json").write_text(json.dumps({"loads": loads.sum(0).tolist()}))
    assert main(["solve", str(tmp_path / "l.json"), "--cluster", "h200x8", "--model", "qwen3-30b-a3b",
                 "--window-us", "50", "--solver", "static"]) == 0
    assert main(["solve", str(tmp_path / "l.npy"), "--cluster", "h100x8", "--model", "qwen3-30b-a3b",
                 "--window-us", "150", "--solver", "auto", "--backend", "ortools", "--time-limit-s", "0.2"]) == 0
    assert "auto" in capsys.readouterr().out


def test_solve_passes_solver_options(tmp_path, capsys):
    loads = np.full((8, 128), 5.0)
    loads[:, 3] = 900.0
    np.save(tmp_path / "l.npy", loads)
    args = ["solve", str(tmp_path / "l.npy"), "--cluster", "h100x8", "--model", "qwen3-30b-a3b", "--window-us", "150"]
    assert main([*args, "--option", "lookahead=4", "--option", "max_swaps=4", "--option", "n_dest=4"]) == 0
    assert main([*args, "--option", "max_moves=0", "--out", str(tmp_path / "p.json")]) == 0
    assert load_plan(tmp_path / "p.json").num_replicas == 0
    capsys.readouterr()
    assert main([*args, "--option", "bogus=1"]) == 2
    assert "takes no option(s) ['bogus']" in capsys.readouterr().err
    assert main([*args, "--option", "lookahead"]) == 2
    assert "not KEY=VALUE" in capsys.readouterr().err


def test_solve_reports_bad_input(tmp_path, capsys):
    np.save(tmp_path / "l.npy", -np.ones((8, 128)))
    code = main(["solve", str(tmp_path / "l.npy"), "--cluster", "h100x8", "--model", "qwen3-30b-a3b",
                 "--window-us", "150"])
    assert code == 2
    assert "must be >= 0" in capsys.readouterr().err


def test_planner_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import probe_planner, numpy as np\n"
            "t = probe_planner.Topology.from_cards(model='mixtral-8x7b', cluster='h100x8')\n"
            "p = probe_planner.solve(np.arange(8.0), t, probe_planner.Budget(window_us=1e4))\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print(p.num_layers)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"


def test_first_solve_does_not_spend_its_budget_on_compilation():
    code = ("import numpy as np, probe_planner as pp\n"
            "t = pp.Topology.from_cards(model='qwen3-30b-a3b', cluster='h100x8')\n"
            "loads = np.full((8, 128), 30.0); loads[:, 7] *= 20\n"
            "p = pp.solve(loads, t, pp.Budget(window_us=150.0, time_limit_s=0.05))\n"
            "print(p.num_replicas, p.info['finished'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    replicas, finished = res.stdout.split()
    assert int(replicas) > 0 and finished == "True"
