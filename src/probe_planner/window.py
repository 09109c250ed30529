"""The one rule for whether replica copies fit the hiding window (docs/formulation.md, "Windows").

A rank's copies run over its intra- and inter-node links concurrently and in both directions at
once, so ``k`` copies over one link kind of per-copy time ``unit`` fit a window ``W`` iff
``k·unit <= W·(1 + WINDOW_TOL) + WINDOW_TOL`` — checked on each end (sending and receiving) and
each link kind separately. The tolerance absorbs float error when a window is an exact multiple of
a copy time. Every part of the planner decides with this rule: plan validation, the analytic bound,
the greedy kernel (:func:`copies_fit`, the compiled twin of the same source), the LP/MILP rows and
candidates, LP rounding and the placement search (:func:`copies_that_fit`).
"""

from __future__ import annotations

import numba as nb
import numpy as np

WINDOW_TOL = 1e-9


def copies_fit_np(count, unit_us, window_us):
    """Whether ``count`` copies of ``unit_us`` each fit ``window_us`` (numbers or arrays)."""
    return count * unit_us <= window_us * (1.0 + WINDOW_TOL) + WINDOW_TOL


# The kernels' twin: compiled from the very same source, so the two cannot drift apart.
copies_fit = nb.njit(cache=True, inline="always")(copies_fit_np)


def copies_that_fit(unit_us: float, windows_us: np.ndarray, most: int) -> np.ndarray:
    """``[G]`` int64: the largest ``k <= most`` with ``copies_fit(k, unit_us, window)`` per window
    (``most`` keeps infinite windows finite)."""
    w = np.asarray(windows_us, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        k = np.floor(np.minimum((w * (1.0 + WINDOW_TOL) + WINDOW_TOL) / unit_us, float(most)))
    # the division may land one off the rule's own arithmetic: settle on what the rule says
    k = np.where((k < most) & copies_fit_np(k + 1.0, unit_us, w), k + 1.0, k)
    k = np.where((k > 0) & ~copies_fit_np(k, unit_us, w), k - 1.0, k)
    return k.astype(np.int64)


def copy_times_us(src: np.ndarray, dst: np.ndarray, ranks_per_node: int, num_ranks: int,
                  copy_intra_us: float, copy_inter_us: float) -> np.ndarray:
    """``[G]`` µs each rank spends on the copies ``src[i] -> dst[i]`` under the same model as the
    rule: its intra- and inter-node links, sending and receiving, all run concurrently, so a rank
    takes the longest of its four ``count × unit`` (what a copy plan needs as its window)."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    inter = (src // ranks_per_node) != (dst // ranks_per_node)
    unit = np.where(inter, copy_inter_us, copy_intra_us)
    out = np.zeros(num_ranks)
    for ends in (src, dst):
        for kind in (False, True):
            sel = inter == kind
            out = np.maximum(out, np.bincount(ends[sel], weights=unit[sel], minlength=num_ranks))
    return out
