"""Split-phase replica copies: point-to-point transfers on a process group of their own, run by one
background thread per pool in submission order, chunked, and pausable.

Deadlock freedom: every rank submits the same jobs in the same order (the stack runs the same code
everywhere) and each job lists its transfers in one global order, which every rank walks one
transfer at a time. The earliest unfinished transfer then always has both ends waiting on it, so it
completes; a pause only delays that, and no collective waits on the copies while a rank is paused
(:meth:`Copier.pause` brackets the combine, which needs no copy). No batched point-to-point
(serving engines have hung on batched isend/irecv of weights).

On a GPU a transfer's ``wait()`` only orders streams, so the thread also waits for the side stream
after every chunk: one chunk in flight at a time, as on CPU, and a pause holds between chunks. The
side stream first waits for the work queued on the submitting thread's stream (an event recorded
at :meth:`Copier.submit`), so a copy never overwrites a buffer a queued kernel still reads.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .device import on_stream, settle, side_stream


@dataclass
class Transfer:
    """Send ``tensor`` to ``peer`` (``send=True``) or receive it from ``peer`` into ``tensor``."""

    send: bool
    tensor: torch.Tensor
    peer: int


@dataclass
class CopyJob:
    """Transfers in flight: ``copy_s`` is the time from its first transfer to its last (pauses
    excluded, ``paused_s`` on their own), ``error`` what a transfer raised."""

    transfers: list[Transfer]
    after: object = None  # a CUDA event the copies wait for (the submitter's queued work), or None
    done: threading.Event = field(default_factory=threading.Event)
    copy_s: float = 0.0
    paused_s: float = 0.0
    error: BaseException | None = None


class Copier:
    """Runs :class:`CopyJob` s on ``group`` in one background thread, ``chunk_bytes`` per transfer
    message (a pause takes effect between chunks), on a side stream on GPU."""

    def __init__(self, group, device: torch.device, chunk_bytes: int = 1 << 20) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        self.group = group
        self.chunk_bytes = chunk_bytes
        self.stream = side_stream(device)
        self._go = threading.Event()
        self._go.set()
        self._jobs: queue.Queue[CopyJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="replica-copies", daemon=True)
        self._thread.start()

    def submit(self, transfers: list[Transfer]) -> CopyJob:
        after = None
        if self.stream is not None:
            after = torch.cuda.Event()
            after.record()  # on the caller's current stream
        job = CopyJob(transfers, after)
        self._jobs.put(job)
        return job

    def pause(self) -> None:
        """Hold the copies after the chunk in flight (e.g. while the combine all-to-all runs)."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread once the jobs queued before this call are done."""
        self._go.set()
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _chunks(self, t: torch.Tensor):
        flat = t.view(-1)
        step = max(1, self.chunk_bytes // t.element_size())
        return [flat[i:i + step] for i in range(0, flat.numel(), step)]

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            t0 = time.perf_counter()
            try:
                with on_stream(self.stream):
                    if job.after is not None:
                        self.stream.wait_event(job.after)
                    for tr in job.transfers:
                        fn = dist.isend if tr.send else dist.irecv
                        for chunk in self._chunks(tr.tensor):
                            if not self._go.is_set():
                                p0 = time.perf_counter()
                                self._go.wait()
                                job.paused_s += time.perf_counter() - p0
                            fn(chunk, tr.peer, group=self.group).wait()
                            settle(self.stream)  # GPU: the chunk has landed (wait() only ordered streams)
            except Exception as exc:  # surfaced by whoever waits for the job
                job.error = exc
            job.copy_s = time.perf_counter() - t0 - job.paused_s
            job.done.set()
