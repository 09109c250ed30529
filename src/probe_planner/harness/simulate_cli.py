"""``probe-bench simulate``: every serving policy on the real-trace scenarios, side by side.

    probe-bench simulate --quick
    probe-bench simulate --scenarios prefill shift --steps 16 --recall 0.9 --out sim-out

Prints per scenario × policy the mean and p99 layer time, the step latency (prefill) or the
throughput (decode-like), speedups over static EP and over EPLB periodic, imbalance, exposed copy
and planning time, stalls and dropped tokens; writes ``simulate.csv`` and ``simulate.png``; for a
scenario with a workload shift, the imbalance per step around it.

EPLB's re-placement intervals and windows are the engines' defaults scaled to the run (the traces
hold 4–127 steps, far fewer than the engines' intervals) by one factor: vLLM's 3000-step interval
becomes ``--eplb-interval`` steps (default: half the run), so that ``f = interval / 3000``, and
every default scales by ``f`` (at least one step):

- ``eplb-periodic`` (vLLM: ``step_interval`` 3000, ``window_size`` 1000): every ``3000 f`` steps from
  the last ``1000 f``;
- ``eplb-sglang`` (SGLang: ``--eplb-rebalance-num-iterations`` 1000, its recorder's buffer defaulting
  to the same 1000): every ``1000 f`` steps from the last ``1000 f``;
- ``place-greedy-lookahead…`` re-places on vLLM's scaled interval and window too, ``--place-reserve``
  slots per rank left to the per-batch plans on top.

Each re-placement stalls for its moves (``--stall full``, the synchronous upper bound), or for ``f``
of them (``--stall amortized``: the stall per step an engine pays at its real interval, spread over
the scaled one). An interval as long as the run never re-places, and the output says so.
``--late skip`` drops a per-batch plan not ready when its layer starts (the layer runs unplanned)
instead of waiting for it (``--late wait``, what ``probe-run`` does).
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

VLLM_INTERVAL, VLLM_WINDOW = 3000, 1000  # vLLM's EPLBConfig step_interval, window_size
SGLANG_INTERVAL = 1000  # SGLang's --eplb-rebalance-num-iterations; its recorder buffer defaults to it


def scaled(steps: int, interval: int | None) -> tuple[int, float]:
    """vLLM's interval scaled to the run (``interval``, default half the run) and the factor ``f``."""
    every = interval or max(1, steps // 2)
    return every, every / VLLM_INTERVAL


def policies(steps: int, recall: float, gamma: float, interval: int | None, stall: str = "full",
             reserve: int = 1, place_time_s: float = 1.0, late: str = "wait") -> list[Policy]:
    """The default policy set (see the module doc for the scaled EPLB / place intervals)."""
    every, f = scaled(steps, interval)
    window = max(1, round(VLLM_WINDOW * f))
    sg = max(1, round(SGLANG_INTERVAL * f))
    cut = min(f, 1.0) if stall == "amortized" else 1.0
    pct = int(round(100 * recall))
    return [Policy("static"),
            Policy("eplb-periodic", "eplb", interval=every, history=window, stall_scale=cut),
            Policy("eplb-sglang", "eplb", interval=sg, history=sg, stall_scale=cut),
            Policy("lplb", "eplb", interval=every, history=window, dispatch="lplb", stall_scale=cut),
            Policy("online", "online", history=every),
            Policy("drop", "capacity", mode="drop", gamma=gamma),
            Policy("reroute", "capacity", mode="reroute", gamma=gamma),
            Policy("greedy-history", "per-batch", prediction="history", late=late),
            Policy(f"greedy-lookahead{pct}", "per-batch", prediction="lookahead", recall=recall, late=late),
            Policy(f"auto-lookahead{pct}", "per-batch", solver="auto", prediction="lookahead", recall=recall, late=late),
            Policy("greedy-oracle", "per-batch", prediction="oracle", late=late),
            Policy(f"place-greedy-lookahead{pct}", "place", prediction="lookahead", recall=recall, interval=every, history=window,
                   reserve=reserve, place_time_s=place_time_s, stall_scale=cut, late=late)]


def summarize(name: str, report: str, recs: list[StepRecord], top_k: int) -> list[dict]:
    out = []
    by = {p: [r for r in recs if r.policy == p] for p in dict.fromkeys(r.policy for r in recs)}

    def rate(rs):
        return sum(r.tokens for r in rs) / (sum(r.total_us for r in rs) * 1e-6)

    base = rate(by["static"]) if "static" in by else None
    eplb = rate(by["eplb-periodic"]) if "eplb-periodic" in by else None
    sglang = rate(by["eplb-sglang"]) if "eplb-sglang" in by else None
    for p, rs in by.items():
        layers = np.concatenate([r.layer_us for r in rs])
        tput = rate(rs)
        out.append({"scenario": name, "policy": p, "layer_us_mean": float(layers.mean()),
                    "layer_us_p99": float(np.percentile(layers, 99)),
                    "step_ms": float(np.mean([r.total_us for r in rs]) / 1e3), "tokens_per_s": tput,
                    "vs_static": tput / base if base else float("nan"), "vs_eplb": tput / eplb if eplb else float("nan"),
                    "vs_sglang": tput / sglang if sglang else float("nan"),
                    "imbalance": float(np.mean([r.imbalance for r in rs])),
                    "exposed_copy_us": float(np.mean([r.exposed_copy_us for r in rs])),
                    "exposed_plan_us": float(np.mean([r.exposed_plan_us for r in rs])),
                    "stall_us": float(np.mean([r.stall_us for r in rs])),
                    "dropped": sum(r.dropped for r in rs) / max(sum(r.assignments for r in rs), 1.0), "report": report})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| scenario | policy | layer µs mean / p99 | step ms | tokens/s | × static | × EPLB periodic (vLLM) | × EPLB SGLang "
             "| imbalance | exposed copy / plan µs per step | stall µs per step | dropped |", "|" + "|".join("---" for _ in range(12)) + "|"]
    for s in summary:
        lines.append(f"| {s['scenario']} | {s['policy']} | {s['layer_us_mean']:.1f} / {s['layer_us_p99']:.1f} | {s['step_ms']:.3f} | "
                     f"{s['tokens_per_s']:.3g} | {s['vs_static']:.3f} | {s['vs_eplb']:.3f} | {s['vs_sglang']:.3f} | {s['imbalance']:.3f} | "
                     f"{s['exposed_copy_us']:.1f} / {s['exposed_plan_us']:.1f} | {s['stall_us']:.1f} | {100 * s['dropped']:.1f}% |")
    return "\n".join(lines)


