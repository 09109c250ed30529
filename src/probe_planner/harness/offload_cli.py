"""``probe-bench offload``: MoE inference with the experts in host memory, simulated on one GPU.

    probe-bench offload --quick
    probe-bench offload --models mixtral-8x7b --cache-fracs 0.25 0.5 --latency-cap-ms 1000 --out off-out

For each model card × GPU expert-cache size, every policy runs the same passes of routing through the
one timeline (:func:`probe_planner.offload.timeline.run_timeline`): ``on-demand`` (LRU cache, no
prefetch), ``whole-layer`` (FlexGen-style: a fixed share of each layer resident, the rest of the next
layer loaded whole), ``single-batch`` (our planner with a group of one: layer pipelining without
grouping), ``ours`` (the greedy planner at the group size :func:`choose_group` picks under the latency
cap), ``ours+coact`` (the same plan, each layer's streamed experts re-chosen from the previous layer's
real routing through the co-occurrence matrix) and ``whole-layer@b`` (FlexGen-style at our group
size: what grouping alone buys). A sweep runs ``ours`` at every candidate group size. The routing is
synthetic but built from the real per-domain statistics in the shared traces
(:func:`probe_planner.offload.coactivation.synthetic_routing`); without them, independent shuffled-Zipf
layers (and the co-activation policy has nothing to learn). Writes ``offload.csv`` and ``offload.png``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cards import load_cluster_card, load_model_card
from ..errors import PlannerError, TraceError
from ..offload.baselines import adaptive, on_demand, single_batch, whole_layer
from ..offload.coactivation import SyntheticRouting, batch_recall, load_domain_stats, predictor_for, recall_table, synthetic_routing
from ..offload.greedy import plan_greedy
from ..offload.group import candidate_groups, choose_group
from ..offload.problem import PCIE_GEN5_X16_BPS, OffloadProblem, forecast
from ..offload.timeline import Timeline, run_timeline


@dataclass(frozen=True)
class Attention:
    """What a layer's non-expert part costs per token (from the models' config.json): the attention
    projections' FLOPs and, at ``context`` tokens, the KV cache it reads from HBM."""

    heads: int
    kv_heads: int
    head_dim: int
    stats: str  # the shared-traces file prefix with this model's routing statistics

    def kv_bytes(self, context: int) -> float:
        """One sequence's K and V (BF16) in one layer at ``context`` tokens."""
        return 2.0 * self.kv_heads * self.head_dim * 2 * context

    def us_per_token(self, hidden: int, context: int, peak_flops: float, hbm_bw: float) -> float:
        proj = hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)  # q, o and k, v parameters
        return (2.0 * proj / peak_flops + self.kv_bytes(context) / hbm_bw) * 1e6


# mistralai/Mixtral-8x7B-v0.1 config.json: 32 heads, 8 KV heads, head_dim 128.
# allenai/OLMoE-1B-7B-0924 config.json: 16 heads, 16 KV heads, head_dim 128.
MODELS = {"mixtral-8x7b": Attention(32, 8, 128, "mixtral"), "olmoe-1b-7b": Attention(16, 16, 128, "olmoe")}
POLICIES = ("on-demand", "whole-layer", "single-batch", "ours", "ours+coact", "whole-layer@b")
BASELINES = ("on-demand", "whole-layer", "single-batch")


