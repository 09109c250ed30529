"""The compiled plan validator behind :meth:`probe_planner.Plan.validate`.

:func:`check_plan` walks a plan's coordinate lists in one compiled call and returns the first
violated invariant as an error code plus the indices (and values) naming it; ``plan.py`` turns that
into a :class:`~probe_planner.errors.PlanInvalidError` message. The invariants and the order they
are checked in (the first violation is the one reported):

1. ``RANGE_REPLICA`` / ``RANGE_ROUTE``: every column inside its axis (column by column);
2. ``TOKENS``: route tokens finite and ``>= 0``;
3. ``SRC_NOT_NATIVE`` / ``DST_NATIVE``: a replica's source natively hosts the expert, its
   destination does not;
4. ``COPIED_TWICE``: no expert copied twice to one rank in a layer; ``SLOTS``: at most ``slots``
   replicas per (layer, rank);
5. ``UNLISTED_SPLIT``: an expert with ``!= 1`` hosts that has tokens lists its routes;
6. ``WINDOW``: copies fit the window on each end and link kind (:func:`probe_planner.window.copies_fit`);
7. ``NOT_HELD``: routes go only to ranks holding the expert (natively or by a replica that layer);
8. ``REPEAT``: no repeated (layer, source, expert, destination);
9. ``CONSERVATION``: each listed (layer, source, expert) carries its load (relative tolerance);
10. ``UNCOVERED``: no source with tokens for a listed expert is left without entries;
11. ``FRACTIONAL``: integral loads get integral route tokens.

Work is linear in the plan and the work arrays are compact: replicas are bucketed by (layer,
destination) with a counting sort and each bucket (at most ``slots`` experts in a valid plan) is
sorted, so whether a rank holds an expert is a binary search in its bucket; routes are bucketed by
(layer, expert) and then by source with stable counting sorts (no comparison sort; a group sums in
input order); counters are dense over ``4·L·G`` and ``L·E`` entries, never ``L·E·G``.
:func:`scan_loads` checks the loads (finite, ``>= 0``, whole numbers?) in vectorized passes.

The kernels are compiled for read-only C-contiguous arrays (writeable ones convert to them), so
one specialization serves every caller; :func:`prepare` compiles (or loads from numba's cache)
once, and later calls never compile.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types as nt

from .window import copies_fit

(OK, RANGE_REPLICA, RANGE_ROUTE, TOKENS, SRC_NOT_NATIVE, DST_NATIVE, COPIED_TWICE, SLOTS, UNLISTED_SPLIT,
 WINDOW, NOT_HELD, REPEAT, CONSERVATION, UNCOVERED, FRACTIONAL) = range(15)


@nb.njit(cache=True, inline="always")
def _res(code, a, b, c, d, x, y):
    return (np.int64(code), np.int64(a), np.int64(b), np.int64(c), np.int64(d), np.float64(x), np.float64(y))


@nb.njit(cache=True, inline="always")
def _in_sorted(a, lo, hi, v):
    """Whether ``v`` is in the sorted slice ``a[lo:hi]``."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and a[lo] == v


