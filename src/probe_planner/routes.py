"""Compact routing: a plan lists routes only where a choice was made.

For a (layer, expert) pair the plan either *lists* routes (at least one ``route_idx`` entry for
it; then the entries must carry every source's tokens for that expert) or leaves it *unlisted*:
then the expert must have exactly one host in that layer and every token goes there. With the
sharded baseline most experts are never split, so listing only split experts keeps a 64-rank x
256-expert plan to a few hundred entries per layer instead of ~16k. :func:`expand_routes` gives
the explicit form a runtime dispatches from.
"""

from __future__ import annotations

import numpy as np


def sole_host(native: np.ndarray) -> np.ndarray:
    """``[E]``: the expert's native host when it has exactly one, else -1."""
    native = np.asarray(native, dtype=bool)
    return np.where(native.sum(axis=0) == 1, np.argmax(native, axis=0), -1).astype(np.int64)


def listed_pairs(route_idx: np.ndarray, num_layers: int, num_experts: int) -> np.ndarray:
    """``[L, E]`` bool: the (layer, expert) pairs ``route_idx`` lists routes for."""
    listed = np.zeros((num_layers, num_experts), dtype=bool)
    listed[route_idx[:, 0], route_idx[:, 2]] = True
    return listed


def implicit_routes(native: np.ndarray, loads: np.ndarray, listed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Routes of the unlisted pairs: each source's tokens to the expert's sole native host.
    Pairs without a sole native host are skipped (``Plan.validate`` rejects them)."""
    host = sole_host(native)
    lay, src, exp = np.nonzero((loads > 0) & ~listed[:, None, :] & (host >= 0)[None, None, :])
    idx = np.stack([lay, src, exp, host[exp]], axis=1).astype(np.int64).reshape(-1, 4)
    return idx, loads[lay, src, exp]


def expand_routes(native: np.ndarray, loads: np.ndarray, route_idx: np.ndarray,
                  route_tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every route explicitly, listed and implicit, sorted by (layer, source, expert, destination)."""
    listed = listed_pairs(route_idx, loads.shape[0], loads.shape[2])
    idx, tok = implicit_routes(native, loads, listed)
    idx = np.vstack([route_idx.reshape(-1, 4), idx])
    tok = np.concatenate([route_tok.reshape(-1), tok])
    order = np.lexsort((idx[:, 3], idx[:, 2], idx[:, 1], idx[:, 0]))
    return idx[order], tok[order]


def compact_routes(native: np.ndarray, replicas: np.ndarray, route_idx: np.ndarray, route_tok: np.ndarray,
                   num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop the listed routes of (layer, expert) pairs that have a single host (they are implied)."""
    hosts = np.broadcast_to(np.asarray(native, dtype=bool).sum(axis=0), (num_layers, native.shape[1])).copy()
    np.add.at(hosts, (replicas[:, 0], replicas[:, 1]), 1)
    keep = hosts[route_idx[:, 0], route_idx[:, 2]] != 1
    return route_idx[keep], route_tok[keep]
