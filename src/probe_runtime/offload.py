"""An offloaded MoE layer stack on one device (Klotski-style): every layer's expert weights in host
memory (:class:`~probe_runtime.offload_cache.HostExperts`), a device cache of ``C`` expert slots
(:class:`~probe_runtime.offload_cache.ExpertCache`), and a group of ``b`` batches run layer by layer
so that one load of an expert serves all ``b`` batches and the next layer's loads overlap this
layer's compute, as a :class:`probe_planner.offload.OffloadSchedule` says.

One pass of a group (:meth:`OffloadedStack.run`), the order
:func:`probe_planner.offload.timeline.run_timeline` models:

    start:    the cache is made to hold ``resident_start`` (extra entries evicted, missing ones loaded
              and waited for: ``GroupStats.start_loaded``), then ``evict[0]``, ``prefetch[0]`` (or,
              continuing a pass run with ``then=``, the cache as that pass left it: they were issued
              during its last layer)
    layer l:  attention (optional) and router for each of the b batches -> the layer's needed experts
              -> ``evict[l+1]`` -> on-demand loads of the needed experts not cached (misses, longest
              compute first) -> ``prefetch[l+1]`` queued behind the misses on the side stream (last
              layer: the next pass's ``evict[0]`` / ``prefetch[0]`` when run with ``then=``) -> expert
              compute of all b batches, expert by expert, each waiting only for its own load

A load into a full cache (a miss, or a prefetch once misses filled the slots the plan left spare)
evicts the least recently used entry the current layer does not need (loads and computations are
uses); a prefetch that finds none is skipped (``prefetch_skipped``, as is one of an entry already
cached). An eviction of an entry that is not cached, or that the current layer needs, does nothing
(``evict_skipped``). A layer that needs more distinct experts than the cache's capacity raises
:class:`CacheTooSmallError` before that layer's loads (no chunking: the planner sizes the cache;
its problems have ``cache_slots >= num_experts``). A schedule that does not fit the stack raises
:class:`probe_planner.errors.OffloadError` before any load.

The layer is ``x + attention(x)`` (single-head, from :class:`~probe_runtime.stack.StackWeights`,
kept on the device; ``attention=False`` omits it) then ``x + MoE(rms_norm(x))``: the same as
:meth:`StackWeights.reference`, which the output equals to float tolerance under any valid schedule.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probe_planner.errors import OffloadError
from probe_planner.offload import OffloadSchedule

from .experts import ExpertBank, reference_moe, route
from .offload_cache import ExpertCache, HostExperts, Key
from .stack import StackWeights, rms_norm


class CacheTooSmallError(OffloadError):
    """A layer needs more distinct experts at once than the expert cache may hold."""


@dataclass
class OffloadLayerStats:
    """One layer of one pass. Counts: distinct experts the group needed; loads ``prefetch[l]`` issued
    (``prefetched``; ``prefetch_skipped``: already cached, or no slot to take) and how many of them the
    layer used; needed experts found cached (``hits``) and loaded on demand (``misses``); ``evict[l]``
    entries evicted and skipped (not cached, or needed by the layer computing); entries the LRU rule evicted for this layer's
    loads; bytes loaded for this layer. Times (s): attention + routing of the group, waiting for
    loads during the expert compute, the expert compute without the waits, the whole layer."""

    layer: int
    needed: int = 0
    prefetched: int = 0
    prefetch_skipped: int = 0
    prefetch_used: int = 0
    hits: int = 0
    misses: int = 0
    evicted: int = 0
    evict_skipped: int = 0
    lru_evicted: int = 0
    bytes_loaded: int = 0
    route_s: float = 0.0
    wait_s: float = 0.0
    compute_s: float = 0.0
    layer_s: float = 0.0


@dataclass
class GroupStats:
    """One pass of a group: per-layer stats, the loads and evictions that made the cache hold
    ``resident_start`` (and their time, waited for in full), the most entries the cache held at
    once, and the pass's wall time."""

    layers: list[OffloadLayerStats] = field(default_factory=list)
    start_loaded: int = 0
    start_evicted: int = 0
    start_s: float = 0.0
    start_bytes: int = 0
    max_occupancy: int = 0
    wall_s: float = 0.0

    @property
    def misses(self) -> int:
        return sum(s.misses for s in self.layers)

    @property
    def prefetched(self) -> int:
        return sum(s.prefetched for s in self.layers)

    @property
    def bytes_loaded(self) -> int:
        """Bytes of every load of the pass, the start's included."""
        return sum(s.bytes_loaded for s in self.layers) + self.start_bytes


