"""Cameras: EXIF-oriented frame, the EXIF focal prior, camera modes, query cameras."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from omniglue_sfm.geometry.cameras import CameraOptions, ImageInfo, guess_camera, make_cameras

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _jpeg(path: Path, size: tuple[int, int], orientation: int | None = None, f35: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation:
        exif[274] = orientation
    if f35:
        exif[271], exif[272] = "Acme", "Phone 1"
        exif.get_ifd(0x8769)[41989] = f35  # FocalLengthIn35mmFilm
    Image.new("RGB", size, (90, 120, 150)).save(path, exif=exif)


def test_exif_rotated_image_gets_camera_in_oriented_frame(tmp_path):
    _jpeg(tmp_path / "portrait.jpg", (160, 120), orientation=6, f35=28)
    info = ImageInfo("portrait.jpg", 120, 160)  # what features.h5 says: EXIF-oriented
    cameras, assignment = make_cameras(tmp_path, [info])
    cam = cameras[assignment[0]]
    assert (cam.width, cam.height) == (120, 160)
    assert (cam.principal_point_x, cam.principal_point_y) == (60, 80)
    assert cam.has_prior_focal_length
    # 28 mm equivalent on a 36 mm wide frame: about 0.8 times the long side
    assert 0.6 * 160 < cam.focal_length < 1.0 * 160


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "data").exists(), reason="needs ../shared/data")
def test_iphone_orientation_6_photo(tmp_path):
    image_dir = SHARED / "data" / "scenes" / "monstree" / "images"
    cameras, _ = make_cameras(image_dir, [ImageInfo("IMG_1025.JPG", 1200, 1600)])
    assert (cameras[0].width, cameras[0].height) == (1200, 1600)
    assert cameras[0].has_prior_focal_length
    assert cameras[0].focal_length == pytest.approx(1294.2, abs=1.0)  # COLMAP's EXIF focal, unrotated


def test_camera_modes(tmp_path):
    for name in ("a/1.jpg", "a/2.jpg", "b/3.jpg"):
        _jpeg(tmp_path / name, (64, 48))
    _jpeg(tmp_path / "a/4.jpg", (64, 48), f35=35)
    _jpeg(tmp_path / "a/5.jpg", (64, 48), f35=35)
    infos = [ImageInfo(n, 64, 48) for n in ("a/1.jpg", "a/2.jpg", "b/3.jpg", "a/4.jpg", "a/5.jpg")]

    def count(mode: str) -> int:
        return len(make_cameras(tmp_path, infos, CameraOptions(mode))[0])

    assert count("single") == 1
    assert count("per_folder") == 2
    assert count("per_image") == 5
    assert count("auto") == 4  # no EXIF: own camera each; same EXIF camera and folder: shared
    with pytest.raises(ValueError, match="one size"):
        make_cameras(tmp_path, infos + [ImageInfo("b/3.jpg", 48, 64)], CameraOptions("single"))
    cams, _ = make_cameras(tmp_path, infos[:1], CameraOptions("auto", "PINHOLE", "500,501,32,24"))
    assert list(cams[0].params) == [500, 501, 32, 24] and cams[0].has_prior_focal_length
    with pytest.raises(ValueError, match="PINHOLE takes 4"):  # checked when the options are made
        make_cameras(tmp_path, infos[:1], CameraOptions("auto", "PINHOLE", "500,32"))


def test_guess_camera_without_exif(tmp_path):
    Image.new("RGB", (300, 200), "gray").save(tmp_path / "plain.jpg")
    cam, source = guess_camera(tmp_path / "plain.jpg", 300, 200)
    assert source == "guess"
    assert cam.params[0] == pytest.approx(1.2 * 300)
    assert (cam.params[1], cam.params[2]) == (150, 100)
