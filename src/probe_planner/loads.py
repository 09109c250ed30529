"""Turning user loads into the canonical ``[layers, G, E]`` float64 array the solvers take."""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import LoadsError
from .topology import Topology

Sources = Literal["given", "uniform"]


def spread_uniform(counts: np.ndarray, num_ranks: int) -> np.ndarray:
    """``[..., E]`` expert loads -> ``[..., G, E]`` with every source rank sending an equal share.

    Integral counts stay integral: ``n // G`` each, the remainder one token apiece to ranks
    ``e, e+1, ...`` (mod G) so no rank is favoured across experts.
    """
    counts = np.asarray(counts, dtype=np.float64)
    e = counts.shape[-1]
    if np.all(counts == np.floor(counts)):
        base = np.floor(counts / num_ranks)
        rem = counts - base * num_ranks
        shift = (np.arange(num_ranks)[:, None] - np.arange(e)[None, :]) % num_ranks  # [G, E]
        return base[..., None, :] + (shift < rem[..., None, :])
    return np.repeat(counts[..., None, :] / num_ranks, num_ranks, axis=-2)


def canonical_loads(loads, topology: Topology, sources: Sources | None = None) -> tuple[np.ndarray, bool]:
    """Validate ``loads`` and return ``([L, G, E] float64, integral)``.

    Accepted shapes: ``[E]`` and ``[L, E]`` (sources uniform), ``[G, E]`` and ``[L, G, E]`` (per
    source rank). A 2-D array is read as ``[G, E]``; pass ``sources="uniform"`` for ``[L, E]``.
    """
    try:
        arr = np.asarray(loads, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LoadsError(f"loads must be a numeric array: {exc}") from exc
    g, e = topology.num_ranks, topology.num_experts
    if sources is None:
        sources = "uniform" if arr.ndim == 1 else "given"
    if sources not in ("given", "uniform"):
        raise LoadsError(f"sources must be 'given' or 'uniform', got {sources!r}")
    if arr.ndim == 0 or arr.shape[-1] != e:
        raise LoadsError(f"loads must end in the expert axis E={e}, got shape {list(arr.shape)}")
    if sources == "uniform":
        if arr.ndim not in (1, 2):
            raise LoadsError(f"uniform-source loads are [E] or [layers, E], got shape {list(arr.shape)}")
    elif arr.ndim not in (2, 3) or arr.shape[-2] != g:
        hint = " (for [layers, E] loads pass sources='uniform')" if arr.ndim == 2 else ""
        raise LoadsError(f"per-source loads are [G={g}, E={e}] or [layers, G, E], got shape {list(arr.shape)}{hint}")
    if arr.size and not (arr.min() >= 0.0 and arr.max() < np.inf):  # two passes, no temporaries; NaN fails both
        if not np.isfinite(arr).all():
            raise LoadsError(f"loads contain NaN or inf at index {np.argwhere(~np.isfinite(arr))[0].tolist()}")
        raise LoadsError(f"loads must be >= 0; found {arr.min()} at index {np.argwhere(arr < 0)[0].tolist()}")
    if arr.shape[0] == 0:
        raise LoadsError("loads hold zero layers")
    if sources == "uniform":
        arr = spread_uniform(arr, g)
    if arr.ndim == 2:
        arr = arr[None]
    arr = np.ascontiguousarray(arr)
    return arr, bool(np.all(arr == np.floor(arr)))