def shift_table(recs: list[StepRecord], shift: int, before: int = 2, after: int = 10) -> str:
    """Markdown: each policy's imbalance per step from ``before`` steps before the shift to ``after`` after it."""
    steps = sorted({r.step for r in recs if shift - before <= r.step < shift + after})
    lines = ["| policy | " + " | ".join(f"step {s}" + (" (shift)" if s == shift else "") for s in steps) + " |",
             "|" + "|".join("---" for _ in range(len(steps) + 1)) + "|"]
    for p in dict.fromkeys(r.policy for r in recs):
        by = {r.step: r.imbalance for r in recs if r.policy == p}
        lines.append(f"| {p} | " + " | ".join(f"{by[s]:.3f}" for s in steps) + " |")
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
    ap.add_argument("--eplb-interval", type=int, default=None,
                    help="vLLM's 3000-step interval scaled to this many steps (default: half the run); every engine default scales alike")
    ap.add_argument("--stall", choices=("full", "amortized"), default="full",
                    help="charge each re-placement's whole stall, or the share f = interval / 3000 of it (the engine's real interval)")
    ap.add_argument("--place-reserve", type=int, default=1, help="place: slots per rank left free for the per-batch plans")
    ap.add_argument("--place-time-s", type=float, default=1.0, help="place: each re-placement's search time limit")
    ap.add_argument("--late", choices=("wait", "skip"), default="wait",
                    help="per-batch plans later than their window: wait for them (the runtime), or run the layer unplanned")
    ap.add_argument("--policies", nargs="+", default=None, metavar="NAME", help="run only these of the default policies")
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
            pols = policies(sc.loads.shape[0], args.recall, args.gamma, args.eplb_interval, args.stall, args.place_reserve,
                            args.place_time_s, args.late)
            if args.policies is not None:
                unknown = sorted(set(args.policies) - {p.name for p in pols})
                if unknown:
                    raise PlannerError(f"--policies: unknown {unknown}; the default set is {[p.name for p in pols]}")
                pols = [p for p in pols if p.name in args.policies]
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
        for name, (sc, recs) in results.items():
            if sc.shift_step is not None:
                print(f"\n{name}: imbalance per step around the workload shift (step {sc.shift_step})")
                print(shift_table(recs, sc.shift_step))
        with open(out / "simulate.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["scenario", "policy", "step", "moe_us", "non_moe_us", "exposed_copy_us", "exposed_plan_us", "stall_us",
                        "total_us", "imbalance", "dropped", "rerouted", "tokens", "copies_per_rank", "moves", "replace_s",
                        "late_plans"])
            for name, (_, recs) in results.items():
                for r in recs:
                    w.writerow([name, r.policy, r.step, r.moe_us, r.non_moe_us, r.exposed_copy_us, r.exposed_plan_us, r.stall_us,
                                r.total_us, r.imbalance, r.dropped, r.rerouted, r.tokens, r.copies_per_rank, r.moves, r.replace_s,
                                r.late_plans])
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
