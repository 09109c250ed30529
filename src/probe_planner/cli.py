"""``probe-plan``: solve a load file, or run the embedded demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .api import solve
from .budget import Budget
from .errors import LoadsError, PlannerError, SolverError
from .plan import Plan
from .plan_io import save_plan
from .solvers import solver_names
from .topology import Topology


def read_loads(path: str | Path) -> np.ndarray:
    """Loads from ``.npy`` or ``.json`` (a nested list, or an object with a ``loads`` key)."""
    path = Path(path)
    if not path.is_file():
        raise LoadsError(f"loads file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            return np.asarray(doc["loads"] if isinstance(doc, dict) else doc, dtype=np.float64)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise LoadsError(f"cannot read loads from {str(path)!r}: {exc}") from exc
    raise LoadsError(f"loads file {str(path)!r}: suffix must be .npy or .json")


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


def parse_options(items: list[str]) -> dict:
    """``KEY=VALUE`` solver options; values are read as JSON where they parse (numbers, true/false)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SolverError(f"solver option {item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _cmd_solve(args: argparse.Namespace) -> int:
    topo = Topology.from_cards(model=args.model, cluster=args.cluster)
    budget = Budget(window_us=args.window_us, time_limit_s=args.time_limit_s)
    loads = read_loads(args.loads)
    baseline = solve(loads, topo, budget, solver="static", sources=args.sources)
    options = parse_options(args.option)
    if args.backend:
        options["backend"] = args.backend
    plan = baseline if args.solver == "static" else solve(loads, topo, budget, solver=args.solver, sources=args.sources,
                                                          **options)
    print(f"{topo.model.name} on {topo.name} ({topo.num_ranks} ranks, {topo.slots} slots each), "
          f"window {args.window_us:g} us, {plan.num_layers} layer(s)")
    print(baseline.summary() if plan is baseline else report(baseline, [plan]))
    if args.out:
        print(f"plan written to {save_plan(plan, args.out)}")
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="probe-plan", description="Hardware-aware balance planning for MoE expert parallelism.")
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
    d = sub.add_parser("demo", help="solve an embedded realistic problem with static and greedy")
    d.set_defaults(func=_cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PlannerError as exc:
        print(f"probe-plan: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
