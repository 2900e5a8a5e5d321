"""Turned photos (orientation.py): the keypoint mapping, the ground-truth transform, the turn
solver, and the orientation pass inside ``extract`` on small copies of the sample scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_IMAGES, small_preset
from PIL import Image
from turned_scene import write_turned_scene

from omniglue_sfm import extract, orientation
from omniglue_sfm.config import presets
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.config.rotation import OrientationOptions, options_from_preset
from omniglue_sfm.features.image import extract_image
from omniglue_sfm.formats import h5io, provenance
from omniglue_sfm.geometry.scenes import CameraPose
from omniglue_sfm.geometry.turns import from_upright, to_upright, turn_camera, turn_image
from omniglue_sfm.matchers.base import features_to_tensors
from omniglue_sfm.pairs import exhaustive


def _candidates(names: list[str]) -> list[tuple[str, str]]:
    return orientation.neighbours_first(names, exhaustive(names))


@pytest.mark.parametrize("turn", [0, 1, 2, 3])
def test_keypoints_follow_the_pixels_for_each_quarter_turn(turn):
    rng = np.random.default_rng(turn)
    h, w = 5, 8
    img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    turned = turn_image(img, turn)
    xy = np.array([(x, y) for y in range(h) for x in range(w)], dtype=np.float64)
    up, size = to_upright(xy, (w, h), turn)
    assert size == (turned.shape[1], turned.shape[0])
    cols, rows = up[:, 0].astype(int), up[:, 1].astype(int)
    assert np.array_equal(turned[rows, cols], img[xy[:, 1].astype(int), xy[:, 0].astype(int)])
    back, back_size = from_upright(up, size, turn)
    assert back_size == (w, h)
    np.testing.assert_allclose(back, xy)


@pytest.mark.parametrize("turn", [1, 2, 3])
def test_turned_camera_projects_where_the_pixels_went(turn):
    """Ground truth of a turned image (K, R transformed) projects a 3D point exactly where the
    keypoint mapping sends its pixel in the original image."""
    rng = np.random.default_rng(7)
    K = np.array([[900.0, 0, 500.3], [0, 910.0, 330.7], [0, 0, 1]])
    angle = 0.3
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    pose = CameraPose(R=R, t=np.array([0.2, -0.1, 3.0]), K=K, size=(1024, 683))
    turned = turn_camera(pose, turn)
    np.testing.assert_allclose(turned.center, pose.center, atol=1e-9)
    points = rng.normal(size=(20, 3))

    def project(p: CameraPose) -> np.ndarray:
        cam = (p.R @ points.T).T + p.t
        uv = (p.K @ cam.T).T
        return uv[:, :2] / uv[:, 2:]

    expected, size = to_upright(project(pose), pose.size, turn)
    np.testing.assert_allclose(project(turned), expected, atol=1e-6)
    assert turned.size == size


def test_solver_recovers_turns_from_pair_scores():
    """Pairs that overlap score high only at the true relative turn; some pairs never overlap;
    the global offset keeps the majority as stored."""
    true = {"a": 0, "b": 0, "c": 1, "d": 2, "e": 0, "f": 3, "g": 0}
    names = sorted(true)
    no_overlap = {("a", "g"), ("b", "g"), ("c", "g")}
    calls = []

    def score(a: str, b: str, k: int) -> int:
        calls.append((a, b, k))
        if tuple(sorted((a, b))) in no_overlap:
            return 3
        return 120 if (true[b] - true[a] - k) % 4 == 0 else 6

    pairs = _candidates(names)
    turns, unattached = orientation.solve_turns(names, pairs, score, OrientationOptions())
    assert turns == true and unattached == []
    assert {k for _, _, k in calls} == {0, 1, 2, 3}


def test_solver_keeps_upright_scene_upright_and_cheap():
    names = [f"{i:02d}" for i in range(12)]
    calls = []

    def score(a: str, b: str, k: int) -> int:
        calls.append(k)
        return 150 if k == 0 else 2

    turns, unattached = orientation.solve_turns(names, _candidates(names), score,
                                                OrientationOptions())
    assert set(turns.values()) == {0} and not unattached
    assert calls == [0] * (len(names) - 1)  # neighbours first: one match per image joins them all


def test_a_few_chance_matches_do_not_join_images_180_degrees_apart():
    """A 180-degree pair whose upright matching gives a few dozen inliers (a fundamental matrix
    fits them by chance) is compared against all four turns before being joined."""
    true = {"a": 0, "b": 2, "c": 0}

    def score(a: str, b: str, k: int) -> int:
        if (true[b] - true[a] - k) % 4 == 0:
            return 300
        return 35 if k == 0 else 5

    names = sorted(true)
    turns, _ = orientation.solve_turns(names, _candidates(names), score, OrientationOptions())
    assert turns == true


def test_no_image_no_turn():
    assert orientation.solve_turns([], [], lambda a, b, k: 0, OrientationOptions()) == ({}, [])


def test_unclear_group_is_left_as_stored():
    names = ["a", "b", "c"]

    def score(a: str, b: str, k: int) -> int:
        if "c" in (a, b):
            return 20  # too few inliers at every turn: no clear winner
        return 100 if k == 0 else 0

    turns, unattached = orientation.solve_turns(names, _candidates(names), score,
                                                OrientationOptions())
    assert turns == {"a": 0, "b": 0, "c": 0} and unattached == ["c"]


def test_options_from_preset_and_errors():
    assert options_from_preset({"rotation": "off"}) is None
    assert options_from_preset({}) is None
    assert options_from_preset({"rotation": "auto"}) == OrientationOptions()
    assert options_from_preset({"rotation": {"min_inliers": 50}}).min_inliers == 50
    with pytest.raises(ValueError, match="rotation mode"):
        options_from_preset({"rotation": "sideways"})
    with pytest.raises(ValueError, match="unknown rotation option"):
        options_from_preset({"rotation": {"angle": 3}})


def test_features_reach_the_matcher_upright():
    feats = {"keypoints": np.array([[0.0, 0.0], [9.0, 4.0]], np.float32),
             "descriptors": np.zeros((4, 2), np.float32), "image_size": np.array([10, 5])}
    t = features_to_tensors(feats, turn=1)
    assert t["image_size"].tolist() == [5.0, 10.0]
    assert t["keypoints"].tolist() == [[0.0, 9.0], [4.0, 0.0]]
    assert features_to_tensors(feats)["keypoints"].tolist() == feats["keypoints"].tolist()


# --------------------------------------------------------------------------------------------
# the orientation pass inside extract, on small copies of the sample (lossless PNG turns)


def _scene(folder: Path, turned_cw: dict[int, int], long_side: int = 320) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sorted(SAMPLE_IMAGES.glob("*.jpg"))[:3]):
        with Image.open(src) as img:
            img = img.convert("RGB")
            f = long_side / max(img.size)
            arr = np.asarray(img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BOX))
        k = -(turned_cw.get(i, 0) // 90) % 4
        Image.fromarray(turn_image(arr, k)).save(folder / f"{src.stem}.png")
    return folder


def _preset(rotation: str = "auto") -> dict:
    # mutual nearest neighbours keep these tests fast; LightGlue runs in the slow end-to-end tests
    return {**small_preset("mnn", max_keypoints=256, resize_max=320), "rotation": rotation}


@pytest.fixture(scope="module")
def upright_features(tmp_path_factory) -> Path:
    folder = _scene(tmp_path_factory.mktemp("upright") / "images", {})
    out = folder.parent / "features.h5"
    summary = extract.main(folder, out, _preset("off"), RunOptions(device="cpu"))
    assert not summary.failed and summary.turns == {}
    return out


@pytest.mark.parametrize("degrees", [pytest.param(90, marks=pytest.mark.slow), 180,
                                     pytest.param(270, marks=pytest.mark.slow)])
def test_extract_finds_the_turn_and_stores_original_pixels(tmp_path, upright_features, degrees):
    folder = _scene(tmp_path / "images", {1: degrees})
    out = tmp_path / "features.h5"
    summary = extract.main(folder, out, _preset(), RunOptions(device="cpu"))
    assert summary.turns == {"0000.png": 0, "0001.png": degrees // 90, "0002.png": 0}
    assert summary.orientation["turned"] == {"0001.png": degrees}
    assert provenance.read_turn(out, "0001.png") == degrees // 90
    assert h5io.read_config(out)["rotation"]["mode"] == "auto"
    # the turned image was extracted upright: its keypoints, mapped to the upright view, are the
    # upright image's own; stored, they are in the turned file's pixels and size
    stored = h5io.read_features(out, "0001.png")
    ref = h5io.read_features(upright_features, "0001.png")
    up, size = to_upright(stored["keypoints"], stored["image_size"], degrees // 90)
    assert tuple(size) == tuple(ref["image_size"])
    np.testing.assert_allclose(up, ref["keypoints"], atol=1e-3)
    np.testing.assert_allclose(stored["descriptors"], ref["descriptors"], atol=1e-5)
    w, h = stored["image_size"]
    assert (stored["keypoints"][:, 0].max() < w) and (stored["keypoints"][:, 1].max() < h)


def test_upright_scene_costs_little_and_resume_skips_the_pass(tmp_path, upright_features):
    folder = _scene(tmp_path / "images", {})
    out = tmp_path / "features.h5"
    summary = extract.main(folder, out, _preset(), RunOptions(device="cpu"))
    assert set(summary.turns.values()) == {0}
    assert summary.orientation["extractions"] == 3 and summary.orientation["matched_pairs"] <= 3
    np.testing.assert_allclose(h5io.read_keypoints(out, "0002.png"),
                               h5io.read_keypoints(upright_features, "0002.png"))
    again = extract.main(folder, out, _preset(), RunOptions(device="cpu"))
    assert again.orientation is None and again.turns == summary.turns


def test_rotation_setting_is_part_of_the_features_config(tmp_path):
    folder = _scene(tmp_path / "images", {})
    out = tmp_path / "features.h5"
    extract.main(extract.ImageSet(folder, ["0000.png"]), out, _preset("off"), RunOptions(device="cpu"))
    with pytest.raises(h5io.ConfigMismatchError):
        extract.main(folder, out, _preset("auto"), RunOptions(device="cpu"))


def test_rotation_on_the_command_line(tmp_path, capsys):
    from omniglue_sfm import cli

    folder = _scene(tmp_path / "images", {})
    out = tmp_path / "features.h5"
    assert cli.main(["extract", str(folder), str(out), "--preset", "aliked-mnn", "--rotation", "off"]) == 0
    assert "rotation" not in h5io.read_config(out)
    capsys.readouterr()
    # the preset's default (auto) is another configuration than the file's: a clear error, exit 1
    assert cli.main(["extract", str(folder), str(out), "--preset", "aliked-mnn"]) == 1
    err = capsys.readouterr().err
    assert "another configuration" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as usage:  # a usage error: exit 1, as README says
        cli.main(["extract", str(folder), str(out), "--rotation", "sideways"])
    assert usage.value.code == 1 and "--rotation" in capsys.readouterr().err


def test_an_image_whose_turn_changed_is_re_extracted(tmp_path):
    folder = _scene(tmp_path / "images", {})
    out = tmp_path / "features.h5"
    extract.main(folder, out, _preset(), RunOptions(device="cpu"))
    before = h5io.read_keypoints(out, "0001.png")
    # the same name now holds the photo turned by 180 degrees (new content: re-extracted, new turn)
    _scene(tmp_path / "turned", {1: 180})
    (folder / "0001.png").write_bytes((tmp_path / "turned" / "0001.png").read_bytes())
    summary = extract.main(folder, out, _preset(), RunOptions(device="cpu"))
    assert summary.turns["0001.png"] == 2
    after = h5io.read_keypoints(out, "0001.png")
    w, h = h5io.read_features(out, "0001.png")["image_size"]
    np.testing.assert_allclose(after, from_upright(before, (w, h), 2)[0], atol=1e-3)


def test_turned_scene_writer(tmp_path):
    from omniglue_sfm.geometry.scenes import read_strecha_dir

    sample = SAMPLE_IMAGES.parent
    out = write_turned_scene(sample, tmp_path / "scene", {"0001.jpg": 90, "0002.jpg": 180},
                                         long_side=256)
    gt, src = read_strecha_dir(out / "gt"), read_strecha_dir(sample / "gt")
    with Image.open(out / "images" / "0001.jpg") as img:
        assert img.size == gt["0001.jpg"].size and img.height > img.width
    for name in ("0000.jpg", "0001.jpg", "0002.jpg"):
        np.testing.assert_allclose(gt[name].center, src[name].center, atol=1e-4)
    with pytest.raises(ValueError, match="multiples of 90"):
        write_turned_scene(sample, tmp_path / "bad", {"0001.jpg": 45})


# --------------------------------------------------------------------------------------------
# end to end on a turned variant of the sample scene (slow)

SAMPLE = SAMPLE_IMAGES.parent
FAST = {"features": {"max_keypoints": 512, "resize_max": 768}}
TURNED = {"0000.jpg": 90, "0003.jpg": 180, "0006.jpg": 270}


@pytest.mark.slow
def test_turned_sample_reconstructs_like_the_upright_one(tmp_path):
    from omniglue_sfm import reconstruct
    from omniglue_sfm.colmap.mapper import SfMOptions
    from omniglue_sfm.evaluation.reconstruction import evaluate

    scene = write_turned_scene(SAMPLE, tmp_path / "scene", TURNED)
    out = tmp_path / "out"
    result = reconstruct.main(scene / "images", out, presets.resolve("omniglue", FAST),
                              sfm_options=SfMOptions(progress=False))
    expected = {f"{i:04d}.jpg": TURNED.get(f"{i:04d}.jpg", 0) for i in range(8)}
    assert result.stats["image_turns_deg"] == expected
    assert result.stats["orientation"]["turned"] == TURNED
    metrics = evaluate(out / "sparse", scene / "gt")
    assert metrics["registered"] == 8 and metrics["auc5"] > 0.8, metrics
    # matches.h5 and the model are in the stored (turned) pixels: the turned image's camera is portrait
    import pycolmap

    rec = pycolmap.Reconstruction(out / "sparse")
    cams = {rec.image(i).name: rec.image(i).camera for i in rec.reg_image_ids()}
    assert cams["0000.jpg"].height > cams["0000.jpg"].width
    off_preset = presets.resolve("omniglue", {**FAST, "rotation": "off"})
    off = reconstruct.main(scene / "images", tmp_path / "off", off_preset,
                           sfm_options=SfMOptions(progress=False))
    assert "image_turns_deg" not in off.stats and "orientation" not in off.stats


@pytest.mark.slow
def test_query_turned_by_180_degrees_localizes(tmp_path):
    """The held-out images of the sample (0003, 0005) are queries, turned by 180 and 270 degrees;
    the map is built from the upright others (aliked+lightglue, as evaluate-localization does)."""
    from omniglue_sfm.evaluation import localization as evaluate_localization

    scene = write_turned_scene(SAMPLE, tmp_path / "scene", {"0003.jpg": 180, "0005.jpg": 270})
    preset = presets.resolve("aliked+lightglue", {"features": {"max_keypoints": 1024}})
    report = evaluate_localization.main(scene / "images", scene / "gt", tmp_path / "run", preset,
                                        RunOptions(device="cpu"), progress=False)
    assert report["held_out"] == ["0003.jpg", "0005.jpg"]
    for name, r in report["per_query"].items():
        assert r["localized"], (name, r["reason"])
        assert r["position_error"] < 0.25 and r["rotation_error_deg"] < 2.0, (name, r)
    queries = json.loads((tmp_path / "run" / "localize" / "localize.json").read_text())["queries"]
    assert queries["0003.jpg"]["turn_deg"] == 180 and queries["0005.jpg"]["turn_deg"] == 270


@pytest.mark.parametrize("turn", [1, 2, 3])
def test_a_large_image_decoded_reduced_is_extracted_upright_in_the_same_frame(turn):
    """A turn on top of a reduced decode (images above LARGE_PIXELS): the upright frame is the
    full image's size turned, so keypoints land where a full decode puts them."""
    import torch

    from omniglue_sfm.config import registry

    rng = np.random.default_rng(0)
    full = np.repeat(np.repeat(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), 16, 0), 16, 1)  # 800x640
    reduced = full.reshape(320, 2, 400, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)  # a 1/2 decode
    extractor = registry.extractor(small_preset(max_keypoints=128)["features"]).eval()
    cpu = torch.device("cpu")
    a, _ = extract_image(full, extractor, None, 200, cpu, None, turn)
    b, _ = extract_image(reduced, extractor, None, 200, cpu, (800, 640), turn)
    assert list(a["image_size"]) == list(b["image_size"]) == [800, 640]
    # the same resized picture up to rounding: most keypoints agree to within a pixel of the original
    dist = np.linalg.norm(a["keypoints"][:, None] - b["keypoints"][None], axis=2).min(axis=1)
    assert np.median(dist) < 1.0, np.median(dist)


def test_given_turns_are_estimated_only_when_features_are_new(tmp_path):
    """localize's query-turn probe goes through extract's resume rule: a re-run with nothing new
    keeps the stored turns and does not probe again."""
    folder = _scene(tmp_path / "images", {2: 180})
    out = tmp_path / "features.h5"
    calls = []

    def probe(names: list[str]) -> dict[str, int]:
        calls.append(list(names))
        return {"0002.png": 2}

    first = extract.main(extract.ImageSet(folder, None, turns=probe), out, _preset(),
                         RunOptions(device="cpu"))
    assert calls == [["0000.png", "0001.png", "0002.png"]] and first.turns["0002.png"] == 2
    assert first.orientation is None  # the caller's estimate, not the pass
    again = extract.main(extract.ImageSet(folder, None, turns=probe), out, _preset(),
                         RunOptions(device="cpu"))
    assert len(calls) == 1 and again.turns == first.turns
