"""``probe-bench simulate``: every serving policy on the real-trace scenarios, side by side.

    probe-bench simulate --quick
    probe-bench simulate --scenarios prefill shift --steps 16 --recall 0.9 --out sim-out

Prints per scenario × policy the mean and p99 layer time, the step latency (prefill) or the
throughput (decode-like), speedups over static EP and over EPLB periodic, imbalance, exposed copy
and planning time, stalls and dropped tokens; writes ``simulate.csv`` and ``simulate.png``.
EPLB's re-placement interval and history are scaled to the run (the traces hold 4–127 steps, far
fewer than vLLM's 3000-step interval): it re-places every ``--eplb-interval`` steps (default: half
the run) from that many past steps, and stalls for the moves when it does; an interval as long as
the run never re-places, and the table says so.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from ..errors import PlannerError
from ..simulate import Policy, StepRecord, simulate
from .scenarios import SCENARIOS, build


def policies(steps: int, recall: float, gamma: float, interval: int | None) -> list[Policy]:
    every = interval or max(1, steps // 2)
    return [Policy("static"),
            Policy("eplb-periodic", "eplb", interval=every, history=every),
            Policy("lplb", "eplb", interval=every, history=every, dispatch="lplb"),
            Policy("online", "online", history=every),
            Policy("drop", "capacity", mode="drop", gamma=gamma),
            Policy("reroute", "capacity", mode="reroute", gamma=gamma),
            Policy("greedy-history", "per-batch", prediction="history"),
            Policy(f"greedy-lookahead{int(round(100 * recall))}", "per-batch", prediction="lookahead", recall=recall),
            Policy(f"auto-lookahead{int(round(100 * recall))}", "per-batch", solver="auto", prediction="lookahead", recall=recall),
            Policy("greedy-oracle", "per-batch", prediction="oracle")]


def summarize(name: str, report: str, recs: list[StepRecord], top_k: int) -> list[dict]:
    out = []
    by = {p: [r for r in recs if r.policy == p] for p in dict.fromkeys(r.policy for r in recs)}

    def rate(rs):
        return sum(r.tokens for r in rs) / (sum(r.total_us for r in rs) * 1e-6)

    base = rate(by["static"]) if "static" in by else None
    eplb = rate(by["eplb-periodic"]) if "eplb-periodic" in by else None
    for p, rs in by.items():
        layers = np.concatenate([r.layer_us for r in rs])
        tput = rate(rs)
        out.append({"scenario": name, "policy": p, "layer_us_mean": float(layers.mean()),
                    "layer_us_p99": float(np.percentile(layers, 99)),
                    "step_ms": float(np.mean([r.total_us for r in rs]) / 1e3), "tokens_per_s": tput,
                    "vs_static": tput / base if base else float("nan"), "vs_eplb": tput / eplb if eplb else float("nan"),
                    "imbalance": float(np.mean([r.imbalance for r in rs])),
                    "exposed_copy_us": float(np.mean([r.exposed_copy_us for r in rs])),
                    "exposed_plan_us": float(np.mean([r.exposed_plan_us for r in rs])),
                    "stall_us": float(np.mean([r.stall_us for r in rs])),
                    "dropped": sum(r.dropped for r in rs) / max(sum(r.assignments for r in rs), 1.0), "report": report})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| scenario | policy | layer µs mean / p99 | step ms | tokens/s | × static | × EPLB periodic | imbalance "
             "| exposed copy / plan µs per step | stall µs per step | dropped |", "|" + "|".join("---" for _ in range(11)) + "|"]
    for s in summary:
        lines.append(f"| {s['scenario']} | {s['policy']} | {s['layer_us_mean']:.1f} / {s['layer_us_p99']:.1f} | {s['step_ms']:.3f} | "
                     f"{s['tokens_per_s']:.3g} | {s['vs_static']:.3f} | {s['vs_eplb']:.3f} | {s['imbalance']:.3f} | "
                     f"{s['exposed_copy_us']:.1f} / {s['exposed_plan_us']:.1f} | {s['stall_us']:.1f} | {100 * s['dropped']:.1f}% |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 7), squeeze=False)
    for j, name in enumerate(names):
        sc, recs = results[name]
        for p in dict.fromkeys(r.policy for r in recs):
            rs = [r for r in recs if r.policy == p]
            steps = [r.step for r in rs]
            axes[0, j].plot(steps, [r.imbalance for r in rs], marker=".", label=p)
            axes[1, j].plot(steps, [r.tokens / (r.total_us * 1e-6) for r in rs], marker=".", label=p)
        for ax in axes[:, j]:
            if sc.shift_step is not None:
                ax.axvline(sc.shift_step - 0.5, color="k", linestyle=":", label="workload shift")
            ax.grid(alpha=0.3)
        axes[0, j].set_title(f"{name}: {sc.note}", fontsize=8)
        axes[0, j].set_ylabel("imbalance ratio")
        axes[1, j].set_ylabel("tokens / s")
        axes[1, j].set_xlabel("step")
        axes[0, j].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probe-bench simulate", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps per scenario (a minute or two)")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument("--cluster", default="h100x8")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--window-us", type=float, default=300.0)
    ap.add_argument("--budget-s", type=float, default=0.0003, help="each solve's budget (default: the 300 us window)")
    ap.add_argument("--recall", type=float, default=0.9, help="the lookahead predictions' top-k recall")
    ap.add_argument("--gamma", type=float, default=1.5)
    ap.add_argument("--prefill-tokens", type=int, default=8192,
                    help="prefill: tokens per step (each trace window's counts scaled up to about this: the same routing, a serving-size batch)")
    ap.add_argument("--eplb-interval", type=int, default=None)
    ap.add_argument("--trace-dir", default=None)
    ap.add_argument("--recorded", default=None, metavar="FILE.npz",
                    help="also replay a probe-run --record file: its real loads, planned for its --recorded-policy predictions")
    ap.add_argument("--recorded-policy", default="lookahead")
    ap.add_argument("--recorded-model", default="qwen3-30b-a3b", help="the model card the recording ran (probe-run's --model)")
    ap.add_argument("--out", default="probe-bench-out")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.steps < 2:
            raise PlannerError("--steps must be >= 2")
        steps = min(args.steps, 6) if args.quick else args.steps
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results, summary = {}, []
        for name in args.scenarios:
            scale = max(1, round(args.prefill_tokens / (2050 // steps)))
            sc = build(name, args.cluster, steps, args.trace_dir, prefill_scale=scale)
            pols = policies(sc.loads.shape[0], args.recall, args.gamma, args.eplb_interval)
            recs = simulate(sc.loads, sc.topology, args.window_us, pols, budget_s=args.budget_s)
            if (args.eplb_interval or max(1, sc.loads.shape[0] // 2)) >= sc.loads.shape[0]:
                print(f"note: {name}: EPLB never re-places in {sc.loads.shape[0]} steps (it equals static)")
            results[name] = (sc, recs)
            summary += summarize(name, sc.report, recs, sc.topology.model.top_k)
        if args.recorded:
            from ..traces import recorded_loads
            from .scenarios import SimScenario, _topology

            pred, real = recorded_loads(args.recorded, args.recorded_policy)
            topo = _topology(args.recorded_model, args.cluster, real.shape[2])
            sc = SimScenario("recorded", real, topo, "throughput", f"replay of {args.recorded} ({args.recorded_policy})")
            pols = [Policy("static"), Policy("greedy-history", "per-batch", prediction="history"),
                    Policy(f"greedy-{args.recorded_policy}", "per-batch", prediction="recorded"),
                    Policy("greedy-oracle", "per-batch", prediction="oracle")]
            recs = simulate(real, topo, args.window_us, pols, budget_s=args.budget_s, recorded=pred)
            results["recorded"] = (sc, recs)
            summary += summarize("recorded", sc.report, recs, topo.model.top_k)
        print(table(summary))
        with open(out / "simulate.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["scenario", "policy", "step", "moe_us", "non_moe_us", "exposed_copy_us", "exposed_plan_us", "stall_us",
                        "total_us", "imbalance", "dropped", "rerouted", "tokens"])
            for name, (_, recs) in results.items():
                for r in recs:
                    w.writerow([name, r.policy, r.step, r.moe_us, r.non_moe_us, r.exposed_copy_us, r.exposed_plan_us, r.stall_us,
                                r.total_us, r.imbalance, r.dropped, r.rerouted, r.tokens])
        written = [out / "simulate.csv"]
        if not args.no_plots:
            plot(results, out / "simulate.png")
            written.append(out / "simulate.png")
        print("wrote " + ", ".join(map(str, written)))
    except PlannerError as exc:
        print(f"probe-bench simulate: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"probe-bench simulate: error: {exc}", file=sys.stderr)
        return 2
    return 0
