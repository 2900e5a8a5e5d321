"""Turned variants of ground-truth scenes (tests and benchmarks/herzjesu_rotated.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from omniglue_sfm.formats.images import read_image, resize_for_extraction
from omniglue_sfm.geometry.scenes import CameraPose, read_strecha_dir, write_strecha_camera
from omniglue_sfm.geometry.turns import turn_camera, turn_image


def write_turned_scene(scene_dir: Path, out_dir: Path, turned_cw: Mapping[str, int],
                       long_side: int | None = None) -> Path:
    """A copy of a Strecha scene (``images/``, ``gt/``) whose images named in ``turned_cw`` are
    stored turned clockwise by that many degrees (90, 180, 270), their ``.camera`` transformed
    with them. ``long_side`` also downscales every image (and its K). Turned images are written
    as JPEG (quality 95) under the same name; the others are copied as they are."""
    import shutil

    from PIL import Image

    scene_dir, out_dir = Path(scene_dir), Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "gt").mkdir(parents=True, exist_ok=True)
    for name, pose in read_strecha_dir(scene_dir / "gt").items():
        degrees = int(turned_cw.get(name, 0))
        if degrees % 90:
            raise ValueError(f"{name}: turns are multiples of 90 degrees, got {degrees}")
        k = -(degrees // 90) % 4  # clockwise by 90 = one counter-clockwise quarter-turn back
        src = scene_dir / "images" / name
        if k == 0 and long_side is None:
            shutil.copyfile(src, out_dir / "images" / name)
        else:
            img = read_image(src)
            if long_side is not None:
                pose = _scaled_camera(pose, long_side / max(img.shape[:2]))
                img = resize_for_extraction(img, long_side)[0]
            Image.fromarray(turn_image(img, k)).save(out_dir / "images" / name, quality=95)
        write_strecha_camera(out_dir / "gt" / f"{name}.camera", turn_camera(pose, k))
    return out_dir


def _scaled_camera(pose: CameraPose, factor: float) -> CameraPose:
    w, h = pose.size
    size = (round(w * factor), round(h * factor))
    K = None if pose.K is None else np.diag([size[0] / w, size[1] / h, 1.0]) @ pose.K
    return CameraPose(R=pose.R, t=pose.t, K=K, size=size)

