"""The rotation handling a preset records (``rotation = "auto" | "off" | {table}``): the options of
the orientation pass (see :mod:`omniglue_sfm.orientation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

ROTATION_MODES = ("auto", "off")


@dataclass(frozen=True)
class OrientationOptions:
    """How turns are estimated; every field is recorded in ``features.h5``'s configuration."""

    mode: str = "auto"  # "auto": estimate each image's quarter-turn; "off": take images as stored
    resize_max: int = 512  # long side of the low-resolution images of the orientation pass
    max_keypoints: int = 512  # keypoints per low-resolution image
    min_inliers: int = 30  # fundamental-matrix inliers that accept a relative turn
    # as stored, accepted at once with this many (else all four turns are compared): a pair 180
    # degrees apart can give ~30 matches that a fundamental matrix fits; an overlapping upright pair
    # gives hundreds at 512 keypoints
    accept_inliers: int = 100
    # ... and the share of the matches they must be: F fits ~30 of ~150 wrong-turn matches
    # (a 1D constraint), while a right turn has most matches inliers (measured: 0.15-0.2 vs 0.9)
    min_inlier_ratio: float = 0.4
    margin: float = 2.0  # the winning turn needs this many times the runner-up's inliers
    max_tries: int = 8  # candidate pairs tried to attach a group of images to the anchor
    # upright matches an image may fail in step 1 before it is left to step 2 (a turned image
    # fails all of them: without a cap, a turned image in an exhaustive scene costs n - 1 matches)
    max_upright_failures: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ROTATION_MODES:
            raise ValueError(f"unknown rotation mode {self.mode!r}; choose one of "
                             f"{', '.join(ROTATION_MODES)}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def record(self) -> dict:
        return asdict(self)


def options_from_preset(preset: Mapping) -> OrientationOptions | None:
    """The preset's ``rotation`` setting ("auto", "off", or a table of :class:`OrientationOptions`
    fields); None when the images are taken as stored (off, or a preset without the key)."""
    value = preset.get("rotation", "off")
    if isinstance(value, str):
        opts = OrientationOptions(mode=value)
    elif isinstance(value, Mapping):
        known = set(OrientationOptions.__dataclass_fields__)
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown rotation option(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted(known))}")
        opts = OrientationOptions(**value)
    else:
        raise ValueError(f"rotation must be 'auto', 'off' or a table, got {value!r}")
    return opts if opts.enabled else None
