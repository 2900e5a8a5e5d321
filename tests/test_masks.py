"""``--masks``: keypoints dropped where the mask is 0, masks in the configuration, export carries them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from conftest import resized_sample, small_preset
from PIL import Image

from omniglue_sfm import cli, export, extract, match, pairs, reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io
from omniglue_sfm.formats.images import list_images
from omniglue_sfm.formats.masks import MaskSet, keypoints_inside, mask_name


def _half_masks(image_dir: Path, mask_dir: Path, blank: str = "left") -> Path:
    """A mask per image that blanks one half (0) and keeps the other (255)."""
    for name in list_images(image_dir):
        with Image.open(image_dir / name) as img:
            w, h = img.size
        keep = np.full((h, w), 255, dtype=np.uint8)
        if blank == "left":
            keep[:, : w // 2] = 0
        else:
            keep[:, w // 2:] = 0
        (mask_dir / mask_name(name)).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(keep).save(mask_dir / mask_name(name))
    return mask_dir


def test_mask_names_and_pixel_rule(tmp_path: Path) -> None:
    assert mask_name("0000.jpg") == "0000.jpg.png"
    assert mask_name("sub/a.png") == "sub/a.png.png"
    mask = np.zeros((4, 6), dtype=bool)
    mask[:, 3:] = True
    kps = np.array([[2.4, 1.0], [2.6, 1.0], [5.4, 3.4], [-0.5, 0.0]], dtype=np.float32)
    # a keypoint belongs to the pixel whose centre is nearest (centre of the top-left pixel at 0)
    assert keypoints_inside(kps, mask).tolist() == [False, True, True, False]
    # RGBA (alpha ignored), palette and 1-bit masks: nonzero colour = keep
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:, 3:, :3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.jpg.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "b.jpg.png")
    Image.fromarray(mask).save(tmp_path / "c.jpg.png")
    masks = MaskSet(tmp_path)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        assert (masks.load(name, (6, 4)) == mask).all(), name
    with pytest.raises(ValueError, match="masks must have their image's size"):
        masks.load("a.jpg", (4, 6))
    with pytest.raises(FileNotFoundError, match="d.jpg.png"):
        masks.check(["a.jpg", "d.jpg"])


def test_extract_drops_masked_keypoints_and_records_the_masks(small_scene: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    preset = small_preset("mnn")
    masks = _half_masks(small_scene, (tmp_path / "masks").mkdir() or tmp_path / "masks")
    out = tmp_path / "features.h5"
    extract.main(small_scene, out, {**preset, "masks": masks}, RunOptions(device="cpu"))
    assert h5io.read_config(out)["masks"] == str(masks.resolve())
    names = list_images(small_scene)
    before = {}
    for name in names:
        feats = h5io.read_features(out, name)
        w = int(feats["image_size"][0])
        n = len(feats["keypoints"])
        assert n > 30 and (feats["keypoints"][:, 0] >= w / 2 - 0.5).all()  # none in the blank half
        assert feats["scores"].shape == (n,) and feats["descriptors"].shape[1] == n
        before[name] = feats["keypoints"]
    # another mask folder, or none, is another configuration: never silently reused
    other = _half_masks(small_scene, (tmp_path / "other").mkdir() or tmp_path / "other")
    for extra in (["--masks", str(other)], []):
        assert cli.main(["extract", str(small_scene), str(out), "--preset", "aliked+mnn", *extra]) == 1
        assert "another configuration" in capsys.readouterr().err
    # a changed mask re-extracts its image (the others are kept) and its pairs are matched again
    pairs_path = tmp_path / "pairs.txt"
    pairs.main(None, pairs_path, names=names)
    matches = tmp_path / "matches.h5"
    match.main(out, pairs_path, matches, preset, RunOptions(device="cpu"))
    with Image.open(masks / mask_name(names[0])) as img:
        flipped = np.asarray(img)[:, ::-1].copy()
    Image.fromarray(flipped).save(masks / mask_name(names[0]))
    extract.main(small_scene, out, {**preset, "masks": masks}, RunOptions(device="cpu"))
    changed = h5io.read_features(out, names[0])
    w = int(changed["image_size"][0])
    assert (changed["keypoints"][:, 0] <= w / 2 - 0.5).all()
    for name in names[1:]:
        np.testing.assert_array_equal(h5io.read_features(out, name)["keypoints"], before[name])
    again = match.main(out, pairs_path, matches, preset, RunOptions(device="cpu"))
    assert again.num_pairs == 2 and again.num_skipped_existing == 1  # the pairs of names[0]
    # a missing mask is an error before any work
    (masks / mask_name(names[1])).unlink()
    assert cli.main(["extract", str(small_scene), str(tmp_path / "f2.h5"), "--masks", str(masks)]) == 1
    assert f"missing {mask_name(names[1])}" in capsys.readouterr().err
    assert not (tmp_path / "f2.h5").exists()
    # COLMAP's SIFT pipeline takes no masks: said before any work
    assert cli.main(["reconstruct", str(small_scene), str(tmp_path / "sift"), "--preset", "sift",
                     "--masks", str(masks)]) == 1
    assert "learned-feature presets" in capsys.readouterr().err


def test_masked_reconstruction_and_export(tmp_path: Path) -> None:
    """Half of every sample image blanked: no keypoint there, the scene still reconstructs, and both
    export layouts carry the undistorted masks (nerfstudio: mask_path)."""
    images = resized_sample((tmp_path / "images").mkdir() or tmp_path / "images", 8, 480)
    masks = _half_masks(images, (tmp_path / "masks").mkdir() or tmp_path / "masks")
    out = tmp_path / "out"
    preset = {**small_preset("lightglue", max_keypoints=512, resize_max=480), "masks": masks}
    result = reconstruct.main(images, out, preset, sfm_options=SfMOptions(progress=False))
    assert result.reconstruction.num_reg_images() >= 6, result.stats
    assert result.stats["mean_reprojection_error"] < 1.5
    with h5py.File(out / "features.h5") as h5:
        for name in list_images(images):
            w = int(h5[name]["image_size"][0])
            assert (h5[name]["keypoints"][:, 0] >= w / 2 - 0.5).all(), name
    for fmt in export.FORMATS:
        dest = tmp_path / fmt
        assert cli.main(["export", str(out), str(dest), "--format", fmt]) == 0
        model = pycolmap.Reconstruction(dest / "sparse" / "0")
        for image in model.images.values():
            cam = model.cameras[image.camera_id]
            with Image.open(dest / "masks" / mask_name(image.name)) as img:
                assert img.size == (cam.width, cam.height)
                keep = np.asarray(img) > 0
            half = cam.width // 2
            assert keep[:, : half - 3].mean() < 0.01 and keep[:, half + 3:].mean() > 0.95
        if fmt == "nerfstudio":
            frames = json.loads((dest / "transforms.json").read_text())["frames"]
            assert all((dest / f["mask_path"]).is_file() for f in frames)
    # the mask folder the features record is gone: export says so
    shutil.rmtree(masks)
    assert cli.main(["export", str(out), str(tmp_path / "again")]) == 1
