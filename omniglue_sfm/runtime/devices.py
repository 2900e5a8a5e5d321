"""Where and how the work runs: torch device, CUDA autocast, CPU threads for COLMAP."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch


def check_device(device: str | None) -> None:
    """``--device`` must name a torch device that this torch can use (checked before any work)."""
    if not device:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this torch has no usable CUDA (CPU-only build, or no GPU "
                             "or driver found); use --device cpu or leave --device out")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available in this torch")


def default_device(device: str | None = None) -> torch.device:
    """``device`` when given (checked by :func:`check_device`), else CUDA when available, else CPU."""
    if device:
        check_device(device)
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> AbstractContextManager:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); float32 elsewhere."""
    if device.type != "cuda":
        return nullcontext()  # CPU half precision is slow and sometimes wrong: float32 there
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def num_threads() -> int:
    """CPU threads this process may use (its affinity mask where the OS has one)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
