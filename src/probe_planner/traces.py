"""Loaders that turn the real routing records in ``shared/traces`` into load arrays.

Nothing in the package depends on the traces being present: every loader takes the directory as an
argument (default: :func:`default_trace_dir`) and raises :class:`TraceError` when a file is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import TraceError

QWEN3_PREFILL = "qwen3_30b_a3b_sharegpt_prefill.npz"
QWEN15_DECODE = "qwen15_moe_gsm8k_decode.npz"
QWEN15_TOP1 = "qwen15_moe_bookcorpus_top1_iters.npz"
SWITCH = "switch_base_bookcorpus_counts.npz"
DOMAINS = {"olmoe": "olmoe_domain_counts.npz", "mixtral": "mixtral_domain_counts.npz"}


def default_trace_dir() -> Path:
    """``$PROBE_TRACES`` if set, else ``shared/traces`` beside the checkout holding this package."""
    env = os.environ.get("PROBE_TRACES")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    return here.parents[3] / "shared" / "traces"


def _open(name: str, trace_dir: str | Path | None) -> np.lib.npyio.NpzFile:
    path = Path(trace_dir if trace_dir is not None else default_trace_dir()) / name
    if not path.is_file():
        raise TraceError(f"trace file {str(path)!r} not found (pass trace_dir or set PROBE_TRACES)")
    return np.load(path, allow_pickle=False)


def topk_to_loads(topk_ids: np.ndarray, num_experts: int, num_ranks: int) -> np.ndarray:
    """Per-token top-k ids ``[..., T, k]`` -> loads ``[..., G, E]``.

    Tokens are split into ``num_ranks`` contiguous chunks (as a data-parallel attention would hold
    them); each (token, chosen expert) pair counts once.
    """
    ids = np.asarray(topk_ids)
    if ids.ndim < 2 or ids.dtype.kind not in "iu":
        raise TraceError(f"topk_ids must be an integer [..., T, k] array, got {ids.dtype}{list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        raise TraceError(f"expert ids lie in [{ids.min()}, {ids.max()}], outside [0, {num_experts})")
    if num_ranks < 1:
        raise TraceError(f"num_ranks must be >= 1, got {num_ranks}")
    lead, (t, k) = ids.shape[:-2], ids.shape[-2:]
    flat = ids.reshape(-1, t, k)
    rank = np.repeat(np.arange(num_ranks), np.diff(np.linspace(0, t, num_ranks + 1).round().astype(np.int64)))
    out = np.zeros((flat.shape[0], num_ranks, num_experts))
    for i, block in enumerate(flat):
        np.add.at(out[i], (np.repeat(rank, k), block.reshape(-1).astype(np.int64)), 1.0)
    return out.reshape(*lead, num_ranks, num_experts)


def qwen3_prefill_loads(num_ranks: int = 8, trace_dir: str | Path | None = None) -> np.ndarray:
    """Qwen3-30B-A3B, one real 2050-token ShareGPT prefill: ``[48 layers, G, 128]``."""
    with _open(QWEN3_PREFILL, trace_dir) as z:
        return topk_to_loads(z["topk_ids"], 128, num_ranks)


def qwen3_prefill_windows(num_ranks: int = 8, steps: int = 4, trace_dir: str | Path | None = None) -> np.ndarray:
    """The Qwen3 prefill as a stream of ``steps`` batches: contiguous token windows of
    ``2050 // steps`` tokens, each split over the ranks: ``[steps, 48, G, 128]``."""
    if steps < 1:
        raise TraceError(f"steps must be >= 1, got {steps}")
    with _open(QWEN3_PREFILL, trace_dir) as z:
        ids = z["topk_ids"]
    w = ids.shape[1] // steps
    if w < num_ranks:
        raise TraceError(f"{steps} windows of the {ids.shape[1]}-token prefill leave fewer tokens than {num_ranks} ranks")
    return np.stack([topk_to_loads(ids[:, i * w:(i + 1) * w], 128, num_ranks) for i in range(steps)])