@nb.njit(cache=True)
def _sort_slice(a, lo, hi):
    """Sort ``a[lo:hi]`` in place: insertion sort for the short slices a valid plan has (at most
    ``slots`` replicas per bucket), heapsort beyond (no ``np.sort``: it triples the compile time)."""
    n = hi - lo
    if n <= 16:
        for j in range(lo + 1, hi):
            v = a[j]
            m = j - 1
            while m >= lo and a[m] > v:
                a[m + 1] = a[m]
                m -= 1
            a[m + 1] = v
        return
    for top in range(n // 2 - 1, -1, -1):
        _sift(a, lo, top, n)
    for end in range(n - 1, 0, -1):
        a[lo], a[lo + end] = a[lo + end], a[lo]
        _sift(a, lo, 0, end)


@nb.njit(cache=True)
def _sift(a, lo, root, n):
    """Sift ``a[lo + root]`` down the max-heap ``a[lo:lo + n]``."""
    while True:
        child = 2 * root + 1
        if child >= n:
            return
        if child + 1 < n and a[lo + child + 1] > a[lo + child]:
            child += 1
        if a[lo + root] >= a[lo + child]:
            return
        a[lo + root], a[lo + child] = a[lo + child], a[lo + root]
        root = child


@nb.njit(cache=True)
def _out_of_range(rows, n_lay, expert_col, e_all, g_all):
    """``(row, column, bound)`` of the first entry outside ``[0, bound)``, column by column, in ``[n, 4]``
    index rows whose column 0 is the layer, ``expert_col`` the expert and the others ranks; row -1 when
    all are in range."""
    for c in range(4):
        hi = n_lay if c == 0 else (e_all if c == expert_col else g_all)
        for i in range(rows.shape[0]):
            v = rows[i, c]
            if v < 0 or v >= hi:
                return i, c, hi
    return -1, 0, 0


@nb.njit(cache=True)
def _buckets(rows, major, width, minor, n_keys):
    """Stable counting sort of ``rows [n, k]`` by the key ``rows[:, major] * width + rows[:, minor]``
    in ``[0, n_keys)``: ``(start [n_keys + 1], order [n])`` with the rows of key ``k`` at
    ``order[start[k]:start[k + 1]]``, in their original order."""
    keys = np.empty(rows.shape[0], np.int64)
    for i in range(rows.shape[0]):
        keys[i] = rows[i, major] * width + rows[i, minor]
    start = np.zeros(n_keys + 1, np.int64)
    for i in range(keys.size):
        start[keys[i] + 1] += 1
    for k in range(n_keys):
        start[k + 1] += start[k]
    fill = start[:n_keys].copy()
    order = np.empty(keys.size, np.int64)
    for i in range(keys.size):
        order[fill[keys[i]]] = i
        fill[keys[i]] += 1
    return start, order


@nb.njit(cache=True, fastmath={"reassoc", "nsz"})
def _nonfinite_or_signed(flat):
    """Whether some entry may be NaN, infinite or negative: ``sum(v * 0)`` is NaN iff an entry is
    NaN or infinite (reassociation cannot drop a NaN), and the OR of the bit patterns has the sign
    bit iff an entry is negative (or -0.0). One vectorized pass; :func:`scan_loads` confirms."""
    bits = flat.view(np.uint64)
    a = 0.0
    o = np.uint64(0)
    for i in range(flat.size):
        a += flat[i] * 0.0
        o |= bits[i]
    return a != 0.0 or (o >> np.uint64(63)) != 0


@nb.njit(cache=True)
def _fractional(flat):
    """Whether some entry is not a whole number (NaN included). Exact: no fast-math."""
    f = 0
    for i in range(flat.size):
        v = flat[i]
        f |= v != np.floor(v)
    return f != 0


@nb.njit(cache=True)
def scan_loads(loads):
    """``(first bad flat index or -1, integral, largest entry)``: the first entry that is not finite
    and ``>= 0``, whether every entry is a whole number, and the largest (when none is bad). Three
    vectorized passes per cache-sized block: one read of the array from memory."""
    flat = loads.reshape(loads.size)
    n = flat.size
    frac = False
    top = 0.0
    block = 4096
    for lo in range(0, n, block):
        chunk = flat[lo:min(lo + block, n)]
        if _nonfinite_or_signed(chunk):
            for i in range(chunk.size):
                v = chunk[i]
                if not (v >= 0.0 and v < np.inf):
                    return lo + i, False, 0.0
        if not frac:
            frac = _fractional(chunk)
        top = max(top, _largest(chunk))
    return -1, not frac, top


@nb.njit(cache=True, fastmath={"reassoc", "nsz", "nnan", "ninf"})
def _largest(flat):
    """The largest entry of a finite, non-negative block."""
    m = 0.0
    for i in range(flat.size):
        m = max(m, flat[i])
    return m


@nb.njit(cache=True, nogil=True)  # the runtime plans in a worker thread: let the layers run
def check_plan(loads, rep, ri, rt, native, n_native, rpn, slots, win, unit_intra, unit_inter, integral, rel_tol):
    """Check every plan invariant (module docstring); return ``(code, a, b, c, d, x, y)``: code ``OK``
    (0) when the plan is valid, else the first violation with its indices ``a..d`` and values ``x, y``.
    ``n_native[e]`` is expert ``e``'s native host count (``native.sum(axis=0)``)."""
    n_lay, g_all, e_all = loads.shape
    n_rep = rep.shape[0]
    n_rt = ri.shape[0]
    # 1. column ranges, column by column (the first bad row of the first bad column)
    i, c, hi = _out_of_range(rep, n_lay, 1, e_all, g_all)  # replicas: (layer, expert, src, dst)
    if i >= 0:
        return _res(RANGE_REPLICA, i, c, hi, 0, 0.0, 0.0)
    i, c, hi = _out_of_range(ri, n_lay, 2, e_all, g_all)  # routes: (layer, src, expert, dst)
    if i >= 0:
        return _res(RANGE_ROUTE, i, c, hi, 0, 0.0, 0.0)
    # 2. tokens finite and >= 0
    for i in range(n_rt):
        t = rt[i]
        if not (t >= 0.0 and t < np.inf):
            return _res(TOKENS, i, 0, 0, 0, t, 0.0)
    # 3. a replica's source hosts the expert natively, its destination does not
    for i in range(n_rep):
        if not native[rep[i, 2], rep[i, 1]]:
            return _res(SRC_NOT_NATIVE, i, 0, 0, 0, 0.0, 0.0)
    for i in range(n_rep):
        if native[rep[i, 3], rep[i, 1]]:
            return _res(DST_NATIVE, i, 0, 0, 0, 0.0, 0.0)
    # 4. replicas bucketed by (layer, destination) (counting sort), each bucket sorted by expert
    n_lg = n_lay * g_all
    start, order = _buckets(rep, 0, g_all, 3, n_lg)
    held = np.empty(n_rep, np.int64)
    for j in range(n_rep):
        held[j] = rep[order[j], 1]
    dup = -1  # smallest (layer, expert, destination) key copied twice
    most = 0  # replicas on the fullest (layer, rank), and the first such (layer, rank)
    most_k = -1
    for k in range(n_lg):
        lo, hi = start[k], start[k + 1]
        n = hi - lo
        if n == 0:
            continue
        if n > most:
            most = n
            most_k = k
        if n > 1:
            _sort_slice(held, lo, hi)
            for j in range(lo + 1, hi):
                if held[j] == held[j - 1]:
                    key = ((k // g_all) * e_all + held[j]) * g_all + k % g_all
                    if dup < 0 or key < dup:
                        dup = key
    if dup >= 0:
        return _res(COPIED_TWICE, dup // (g_all * e_all), dup // g_all % e_all, dup % g_all, 0, 0.0, 0.0)
    if most > slots:
        return _res(SLOTS, most_k // g_all, most_k % g_all, most, 0, 0.0, 0.0)
    # 5. routes bucketed by (layer, expert) (stable counting sort: a bucket is a listed pair); an
    # expert with != 1 hosts and tokens must be listed
    n_le = n_lay * e_all
    rstart, perm = _buckets(ri, 0, e_all, 2, n_le)
    copies = np.zeros(n_le, np.int64)
    for i in range(n_rep):
        copies[rep[i, 0] * e_all + rep[i, 1]] += 1
    for lay in range(n_lay):
        for e in range(e_all):
            k = lay * e_all + e
            hosts = n_native[e] + copies[k]
            if hosts != 1 and rstart[k + 1] == rstart[k]:
                total = 0.0
                for s in range(g_all):
                    total += loads[lay, s, e]
                if total > 0.0:
                    return _res(UNLISTED_SPLIT, lay, e, hosts, 0, 0.0, 0.0)
    # 6. the window rule on each end and link kind: (receive intra, receive inter, send intra, send inter)
    n_copy = np.zeros(4 * n_lg, np.int32)
    for i in range(n_rep):
        lay, s, d = rep[i, 0], rep[i, 2], rep[i, 3]
        inter = 0 if s // rpn == d // rpn else 1
        n_copy[(lay * g_all + d) * 4 + inter] += 1
        n_copy[(lay * g_all + s) * 4 + 2 + inter] += 1
    over = -1  # the first (layer, rank, kind) over its window
    for i in range(n_rep):
        lay, s, d = rep[i, 0], rep[i, 2], rep[i, 3]
        inter = 0 if s // rpn == d // rpn else 1
        unit = unit_inter if inter else unit_intra
        cell = (lay * g_all + d) * 4 + inter
        if (over < 0 or cell < over) and not copies_fit(np.float64(n_copy[cell]), unit, win[d]):
            over = cell
        cell = (lay * g_all + s) * 4 + 2 + inter
        if (over < 0 or cell < over) and not copies_fit(np.float64(n_copy[cell]), unit, win[s]):
            over = cell
    if over >= 0:
        return _res(WINDOW, over // (4 * g_all), over // 4 % g_all, over % 4, n_copy[over], 0.0, 0.0)
    # 7. routes go to holders: native, or a replica of that layer (binary search in its bucket)
    for i in range(n_rt):
        e, d = ri[i, 2], ri[i, 3]
        if not native[d, e]:
            k = ri[i, 0] * g_all + d
            if not _in_sorted(held, start[k], start[k + 1], e):
                return _res(NOT_HELD, i, 0, 0, 0, 0.0, 0.0)
    # 8-10. per listed (layer, expert): its entries by source (stable counting sort, so a group sums
    # in input order); per (layer, source, expert) group: no repeated destination, conservation; and
    # every source with tokens has a group. The smallest (layer, source, expert[, destination]) key
    # of each kind of violation is reported, repeats first, as checking them in turn would.
    rep_key = -1
    rep_i = 0
    rep_j = 0
    cons_key = -1
    cons_acc = 0.0
    cover_key = -1  # (layer * E + expert) * G + source
    sstart = np.zeros(g_all + 1, np.int64)
    sfill = np.zeros(g_all, np.int64)
    grouped = np.empty(n_rt, np.int64)
    seen = np.full(g_all, -1, np.int64)  # per destination: the last group that used it, and its entry
    seen_i = np.zeros(g_all, np.int64)
    column = np.empty(g_all, np.float64)
    group = 0
    for k in range(n_le):
        lo, hi = rstart[k], rstart[k + 1]
        if lo == hi:
            continue
        lay = k // e_all
        e = k % e_all
        for s in range(g_all + 1):
            sstart[s] = 0
        for j in range(lo, hi):
            sstart[ri[perm[j], 1] + 1] += 1
        for s in range(g_all):
            sstart[s + 1] += sstart[s]
            sfill[s] = lo + sstart[s]
        for j in range(lo, hi):
            i = perm[j]
            s = ri[i, 1]
            grouped[sfill[s]] = i
            sfill[s] += 1
        for s in range(g_all):  # gather the column first: independent loads overlap their cache misses
            column[s] = loads[lay, s, e]
        for s in range(g_all):
            a, b = lo + sstart[s], lo + sstart[s + 1]
            want = column[s]
            if a == b:
                if want > 0.0 and cover_key < 0:
                    cover_key = k * g_all + s
                continue
            group += 1
            acc = 0.0
            for j in range(a, b):
                i = grouped[j]
                d = ri[i, 3]
                if seen[d] == group:
                    key = ((lay * g_all + s) * e_all + e) * g_all + d
                    if rep_key < 0 or key < rep_key:
                        rep_key = key
                        rep_i = seen_i[d]
                        rep_j = i
                seen[d] = group
                seen_i[d] = i
                acc += rt[i]
            if abs(acc - want) > rel_tol * max(1.0, want):
                key = (lay * g_all + s) * e_all + e
                if cons_key < 0 or key < cons_key:
                    cons_key = key
                    cons_acc = acc
    if rep_key >= 0:
        return _res(REPEAT, rep_i, rep_j, 0, 0, 0.0, 0.0)
    if cons_key >= 0:
        e = cons_key % e_all
        s = cons_key // e_all % g_all
        lay = cons_key // (e_all * g_all)
        return _res(CONSERVATION, lay, s, e, 0, cons_acc, loads[lay, s, e])
    if cover_key >= 0:
        s = cover_key % g_all
        e = cover_key // g_all % e_all
        lay = cover_key // (g_all * e_all)
        return _res(UNCOVERED, lay, s, e, 0, 0.0, loads[lay, s, e])
    # 11. integral loads, integral routes
    if integral:
        for i in range(n_rt):
            if rt[i] != np.floor(rt[i]):
                return _res(FRACTIONAL, i, 0, 0, 0, rt[i], 0.0)
    return _res(OK, 0, 0, 0, 0, 0.0, 0.0)


def _ro(dtype, ndim: int):
    return nt.Array(dtype, ndim, "C", readonly=True)


CHECK_SIGNATURE = (_ro(nt.float64, 3), _ro(nt.int64, 2), _ro(nt.int64, 2), _ro(nt.float64, 1), _ro(nt.boolean, 2),
                   _ro(nt.int64, 1), nt.int64, nt.int64, _ro(nt.float64, 1), nt.float64, nt.float64, nt.boolean, nt.float64)
SCAN_SIGNATURE = (_ro(nt.float64, 3),)
_ready = False


def prepare() -> None:
    """Compile (or load from numba's cache) both kernels once, for read-only C-contiguous arrays of
    the plan's dtypes (``[L, G, E]`` float64 loads, ``[N, 4]`` int64 indices, ``[N]`` float64
    tokens, ``[G, E]`` bool native, ``[G]`` float64 windows; writeable arrays convert to these), then
    lock the dispatchers so no later call compiles. Idempotent and cheap after the first call."""
    global _ready
    if not _ready:
        check_plan.compile(CHECK_SIGNATURE)
        scan_loads.compile(SCAN_SIGNATURE)
        check_plan.disable_compile()
        scan_loads.disable_compile()
        _ready = True
