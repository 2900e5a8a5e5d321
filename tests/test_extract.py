"""extract: datasets and dtypes, bad inputs, EXIF frame, resume and config checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SAMPLE_IMAGES, small_preset
from PIL import Image

from omniglue_sfm import extract
from omniglue_sfm.cli import main as cli_main
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io


def test_features_file_contract(small_scene: Path, small_features: Path) -> None:
    out, glob = small_features, small_features.with_name("global.h5")
    names = sorted(p.name for p in small_scene.glob("*.jpg"))
    assert h5io.list_names(out) == names and h5io.list_names(glob, "global") == names
    assert h5io.read_config(out)["guidance"] == {"name": "aliked-grid"}
    with h5py.File(out) as h5, h5py.File(glob) as g:
        for name in names:
            grp = h5[name]
            n = grp["keypoints"].shape[0]
            assert 100 < n <= 256
            assert grp["keypoints"].dtype == np.float32 and grp["scores"].shape == (n,)
            assert grp["descriptors"].shape == (128, n) and grp["descriptors"].dtype == np.float32
            assert grp["guidance"].shape == (128, n) and grp["guidance"].dtype == np.float16
            w, h = grp["image_size"][()]
            with Image.open(small_scene / name) as img:
                assert (w, h) == img.size
            kp = grp["keypoints"][()]
            assert (kp >= -0.5).all() and (kp[:, 0] <= w - 0.5).all() and (kp[:, 1] <= h - 0.5).all()
            gd = g[name]["global_descriptor"][()]
            assert gd.shape == (128,) and abs(np.linalg.norm(gd) - 1) < 1e-5


def _bad_folder(root: Path, textured) -> None:
    data = (SAMPLE_IMAGES / "0000.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 4])
    (root / "text.jpg").write_text("hello")
    base = textured(120, 160, seed=1)
    Image.fromarray(base).convert("L").save(root / "gray.png")
    Image.fromarray(np.dstack([base, np.full(base.shape[:2], 128, np.uint8)]), "RGBA").save(root / "rgba.png")
    Image.fromarray(base[..., 0].astype(np.uint16) * 257).save(root / "deep16.png")
    Image.fromarray(textured(20, 20, seed=2)).save(root / "tiny.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "blank.png")
    (root / "sub dir").mkdir()
    Image.fromarray(textured(300, 5000, seed=3)).save(root / "sub dir" / "huge é.png")


def test_bad_inputs_are_skipped_or_handled(tmp_path: Path, textured) -> None:
    images = tmp_path / "images"
    images.mkdir()
    _bad_folder(images, textured)
    out = tmp_path / "f.h5"
    summary = extract.main(images, out, small_preset(resize_max=640), RunOptions(device="cpu"))
    assert set(summary.failed) == {"corrupt.jpg", "text.jpg"}
    assert sorted(h5io.list_names(out)) == sorted(summary.names)
    huge = h5io.read_features(out, "sub dir/huge é.png")
    assert tuple(huge["image_size"]) == (5000, 300)
    kp = huge["keypoints"]
    assert len(kp) > 10 and (kp >= -0.5).all() and (kp[:, 0] <= 4999.5).all() and (kp[:, 1] <= 299.5).all()
    assert kp[:, 0].max() > 4000  # mapped back to full resolution, not left at 640 px
    tiny = h5io.read_features(out, "tiny.png")
    assert tiny["keypoints"].shape[1] == 2 and tiny["descriptors"].shape == (128, len(tiny["keypoints"]))
    for name in ("gray.png", "rgba.png", "deep16.png"):
        assert tuple(h5io.read_features(out, name)["image_size"]) == (160, 120)


def test_exif_rotated_keypoints_in_displayed_frame(tmp_path: Path) -> None:
    """Features of an EXIF-rotated file are those of the upright picture people see.

    (ALIKED is not rotation-equivariant, so comparing with the stored pixels' keypoints rotated
    would measure the network, not our convention; the upright copy is the exact reference.)
    """
    images = tmp_path / "images"
    images.mkdir()
    with Image.open(SAMPLE_IMAGES / "0001.jpg") as img:
        img = img.convert("RGB").resize((240, 160), Image.Resampling.BOX)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    img.save(images / "rot.png", exif=exif)
    Image.fromarray(np.rot90(np.asarray(img), k=-1)).save(images / "upright.png")
    img.save(images / "stored.png")
    out = tmp_path / "f.h5"
    extract.main(images, out, small_preset(max_keypoints=200), RunOptions(device="cpu"))
    rot, upright = h5io.read_features(out, "rot.png"), h5io.read_features(out, "upright.png")
    stored = h5io.read_features(out, "stored.png")
    assert tuple(rot["image_size"]) == (160, 240) and tuple(stored["image_size"]) == (240, 160)
    np.testing.assert_array_equal(rot["keypoints"], upright["keypoints"])
    np.testing.assert_array_equal(rot["descriptors"], upright["descriptors"])
    assert rot["keypoints"][:, 1].max() > 160  # in the tall frame, impossible in the stored one


def test_resume_and_config_mismatch(small_scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    names = sorted(p.name for p in small_scene.glob("*.jpg"))
    extract.main(extract.ImageSet(small_scene, names[:1]), out, small_preset(), RunOptions(device="cpu"))
    with h5py.File(out) as h5:
        first = h5[names[0]]["keypoints"][()]
    summary = extract.main(extract.ImageSet(small_scene, names[:2]), out, small_preset(),
                           RunOptions(device="cpu"))
    assert summary.names == names[:2] and h5io.list_names(out) == names[:2]
    np.testing.assert_array_equal(h5io.read_features(out, names[0])["keypoints"], first)
    with pytest.raises(h5io.ConfigMismatchError):
        extract.main(small_scene, out, small_preset(max_keypoints=128), RunOptions(device="cpu"))


def test_sift_preset_is_not_ours(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="COLMAP"):
        extract.main(SAMPLE_IMAGES, tmp_path / "f.h5", "sift")


def test_disk_extractor(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLE_IMAGES / "0002.jpg", images / "a.jpg")
    out = tmp_path / "f.h5"
    extract.main(images, out, small_preset(features="disk", max_keypoints=128, resize_max=256),
                 RunOptions(device="cpu"), global_path=tmp_path / "g.h5")
    f = h5io.read_features(out, "a.jpg")
    assert f["descriptors"].shape == (128, 128) and tuple(f["image_size"]) == (1024, 683)
    np.testing.assert_allclose(np.linalg.norm(f["descriptors"], axis=0), 1, atol=1e-4)


def test_cli_extract(small_scene: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(iter(sorted(small_scene.glob("*.jpg")))), one / "x.jpg")
    out = tmp_path / "f.h5"
    assert cli_main(["extract", str(one), str(out), "--preset", "aliked+mnn", "--device", "cpu"]) == 0
    assert h5io.list_names(out) == ["x.jpg"]
    assert h5io.read_config(out)["features"]["max_keypoints"] == 2048
