"""Real clients of our files (issue #22): hloc's recipe with LightGlue, hloc's pairs parser,
nerfstudio's world convention, the HTML viewer's first view, and the Ray help text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from conftest import resized_sample

from omniglue_sfm import cli
from omniglue_sfm.formats import h5io, matches_h5

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
# 13. README's hloc recipe with LightGlue presets


def _as_hloc_features(ours: Path, dest: Path) -> None:
    """Our features in hloc's layout: no configuration, float16 arrays, as hloc's extract_features writes."""
    with h5py.File(ours, "r") as src, h5py.File(dest, "w") as out:
        for name in h5io.list_names(ours):
            group = out.create_group(name)
            for key in ("keypoints", "scores", "descriptors", "image_size"):
                value = src[name][key][()]
                half = value.astype(np.float16) if value.dtype == np.float32 else value
                group.create_dataset(key, data=half)


@pytest.mark.parametrize("preset", ["aliked+lightglue", "omniglue"])
def test_readme_hloc_recipe_works_with_lightglue_presets(small_features: Path, tmp_path: Path, preset: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    features = tmp_path / "hloc_features.h5"
    _as_hloc_features(small_features, features)
    names = h5io.list_names(features)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    (tmp_path / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    with caplog.at_level(logging.WARNING):
        assert run("match", features, tmp_path / "pairs.txt", tmp_path / "matches.h5", "--preset", preset,
                   "--device", "cpu") == 0
    assert "not written by omniglue-sfm" in caplog.text  # the user vouches for the features: a warning
    counts = [len(matches_h5.read_matches(tmp_path / "matches.h5", a, b)[0])
              for i, a in enumerate(names) for b in names[i + 1:]]
    assert min(counts) > 20, counts


# --------------------------------------------------------------------------------------------
# 14. names hloc's pairs parser cannot hold


def hloc_parse_retrieval(path: Path) -> dict[str, list[str]]:
    """hloc.utils.parsers.parse_retrieval's rule: each line is split on whitespace into two names."""
    retrieval: dict[str, list[str]] = {}
    for line in path.read_text().rstrip("\n").split("\n"):
        if line:
            q, r = line.split()
            retrieval.setdefault(q, []).append(r)
    return retrieval


def test_pairs_with_names_hloc_cannot_read_are_reported(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    images = tmp_path / "images"
    resized_sample(images / "cam a", 2, 64)
    resized_sample(images / "cam_b", 2, 64)
    with caplog.at_level(logging.WARNING):
        assert run("pairs", images, tmp_path / "pairs.txt") == 0
    parsed = hloc_parse_retrieval(tmp_path / "pairs.txt")  # parses, but under names hloc will not find
    listed = {n for q, rs in parsed.items() for n in [q, *rs]}
    assert "cam_b/0000.jpg" in listed and "cam a/0000.jpg" not in listed
    assert "hloc" in caplog.text and "cam a/0000.jpg" in caplog.text


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


# --------------------------------------------------------------------------------------------
# 16. the HTML viewer's first view


def plotly_figure(html: str) -> tuple[list, dict]:
    """(data, layout) of the first ``Plotly.newPlot(id, data, layout, config)`` call of a page."""
    decoder = json.JSONDecoder()
    at = html.index("Plotly.newPlot(")
    at = html.index(",", at) + 1
    data, end = decoder.raw_decode(html, len(html[:at]) + len(html[at:]) - len(html[at:].lstrip()))
    at = html.index(",", end) + 1
    layout, _ = decoder.raw_decode(html, at + len(html[at:]) - len(html[at:].lstrip()))
    return data, layout


def test_html_viewer_opens_behind_the_cameras_looking_where_they_look(built, tmp_path: Path) -> None:
    _, out = built
    page = tmp_path / "model.html"
    assert run("viz", "html", out, page, "--cdn") == 0
    _, layout = plotly_figure(page.read_text())
    scene = layout["scene"]
    assert scene["aspectmode"] == "manual"
    ranges = np.array([scene[f"{a}axis"]["range"] for a in "xyz"], float)
    ratio = np.array([scene["aspectratio"][a] for a in "xyz"], float)
    mid, span = ranges.mean(axis=1), ranges[:, 1] - ranges[:, 0]

    def to_world(v: dict, point: bool = True) -> np.ndarray:
        # plotly's scene box: the axis ranges scaled to the aspect ratio, centred on the origin
        n = np.array([v[a] for a in "xyz"], float)
        return n / ratio * span + (mid if point else 0)

    camera = scene["camera"]
    eye, center = to_world(camera["eye"]), to_world(camera["center"])
    look = (center - eye) / np.linalg.norm(center - eye)
    rec = pycolmap.Reconstruction(out / "sparse")
    images = [rec.image(i) for i in rec.reg_image_ids()]
    forward = np.mean([img.cam_from_world().rotation.matrix()[2] for img in images], axis=0)
    forward /= np.linalg.norm(forward)
    assert np.degrees(np.arccos(np.clip(look @ forward, -1, 1))) < 45  # looking where the cameras look
    for img in images:  # from behind every camera
        assert (img.projection_center() - eye) @ look > 0, img.name
    # image "up" of the cameras is up on the screen
    down = np.mean([img.cam_from_world().rotation.matrix()[1] for img in images], axis=0)
    up = np.array([camera["up"][a] for a in "xyz"], float) / ratio * span
    assert up @ down < 0


def test_html_viewer_first_view_in_a_headless_browser(built, tmp_path: Path) -> None:
    """The page as Chromium draws it (skipped where no Chromium is installed): the cameras in front,
    at the bottom of the picture, the scene's points beyond them, above."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    _, out = built
    page, shot = tmp_path / "model.html", tmp_path / "shot.png"
    assert run("viz", "html", out, page) == 0  # plotly.js embedded: no network needed
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                    "--use-angle=swiftshader", "--window-size=1280,960", "--virtual-time-budget=15000",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=False)
    if not shot.is_file():
        pytest.skip("Chromium made no screenshot here")
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)[60:]  # below the title and toolbar
    frustums = (rgb[..., 0] > 180) & (rgb[..., 1] < 120) & (rgb[..., 2] < 100)  # MAP_CAMERA red
    points = rgb.sum(axis=-1) < 300
    assert frustums.sum() > 500 and points.sum() > 200, "the scene is not in view"
    assert np.nonzero(frustums)[0].mean() > np.nonzero(points)[0].mean() + 100  # cameras in front, below


# --------------------------------------------------------------------------------------------
# 17. --executor's help


def test_executor_help_states_when_results_are_the_same(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["reconstruct", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    at = text.index("--executor {local,ray}")
    help_text = text[at:text.index("--ray-address HOST:PORT", at + 30)]
    assert "same results either way" not in help_text
    assert "--ray-cpus-per-worker" in help_text and "threads" in help_text
