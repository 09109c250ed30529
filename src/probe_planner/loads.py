"""Turning user loads into the canonical ``[layers, G, E]`` float64 array the solvers take."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from . import plan_check
from .errors import LoadsError
from .topology import Topology

Sources = Literal["given", "uniform"]

# The largest token total one layer may carry. The cost model and the kernels keep token counts in
# float64, which holds every integer exactly only up to 2**53 (~9.007e15): above it ``x - 1.0 == x``,
# so integral rounding (the greedy kernel hands out a split's remainder one token at a time) can no
# longer make progress and loops for ever, and routed totals stop matching the loads. Requiring every
# layer's total (hence every (layer, expert) total over sources, and every entry) to stay <= 2**53
# keeps all of that exact. Far above any real batch: a 1M-token batch with top-8 is 8e6 per layer.
MAX_LOAD_TOTAL = 2.0**53

_REAL_KINDS = "iuf"  # signed and unsigned integers, floats: what loads may be made of
_KIND_NAMES = {"b": "boolean", "c": "complex", "U": "string", "S": "bytes", "O": "object", "M": "datetime",
               "m": "timedelta", "V": "structured/void"}


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


def _bad_dtype(dtype: np.dtype) -> LoadsError:
    kind = _KIND_NAMES.get(dtype.kind, "non-numeric")
    return LoadsError(f"loads must be a real numeric array (int, uint or float); got dtype {dtype} ({kind})")


def _holds_bool(obj) -> bool:
    """Whether a nested list/tuple holds a bool anywhere (numpy would silently read True as 1)."""
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind == "b"
    if not isinstance(obj, (list, tuple)):
        return isinstance(obj, (bool, np.bool_))
    types = set(map(type, obj))
    if bool in types or np.bool_ in types:
        return True
    if any(issubclass(t, (list, tuple, np.ndarray)) for t in types):
        return any(_holds_bool(x) for x in obj)
    return False


def _as_real_array(loads) -> np.ndarray:
    """``loads`` as an int/uint/float ndarray (not yet float64), or LoadsError naming what it is."""
    if isinstance(loads, np.ndarray):
        if isinstance(loads, np.ma.MaskedArray):
            raise LoadsError("loads must be a plain array, not a masked array (np.ma.MaskedArray): "
                             "fill or drop the masked entries first")
        if loads.dtype.kind not in _REAL_KINDS:
            raise _bad_dtype(loads.dtype)
        return loads
    if loads is None or isinstance(loads, (str, bytes, bytearray, dict, set, frozenset)):
        raise LoadsError(f"loads must be a real numeric array or nested list of numbers, got {type(loads).__name__}")
    try:
        arr = np.asarray(loads)
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        raise LoadsError(f"loads must be a real numeric array or a rectangular nested list of numbers: {exc}") from exc
    if isinstance(arr, np.ma.MaskedArray) or arr.dtype.kind not in _REAL_KINDS:
        if arr.dtype.kind == "O":
            raise LoadsError("loads must be a real numeric array or nested list of numbers; got dtype object "
                             "(ragged rows, None, non-numbers, or integers beyond int64)")
        raise _bad_dtype(arr.dtype)
    return arr


def canonical_loads(loads, topology: Topology, sources: Sources | None = None) -> tuple[np.ndarray, bool]:
    """Validate ``loads`` and return ``([L, G, E] float64, integral)``.

    Accepted shapes: ``[E]`` and ``[L, E]`` (sources uniform), ``[G, E]`` and ``[L, G, E]`` (per
    source rank). A 2-D array is read as ``[G, E]``; pass ``sources="uniform"`` for ``[L, E]``.

    Contract (each breach raises :class:`LoadsError` naming it): ``loads`` is a numpy array of a
    real numeric dtype (signed/unsigned integer or float) or a rectangular nested list/tuple of
    int/float numbers. Rejected: bool, complex, string/bytes, datetime/timedelta, object and
    structured dtypes, bools inside lists, masked arrays (``np.ma.MaskedArray``), ragged lists.
    Every entry is finite and ``>= 0``; at least one layer; and every layer's token total (so every
    entry and every (layer, expert) total over sources) is at most :data:`MAX_LOAD_TOTAL` ``= 2**53``,
    the largest count float64 holds exactly.
    """
    raw = loads
    arr = _as_real_array(loads)
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
    if arr.shape[0] == 0:
        raise LoadsError("loads hold zero layers")
    if not isinstance(raw, np.ndarray) and _holds_bool(raw):
        raise LoadsError("loads must be numbers, not booleans (found True/False in the nested list)")
    arr = np.asarray(arr, dtype=np.float64)  # no copy when already float64; huge float128 become inf
    layers = arr.shape[0] if arr.ndim == 3 or (arr.ndim == 2 and sources == "uniform") else 1
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # numba compiles per array type and read-only is another type: every
        arr = arr.copy()  # kernel would compile again (minutes) for a frozen or memory-mapped input
    plan_check.prepare()
    bad, integral, top = plan_check.scan_loads(arr.reshape(1, 1, -1))  # one compiled read: first bad entry, all whole, max
    if bad >= 0 or not top <= MAX_LOAD_TOTAL / (arr.size // layers):  # else no layer total passes the limit
        check_values(arr, layers)
    if sources == "uniform":
        arr = spread_uniform(arr, g)  # keeps integral counts integral
    if arr.ndim == 2:
        arr = arr[None]
    return np.ascontiguousarray(arr), bool(integral)


def check_values(arr: np.ndarray, layers: int) -> None:
    """The load value rule (finite, ``>= 0``, each of the ``layers`` rows of ``arr`` totalling at most
    :data:`MAX_LOAD_TOTAL`): the slow path of :func:`canonical_loads`' checks, naming the first bad
    entry or layer; also what other front doors taking loads (``place()``'s window) check."""
    bad = ~np.isfinite(arr)
    if bad.any():
        raise LoadsError(f"loads contain NaN or inf at index {np.argwhere(bad)[0].tolist()}")
    if arr.min() < 0:
        raise LoadsError(f"loads must be >= 0; found {arr.min()} at index {np.argwhere(arr < 0)[0].tolist()}")
    limit = f"MAX_LOAD_TOTAL = 2**53 (~{MAX_LOAD_TOTAL:.4g}), the largest token count float64 holds exactly"
    if arr.max() > MAX_LOAD_TOTAL:
        raise LoadsError(f"loads entry {arr.max():.6g} at index {np.argwhere(arr > MAX_LOAD_TOTAL)[0].tolist()} "
                         f"exceeds {limit}")
    rows = arr.reshape(layers, -1)
    totals = rows.sum(axis=1)  # entries <= 2**53: no overflow
    for lay in np.flatnonzero(totals >= MAX_LOAD_TOTAL):  # rounded sums: decide the boundary exactly
        if totals[lay] > MAX_LOAD_TOTAL or _exact_total_exceeds(rows[lay]):
            raise LoadsError(f"loads of layer {int(lay)} total {totals[lay]:.6g} tokens, above {limit}; "
                             "split the batch or scale the loads down")


def _exact_total_exceeds(row: np.ndarray) -> bool:
    """Whether ``row`` (entries in [0, 2**53]) sums to more than 2**53, exactly where its float64 sum
    rounds (it reads ``2**53 + 1`` as ``2**53``): whole parts summed in int64 chunks (512 * 2**53 <
    2**63), fractional parts (``x - floor(x)`` is exact) with the correctly rounded ``math.fsum``."""
    whole = np.floor(row)
    chunks = np.pad(whole.astype(np.int64), (0, -row.size % 512)).reshape(-1, 512).sum(axis=1)
    spare = 2**53 - sum(int(c) for c in chunks)
    return spare < 0 or math.fsum((row - whole).tolist()) > spare
