"""``probe-bench`` output: the summary table, CSV and JSON of every row, and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .methods import EPLB_FAMILY, LOSSY
from .runner import Row, Scenario

COLUMNS = ("makespan_us", "ratio_to_bound", "speedup", "imbalance", "copies", "mb_copied", "outside", "dropped",
           "rerouted", "solve_ms_median", "solve_ms_p95")


def summarize(rows: list[Row]) -> list[dict]:
    """Per (scenario, method), in first-seen order: means over the scored (step, layer)s (speedup:
    the geometric mean), solve time median and p95, dropped/rerouted as fractions."""
    out = []
    for key in dict.fromkeys((r.scenario, r.method) for r in rows):
        rs = [r for r in rows if (r.scenario, r.method) == key]
        solve_ms = np.array([r.solve_s for r in rs]) * 1e3
        out.append({"scenario": key[0], "method": key[1], "n": len(rs),
                    "makespan_us": float(np.mean([r.makespan_us for r in rs])),
                    "ratio_to_bound": float(np.mean([r.ratio_to_bound for r in rs])),
                    "speedup": float(np.exp(np.mean(np.log([r.speedup for r in rs])))),
                    "imbalance": float(np.mean([r.imbalance for r in rs])),
                    "copies": float(np.mean([r.copies for r in rs])),
                    "mb_copied": float(np.mean([r.bytes_copied for r in rs]) / 1e6),
                    "outside": float(np.mean([r.outside for r in rs])),
                    "dropped": float(np.mean([r.dropped for r in rs])), "rerouted": float(np.mean([r.rerouted for r in rs])),
                    "solve_ms_median": float(np.median(solve_ms)), "solve_ms_p95": float(np.percentile(solve_ms, 95))})
    return out


def table(summary: list[dict]) -> str:
    """The terminal table (markdown, so the README can hold it as printed)."""
    head = ("| scenario | method | makespan µs | × bound | speedup | imbalance | copies/layer | MB/layer | outside window "
            "| dropped | rerouted | solve ms (median / p95) |")
    lines = [head, "|" + "|".join("---" for _ in range(12)) + "|"]
    for s in summary:
        lossy = s["method"] in LOSSY
        lines.append(f"| {s['scenario']} | {s['method']}{' (lossy)' if lossy else ''} | {s['makespan_us']:.1f} | "
                     f"{s['ratio_to_bound']:.3f} | {s['speedup']:.3f} | {s['imbalance']:.3f} | {s['copies']:.1f} | "
                     f"{s['mb_copied']:.0f} | {s['outside']:.1f} | {100 * s['dropped']:.1f}% | {100 * s['rerouted']:.1f}% | "
                     f"{s['solve_ms_median']:.2f} / {s['solve_ms_p95']:.2f} |")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].as_dict()))
        w.writeheader()
        for r in rows:
            w.writerow(r.as_dict())


def write_json(rows: list[Row], summary: list[dict], scenarios: list[Scenario], path: Path) -> None:
    doc = {"scenarios": [vars(s) | {"methods": list(s.methods)} for s in scenarios], "summary": summary,
           "rows": [r.as_dict() for r in rows]}
    path.write_text(json.dumps(doc, indent=1, default=float))


def plot(rows: list[Row], summary: list[dict], out_dir: Path) -> list[Path]:
    """``quality_vs_time.png`` (speedup over static against median solve time, per scenario) and
    ``over_steps.png`` (per-layer makespan and imbalance over steps, mean over layers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(s["scenario"] for s in summary))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 4.5), squeeze=False)
    for ax, name in zip(axes[0], scenarios, strict=True):
        for s in (s for s in summary if s["scenario"] == name):
            m = s["method"]
            style = dict(marker="s" if m in EPLB_FAMILY else "o", fillstyle="none" if m in LOSSY else "full")
            ax.plot(max(s["solve_ms_median"], 1e-3), s["speedup"], linestyle="none", **style)
            ax.annotate(m, (max(s["solve_ms_median"], 1e-3), s["speedup"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("median solve time per layer (ms)")
        ax.set_ylabel("speedup over static (geometric mean)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [out_dir / "quality_vs_time.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(scenarios), figsize=(6 * len(scenarios), 7), squeeze=False)
    for j, name in enumerate(scenarios):
        rs = [r for r in rows if r.scenario == name]
        for m in dict.fromkeys(r.method for r in rs):
            steps = sorted({r.step for r in rs if r.method == m})
            for i, field in enumerate(("makespan_us", "imbalance")):
                ys = [np.mean([getattr(r, field) for r in rs if r.method == m and r.step == s]) for s in steps]
                axes[i, j].plot(steps, ys, marker=".", label=m, linestyle="--" if m in LOSSY else "-")
        axes[0, j].set_title(name, fontsize=9)
        axes[0, j].set_ylabel("layer makespan µs (mean over layers)")
        axes[1, j].set_ylabel("imbalance ratio (mean over layers)")
        axes[1, j].set_xlabel("step")
        axes[0, j].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out_dir / "over_steps.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
