"""Expert weights in host memory and a device cache of a fixed number of expert slots, filled on a side
stream (Klotski-style offloading; :mod:`probe_runtime.offload` runs a stack on them).

Ordering, the same rules on both devices:

- a load into a slot starts only after every computation queued on that slot's previous contents
  (write after read): on GPU the side stream waits for an event the compute stream recorded after
  the slot's last use (:meth:`ExpertCache.release`); on CPU the compute runs on the caller's thread,
  so it has finished by the time the caller issues the next load;
- a computation on a slot waits only for that slot's load (:meth:`ExpertCache.wait`): one event per
  load, so the compute of the experts already present is not held up by the ones still arriving;
- loads run in submission order (one side stream on GPU, one copy thread on CPU, where the thread is
  the overlap: ``copy_`` releases the GIL), so two loads into one slot never race;
- a slot the current layer is about to compute on is pinned; loading into it or evicting it is a bug
  in the caller and raises.

On GPU the host weights are pinned and copied with ``non_blocking=True``; on CPU the copy is host to
host, which exercises the same schedule and bookkeeping without the bandwidth.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from probe_planner.errors import OffloadError

from .device import on_stream, side_stream
from .experts import ExpertBank

Key = tuple[int, int]  # (layer, expert)


class HostExperts:
    """Every layer's expert weights in host memory: one :class:`ExpertBank` per layer, all of the same
    expert count, shapes and dtype, pinned when ``pin`` (needed for asynchronous copies to a GPU)."""

    def __init__(self, banks: Sequence[ExpertBank], pin: bool = False) -> None:
        if not banks:
            raise OffloadError("HostExperts needs at least one layer's bank")
        first = banks[0]
        for i, b in enumerate(banks):
            for w, w0 in zip(b.tensors, first.tensors, strict=True):
                if w.shape != w0.shape or w.dtype != w0.dtype:
                    raise OffloadError(f"layer {i}'s experts are {w.dtype}{list(w.shape)}, layer 0's {w0.dtype}{list(w0.shape)}: "
                                       "every layer must have the same experts' shapes")
        # contiguous host copies (pinned on GPU machines): the cache copies one expert's rows at a time
        self.banks = [ExpertBank(*(self._host(w, pin) for w in b.tensors)) for b in banks]
        self.pinned = pin

    @staticmethod
    def _host(w: torch.Tensor, pin: bool) -> torch.Tensor:
        w = w.detach().to("cpu").contiguous()
        return w.pin_memory() if pin else w

    @classmethod
    def for_device(cls, banks: Sequence[ExpertBank], device: torch.device | str) -> HostExperts:
        """Host experts for a cache on ``device``: pinned when it is a CUDA device."""
        return cls(banks, pin=torch.device(device).type == "cuda")

    @property
    def num_layers(self) -> int:
        return len(self.banks)

    @property
    def num_experts(self) -> int:
        return int(self.banks[0].w1.shape[0])

    @property
    def like(self) -> ExpertBank:
        """A bank with the experts' shapes and dtype (for sizing cache slots)."""
        return self.banks[0]

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert's weights (what one load moves)."""
        return sum(w[0].numel() * w.element_size() for w in self.like.tensors)

    def expert(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Host views of ``(w1, w3, w2)`` of one expert."""
        b = self.banks[layer]
        return b.w1[expert], b.w3[expert], b.w2[expert]


@dataclass
class Ticket:
    """One load in flight: a CUDA event recorded after it on the side stream, or (CPU) a thread event
    the copy thread sets; ``error`` is what the copy raised (surfaced by :meth:`wait`)."""

    event: object = None
    device: torch.device | None = None  # the event's device (GPU)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def finished(self) -> bool:
        return self.event.query() if self.event is not None else self.done.is_set()

    def wait(self, timeout_s: float) -> None:
        """Order the caller's current stream after the load (GPU) and block the host until it landed,
        so the caller's timings are real (the side stream keeps copying meanwhile)."""
        if self.event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.event)
            self.event.synchronize()
            return
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"an expert load did not finish within {timeout_s:g} s")
        if self.error is not None:
            raise self.error