def _zipf_routing(num_layers: int, num_experts: int, top_k: int, passes: int, tokens: int, seed: int) -> SyntheticRouting:
    """Independent layers, each a shuffled Zipf(1) over experts: the fallback without the traces."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, num_experts + 1)
    dist = np.stack([rng.permutation(w / w.sum()) for _ in range(num_layers)])
    counts = np.stack([np.stack([rng.multinomial(tokens * top_k, d) for d in dist]) for _ in range(passes)]).astype(float)
    trans = np.repeat(dist[:, None, :], num_experts, axis=1)  # rows: the next layer's marginal (no correlation)
    trans[0] = 0.0
    return SyntheticRouting(counts=counts, freq=np.minimum(dist * top_k, 1.0), transitions=trans)


def _routing(stats, domain: int, problem: OffloadProblem, passes: int, tokens: int, seed: int = 1) -> SyntheticRouting:
    """The benchmark's routing: built from the traces' statistics, or shuffled Zipf without them."""
    if stats is None:
        return _zipf_routing(problem.num_layers, problem.num_experts, problem.top_k, passes, tokens, seed)
    return synthetic_routing(stats, domain, problem.num_layers, passes, tokens, seed=seed)


def _row(model: str, problem: OffloadProblem, frac: float, policy: str, tl: Timeline, group: int, predicted: float) -> dict:
    passes = tl.pass_us.size
    return {"model": model, "cache_slots": problem.cache_slots, "cache_frac": frac, "cache_gb": problem.cache_bytes / 1e9,
            "policy": policy, "group": group, "tokens_per_s": tl.tokens_per_s, "latency_ms": tl.latency_us / 1e3,
            "bubble": tl.bubble_fraction, "loads_per_pass": tl.loads / passes, "misses_per_pass": tl.misses / passes,
            "predicted_tokens_per_s": predicted}


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict], list[str]]:
    """``(policy rows, sweep rows, notes)`` for every model × cache size."""
    cluster = load_cluster_card(args.cluster)
    rows, sweep, notes = [], [], []
    for name in args.models:
        att = MODELS[name]
        base = OffloadProblem.from_cards(name, args.cluster, cache_slots=load_model_card(name).num_experts, batch_tokens=args.batch_tokens,
                                         host_bw=args.pcie_gbps * 1e9, gpu_bytes=args.gpu_gb * 1e9, host_bytes=1e15)
        dense = att.us_per_token(base.model.hidden, args.context, cluster["peak_flops"], cluster["hbm_bw"])
        try:
            stats = load_domain_stats(att.stats, args.trace_dir)
            domain = stats.domains.index(args.domain)
        except TraceError as exc:
            stats, domain = None, -1
            notes.append(f"{name}: {exc}; independent shuffled-Zipf layers instead")
        total = base.num_layers * base.num_experts

        for frac in args.cache_fracs:
            slots = max(base.num_experts, int(round(frac * total)))
            kv = att.kv_bytes(args.context) * base.num_layers if args.kv_memory == "gpu" else 0.0
            problem = base.with_(cache_slots=slots, dense_us_per_token=dense, seq_bytes=kv)
            one = _routing(stats, domain, base, args.passes, args.batch_tokens)
            res = {"on-demand": run_timeline(problem, on_demand(problem), one.counts)}
            try:
                res["whole-layer"] = run_timeline(problem, whole_layer(problem), one.counts)
            except PlannerError as exc:
                notes.append(f"{name} @ {slots} slots: whole-layer skipped: {exc}")
            sb = single_batch(problem, one.freq)
            res["single-batch"] = run_timeline(problem, sb.schedule, one.counts)
            for policy, tl in res.items():
                rows.append(_row(name, problem, frac, policy, tl, 1, sb.tokens_per_s if policy == "single-batch" else np.nan))
            cands = candidate_groups(problem, args.max_group)
            choice = choose_group(problem, one.freq, args.latency_cap_ms * 1e3, groups=cands)
            notes.append(f"{name} @ {slots} slots: {choice.message}")
            for g in cands:  # the sweep: ours at every candidate group
                r = _routing(stats, domain, base, args.passes, g * args.batch_tokens)
                plan = plan_greedy(problem, forecast(problem, r.freq, g))
                tl = run_timeline(problem, plan.schedule, r.counts)
                sweep.append(_row(name, problem, frac, "ours", tl, g, plan.tokens_per_s))
                if g == choice.plan.group:
                    rows.append(_row(name, problem, frac, "ours", tl, g, plan.tokens_per_s))
                    ad = run_timeline(problem, adaptive(problem, plan, predictor_for(r), r.counts), r.counts)
                    rows.append(_row(name, problem, frac, "ours+coact", ad, g, np.nan))
                    if "whole-layer" in res:
                        wl = run_timeline(problem, whole_layer(problem, g), r.counts)
                        rows.append(_row(name, problem, frac, "whole-layer@b", wl, g, np.nan))
    return rows, sweep, notes


def ratios(rows: list[dict]) -> list[dict]:
    """Per (model, cache): ours' and ours+coact's throughput over each baseline's."""
    out = []
    for key in dict.fromkeys((r["model"], r["cache_slots"]) for r in rows):
        by = {r["policy"]: r for r in rows if (r["model"], r["cache_slots"]) == key}
        for mine in ("ours", "ours+coact"):
            if mine in by:
                out.append({"model": key[0], "cache_slots": key[1], "policy": mine,
                            **{f"x_{b}": by[mine]["tokens_per_s"] / by[b]["tokens_per_s"] if b in by else np.nan
                               for b in (*BASELINES, "whole-layer@b")}})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | cache slots (GB) | policy | b | tokens/s | pass ms | bubbles | loads / pass | misses / pass | planned tokens/s |",
             "|" + "|".join("---" for _ in range(10)) + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['cache_slots']} ({r['cache_gb']:.1f}) | {r['policy']} | {r['group']} | {r['tokens_per_s']:.4g} | "
                     f"{r['latency_ms']:.1f} | {100 * r['bubble']:.1f}% | {r['loads_per_pass']:.1f} | {r['misses_per_pass']:.1f} | "
                     + ("—" if np.isnan(r["predicted_tokens_per_s"]) else f"{r['predicted_tokens_per_s']:.4g}") + " |")
    return "\n".join(lines)


def ratio_table(rat: list[dict]) -> str:
    lines = ["| model | cache slots | policy | × on-demand | × whole-layer | × single-batch | × whole-layer@b |", "|---|---|---|---|---|---|---|"]
    for r in rat:
        lines.append(f"| {r['model']} | {r['cache_slots']} | {r['policy']} | " + " | ".join(
            "—" if np.isnan(r[f"x_{b}"]) else f"{r[f'x_{b}']:.2f}" for b in (*BASELINES, "whole-layer@b")) + " |")
    return "\n".join(lines)


