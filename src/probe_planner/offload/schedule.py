"""The offload schedule: the contract between the offload planners and the runtime that executes them.

One schedule covers one pass of a batch group (``group`` batches) through all ``num_layers`` MoE
layers. For each layer ``l``, in this order:

1. ``evict[l]`` — ``(layer, expert)`` pairs leave the GPU expert cache (a pair that is not cached,
   e.g. never loaded on demand, is skipped);
2. ``prefetch[l]`` — expert ids of layer ``l`` load host → GPU on the one PCIe stream, in this order,
   while layer ``l - 1`` computes (``prefetch[0]`` loads before the group starts);
3. layer ``l`` computes; a needed expert that is not resident then loads on demand (it then occupies a
   slot; if the cache is full the runtime evicts the least recently used entry that the current layer
   does not need).

The cache holds at most ``cache_slots`` entries at every point. ``resident_start`` is the cache when
the group starts. Planners in this package produce cyclic schedules: the cache a pass ends with
(before on-demand loads) is ``resident_start`` again, so the same schedule serves every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OffloadError


def _int_array(name: str, value, ndim: int) -> np.ndarray:
    """``value`` as a read-only int64 array of ``ndim`` dimensions (a ``[k, 2]`` one may be empty ``[0]``)."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise OffloadError(f"{name} must be an integer array: {exc}") from exc
    if a.size == 0:
        a = np.zeros((0,) * ndim if ndim == 1 else (0, 2), dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise OffloadError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.ndim != ndim or (ndim == 2 and a.shape[1] != 2):
        want = "[k]" if ndim == 1 else "[k, 2]"
        raise OffloadError(f"{name} must be a {want} array, got shape {list(a.shape)}")
    out = np.array(a, dtype=np.int64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class OffloadSchedule:
    """Which expert weights to hold, prefetch and evict for one pass of a batch group.

    ``prefetch[l]``: ``[k]`` int64 expert ids of layer ``l``, loaded in this order while layer
    ``l - 1`` computes; ``evict[l]``: ``[k, 2]`` int64 ``(layer, expert)`` pairs evicted before
    ``prefetch[l]``'s loads start; ``resident_start``: ``[m, 2]`` int64 pairs cached at the start.
    Arrays are normalised to read-only int64 on construction; call :meth:`validate` to check the rest.
    """

    num_layers: int
    num_experts: int
    cache_slots: int
    group: int
    prefetch: tuple[np.ndarray, ...]
    evict: tuple[np.ndarray, ...]
    resident_start: np.ndarray

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: store the normalised arrays
        for name in ("num_layers", "num_experts", "cache_slots", "group"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < (0 if name == "cache_slots" else 1):
                raise OffloadError(f"{name} must be an integer >= {0 if name == 'cache_slots' else 1}, got {v!r:.80}")
            set_(self, name, int(v))
        for name, ndim in (("prefetch", 1), ("evict", 2)):
            seq = getattr(self, name)
            if isinstance(seq, np.ndarray) or not hasattr(seq, "__len__") or len(seq) != self.num_layers:
                raise OffloadError(f"{name} must be a sequence of num_layers={self.num_layers} arrays, got "
                                   f"{type(seq).__name__}" + (f" of length {len(seq)}" if hasattr(seq, "__len__") else ""))
            set_(self, name, tuple(_int_array(f"{name}[{i}]", a, ndim) for i, a in enumerate(seq)))
        set_(self, "resident_start", _int_array("resident_start", self.resident_start, 2))

    def validate(self) -> OffloadSchedule:
        """Check ranges, duplicates, that every prefetch loads an entry the plan has not cached, and that
        the planned cache never exceeds ``cache_slots``. Evicting an entry that is not cached is allowed
        and does nothing: it lets a plan clear slots that on-demand loads (the runtime's LRU rule, not
        part of the plan) may have filled. Returns ``self``; raises :class:`OffloadError` naming the
        first violation."""
        big_l, big_e = self.num_layers, self.num_experts

        def check_pairs(name: str, pairs: np.ndarray) -> None:
            if pairs.size and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= big_l
                               or pairs[:, 1].min() < 0 or pairs[:, 1].max() >= big_e):
                raise OffloadError(f"{name} holds a (layer, expert) pair outside [0, {big_l}) x [0, {big_e})")
            if np.unique(pairs[:, 0] * big_e + pairs[:, 1]).size != pairs.shape[0]:
                raise OffloadError(f"{name} lists a (layer, expert) pair twice")

        check_pairs("resident_start", self.resident_start)
        cache = {(int(a), int(b)) for a, b in self.resident_start}
        if len(cache) > self.cache_slots:
            raise OffloadError(f"resident_start holds {len(cache)} experts, more than cache_slots={self.cache_slots}")
        for lay in range(big_l):
            ev, pf = self.evict[lay], self.prefetch[lay]
            check_pairs(f"evict[{lay}]", ev)
            for a, b in ev:  # an entry that is not cached (never loaded, or LRU took it) is a no-op
                cache.discard((int(a), int(b)))
            if pf.size and (pf.min() < 0 or pf.max() >= big_e):
                raise OffloadError(f"prefetch[{lay}] holds an expert id outside [0, {big_e})")
            if np.unique(pf).size != pf.size:
                raise OffloadError(f"prefetch[{lay}] lists an expert twice")
            for e in pf:
                if (lay, int(e)) in cache:
                    raise OffloadError(f"prefetch[{lay}] loads expert {e}, which is already cached")
                cache.add((lay, int(e)))
            if len(cache) > self.cache_slots:
                raise OffloadError(f"after prefetch[{lay}] the cache holds {len(cache)} experts, "
                                   f"more than cache_slots={self.cache_slots}")
        return self

    def planned_resident(self, layer: int) -> np.ndarray:
        """``[m, 2]`` pairs the plan has cached when ``layer`` computes (after its prefetch; before on-demand loads)."""
        if not 0 <= layer < self.num_layers:
            raise OffloadError(f"layer must lie in [0, {self.num_layers}), got {layer!r}")
        cache = {(int(a), int(b)) for a, b in self.resident_start}
        for lay in range(layer + 1):
            cache -= {(int(a), int(b)) for a, b in self.evict[lay]}
            cache |= {(lay, int(e)) for e in self.prefetch[lay]}
        return np.array(sorted(cache), dtype=np.int64).reshape(-1, 2)

    @property
    def loads_per_pass(self) -> int:
        """Planned host → GPU expert loads per pass (on-demand misses not counted)."""
        return int(sum(p.size for p in self.prefetch))