class Loader:
    """Copies host tensors into device buffers in submission order: on a side stream on GPU, in one
    background thread on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = side_stream(device)
        self._jobs: queue.Queue | None = None
        if self.stream is None:
            self._jobs = queue.Queue()
            self._thread = threading.Thread(target=self._run, args=(self._jobs,), name="expert-loads", daemon=True)
            self._thread.start()

    def submit(self, dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor], after=None) -> Ticket:
        """Copy ``src`` into ``dst`` once ``after`` (a compute-stream event, or ``None``) has passed."""
        if self.stream is None:
            if self._jobs is None:
                raise OffloadError("the loader is closed")
            t = Ticket()
            self._jobs.put((dst, src, t))
            return t
        with on_stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            for d, s in zip(dst, src, strict=True):
                d.copy_(s, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.stream)
        return Ticket(event=ev, device=self.device)

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the queued copies and stop the thread (CPU); wait for the side stream (GPU)."""
        if self.stream is not None:
            self.stream.synchronize()
        elif self._jobs is not None:
            self._jobs.put(None)
            self._thread.join(timeout_s)
            self._jobs = None

    def _run(self, jobs: queue.Queue) -> None:
        while (job := jobs.get()) is not None:
            dst, src, t = job
            try:
                for d, s in zip(dst, src, strict=True):
                    d.copy_(s)
            except Exception as exc:  # surfaced by whoever waits for the load
                t.error = exc
            t.done.set()


