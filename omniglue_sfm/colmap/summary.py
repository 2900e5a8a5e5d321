"""The closing summary table printed by ``sfm`` and ``reconstruct``."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

from ..runtime.progress import format_table

if TYPE_CHECKING:
    from .mapper import SfMResult


def summary_rows(stats: Mapping, failed: Mapping[str, str] | None = None,
                 seconds: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    rows = [
        ("images registered", f"{stats.get('registered', 0)} / {stats.get('total', 0)}"),
        ("3D points", str(stats.get("num_points3D", 0))),
        ("mean track length", f"{stats.get('mean_track_length', 0.0):.2f}"),
        ("mean reprojection error", f"{stats.get('mean_reprojection_error', 0.0):.3f} px"),
    ]
    if stats.get("num_models", 1) > 1:
        rows.append(("other models (images)", ", ".join(map(str, stats["other_models_registered"]))))
    for name, secs in (seconds or stats.get("seconds", {})).items():
        rows.append((f"seconds: {name}", f"{secs:.1f}"))
    unregistered = stats.get("unregistered", [])
    if unregistered:
        shown = ", ".join(unregistered[:10]) + (" ..." if len(unregistered) > 10 else "")
        rows.append(("not registered", shown))
    georef_error = (stats.get("georef") or {}).get("error")
    if georef_error:
        rows.append(("GPS", georef_error))
    for name, reason in (failed or {}).items():
        rows.append((f"failed: {name}", reason))
    return rows


def print_sfm_summary(result: SfMResult, failed: Mapping[str, str] | None = None,
                      seconds: Mapping[str, float] | None = None, stream: TextIO | None = None) -> None:
    title = f"Reconstruction: {result.output_dir / 'sparse'}"
    if result.skipped:
        title += " (reused, inputs unchanged)"
    # sys.stdout looked up at call time (it may have been replaced since import)
    print(format_table(summary_rows(result.stats, failed, seconds), title), file=stream or sys.stdout)

