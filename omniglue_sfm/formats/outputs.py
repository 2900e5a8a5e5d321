"""An output folder's own records: ``stats.json``, its model folder, its recorded image folder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

# Marks of our output folders. Every folder output (reconstruct, sfm, localize, triangulate) holds
# its lock file, which stays; every export folder its marker (``export --overwrite`` replaces only
# such a folder). A folder holding one is never scanned for photos.
LOCK_NAME = ".omniglue-sfm.lock"
EXPORT_MARKER = ".omniglue-sfm-export.json"
OUTPUT_MARKERS = (LOCK_NAME, EXPORT_MARKER)


def write_json(path: Path | str, data: dict) -> None:
    """A JSON report, written under a temporary name and renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def write_stats(output_dir: Path | str, stats: dict) -> None:
    """``OUT/stats.json``."""
    write_json(Path(output_dir) / "stats.json", stats)


def find_model(source: Path | str) -> Path:
    """The model of a ``reconstruct`` / ``sfm`` / ``triangulate`` folder (``sparse/``), or ``source``
    itself when it is a COLMAP model folder."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"model folder {source} does not exist")
    for candidate in (source / "sparse", source):
        if any((candidate / f"images{ext}").is_file() for ext in (".bin", ".txt")):
            if candidate != source:
                check_last_run(source)
            return candidate
    raise FileNotFoundError(f"no COLMAP model in {source} (looked for sparse/images.bin and images.bin)")


def check_last_run(output_dir: Path | str) -> None:
    """A ``FileNotFoundError`` when the last ``sfm`` run in ``output_dir`` failed: its ``sparse/``
    is then an earlier run's, and its points index keypoints that ``features.h5`` may no longer
    hold (the failed run re-extracted or re-matched first)."""
    error = (read_stats(output_dir) or {}).get("error")
    if error:
        raise FileNotFoundError(
            f"the last sfm run in {output_dir} failed ({error}); its sparse/ is from an earlier run and "
            "may not match its features: run it again, or use another output folder")


def recorded_image_dir(output_dir: Path | str, given: Path | str | None = None) -> Path:
    """The photos' folder: ``given``, else the one ``reconstruct`` recorded in ``stats.json``."""
    image_dir = given or (read_stats(output_dir) or {}).get("image_dir")
    if not image_dir:
        raise FileNotFoundError(f"{output_dir} does not record its image folder (no image_dir in "
                                "stats.json); pass --images")
    if not Path(image_dir).is_dir():
        raise FileNotFoundError(f"image folder does not exist: {image_dir}; pass --images")
    return Path(image_dir)


def read_stats(output_dir: Path | str) -> dict | None:
    """``OUT/stats.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(output_dir) / "stats.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def json_safe(value: object) -> object:
    """``value`` with what JSON cannot hold made plain: inf and nan -> None (an error that is not
    defined, e.g. of a query that was not localized), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def report_json(report: dict) -> str:
    """A report as indented JSON (:func:`json_safe`; paths and other objects as text)."""
    return json.dumps(json_safe(report), indent=2, default=str)