def as_schedule(schedule) -> OffloadSchedule:
    """``schedule`` as a validated :class:`OffloadSchedule` (any object with its attributes is read
    into one): raises :class:`OffloadError` naming what is wrong."""
    if not isinstance(schedule, OffloadSchedule):
        names = ("num_layers", "num_experts", "cache_slots", "group", "prefetch", "evict", "resident_start")
        missing = [n for n in names if not hasattr(schedule, n)]
        if missing:
            raise OffloadError(f"not an offload schedule: {type(schedule).__name__} has no {', '.join(missing)}")
        schedule = OffloadSchedule(**{n: getattr(schedule, n) for n in names})
    return schedule.validate()


class OffloadedStack:
    """``weights``' layers on ``device`` with their experts offloaded: routers, router biases and
    (``attention``) attention on the device, experts in (pinned, on GPU) host memory, a cache of
    ``cache_slots`` expert buffers on the device. :meth:`run` runs a group of batches under a
    schedule; :meth:`reference` is the all-in-memory result. ``timeout_s``: a load that does not land
    within it raises. Close it (or use it as a context manager) to stop the CPU copy thread."""

    def __init__(self, weights: StackWeights, top_k: int, cache_slots: int, device: torch.device | str = "cpu",
                 attention: bool = True, timeout_s: float = 120.0) -> None:
        self.device = torch.device(device)
        L = len(weights.banks)
        if not L or len(weights.routers) != L or len(weights.biases) != L or (attention and len(weights.attention) != L):
            raise OffloadError("the weights need as many routers, biases and (with attention) attention layers as expert banks, at least one")
        E = int(weights.banks[0].w1.shape[0])
        if not 1 <= top_k <= E:
            raise OffloadError(f"top_k must lie in [1, {E}], got {top_k}")
        self.top_k = top_k
        self.host = HostExperts.for_device(weights.banks, self.device)
        self.cache = ExpertCache(cache_slots, self.host, self.device, timeout_s)
        self.routers = [r.to(self.device) for r in weights.routers]
        self.biases = [b.to(self.device) for b in weights.biases]
        self.attention = [a.to(self.device) for a in weights.attention] if attention else None
        self._prefetched: set[Key] = set()  # what the last prefetch issued (the next layer's stats read it)
        self._carry: tuple[object, OffloadLayerStats] | None = None  # (next schedule, its layer 0 stats) issued ahead
        self._next_first = OffloadLayerStats(0)

    @property
    def num_layers(self) -> int:
        return self.host.num_layers

    @property
    def num_experts(self) -> int:
        return self.host.num_experts

    def __enter__(self) -> OffloadedStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Finish the loads in flight and stop the loader."""
        self.cache.close()

    # ---- checks --------------------------------------------------------------------------------
    def check(self, schedule, group: int | None = None) -> OffloadSchedule:
        """Validate ``schedule`` against this stack (layer and expert counts, ``cache_slots`` within
        the slots built, ``group`` batches when given) and on its own (:meth:`OffloadSchedule.validate`)."""
        s = as_schedule(schedule)
        if (s.num_layers, s.num_experts) != (self.num_layers, self.num_experts):
            raise OffloadError(f"the schedule is for {s.num_layers} layers x {s.num_experts} experts; the stack has "
                               f"{self.num_layers} x {self.num_experts}")
        if s.cache_slots > self.cache.slots:
            raise OffloadError(f"the schedule uses {s.cache_slots} cache slots; the cache was built with {self.cache.slots}")
        if group is not None and s.group != group:
            raise OffloadError(f"the schedule is for groups of {s.group} batches, got {group}")
        return s

    def _check_batches(self, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(batches, torch.Tensor) or not batches:
            raise OffloadError("batches must be a non-empty list of [tokens, hidden] tensors")
        hidden, dtype = self.routers[0].shape[0], self.host.like.w1.dtype
        for i, x in enumerate(batches):
            if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != hidden or x.dtype != dtype:
                desc = f"{x.dtype}{list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise OffloadError(f"batch {i} must be a {dtype}[tokens, {hidden}] tensor, got {desc}")
        return [x.to(self.device) for x in batches]

    # ---- the reference -------------------------------------------------------------------------
    def reference(self, batches: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], np.ndarray]:
        """Every expert in memory: each batch's output, and the group's routed ``counts [L, E]`` (token
        assignments per layer and expert: a layer needs the experts with ``counts > 0``; a pass's row
        of the ``counts [S, L, E]`` that :func:`probe_planner.offload.timeline.run_timeline` replays)."""
        xs = self._check_batches(batches)
        counts = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        for lay in range(self.num_layers):
            bank = ExpertBank(*(w.to(self.device) for w in self.host.banks[lay].tensors))
            for i, x in enumerate(xs):
                if self.attention is not None:
                    x = x + self.attention[lay](x)
                h = rms_norm(x)
                ids = route(h, self.routers[lay], self.top_k, self.biases[lay])[1]
                counts[lay] += torch.bincount(ids.reshape(-1), minlength=self.num_experts).cpu().numpy()
                xs[i] = x + reference_moe(h, self.routers[lay], bank, self.top_k, self.biases[lay])
        return xs, counts

    # ---- a pass --------------------------------------------------------------------------------
    def run(self, batches: Sequence[torch.Tensor], schedule, then=None) -> tuple[list[torch.Tensor], GroupStats]:
        """Run the group ``batches`` (``schedule.group`` tensors ``[tokens, hidden]``) through every
        layer under ``schedule``; returns each batch's output and the pass's stats.

        ``then``: the next pass's schedule (e.g. ``schedule`` again, for a cyclic one): its
        ``evict[0]`` / ``prefetch[0]`` are issued during this pass's last layer, and the next
        :meth:`run` under that same object continues from the cache as it is. Otherwise a pass starts
        fresh: the cache is made to hold ``resident_start`` first. Schedules and batches are checked
        before any load starts."""
        xs = self._check_batches(batches)
        sched = self.check(schedule, len(xs))
        nxt = self.check(then) if then is not None else None
        if nxt is not None and (nxt.cache_slots, nxt.group) != (sched.cache_slots, sched.group):
            raise OffloadError(f"the next pass's schedule has cache_slots={nxt.cache_slots}, group={nxt.group}; this one "
                               f"{sched.cache_slots}, {sched.group}: they must agree")
        cache = self.cache
        stats = GroupStats(layers=[OffloadLayerStats(lay) for lay in range(self.num_layers)])
        carried, self._carry = self._carry, None
        continued = carried is not None and carried[0] is schedule  # evict[0] / prefetch[0] ran in the last pass
        if continued:
            stats.layers[0] = carried[1]
        cache.reset_peak()  # a fresh start resets it again once the cache fits the schedule
        t_pass = time.perf_counter()
        # GPU: make the stack's device current, so events and current streams are that device's
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            self._pass(sched, nxt, then, continued, xs, stats)
        stats.wall_s = time.perf_counter() - t_pass
        stats.max_occupancy = cache.peak
        return xs, stats

    def _pass(self, sched: OffloadSchedule, nxt: OffloadSchedule | None, then, continued: bool, xs: list[torch.Tensor],
              stats: GroupStats) -> None:
        cache = self.cache
        try:
            if not continued:
                self._start(sched, stats)
                self._evict(sched, 0, stats.layers[0])
                self._prefetch(sched, 0, stats.layers[0])
            for lay in range(self.num_layers):
                self._layer(sched, lay, xs, stats, nxt)
            if nxt is not None:
                self._carry = (then, self._next_first)
            else:
                cache.drain()  # every load of the pass landed: its bytes are real and the next pass starts clean
        finally:
            cache.release()

    def _start(self, sched: OffloadSchedule, stats: GroupStats) -> None:
        """Make the cache hold ``resident_start`` (its capacity then the schedule's), waiting for the loads."""
        cache = self.cache
        t0 = time.perf_counter()
        want = {(int(a), int(b)) for a, b in sched.resident_start}
        for key in sorted(cache.resident() - want):
            cache.evict(key)
            stats.start_evicted += 1
        cache.capacity = sched.cache_slots
        cache.reset_peak()  # the pass's occupancy counts from resident_start's
        for key in sorted(want - cache.resident()):
            cache.load(key)
            stats.start_loaded += 1
            stats.start_bytes += self.host.expert_bytes
        cache.drain()
        stats.start_s = time.perf_counter() - t0

    def _evict(self, sched: OffloadSchedule, lay: int, st: OffloadLayerStats, protect: frozenset[Key] = frozenset()) -> None:
        """Apply ``evict[lay]``; an entry not cached (LRU took it) or in ``protect`` (the computing layer needs it) stays."""
        for a, b in sched.evict[lay].tolist():
            if (a, b) in self.cache and (a, b) not in protect:
                self.cache.evict((a, b))
                st.evicted += 1
            else:
                st.evict_skipped += 1

    def _load(self, key: Key, protect: set[Key], st: OffloadLayerStats) -> bool:
        """Start loading ``key``, evicting the least recently used entry outside ``protect`` (and the
        pinned ones) if the cache is full; False: no entry to evict, nothing loaded."""
        if len(self.cache) >= self.cache.capacity:
            v = self.cache.victim(protect)
            if v is None:
                return False
            self.cache.evict(v)
            st.lru_evicted += 1
        self.cache.load(key)
        st.bytes_loaded += self.host.expert_bytes
        return True

    def _prefetch(self, sched: OffloadSchedule, lay: int, st: OffloadLayerStats) -> None:
        """Issue ``prefetch[lay]`` (on the side stream: returns at once)."""
        mine: set[Key] = set()
        for e in sched.prefetch[lay].tolist():
            key = (lay, e)
            if key in self.cache or not self._load(key, set(), st):
                st.prefetch_skipped += 1
                continue
            mine.add(key)
            st.prefetched += 1
        self._prefetched = mine  # the layer's stats count which of them it used

    def _layer(self, sched: OffloadSchedule, lay: int, xs: list[torch.Tensor], stats: GroupStats,
               nxt: OffloadSchedule | None) -> None:
        cache, st = self.cache, stats.layers[lay]
        t0 = time.perf_counter()
        prefetched, self._prefetched = self._prefetched, set()
        # attention and router of every batch: the layer's needs are known before its loads
        hs, routes = [], []
        for i, x in enumerate(xs):
            if self.attention is not None:
                xs[i] = x = x + self.attention[lay](x)
            h = rms_norm(x)
            hs.append(h)
            routes.append(route(h, self.routers[lay], self.top_k, self.biases[lay]))
        tokens = torch.bincount(torch.cat([ids.reshape(-1) for _, ids in routes]), minlength=self.num_experts).cpu().numpy()
        needed = np.flatnonzero(tokens)
        keys = {(lay, int(e)) for e in needed}
        st.needed = len(keys)
        t1 = time.perf_counter()
        st.route_s = t1 - t0
        if len(keys) > cache.capacity:
            raise CacheTooSmallError(f"layer {lay} needs {len(keys)} distinct experts for this group of {len(xs)} batches; "
                                     f"the cache may hold {cache.capacity} (schedule cache_slots): use a bigger cache or smaller groups")
        # evict[l+1] first (it frees finished layers' slots for the misses), then the misses (longest
        # compute first), so they queue ahead of the next layer's prefetch
        if lay + 1 < self.num_layers:
            self._evict(sched, lay + 1, stats.layers[lay + 1], frozenset(keys))
        elif nxt is not None:  # the next pass's first loads overlap this last layer
            self._next_first = OffloadLayerStats(0)
            self._evict(nxt, 0, self._next_first, frozenset(keys))
        for e in needed[np.argsort(-tokens[needed], kind="stable")].tolist():
            key = (lay, e)
            if key in cache:
                st.hits += 1
                st.prefetch_used += key in prefetched
            else:
                self._load(key, keys, st)  # finds a victim: the layer's needs fit (checked above)
                st.misses += 1
        cache.pin(keys)  # from here no load or eviction may touch the slots this layer computes on
        if lay + 1 < self.num_layers:
            self._prefetch(sched, lay + 1, stats.layers[lay + 1])
        elif nxt is not None:
            self._prefetch(nxt, 0, self._next_first)
        # expert-major over the group (one load serves every batch), the experts already landed first,
        # then in the order their loads land; each batch's contributions are summed in expert order, as
        # the reference does
        order = sorted(keys, key=lambda k: (cache.pending(k), cache.seq(k)))
        parts: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in xs]
        t2 = time.perf_counter()
        for key in order:
            st.wait_s += cache.wait(key)
            bank, j = cache.weights(key)
            for i, (gates, ids) in enumerate(routes):
                tok, slot = torch.nonzero(ids == key[1], as_tuple=True)
                if tok.numel():
                    parts[i][key[1]] = (tok, bank.expert(j, hs[i][tok]) * gates[tok, slot, None])
        cache.release()
        for i, x in enumerate(xs):
            out = torch.zeros_like(x)
            for e in sorted(parts[i]):
                tok, y = parts[i][e]
                out.index_add_(0, tok, y)
            xs[i] = x + out
        if self.device.type == "cuda":  # host times are real once the queued kernels ran
            torch.cuda.current_stream(self.device).synchronize()
        t3 = time.perf_counter()
        st.compute_s = t3 - t2 - st.wait_s
        st.layer_s = t3 - t0
