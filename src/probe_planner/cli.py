"""``probe-plan``: solve a load file, or run the embedded demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .api import solve
from .budget import Budget
from .errors import LoadsError, OutputError, PlannerError, SolverError
from .plan import Plan
from .plan_io import save_plan
from .solvers import solver_names
from .topology import Topology


def read_loads(path: str | Path) -> np.ndarray | list:
    """Loads from ``.npy`` or ``.json`` (a nested list, or an object with a ``loads`` key), as stored.

    File problems (missing, not a regular file, wrong suffix, empty or corrupt ``.npy``, not UTF-8,
    not JSON, no ``loads`` key) raise :class:`LoadsError`; the values themselves are checked by
    ``solve()`` (``canonical_loads``), once.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".json"):
        raise LoadsError(f"loads file {str(path)!r}: suffix must be .npy or .json")
    if not path.exists():
        raise LoadsError(f"loads file {str(path)!r} does not exist")
    if not path.is_file():
        raise LoadsError(f"loads file {str(path)!r} is not a regular file")
    try:
        if path.suffix == ".npy":
            doc = np.load(path, allow_pickle=False)
        else:
            doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LoadsError(f"loads file {str(path)!r} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise LoadsError(f"loads file {str(path)!r} is not valid JSON: {exc}") from exc
    except EOFError as exc:
        raise LoadsError(f"loads file {str(path)!r} is empty or truncated: {exc}") from exc
    except (ValueError, TypeError, OSError, MemoryError, RecursionError) as exc:
        raise LoadsError(f"cannot read loads from {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if path.suffix == ".npy":
        if not isinstance(doc, np.ndarray):  # np.load reads a zip (.npz) whatever the suffix
            doc.close()
            raise LoadsError(f"loads file {str(path)!r} is not a .npy array (it holds {type(doc).__name__})")
        return doc
    if isinstance(doc, dict):
        if "loads" not in doc:
            raise LoadsError(f"loads file {str(path)!r}: a JSON object needs a 'loads' key, got keys {sorted(doc)[:8]}")
        doc = doc["loads"]
    return doc


def check_output(path: str | Path) -> Path:
    """``--out``: a ``.json`` or ``.npz`` path in an existing, writable directory (checked before solving)."""
    path = Path(path)
    if path.suffix not in (".json", ".npz"):
        raise OutputError(f"output file {str(path)!r}: suffix must be .json or .npz")
    if path.is_dir():
        raise OutputError(f"output file {str(path)!r} is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"output directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {str(parent)!r} is not writable")
    return path


def report(baseline: Plan, plans: list[Plan]) -> str:
    """Human summary comparing ``plans`` with the static ``baseline``."""
    lines = [
        f"{'solver':<10} {'makespan us':>12} {'bound':>10} {'gap':>7} {'status':>10} {'imbalance':>10} "
        f"{'speedup':>8} {'replicas':>9} {'solve ms':>9}",
    ]
    for p in [baseline, *plans]:
        lines.append(
            f"{p.solver:<10} {p.makespan_us:12.1f} {p.bound_us:10.1f} {p.gap:7.1%} {p.status:>10} "
            f"{p.imbalance_ratio:10.3f} {baseline.makespan_us / p.makespan_us:7.2f}x {p.num_replicas:9d} "
            f"{p.solve_time_s * 1e3:9.2f}")
    lines.append(f"imbalance before -> after: {baseline.imbalance_ratio:.3f} -> {plans[-1].imbalance_ratio:.3f}")
    return "\n".join(lines)


# solve()'s own parameters: not solver options (--sources and --solver set them).
_RESERVED_OPTIONS = ("loads", "topology", "budget", "solver", "sources")


def parse_options(items: list[str]) -> dict:
    """``KEY=VALUE`` solver options; values are read as JSON where they parse (numbers, true/false).

    A malformed item, a key given twice or one of solve()'s own parameters raises :class:`SolverError`;
    the values are checked by the solver.
    """
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SolverError(f"solver option {item!r} is not KEY=VALUE")
        if key in options:
            raise SolverError(f"solver option {key!r} given twice")
        if key in _RESERVED_OPTIONS:
            raise SolverError(f"{key!r} is not a solver option (solve() parameters: {', '.join(_RESERVED_OPTIONS)})")
        try:
            options[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            options[key] = value
    return options


def _solve(loads, topo: Topology, budget: Budget, solver: str, sources, options: dict) -> Plan:
    try:
        return solve(loads, topo, budget, solver=solver, sources=sources, **options)
    except (OverflowError, MemoryError) as exc:  # e.g. an option too large for the solver's arrays
        raise SolverError(f"solver {solver!r} failed: {type(exc).__name__}: {str(exc) or 'out of memory'} "
                          f"(check the solver options {options})") from exc


def _cmd_solve(args: argparse.Namespace) -> int:
    options = parse_options(args.option)
    if args.backend:
        if "backend" in options:
            raise SolverError("give the MILP backend once: --backend or --option backend=..., not both")
        options["backend"] = args.backend
    out = check_output(args.out) if args.out is not None else None
    topo = Topology.from_cards(model=args.model, cluster=args.cluster)
    budget = Budget(window_us=args.window_us, time_limit_s=args.time_limit_s)
    loads = read_loads(args.loads)
    baseline = _solve(loads, topo, budget, "static", args.sources, {})
    plan = baseline if args.solver == "static" else _solve(loads, topo, budget, args.solver, args.sources, options)
    print(f"{topo.model.name} on {topo.name} ({topo.num_ranks} ranks, {topo.slots} slots each), "
          f"window {args.window_us:g} us, {plan.num_layers} layer(s)")
    print(baseline.summary() if plan is baseline else report(baseline, [plan]))
    if out is not None:
        try:
            print(f"plan written to {save_plan(plan, out)}")
        except OSError as exc:
            raise OutputError(f"cannot write the plan to {str(out)!r}: {exc}") from exc
    return 0


def _cmd_place(args: argparse.Namespace) -> int:
    from .baselines.eplb import eplb_placement
    from .engine_maps import load_map, load_window, save_map
    from .place import Placement, place, score_placement

    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise OutputError(f"output file {str(out)!r}: not a writable file path in an existing directory")
    topo = Topology.from_cards(model=args.model, cluster=args.cluster)
    window = load_window(args.loads)
    T, L = window.shape[:2]
    current = (load_map(args.current, topo.num_ranks, topo.num_experts, num_layers=L) if args.current else None)
    result = place(window, topo, args.slots, current=current, reserve=args.reserve, move_budget_us=args.move_budget_us,
                   move_budget_bytes=None if args.move_budget_gb is None else args.move_budget_gb * 1e9,
                   min_gain=args.min_gain, time_limit_s=args.time_limit_s)
    # EPLB-style placement of the same window with every slot, scored on the same batches
    eplb = eplb_placement(window.sum(axis=0), topo, args.slots * topo.num_ranks - topo.num_experts)
    eplb_us = float(score_placement(window, Placement.from_map(eplb).hosts, topo).sum())
    mig = eplb.migration(topo, previous=current)
    print(f"{topo.model.name} on {topo.name} ({topo.num_ranks} ranks), window of {T} batches x {L} layer(s), "
          f"{args.slots} slots per rank" + (f" ({args.reserve} reserved for per-batch plans)" if args.reserve else ""))
    print(f"{'placement':<12} {'expected makespan us/batch':>27} {'vs current':>11} {'copies':>7} {'GB moved':>9} {'move ms':>8}")
    rows = [("current", result.before_us, 0, 0.0, 0.0),
            ("place", result.after_us, len(result.copies), result.moved_bytes / 1e9, result.move_time_us / 1e3),
            ("eplb-style", eplb_us, int(mig.copies.sum()), mig.copies.sum() * topo.model.expert_bytes / 1e9, mig.all_layers_us / 1e3)]
    for name, us, n, gb, ms in rows:
        ratio = f"{result.before_us / us:10.3f}x" if us > 0 else f"{'—':>11}"  # an all-zero window costs nothing
        print(f"{name:<12} {us:27.1f} {ratio} {n:7d} {gb:9.3f} {ms:8.2f}")
    print(result.message)
    try:
        save_map(result.to_map(), out, args.format)
    except OSError as exc:
        raise OutputError(f"cannot write the map to {str(out)!r}: {exc}") from exc
    print(f"{args.format} map written to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_CLUSTER, DEMO_MODEL, DEMO_WINDOW_US, demo_loads

    topo = Topology.from_cards(model=DEMO_MODEL, cluster=DEMO_CLUSTER)
    budget = Budget(window_us=DEMO_WINDOW_US, time_limit_s=1.0)
    loads = demo_loads(topo.num_ranks, topo.num_experts)
    print(f"demo: {topo.model.name} prefill, {int(loads.sum() / topo.model.top_k)} tokens on {topo.name} "
          f"({topo.num_ranks} ranks, {topo.slots} replica slots each), hiding window {DEMO_WINDOW_US:g} us")
    print(f"hottest expert / mean expert load: {loads.sum(0).max() / loads.sum(0).mean():.2f}")
    solve(loads, topo, budget, solver="greedy")  # warm-up: loads the compiled kernels once
    baseline = solve(loads, topo, budget, solver="static")
    greedy = solve(loads, topo, budget, solver="greedy")
    print(report(baseline, [greedy]))
    return 0


class _UsageError(Exception):
    """A command line argparse rejects (reported like every other bad input: one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="probe-plan", description="Hardware-aware balance planning for MoE expert parallelism.")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("solve", help="plan replicas and routing for a load file")
    s.add_argument("loads", help="loads as .npy or .json: [E], [G, E] or [layers, G, E] tokens")
    s.add_argument("--cluster", required=True, help="built-in cluster card name or a .toml path")
    s.add_argument("--model", required=True, help="built-in model card name or a .toml path")
    s.add_argument("--window-us", type=float, required=True, help="hiding window per rank in microseconds")
    s.add_argument("--solver", default="greedy", choices=solver_names())
    s.add_argument("--sources", choices=["given", "uniform"], default=None,
                   help="read a 2-D file as [layers, E] with uniform sources (uniform) or as [G, E] (given, default)")
    s.add_argument("--backend", choices=["highs", "ortools"], default=None, help="MILP backend (milp and auto only)")
    s.add_argument("--time-limit-s", type=float, default=1.0, help="solver wall-time limit")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a solver option, repeatable (e.g. --option lookahead=4 --option max_swaps=4)")
    s.add_argument("--out", help="write the plan to this .json or .npz file")
    s.set_defaults(func=_cmd_solve)
    pl = sub.add_parser("place", help="choose a long-lived expert placement from a load window (an engine map)")
    pl.add_argument("loads", help="load window: SGLang expert-distribution dump (.pt/.npz) or a [T, L, E] .npy/.npz")
    pl.add_argument("--cluster", required=True, help="built-in cluster card name or a .toml path")
    pl.add_argument("--model", required=True, help="built-in model card name or a .toml path")
    pl.add_argument("--slots", type=int, required=True, help="physical expert slots per rank")
    pl.add_argument("--current", help="the map in service (eplb .npz/.pt, sglang .json, trtllm .yaml); default: sharded")
    pl.add_argument("--move-budget-us", type=float, default=None,
                    help="longest rank's time for all weight copies at the card's bandwidths (default: no limit)")
    pl.add_argument("--move-budget-gb", type=float, default=None, help="weight bytes all copies may move, in GB")
    pl.add_argument("--reserve", type=int, default=0, help="slots per rank left empty for per-batch replicas")
    pl.add_argument("--min-gain", type=float, default=0.01, help="keep the current map below this expected relative gain")
    pl.add_argument("--time-limit-s", type=float, default=8.0, help="search wall-time budget")
    pl.add_argument("--format", required=True, choices=["eplb", "sglang", "trtllm"], help="map format to write")
    pl.add_argument("--out", required=True, help="map file to write")
    pl.set_defaults(func=_cmd_place)
    d = sub.add_parser("demo", help="solve an embedded realistic problem with static and greedy")
    d.set_defaults(func=_cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run ``probe-plan``; every bad input (a :class:`PlannerError`, or a command line argparse
    rejects) prints one line ``probe-plan: error: ...`` to stderr and returns 2, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (PlannerError, _UsageError) as exc:
        message = " ".join(str(exc).splitlines())
        print(f"probe-plan: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
