"""Where and how the work runs: torch device, CUDA autocast, CPU threads for COLMAP."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch


def default_device(device: str | None = None) -> torch.device:
    """``device`` when given, else CUDA when available, else CPU."""
    if device:
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
