"""The probe-plan CLI: demo and solve, and the package's import floor (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

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


# --- every bad input: one clean line on stderr, exit 2, no traceback ---------------------------

CARDS = ["--cluster", "h100x8", "--model", "qwen3-30b-a3b"]
SOLVE = [*CARDS, "--window-us", "150"]


def assert_clean_error(capsys, code: int, fragment: str) -> str:
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert code == 2, cap.err
    assert len(lines) == 1 and lines[0].startswith("probe-plan: error: "), cap.err
    assert "Traceback" not in cap.err + cap.out
    assert fragment in lines[0], lines[0]
    return lines[0]


def _write_loads_files(d):
    ok = np.full((8, 128), 5.0)
    ok[:, 3] = 900.0
    np.save(d / "ok.npy", ok)
    (d / "empty.npy").write_bytes(b"")
    (d / "truncated.npy").write_bytes((d / "ok.npy").read_bytes()[:100])
    np.save(d / "str.npy", np.full((8, 128), "1"))
    np.save(d / "bool.npy", np.ones((8, 128), dtype=bool))
    np.save(d / "complex.npy", np.ones((8, 128), dtype=complex))
    np.save(d / "object.npy", np.full((8, 128), 1, dtype=object), allow_pickle=True)
    np.save(d / "huge.npy", np.full((8, 128), 1e25))
    with open(d / "zip.npy", "wb") as fh:
        np.savez(fh, loads=ok)
    (d / "dir.npy").mkdir()
    (d / "utf8.json").write_bytes(b"\xff\xfe[1, 2]")
    (d / "broken.json").write_text("[[1, 2,")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "nokey.json").write_text(json.dumps({"values": [1]}))
    (d / "bools.json").write_text(json.dumps([[True] * 128] * 8))
    (d / "mixed.json").write_text(json.dumps([[True] + [1] * 127] * 8))
    (d / "strings.json").write_text(json.dumps([["1"] * 128] * 8))
    (d / "nan.json").write_text("[" + ", ".join(["NaN"] + ["1"] * 127) + "]")
    (d / "big.json").write_text("[" + ", ".join(["1e400"] + ["1"] * 127) + "]")
    (d / "loads.txt").write_text("1 2 3")


@pytest.mark.parametrize("name, fragment", [
    ("empty.npy", "is empty or truncated"),
    ("truncated.npy", "truncated.npy"),
    ("str.npy", "got dtype <U1 (string)"),
    ("bool.npy", "got dtype bool (boolean)"),
    ("complex.npy", "got dtype complex128 (complex)"),
    ("object.npy", "allow_pickle"),
    ("huge.npy", "exceeds MAX_LOAD_TOTAL = 2**53"),
    ("zip.npy", "is not a .npy array (it holds NpzFile)"),
    ("dir.npy", "is not a regular file"),
    ("missing.npy", "does not exist"),
    ("utf8.json", "is not UTF-8 text"),
    ("broken.json", "is not valid JSON"),
    ("deep.json", "RecursionError"),
    ("nokey.json", "needs a 'loads' key"),
    ("bools.json", "got dtype bool (boolean)"),
    ("mixed.json", "not booleans"),
    ("strings.json", "got dtype <U1 (string)"),
    ("nan.json", "NaN or inf"),
    ("big.json", "NaN or inf"),
    ("loads.txt", "suffix must be .npy or .json"),
])
def test_cli_bad_loads_files(tmp_path, capsys, name, fragment):
    _write_loads_files(tmp_path)
    assert_clean_error(capsys, main(["solve", str(tmp_path / name), *SOLVE]), fragment)


def test_cli_bad_cards(tmp_path, capsys):
    np.save(tmp_path / "l.npy", np.full((8, 128), 5.0))
    loads = str(tmp_path / "l.npy")
    (tmp_path / "m.toml").write_text('name = "m"\nnum_experts = "eight"\ntop_k = 1\nhidden = 8\nexpert_ffn = 8\n')
    (tmp_path / "u.toml").write_bytes(b"name = \"\xff\"\n")
    (tmp_path / "t.toml").write_text("num_ranks = [")
    cases = [
        (["--cluster", "h100x8", "--model", str(tmp_path / "m.toml")], "num_experts must be an integer"),
        (["--cluster", str(tmp_path / "u.toml"), "--model", "qwen3-30b-a3b"], "is not UTF-8 text"),
        (["--cluster", str(tmp_path / "t.toml"), "--model", "qwen3-30b-a3b"], "is not valid TOML"),
        (["--cluster", "nope", "--model", "qwen3-30b-a3b"], "no built-in clusters card named 'nope'"),
        (["--cluster", "h100x8", "--model", str(tmp_path / "missing.toml")], "does not exist"),
    ]
    for cards, fragment in cases:
        assert_clean_error(capsys, main(["solve", loads, *cards, "--window-us", "150"]), fragment)


@pytest.mark.parametrize("extra, fragment", [
    (["--window-us", "nan"], "window_us must be >= 0"),
    (["--window-us", "-1"], "window_us must be >= 0"),
    (["--window-us", "1", "--time-limit-s", "inf"], "time_limit_s must be a finite number > 0, got inf"),
    (["--window-us", "1", "--time-limit-s", "nan"], "time_limit_s must be a finite number > 0"),
    (["--window-us", "1", "--time-limit-s", "-1"], "time_limit_s must be a finite number > 0"),
    (["--window-us", "1", "--time-limit-s", "0"], "time_limit_s must be a finite number > 0"),
    (["--window-us", "fast"], "argument --window-us: invalid float value: 'fast'"),
    (["--window-us", "1", "--solver", "magic"], "argument --solver: invalid choice"),
    ([], "the following arguments are required: --window-us"),
])
def test_cli_bad_budget_and_arguments(tmp_path, capsys, extra, fragment):
    np.save(tmp_path / "l.npy", np.full((8, 128), 5.0))
    assert_clean_error(capsys, main(["solve", str(tmp_path / "l.npy"), *CARDS, *extra]), fragment)


def test_cli_usage_errors_are_one_line(capsys):
    assert_clean_error(capsys, main([]), "the following arguments are required: command")
    assert_clean_error(capsys, main(["frobnicate"]), "invalid choice: 'frobnicate'")


@pytest.mark.parametrize("options, fragment", [
    (["max_moves=1e400"], "max_moves"),
    (["n_dest=100000000000000000000000"], "n_dest"),
    (["n_dest=[1, 2]"], "n_dest"),
    (["sources=given"], "'sources' is not a solver option"),
    (["solver=milp"], "'solver' is not a solver option"),
    (["lookahead=2", "lookahead=3"], "solver option 'lookahead' given twice"),
    (["=3"], "is not KEY=VALUE"),
])
def test_cli_bad_solver_options(tmp_path, capsys, options, fragment):
    np.save(tmp_path / "l.npy", np.full((8, 128), 5.0))
    args = ["solve", str(tmp_path / "l.npy"), *SOLVE]
    for opt in options:
        args += ["--option", opt]
    assert_clean_error(capsys, main(args), fragment)


def test_cli_backend_given_twice(tmp_path, capsys):
    np.save(tmp_path / "l.npy", np.full((8, 128), 5.0))
    code = main(["solve", str(tmp_path / "l.npy"), *SOLVE, "--solver", "milp", "--backend", "highs",
                 "--option", "backend=ortools"])
    assert_clean_error(capsys, code, "--backend or --option backend=..., not both")


@pytest.mark.parametrize("exc", [OverflowError("int too large to convert to float"), MemoryError()])
def test_cli_reports_overflow_and_memory_errors_from_solving(tmp_path, capsys, monkeypatch, exc):
    import probe_planner.cli as cli

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli, "solve", boom)
    np.save(tmp_path / "l.npy", np.full((8, 128), 5.0))
    line = assert_clean_error(capsys, main(["solve", str(tmp_path / "l.npy"), *SOLVE]), type(exc).__name__)
    assert "solver 'static' failed" in line and (str(exc) or "out of memory") in line


@pytest.mark.parametrize("out, fragment", [
    ("missing/plan.json", "output directory"),
    ("plan.txt", "suffix must be .json or .npz"),
    ("taken.json", "is a directory"),
    ("", "suffix must be .json or .npz"),
])
def test_cli_bad_out_is_refused_before_solving(tmp_path, capsys, monkeypatch, out, fragment):
    import probe_planner.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("solve() ran although --out was bad")

    monkeypatch.setattr(cli, "solve", never)
    (tmp_path / "taken.json").mkdir()
    np.save(tmp_path / "l.npy", np.full((8, 128), 5.0))
    target = str(tmp_path / out) if out else ""
    line = assert_clean_error(capsys, main(["solve", str(tmp_path / "l.npy"), *SOLVE, "--out", target]), fragment)
    if out.startswith("missing"):
        assert "does not exist" in line


def test_cli_error_class_for_out_is_a_planner_error():
    from probe_planner.cli import check_output
    from probe_planner.errors import OutputError, PlannerError

    assert issubclass(OutputError, PlannerError) and issubclass(OutputError, ValueError)
    with pytest.raises(OutputError, match="does not exist"):
        check_output("/nonexistent-dir-for-probe-plan/p.json")
