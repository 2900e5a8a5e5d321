"""Progress of a multi-stage run: stage announcements with their wall time, and aligned text tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO


def format_table(rows: Sequence[tuple[str, str]], title: str | None = None) -> str:
    """A two-column text table with aligned columns."""
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{key.ljust(width)}  {value}" for key, value in rows]
    return "\n".join(lines)


@contextmanager
def stage(name: str, timings: dict[str, float], stream: TextIO | None = None) -> Iterator[None]:
    """Announce a stage and record its wall time in ``timings[name]``."""
    print(f"==> {name}", file=stream or sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - t0