def recall_lines(args: argparse.Namespace) -> list[str]:
    """The co-activation predictor's top-k recall on the real matrices (held-out domains)."""
    out = []
    for name in args.models:
        try:
            stats = load_domain_stats(MODELS[name].stats, args.trace_dir)
        except TraceError as exc:
            out.append(f"{name}: no recall ({exc})")
            continue
        rows = recall_table(stats)
        co, fr = np.mean([r.coactivation for r in rows]), np.mean([r.frequency for r in rows])
        b_co, b_fr = batch_recall(stats, tokens=4, samples=20)
        out.append(f"{name}: next-expert top-{stats.top_k} recall (pairs 0->7, 7->15, held-out domain) co-activation {co:.3f} vs "
                   f"frequency {fr:.3f}; 4-token batch needed-set recall {b_co:.3f} vs {b_fr:.3f} (no lookahead gate in these traces)")
    return out


def plot(rows: list[dict], sweep: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in sweep))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for i, slots in enumerate(dict.fromkeys(r["cache_slots"] for r in sweep if r["model"] == m)):
            rs = [r for r in sweep if r["model"] == m and r["cache_slots"] == slots]
            color = f"C{i}"
            ax.plot([r["group"] for r in rs], [r["tokens_per_s"] for r in rs], marker="o", color=color, label=f"ours, {slots} slots")
            for r in rows:
                if r["model"] == m and r["cache_slots"] == slots and r["policy"] in ("on-demand", "whole-layer"):
                    ax.axhline(r["tokens_per_s"], color=color, linestyle=":" if r["policy"] == "on-demand" else "--", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch group size b")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{m}: ours vs b (dotted: on-demand, dashed: whole-layer, b=1)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="probe-bench offload", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two cache sizes, 4 passes, groups up to 1024")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--cluster", default="h100x8", help="cluster card whose per-GPU FLOP/s and HBM bandwidth are used")
    ap.add_argument("--cache-fracs", nargs="+", type=float, default=None,
                    help="GPU expert cache as a share of all routed experts (default: 0.125 0.25 0.5 0.75; quick: 0.25 0.5)")
    ap.add_argument("--batch-tokens", type=int, default=64, help="tokens per batch (decode: sequences per batch)")
    ap.add_argument("--context", type=int, default=512, help="context length whose KV cache attention reads per token")
    ap.add_argument("--pcie-gbps", type=float, default=PCIE_GEN5_X16_BPS / 1e9, help="host -> GPU GB/s (PCIe Gen5 x16 effective)")
    ap.add_argument("--gpu-gb", type=float, default=70.0, help="HBM for the expert cache, activations and (--kv-memory gpu) KV cache")
    ap.add_argument("--kv-memory", choices=("gpu", "none"), default="gpu",
                    help="gpu: every sequence's KV cache (--context tokens) takes HBM beside the cache, bounding b; "
                         "none: not counted (KV elsewhere; an upper bound)")
    ap.add_argument("--latency-cap-ms", type=float, default=2000.0, help="the most one pass (one decode step of a group) may take")
    ap.add_argument("--max-group", type=int, default=None, help="largest group tried (default 4096; quick 1024)")
    ap.add_argument("--passes", type=int, default=None, help="passes per run, the first not scored (default 8; quick 4)")
    ap.add_argument("--domain", default="c4", help="trace domain whose statistics drive the routing")
    ap.add_argument("--trace-dir", default=None)
    ap.add_argument("--out", default="probe-bench-out")
    ap.add_argument("--no-plots", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.cache_fracs = args.cache_fracs or ([0.25, 0.5] if args.quick else [0.125, 0.25, 0.5, 0.75])
    # None (not given) takes the preset's value; an explicit 0 reaches the checks below
    args.max_group = (1024 if args.quick else 4096) if args.max_group is None else args.max_group
    args.passes = (4 if args.quick else 8) if args.passes is None else args.passes
    try:
        if args.passes < 2:
            raise PlannerError("--passes must be >= 2 (the first pass is the cold start)")
        if not all(0 < f <= 1 for f in args.cache_fracs):
            raise PlannerError(f"--cache-fracs must lie in (0, 1], got {args.cache_fracs}")
        if args.batch_tokens < 1 or args.context < 0 or args.max_group < 1:
            raise PlannerError("--batch-tokens and --max-group must be >= 1, --context >= 0")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows, sweep, notes = run(args)
        print(table(rows))
        print()
        print(ratio_table(ratios(rows)))
        print()
        print(table(sweep))
        for line in notes + recall_lines(args):
            print(line)
        with open(out / "offload.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["kind", *rows[0]])
            w.writeheader()
            for kind, rs in (("policy", rows), ("sweep", sweep)):
                for r in rs:
                    w.writerow({"kind": kind, **r})
        written = [out / "offload.csv"]
        if not args.no_plots:
            plot(rows, sweep, out / "offload.png")
            written.append(out / "offload.png")
        print("wrote " + ", ".join(map(str, written)))
    except PlannerError as exc:
        print(f"probe-bench offload: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"probe-bench offload: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
