"""Reading photos: formats, EXIF orientation, corrupt files, resizing."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_IMAGES
from PIL import Image

from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats.images import (
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
    summary = extract.main(images, tmp_path / "features.h5", small_preset(), RunOptions(device="cpu"))
    assert summary.names == []
    assert summary.failed["broken.jpg"].startswith("broken symbolic link")
    assert summary.failed["loop.jpg"].startswith("symbolic link loop")
    assert summary.failed["empty.jpg"] == "empty file (0 bytes)"


# --------------------------------------------------------------------------------------------
# large images (issue #10, case 12)


def test_pillow_bomb_guard_is_lifted_for_our_reads_and_our_limit_applies(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from omniglue_sfm.formats import images

    Image.fromarray(np.full((100, 120, 3), 90, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if a.png were a 200 MP photo
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        assert read_image(tmp_path / "a.png").shape == (100, 120, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored for everyone else
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    with pytest.raises(ImageReadError, match="12000 pixels|above the limit"):
        read_image(tmp_path / "a.png")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_large_image_is_decoded_reduced_in_the_same_frame(tmp_path: Path, monkeypatch, suffix) -> None:
    from omniglue_sfm.formats import images

    rng = np.random.default_rng(0)
    arr = np.repeat(np.repeat(rng.integers(0, 255, (20, 25, 3), dtype=np.uint8), 32, 0), 32, 1)  # 800x640
    Image.fromarray(arr).save(tmp_path / f"a{suffix}", quality=95)
    full, size = images.read_image_sized(tmp_path / f"a{suffix}", 200)
    assert full.shape == (640, 800, 3) and size == (800, 640)  # small images: decoded in full
    monkeypatch.setattr(images, "LARGE_PIXELS", 10_000)  # now it counts as large
    reduced, size = images.read_image_sized(tmp_path / f"a{suffix}", 200)
    assert size == (800, 640)
    assert 200 <= max(reduced.shape[:2]) < 800  # reduced, never below what was asked
    a, scale_a = resize_for_extraction(full, 200)
    b, scale_b = resize_for_extraction(reduced, 200, size)
    assert a.shape == b.shape == (160, 200, 3)
    np.testing.assert_allclose(scale_a, scale_b)
    a, b = a.astype(int), b.astype(int)
    assert np.abs(a - b).mean() < 4  # the same picture (JPEG's DCT scaling differs a little at edges)
    shifted = [np.abs(np.roll(a, (dy, dx), (0, 1)) - b)[2:-2, 2:-2].mean() for dy, dx in [(0, 1), (1, 0)]]
    assert np.abs(a - b)[2:-2, 2:-2].mean() < min(shifted)  # and not moved by a pixel


def test_large_exif_rotated_image_reports_its_upright_size(tmp_path: Path, monkeypatch) -> None:
    from omniglue_sfm.formats import images

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    monkeypatch.setattr(images, "LARGE_PIXELS", 10_000)
    pixels, size = images.read_image_sized(tmp_path / "r.jpg", 100)
    assert size == (300, 400) and pixels.shape[0] > pixels.shape[1]


def test_a_100_megapixel_jpeg_is_read_for_extraction_in_bounded_memory(tmp_path: Path) -> None:
    """In a fresh process, whose peak RSS (VmHWM: ru_maxrss would keep the parent's across exec)
    is this read's; a full decode alone needs 108 MP x 3 bytes = 324 MB."""
    Image.linear_gradient("L").resize((12000, 9000)).convert("RGB").save(tmp_path / "big.jpg", quality=70)
    code = ("import sys; from omniglue_sfm.formats.images import read_image_sized; "
            "arr, size = read_image_sized(sys.argv[1], 1600); "
            "peak = next(int(line.split()[1]) for line in open('/proc/self/status') "
            "if line.startswith('VmHWM')); "
            "print(arr.shape[0], arr.shape[1], size[0], size[1], peak // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.jpg")], check=True,
                         capture_output=True, text=True)
    h, w, full_w, full_h, peak_mb = (int(v) for v in out.stdout.split())
    assert (full_w, full_h) == (12000, 9000) and 1600 <= max(h, w) < 12000
    assert peak_mb < 250, f"peak RSS {peak_mb} MB"
