"""Reading photos: formats, EXIF orientation, corrupt files, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_IMAGES
from PIL import Image

from omniglue_sfm.images import (
    ImageReadError,
    list_images,
    read_image,
    resize_for_extraction,
    scale_keypoints,
)


def test_list_images_recursive_sorted(tmp_path: Path) -> None:
    for rel in ["b.JPG", "a/c.png", "a/d.TIFF", "e.webp", "f.txt", "g.jpeg", ".hidden/h.jpg", "z.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert list_images(tmp_path) == ["a/c.png", "a/d.TIFF", "b.JPG", "e.webp", "g.jpeg", "z.bmp"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_corrupt_and_fake_files(tmp_path: Path) -> None:
    data = (SAMPLE_IMAGES / "0000.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("truncated.jpg", "text.jpg", "missing.jpg"):
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert info.value.reason and name in str(info.value)


def test_modes_become_uint8_rgb(tmp_path: Path) -> None:
    gray = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.dstack([gray, gray // 2, 255 - gray, np.full_like(gray, 7)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    deep = (gray.astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray(np.dstack([gray] * 3)).convert("P").save(tmp_path / "palette.png")
    for name in ("gray.png", "rgba.png", "deep.png", "palette.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (30, 40, 3) and img.dtype == np.uint8, name
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png")[..., 1], gray)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[..., 0], gray)  # 16 -> 8 bit


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :20] = 255  # a white block top-left makes the rotation visible
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "rot.png", exif=exif)
    img = read_image(tmp_path / "rot.png")
    assert img.shape == (60, 40, 3)
    np.testing.assert_array_equal(img, np.rot90(arr, k=-1))  # top-left block is now top-right


def test_resize_and_map_back() -> None:
    img = np.zeros((300, 5000, 3), np.uint8)
    small, scale = resize_for_extraction(img, 1600)
    assert small.shape == (96, 1600, 3)
    np.testing.assert_allclose(scale, [5000 / 1600, 300 / 96])
    corners = np.array([[0, 0], [1599, 95]], np.float32)
    back = scale_keypoints(corners, scale)
    assert (back >= -0.5).all() and back[1, 0] <= 4999.5 and back[1, 1] <= 299.5
    # pixel centres map to pixel centres: the middle of the small image is the middle of the big one
    np.testing.assert_allclose(scale_keypoints(np.array([[799.5, 47.5]]), scale), [[2499.5, 149.5]])
    same, unit = resize_for_extraction(img[:100, :100], 1600)
    assert same.shape == (100, 100, 3) and (unit == 1).all()


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p.symlink_to(p.with_name("gone.jpg")), "broken symbolic link"),
    (lambda p: p.symlink_to(p), "symbolic link loop"),
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: None, "no such file"),
], ids=["broken-link", "link-loop", "empty", "missing"])
def test_unreadable_files_say_what_is_wrong(tmp_path: Path, make, reason) -> None:
    path = tmp_path / "photo.jpg"
    make(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.value.reason.startswith(reason), info.value.reason


def test_broken_links_are_listed_and_reported_by_extract(tmp_path: Path) -> None:
    from conftest import small_preset

    from omniglue_sfm import extract

    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.jpg").symlink_to(images / "gone.jpg")
    (images / "loop.jpg").symlink_to(images / "loop.jpg")
    (images / "empty.jpg").write_bytes(b"")
    summary = extract.main(images, tmp_path / "features.h5", small_preset(), device="cpu")
    assert summary.names == []
    assert summary.failed["broken.jpg"].startswith("broken symbolic link")
    assert summary.failed["loop.jpg"].startswith("symbolic link loop")
    assert summary.failed["empty.jpg"] == "empty file (0 bytes)"
