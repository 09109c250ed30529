"""Replica slot buffers shared by a stack's MoE layers, double-buffered.

A rank has memory for ``slots`` replicas per buffer, not per layer. A layer fills the buffer it was
given (by default its stack index mod ``buffers``; :class:`~probe_runtime.stack.MoEStack` hands
them out in the order copies start), so with two buffers layer l+1's copies land in one while layer
l computes on the other, and layer l+2's copies overwrite layer l's replicas once layer l has run. The pool
records which (layer, plan, plan layer) each buffer holds, so a forward on replicas that were
overwritten (or never loaded) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from probe_planner import PlanInvalidError

from .copies import Copier, CopyJob
from .device import backend_for
from .experts import ExpertBank


@dataclass
class Holding:
    """What a buffer holds (or is being filled with): the owning layer, plan and plan layer, which
    expert each slot holds, and the copy job filling it (``None`` once it finished)."""

    owner: object
    plan: object
    layer: int
    slot_expert: np.ndarray
    job: CopyJob | None


class SlotPool:
    """``buffers`` × ``slots`` replica buffers shaped like ``like``'s experts, on ``device``, and the
    :class:`Copier` that fills them on a process group of its own (created here: every rank must
    build its pools in the same order). ``timeout``: a stalled peer fails the copies within it."""

    def __init__(self, slots: int, like: ExpertBank, device: torch.device | str = "cpu", buffers: int = 2,
                 timeout: timedelta = timedelta(minutes=2), chunk_bytes: int = 1 << 20) -> None:
        if buffers < 1:
            raise PlanInvalidError("a slot pool needs at least one buffer")
        self.device = torch.device(device)
        self.slots = slots
        self.banks = [like.empty(slots, self.device) for _ in range(buffers)]
        self.holding: list[Holding | None] = [None] * buffers
        self.busy: list[bool] = [False] * buffers  # a forward is computing on the buffer
        self.timeout = timeout
        group = dist.new_group(backend=backend_for(self.device), timeout=timeout)
        if self.device.type == "cuda":  # set the group's communicator up here, on the main thread, not
            # lazily on the copy thread while the default group's collectives run (NCCL can deadlock)
            dist.all_reduce(torch.zeros(1, device=self.device), group=group)
        self.copier = Copier(group, self.device, chunk_bytes)

    @property
    def buffers(self) -> int:
        return len(self.banks)

    def buffer_of(self, index: int) -> int:
        """The buffer layer ``index`` of the stack uses."""
        return index % self.buffers

    def check_free(self, buffer: int) -> None:
        """Refuse to fill ``buffer`` while copies into it are in flight or a forward computes on it."""
        held = self.holding[buffer]
        if held is not None and held.job is not None:
            raise PlanInvalidError(f"copies into replica buffer {buffer} are still in flight: finish them first")
        if self.busy[buffer]:
            raise PlanInvalidError(f"replica buffer {buffer} is in use by a forward: start its copies after it")

    def holds(self, buffer: int, owner: object, plan: object, layer: int) -> bool:
        """Whether ``buffer`` holds ``owner``'s replicas of ``plan``'s ``layer``, copies finished."""
        h = self.holding[buffer]
        return h is not None and h.job is None and h.owner is owner and h.plan is plan and h.layer == layer

    def close(self) -> None:
        self.copier.close()