class ExpertCache:
    """``slots`` preallocated expert buffers shaped like ``like`` on ``device``, holding (layer, expert)
    entries loaded from a :class:`HostExperts` on a side stream.

    ``capacity`` (at most ``slots``; settable) caps how many entries may be held at once: a run under a
    schedule sets it to the schedule's ``cache_slots``. ``peak`` is the most entries held after any load
    since :meth:`reset_peak` (the instrument behind the "never more than C" guarantee); ``loads`` counts loads
    and ``bytes_loaded`` their bytes. Entries have a use clock for :meth:`victim` (least recently used:
    loads and computations count as uses)."""

    def __init__(self, slots: int, host: HostExperts, device: torch.device | str = "cpu", timeout_s: float = 120.0) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise OffloadError(f"an expert cache needs at least one slot, got {slots!r}")
        self.device = torch.device(device)
        self.host = host
        self.bank = host.like.empty(slots, self.device)  # slot j holds one expert: bank.w1[j], ...
        self.timeout_s = timeout_s
        self._capacity = slots
        self._slot_of: dict[Key, int] = {}
        self._entry: list[Key | None] = [None] * slots
        self._ticket: list[Ticket | None] = [None] * slots  # the slot's last load
        self._free_after: list[object] = [None] * slots  # GPU: event after the slot's last queued use
        self._used: dict[Key, int] = {}  # entry -> use clock
        self._seq: dict[Key, int] = {}  # entry -> its load's submission number
        self._clock = 0
        self._pinned: set[Key] = set()
        self.loads = 0
        self.bytes_loaded = 0
        self.peak = 0
        self.loader = Loader(self.device)
        if self.loader.stream is not None:  # the slots' zero fill is queued on the compute stream: no load may overtake it
            self.loader.stream.wait_stream(torch.cuda.current_stream(self.device))

    # ---- state ---------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self._entry)

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        if not 0 <= value <= self.slots:
            raise OffloadError(f"capacity must lie in [0, {self.slots}] (the slots built), got {value}")
        if value < len(self._slot_of):
            raise OffloadError(f"the cache holds {len(self._slot_of)} entries; evict some before lowering capacity to {value}")
        self._capacity = value

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, key: Key) -> bool:
        return key in self._slot_of

    def resident(self) -> set[Key]:
        """The (layer, expert) entries held (loaded or loading)."""
        return set(self._slot_of)

    def lookup(self, key: Key) -> int | None:
        """The slot holding ``key``, or ``None``."""
        return self._slot_of.get(key)

    def seq(self, key: Key) -> int:
        """The submission number of ``key``'s load (loads land in this order)."""
        return self._seq[key]

    def pending(self, key: Key) -> bool:
        """Whether ``key``'s load is still in flight."""
        t = self._ticket[self._slot_of[key]]
        return t is not None and not t.finished()

    # ---- loads and evictions -------------------------------------------------------------------
    def load(self, key: Key) -> int:
        """Start loading ``key`` into a free slot (the caller evicts first when the cache is full);
        returns the slot. Never blocks on the copy."""
        if key in self._slot_of:
            raise OffloadError(f"expert {key} is already cached")
        lay, e = key
        if not (0 <= lay < self.host.num_layers and 0 <= e < self.host.num_experts):
            raise OffloadError(f"no expert {key} in host memory ({self.host.num_layers} layers x {self.host.num_experts} experts)")
        if len(self._slot_of) >= self._capacity:
            raise OffloadError(f"the cache is full ({self._capacity} entries): evict before loading {key}")
        j = self._entry.index(None)  # a pinned entry's slot is never free: evict() refuses pinned entries
        dst = (self.bank.w1[j], self.bank.w3[j], self.bank.w2[j])
        self._ticket[j] = self.loader.submit(dst, self.host.expert(lay, e), after=self._free_after[j])
        self._entry[j] = key
        self._slot_of[key] = j
        self._touch(key)
        self._seq[key] = self.loads
        self.loads += 1
        self.bytes_loaded += self.host.expert_bytes
        self.peak = max(self.peak, len(self._slot_of))
        return j

    def evict(self, key: Key) -> None:
        """Drop ``key``; its slot is free for the next load (which waits for the slot's queued uses)."""
        if key not in self._slot_of:
            raise OffloadError(f"expert {key} is not cached")
        if key in self._pinned:
            raise RuntimeError(f"expert {key} is pinned by the current layer: it cannot be evicted before its compute")
        j = self._slot_of.pop(key)
        self._entry[j] = None
        del self._used[key], self._seq[key]

    def victim(self, protect: set[Key]) -> Key | None:
        """The least recently used entry outside ``protect`` and not pinned (``None``: there is none)."""
        cands = [(u, k) for k, u in self._used.items() if k not in protect and k not in self._pinned]
        return min(cands)[1] if cands else None

    # ---- compute side --------------------------------------------------------------------------
    def reset_peak(self) -> None:
        """Start :attr:`peak` again from the entries held now."""
        self.peak = len(self._slot_of)

    def pin(self, keys: set[Key]) -> None:
        """Mark the entries the current layer computes on: they cannot be evicted or overwritten until :meth:`release`."""
        missing = [k for k in keys if k not in self._slot_of]
        if missing:
            raise OffloadError(f"cannot pin experts that are not cached: {sorted(missing)[:5]}")
        self._pinned |= set(keys)

    def wait(self, key: Key) -> float:
        """Block until ``key``'s load landed (GPU: also order the current stream after it); returns the seconds waited."""
        t = self._ticket[self._slot_of[key]]
        if t is None:
            return 0.0
        t0 = time.perf_counter()
        t.wait(self.timeout_s)
        self._ticket[self._slot_of[key]] = None  # landed: later computations need not wait
        return time.perf_counter() - t0

    def weights(self, key: Key) -> tuple[ExpertBank, int]:
        """``(bank, index)`` of ``key``'s slot, for :meth:`ExpertBank.expert`; counts as a use."""
        self._touch(key)
        return self.bank, self._slot_of[key]

    def release(self) -> None:
        """End the current layer's compute: unpin its entries and, on GPU, fence their slots so a later
        load into them waits for the computations queued on them."""
        if self.device.type == "cuda" and self._pinned:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            for k in self._pinned:
                self._free_after[self._slot_of[k]] = ev
        self._pinned.clear()

    def drain(self) -> None:
        """Wait for every load in flight."""
        for key in list(self._slot_of):
            self.wait(key)

    def close(self) -> None:
        """Finish the loads in flight and stop the loader."""
        self.loader.close()

    def _touch(self, key: Key) -> None:
        self._clock += 1
        self._used[key] = self._clock
