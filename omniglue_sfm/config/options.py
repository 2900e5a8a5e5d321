"""How a run executes, apart from what it computes: :class:`RunOptions`.

What a run computes is the resolved preset (one dict: plugins, their settings, rotation handling,
masks and every override); it is recorded in each output file's configuration, and a file made
with another one is never resumed into. How the run executes (device, batch size, executor and
its workers, starting afresh or resuming) changes no result beyond floating-point noise, so it
travels separately and is never recorded (docs/design.md, section 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..runtime.devices import check_device
from ..runtime.executors import ExecutorOptions
from .presets import Pipeline, pipeline


@dataclass(frozen=True)
class RunOptions:
    """How the learned stages run (the ``sift`` preset takes none of these but ``overwrite``)."""

    device: str | None = None  # torch device (default: cuda when available)
    batch_size: int | None = None  # pairs per matching batch (default 16 GPU, 4 CPU); speed only
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)  # here, or on Ray
    overwrite: bool = False  # discard existing outputs instead of resuming
    flush_every: int = 64  # items buffered before a shard is written (crash safety vs. file count)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.flush_every < 1:
            raise ValueError(f"flush_every must be at least 1, got {self.flush_every}")

    def check(self, preset: Mapping) -> None:
        """Before any work: options the preset's pipeline cannot use are errors, not silently ignored."""
        name = preset.get("name", "?")
        if pipeline(preset) is Pipeline.LEARNED:
            check_device(self.device)
            self.executor.check()
        elif preset.get("masks"):
            raise ValueError(f"--masks works with learned-feature presets, not {name!r}")
        elif self.batch_size is not None:
            raise ValueError(f"--batch-size is for learned matchers; preset {name!r} matches inside COLMAP")
        elif self.executor.is_ray:
            raise ValueError(f"--executor ray runs the learned pipelines' extract and match; preset "
                             f"{name!r} runs COLMAP's own SIFT here: leave --executor out")
