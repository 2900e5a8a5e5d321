"""Real clients of our files (issue #22): hloc's recipe with LightGlue, hloc's pairs parser,
nerfstudio's world convention, the HTML viewer's first view, and the Ray help text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from conftest import resized_sample

from omniglue_sfm import cli

FAST_OFF = ["--preset", "aliked+mnn", "--max-keypoints", "256", "--resize-max", "320", "--device", "cpu",
            "--rotation", "off"]


def run(*argv: object) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    images = resized_sample(tmp_path_factory.mktemp("client_images"), 4, 320)
    out = tmp_path_factory.mktemp("client_run") / "out"
    assert run("reconstruct", images, out, *FAST_OFF) == 0
    return images, out


# --------------------------------------------------------------------------------------------
# 15. nerfstudio's world


def nerfstudio_c2w(w2c: np.ndarray) -> np.ndarray:
    """nerfstudio's colmap_to_json (process_data/colmap_utils.py, nerfstudio main at commit 000e344a):
    inverse of world-to-camera, camera y and z negated (OpenGL), then rows 0, 2, 1 and row 2 negated."""
    c2w = np.linalg.inv(w2c)
    c2w[0:3, 1:3] *= -1
    c2w = c2w[np.array([0, 2, 1, 3]), :]
    c2w[2, :] *= -1
    return c2w


def test_nerfstudio_export_matches_ns_process_data_world(built, tmp_path: Path) -> None:
    _, out = built
    dest = tmp_path / "ns"
    assert run("export", out, dest, "--format", "nerfstudio") == 0
    data = json.loads((dest / "transforms.json").read_text())
    np.testing.assert_array_equal(np.asarray(data["applied_transform"]),
                                  [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])
    rec = pycolmap.Reconstruction(dest / "sparse" / "0")
    by_id = {int(i): rec.image(i) for i in rec.reg_image_ids()}
    for frame in data["frames"]:
        w2c = np.eye(4)
        w2c[:3] = by_id[frame["colmap_im_id"]].cam_from_world().matrix()
        np.testing.assert_allclose(frame["transform_matrix"], nerfstudio_c2w(w2c), atol=1e-9)
    # sparse_pc.ply: the points in the same world
    raw = (dest / "sparse_pc.ply").read_bytes()
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n"):]
    verts = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"),
                                       ("b", "u1")])
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    applied = np.asarray(data["applied_transform"], float)
    np.testing.assert_allclose(np.column_stack([verts["x"], verts["y"], verts["z"]]),
                               xyz @ applied[:, :3].T, atol=1e-4)


