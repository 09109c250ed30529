"""The one place the runtime differs between CPU (gloo, threads) and GPU (NCCL, CUDA streams)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def backend_for(device: torch.device) -> str:
    """The process-group backend for tensors on ``device``."""
    return "nccl" if device.type == "cuda" else "gloo"


def side_stream(device: torch.device):
    """A stream of its own for replica copies on a GPU (so they never queue behind the all-to-alls'
    kernels); ``None`` on CPU, where the copy thread is the overlap."""
    return torch.cuda.Stream(device=device) if device.type == "cuda" else None


def on_stream(stream):
    """Context that makes ``stream`` current (a no-op for ``None``)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def settle(stream) -> None:
    """Block the calling thread until ``stream``'s work is done (so host timings are real)."""
    if stream is not None:
        stream.synchronize()


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