def qwen15_decode_steps(num_ranks: int = 4, trace_dir: str | Path | None = None) -> np.ndarray:
    """Qwen1.5-MoE-A2.7B, 127 real GSM8K decode steps at layers 0/8/12/18/23:
    ``[steps 127, layers 5, G, 60]`` (each step's 11-25 tokens split over the ranks)."""
    with _open(QWEN15_DECODE, trace_dir) as z:
        ids, fwd = z["topk_ids"], z["forward_index"]
    steps = [topk_to_loads(ids[:, fwd == f], 60, num_ranks) for f in range(4, int(fwd.max()) + 1)]
    return np.stack(steps)


def qwen15_prefill_loads(num_ranks: int = 4, trace_dir: str | Path | None = None) -> np.ndarray:
    """Qwen1.5-MoE-A2.7B, the 1406-token prefill of 25 GSM8K prompts: ``[5 layers, G, 60]``."""
    with _open(QWEN15_DECODE, trace_dir) as z:
        ids, fwd = z["topk_ids"], z["forward_index"]
    return topk_to_loads(ids[:, fwd == 3], 60, num_ranks)


def qwen15_top1_iterations(trace_dir: str | Path | None = None) -> np.ndarray:
    """Qwen1.5-MoE gate with top-1 routing, 6 ranks: ``[iters 20, layers 24, G 6, 60]`` (a stress case)."""
    with _open(QWEN15_TOP1, trace_dir) as z:
        return np.ascontiguousarray(np.transpose(z["per_rank_counts"], (1, 2, 0, 3)).astype(np.float64))


def switch_base_loads(num_experts: int = 128, trace_dir: str | Path | None = None) -> np.ndarray:
    """Switch-base-N on 8 ranks, encoder sparse layers only: ``[iters 2, layers 6, G 8, N]``."""
    with _open(SWITCH, trace_dir) as z:
        key = f"switch_base_{num_experts}_counts"
        if key not in z.files:
            raise TraceError(f"no Switch-base trace with {num_experts} experts; have {sorted(z.files)}")
        counts = z[key][:, :, :6]  # decoder sparse layers (6-11) are degenerate
    return np.ascontiguousarray(np.transpose(counts, (0, 2, 1, 3)).astype(np.float64))


def domain_counts(model: str = "olmoe", trace_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Per-domain expert counts ``{domain: [layers 3 (0/7/15), E]}`` for ``olmoe`` or ``mixtral``."""
    if model not in DOMAINS:
        raise TraceError(f"model must be one of {sorted(DOMAINS)}, got {model!r}")
    with _open(DOMAINS[model], trace_dir) as z:
        return {str(d): z["counts_topk"][i].astype(np.float64) for i, d in enumerate(z["domains"])}


def recorded_loads(path: str | Path, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``probe-run --record`` file: ``(predicted, real)`` ``[steps, layers, G, E]`` loads of one
    policy — what its plans were made for (NaN where the plan was static) and what was routed — for
    replay (score plans for the predicted loads on the real ones through a DispatchRule)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = {f"{policy}_predicted", f"{policy}_real"}
            if not keys <= set(z.files):
                have = sorted({k.rsplit("_", 1)[0] for k in z.files if k.endswith("_real")})
                raise TraceError(f"{path} holds no loads of policy {policy!r}; it has {have}")
            pred, real = z[f"{policy}_predicted"], z[f"{policy}_real"]
    except (OSError, ValueError) as exc:
        raise TraceError(f"cannot read recorded loads {path}: {exc}") from exc
    if pred.shape != real.shape or pred.ndim != 4:
        raise TraceError(f"{path}: predicted {list(pred.shape)} and real {list(real.shape)} must be the same [S, L, G, E]")
    return pred.astype(np.float64), real.astype(np.float64)
