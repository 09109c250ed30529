"""``probe-bench``: run benchmark scenarios, print the summary table, write CSV, JSON and PNGs.

    probe-bench --quick                      # the README's table, a few minutes at most
    probe-bench simulate --quick             # the serving simulator (:mod:`.simulate_cli`)
    probe-bench                              # the full set
    probe-bench --source zipf --cluster h100x16-ib --steps 6 --layers 8 --methods static greedy eplb drop

Scenarios run one after another (``--jobs N`` runs N at once in separate processes; their solve
times then share the CPU, so keep 1 when the times matter). Needs matplotlib and tqdm (the
``bench`` extra); ``--no-plots`` skips matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from ..errors import PlannerError, TraceError
from ..traces import default_trace_dir
from .methods import METHODS
from .runner import Row, Scenario, calls, run_scenario

QUICK_METHODS = ("static", "greedy", "greedy-history", "auto", "milp", "eplb", "eplb-hierarchical", "lplb", "eplb-oracle",
                 "drop", "reroute")
QUICK = (Scenario("qwen3-prefill/h100x8", "qwen3-30b-a3b", "h100x8", "qwen3-prefill", steps=4, layers=6, budget_s=0.2,
                  methods=QUICK_METHODS),
         Scenario("zipf/h100x16-ib", "qwen3-30b-a3b", "h100x16-ib", "zipf", steps=4, layers=4, budget_s=0.2,
                  methods=QUICK_METHODS))
FULL = (Scenario("qwen3-prefill/h100x8", "qwen3-30b-a3b", "h100x8", "qwen3-prefill", steps=6, layers=48, budget_s=0.1),
        Scenario("qwen3-prefill/h100x16-ib", "qwen3-30b-a3b", "h100x16-ib", "qwen3-prefill", steps=6, layers=16, budget_s=0.1),
        Scenario("qwen15-decode/h100x8:4", "qwen1.5-moe-a2.7b", "h100x8", "qwen15-decode", steps=16, layers=5, ranks=4,
                 budget_s=0.05),
        Scenario("zipf/h200x8", "deepseek-v3", "h200x8", "zipf", steps=6, layers=8, budget_s=0.1))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="probe-bench", description="Benchmark probe-planner's solvers against the baselines.")
    ap.add_argument("--quick", action="store_true", help="the small scenario set (the README table)")
    ap.add_argument("--source", default=None, help="run one scenario from this load source instead of a preset set")
    ap.add_argument("--model", default="qwen3-30b-a3b")
    ap.add_argument("--cluster", default="h100x8")
    ap.add_argument("--ranks", type=int, default=None, help="override the cluster card's rank count")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--window-us", type=float, default=300.0)
    ap.add_argument("--budget-s", type=float, default=None, help="solver time budget per call (default: the preset's)")
    ap.add_argument("--gamma", type=float, default=1.5, help="capacity factor of drop/reroute")
    ap.add_argument("--methods", nargs="+", default=None, help=f"of {list(METHODS)}")
    ap.add_argument("--trace-dir", default=None)
    ap.add_argument("--out", default="probe-bench-out", help="directory for results.csv, results.json and the PNGs")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    return ap


def scenarios(args: argparse.Namespace) -> tuple[list[Scenario], list[str]]:
    """The scenarios to run and notes on any skipped (no traces here)."""
    if args.source is not None:
        chosen = [Scenario(f"{args.source}/{args.cluster}", args.model, args.cluster, args.source, steps=args.steps,
                           layers=args.layers, window_us=args.window_us, ranks=args.ranks)]
    else:
        chosen = list(QUICK if args.quick else FULL)
    changes = {"gamma": args.gamma, "trace_dir": args.trace_dir}
    if args.budget_s is not None:
        changes["budget_s"] = args.budget_s
    if args.methods is not None:
        changes["methods"] = tuple(args.methods)
    chosen = [replace(s, **changes) for s in chosen]
    have_traces = (Path(args.trace_dir) if args.trace_dir else default_trace_dir()).is_dir()
    notes = []
    if not have_traces and args.source is None:
        notes = [f"skipped {s.name}: no traces at {args.trace_dir or default_trace_dir()}" for s in chosen if s.source != "zipf"]
        chosen = [s for s in chosen if s.source == "zipf"]
    for s in chosen:
        s.check()
    return chosen, notes


def _run(sc: Scenario) -> list[Row]:
    return run_scenario(sc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["simulate"]:  # probe-bench simulate: the end-to-end simulator
        from .simulate_cli import main as simulate_main

        return simulate_main(argv[1:])
    if argv[:1] == ["offload"]:  # probe-bench offload: experts in host memory (Klotski-style planning)
        from .offload_cli import main as offload_main

        return offload_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.jobs < 1:
            raise PlannerError("--jobs must be >= 1")
        chosen, notes = scenarios(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows: list[Row] = []
        if args.jobs == 1:
            from tqdm import tqdm

            with tqdm(total=sum(calls(s) for s in chosen), desc="probe-bench", unit="plan", file=sys.stderr,
                      disable=None) as bar:
                for s in chosen:
                    bar.set_postfix_str(s.name)
                    rows += run_scenario(s, bar.update)
        else:
            with ProcessPoolExecutor(args.jobs) as pool:
                for part in pool.map(_run, chosen):
                    rows += part
        from . import report

        summary = report.summarize(rows)
        print(report.table(summary))
        for n in notes:
            print(n)
        report.write_csv(rows, out / "results.csv")
        report.write_json(rows, summary, chosen, out / "results.json")
        written = [out / "results.csv", out / "results.json"]
        if not args.no_plots:
            written += report.plot(rows, summary, out)
        print("wrote " + ", ".join(str(p) for p in written))
    except (PlannerError, TraceError) as exc:
        print(f"probe-bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"probe-bench: error: cannot write results: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
