"""Hostile and careless use (issue #22): silent wrong results, tracebacks and late checks.

Every case drives the public command line (``cli.main`` returns the exit code) on small copies of
the bundled sample, so the tests hold whatever the package's internal layout.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from conftest import SAMPLE_IMAGES, resized_sample
from PIL import Image, ImageOps

from omniglue_sfm import cli

# small and fast: ALIKED + mutual nearest neighbour, 256 keypoints at 256 px, no orientation pass
FAST = ["--preset", "aliked+mnn", "--max-keypoints", "256", "--resize-max", "256", "--device", "cpu"]
FAST_OFF = [*FAST, "--rotation", "off"]


def run(*argv: object) -> int:
    return cli.main([str(a) for a in argv])


def h5_names(path: Path) -> list[str]:
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(o.parent.name.strip("/"))
                     if isinstance(o, h5py.Dataset) and n.endswith("/keypoints") else None)
    return sorted(names)


def keypoints(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name]["keypoints"][()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(images, out): 4 sample images at 320 px reconstructed with the fast settings."""
    images = resized_sample(tmp_path_factory.mktemp("built_images"), 4, 320)
    out = tmp_path_factory.mktemp("built") / "out"
    assert run("reconstruct", images, out, *FAST_OFF) == 0
    return images, out


# --------------------------------------------------------------------------------------------
# 1. a replaced photo with the same size and a restored mtime


def _same_size_replacement(path: Path, source: Path) -> None:
    """Write a different picture (``source`` mirrored) into ``path`` with ``path``'s byte size and
    modification time, as ``cp -p`` / ``touch -r`` / sync tools leave a replaced file."""
    st = path.stat()
    with Image.open(path) as img:
        size = img.size
    with Image.open(source) as img:
        mirrored = ImageOps.mirror(img.convert("RGB").resize(size, Image.Resampling.BOX))
    for quality in (95, 90, 80, 70, 60, 50, 40, 30):
        tmp = path.with_name("tmp.bin")
        mirrored.save(tmp, format="JPEG", quality=quality)
        data = tmp.read_bytes()
        tmp.unlink()
        if len(data) <= st.st_size:
            break
    path.write_bytes(data + b"\0" * (st.st_size - len(data)))  # JPEG readers ignore trailing bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _set_orientation_in_place(path: Path, old: int, new: int) -> None:
    """Edit the EXIF orientation tag's value in the file's bytes (same size), mtime restored."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    patterns = [(b"\x12\x01\x03\x00\x01\x00\x00\x00" + struct.pack("<H", old), struct.pack("<H", new)),
                (b"\x01\x12\x00\x03\x00\x00\x00\x01" + struct.pack(">H", old), struct.pack(">H", new))]
    for pattern, value in patterns:
        at = data.find(pattern)
        if at >= 0:
            data[at + 8:at + 10] = value
            break
    else:
        raise AssertionError("orientation tag not found")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_replaced_photo_with_same_size_and_mtime_is_re_extracted(tmp_path: Path) -> None:
    images = resized_sample(tmp_path / "images", 3, 256)
    with Image.open(images / "0002.jpg") as img:  # a portrait photo stored landscape, tag 6
        exif = Image.Exif()
        exif[0x0112] = 6
        img.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(images / "0002.jpg", quality=95,
                                                                     exif=exif)
    features = tmp_path / "features.h5"
    assert run("extract", images, features, *FAST_OFF) == 0
    before = {n: keypoints(features, n) for n in ("0001.jpg", "0002.jpg")}
    _same_size_replacement(images / "0001.jpg", SAMPLE_IMAGES / "0005.jpg")
    _set_orientation_in_place(images / "0002.jpg", 6, 8)  # turned the other way: 180 degrees apart
    assert run("extract", images, features, *FAST_OFF) == 0
    for name, old in before.items():
        new = keypoints(features, name)
        assert new.shape != old.shape or not np.allclose(new, old), f"{name}: stale features reused"


def test_sift_database_notices_a_replaced_photo_with_restored_mtime(tmp_path: Path) -> None:
    images = resized_sample(tmp_path / "images", 3, 320)
    out = tmp_path / "out"
    assert run("reconstruct", images, out, "--preset", "sift") == 0
    stamp = json.loads((out / "database.json").read_text())
    _same_size_replacement(images / "0001.jpg", SAMPLE_IMAGES / "0005.jpg")
    run("reconstruct", images, out, "--preset", "sift")
    assert json.loads((out / "database.json").read_text()) != stamp, "the old database was reused"


# --------------------------------------------------------------------------------------------
# 2. output folders inside the image folder


def test_output_folders_inside_the_image_folder_are_not_scanned(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    photos = resized_sample(tmp_path / "photos", 4, 256)
    out = photos / "out"
    assert run("reconstruct", photos, out, *FAST_OFF) == 0
    assert run("export", out, out / "export") == 0
    (photos / "other_export").mkdir()
    assert run("export", out, photos / "other_export", "--overwrite") == 0
    caplog.clear()
    assert run("reconstruct", photos, out, *FAST_OFF) == 0
    assert h5_names(out / "features.h5") == ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"] == 4
    assert "skipping" in caplog.text and "other_export" in caplog.text


# --------------------------------------------------------------------------------------------
# 3. mirrored photos


def test_mirrored_photos_are_not_localized_and_held_out_photos_are(tmp_path: Path) -> None:
    """A map of 6 sample photos; queries: two held-out photos, their reflections, and the reflection
    of a map photo. The reflections of this near-symmetric facade found PnP poses with 38-66 % inliers
    (off by half the scene) before the reflection check."""
    photos = tmp_path / "photos"
    photos.mkdir()
    queries = tmp_path / "queries"
    queries.mkdir()
    for src in sorted(SAMPLE_IMAGES.glob("*.jpg")):
        with Image.open(src) as img:
            img = img.convert("RGB").resize((480, 320), Image.Resampling.BOX)
        if src.stem in ("0003", "0005"):
            img.save(queries / src.name, quality=95)
            ImageOps.mirror(img).save(queries / f"{src.stem}_mirror.jpg", quality=95)
        else:
            img.save(photos / src.name, quality=95)
            if src.stem == "0006":
                ImageOps.mirror(img).save(queries / f"{src.stem}_mirror.jpg", quality=95)
    out = tmp_path / "map"
    assert run("reconstruct", photos, out, "--preset", "aliked+mnn", "--max-keypoints", "512",
               "--resize-max", "480", "--rotation", "off", "--device", "cpu") == 0
    assert run("localize", out, queries, tmp_path / "loc", "--device", "cpu") == 0
    report = json.loads((tmp_path / "loc" / "localize.json").read_text())["queries"]
    for name in ("0003.jpg", "0005.jpg"):
        assert report[name]["localized"], (name, report[name]["reason"])
    for name in ("0003_mirror.jpg", "0005_mirror.jpg", "0006_mirror.jpg"):
        assert not report[name]["localized"], name
    for name in ("0005_mirror.jpg", "0006_mirror.jpg"):  # their poses passed every other rule
        assert "mirror" in report[name]["reason"], (name, report[name]["reason"])


# --------------------------------------------------------------------------------------------
# 4. triangulate with two poses swapped


def test_triangulate_warns_for_posed_images_without_points(built, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A reference with a wrong pose: 0001's camera turned round on the spot (it looks away from
    the scene), so none of its matches can be triangulated."""
    images, out = built
    ref = pycolmap.Reconstruction(out / "sparse")
    image = next(ref.image(i) for i in ref.reg_image_ids() if ref.image(i).name == "0001.jpg")
    frame = ref.frame(image.frame_id)
    pose = frame.rig_from_world.matrix()
    turned = np.diag([-1.0, 1.0, -1.0]) @ pose[:, :3]  # 180 degrees about the camera's own y axis
    centre = -pose[:, :3].T @ pose[:, 3]
    frame.rig_from_world = pycolmap.Rigid3d(np.column_stack([turned, -turned @ centre]))
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref.write(ref_dir)
    assert run("triangulate", images, tmp_path / "tri", "--reference", ref_dir, *FAST) == 0
    captured = capsys.readouterr()
    stats = json.loads((tmp_path / "tri" / "stats.json").read_text())
    tri = pycolmap.Reconstruction(tmp_path / "tri" / "sparse")
    counts = {tri.image(i).name: tri.image(i).num_points3D for i in tri.reg_image_ids()}
    assert counts["0001.jpg"] < 3 and min(n for k, n in counts.items() if k != "0001.jpg") > 50, counts
    assert stats["images_with_few_points"] == {"0001.jpg": counts["0001.jpg"]}
    assert "0001.jpg" in captured.out and "no or almost no 3D points" in captured.out


# --------------------------------------------------------------------------------------------
# 5. merge with a shard missing


def test_merge_refuses_a_missing_shard_and_sfm_a_shard_file(built, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    images, out = built
    features, pairs = out / "features.h5", out / "pairs.txt"
    matches = tmp_path / "matches.h5"
    for i in range(3):
        assert run("match", features, pairs, matches, "--preset", "aliked+mnn", "--device", "cpu",
                   "--shard", f"{i}/3") == 0
    shards = [tmp_path / f"matches.shard-{i}-of-3.h5" for i in range(3)]
    capsys.readouterr()
    assert run("merge", matches, shards[0], shards[2]) == 1
    err = capsys.readouterr().err
    assert "1" in err and "of 3" in err and "missing" in err
    assert not matches.exists()
    assert run("sfm", images, features, shards[0], tmp_path / "sfm") == 1
    assert "shard" in capsys.readouterr().err
    assert not (tmp_path / "sfm" / "sparse").exists()
    assert run("merge", matches, *shards) == 0
    assert run("sfm", images, features, matches, tmp_path / "sfm") == 0


# --------------------------------------------------------------------------------------------
# 6. one path for two files


def test_extract_refuses_one_path_for_features_and_global(small_scene: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "f.h5"
    assert run("extract", small_scene, f, "--global", tmp_path / "." / "f.h5", *FAST_OFF) == 1
    assert "same file" in capsys.readouterr().err
    assert not f.exists()


# --------------------------------------------------------------------------------------------
# 7. a damaged database.db


def test_a_damaged_database_is_rebuilt_and_a_folder_in_its_place_refused(
        built, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, out = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert run("reconstruct", images, copy, *FAST_OFF) == 0  # its own model (stats record the path)
    (copy / "database.db").write_bytes(b"not a database at all\n" * 10)
    assert run("reconstruct", images, copy, *FAST_OFF) == 0
    with sqlite3.connect(copy / "database.db") as db:
        assert db.execute("select count(*) from images").fetchone()[0] == 4
    (copy / "database.db").unlink()
    (copy / "database.db").mkdir()
    capsys.readouterr()
    for argv in (["sfm", images, copy / "features.h5", copy / "matches.h5", copy],
                 ["reconstruct", images, copy, *FAST_OFF]):
        assert run(*argv) == 1
        err = capsys.readouterr().err
        assert "database.db is a folder" in err and "==> extract" not in err


# --------------------------------------------------------------------------------------------
# 8. a header that lies about the size


def test_a_header_claiming_far_more_pixels_than_its_data_is_truncated(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    images = resized_sample(tmp_path / "images", 2, 256)
    data = bytearray((images / "0000.jpg").read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    (images / "huge.jpg").write_bytes(bytes(data))
    assert run("extract", images, tmp_path / "f.h5", *FAST_OFF) == 0
    out = capsys.readouterr().out
    assert "failed: huge.jpg" in out and "truncated" in out
    assert h5_names(tmp_path / "f.h5") == ["0000.jpg", "0001.jpg"]


# --------------------------------------------------------------------------------------------
# 9. export --overwrite into someone else's folder


def test_export_overwrite_never_deletes_unrelated_files(built, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    _, out = built
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "thesis.tex").write_text("mine")
    assert run("export", out, dest, "--overwrite") == 1
    assert "not written by" in capsys.readouterr().err
    assert (dest / "thesis.tex").read_text() == "mine"
    ours = tmp_path / "ours"
    assert run("export", out, ours) == 0
    assert run("export", out, ours, "--overwrite", "--format", "nerfstudio") == 0
    assert (ours / "transforms.json").is_file()


# --------------------------------------------------------------------------------------------
# 10. degenerate image sizes


def test_one_pixel_images_are_skipped_and_listed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = resized_sample(tmp_path / "images", 3, 256)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(images / "tiny.jpg")
    Image.new("RGB", (480, 1), (9, 9, 9)).save(images / "line.jpg")
    assert run("reconstruct", images, tmp_path / "out", *FAST) == 0  # orientation pass on
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert sorted(stats["failed_images"]) == ["line.jpg", "tiny.jpg"]
    assert "too small" in stats["failed_images"]["tiny.jpg"]


# --------------------------------------------------------------------------------------------
# 11. disk full


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _cli_subprocess(*argv: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "omniglue_sfm", *map(str, argv)], capture_output=True,
                          text=True, env=env, check=False, timeout=300)


def _assert_one_disk_full_error(done: subprocess.CompletedProcess, small_disk: Path) -> None:
    """Exit 1, one ``error:`` line naming the full disk and the space needed, no traceback, and no
    half-written ``*.tmp`` left on it."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert "no space left" in errors[0].lower() and str(small_disk) in errors[0] and "MB" in errors[0]
    assert not [p.name for p in small_disk.rglob("*.tmp")]


def test_disk_full_is_one_line_and_leaves_nothing_half_written(small_disk: Path, tmp_path: Path) -> None:
    images = resized_sample(tmp_path / "images", 6, 320)
    done = _cli_subprocess("extract", images, small_disk / "features.h5", "--preset", "aliked+mnn",
                           "--max-keypoints", "1024", "--resize-max", "320", "--rotation", "off",
                           "--device", "cpu", "--flush-every", "2")
    _assert_one_disk_full_error(done, small_disk)


def test_disk_full_during_sfm_is_one_line(built, small_disk: Path) -> None:
    images, out = built
    free = os.statvfs(small_disk)
    (small_disk / "fill").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 16 * 1024))
    done = _cli_subprocess("sfm", images, out / "features.h5", out / "matches.h5", small_disk / "sfm")
    _assert_one_disk_full_error(done, small_disk)


# --------------------------------------------------------------------------------------------
# 12. checks before any work


def _no_work(out: Path) -> None:
    assert not (out / "features.h5").exists() and not (out / "features.h5.parts").exists()


@pytest.mark.parametrize("extra, words", [
    (["--camera-params", "nan,inf,1,2"], "camera-params"),
    (["--camera-model", "SIMPLE_PINHOLE", "--camera-params=-100,80,60"], "focal"),
    (["--camera-model", "SIMPLE_PINHOLE", "--camera-params", "100,80"], "3"),
    (["--pairs", "retrieval", "--num-matched", "0"], "num-matched"),
    (["--pairs", "sequential", "--window", "-3"], "window"),
    (["--resize-max", "1"], "resize_max must be a whole number >= 64"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:9"], "127.0.0.1:9"),
])
def test_reconstruct_options_are_checked_before_any_work(small_scene: Path, tmp_path: Path, extra, words,
                                                         capsys: pytest.CaptureFixture) -> None:
    t0 = time.perf_counter()
    assert run("reconstruct", small_scene, tmp_path / "out", *FAST_OFF, *extra) == 1
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    _no_work(tmp_path / "out")


def test_masks_of_the_wrong_size_are_refused_before_any_work(small_scene: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in small_scene.glob("*.jpg"):
        with Image.open(path) as img:
            w, h = img.size
        size = (w, h) if path.name != "0001.jpg" else (w // 2, h)
        Image.new("L", size, 255).save(masks / f"{path.name}.png")
    assert run("reconstruct", small_scene, tmp_path / "out", *FAST_OFF, "--masks", masks) == 1
    assert "0001.jpg" in capsys.readouterr().err
    _no_work(tmp_path / "out")


def test_triangulate_reference_of_another_image_size_is_refused_before_any_work(
        built, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, out = built
    other = resized_sample(tmp_path / "other", 4, 256)
    assert run("triangulate", other, tmp_path / "tri", "--reference", out / "sparse", *FAST) == 1
    assert "size" in capsys.readouterr().err
    _no_work(tmp_path / "tri")


@pytest.mark.parametrize("extra, words", [
    (["--min-inlier-ratio", "2"], "min-inlier-ratio"),
    (["--num-retrieved", "0"], "num-retrieved"),
    (["--ransac-thresh", "-5"], "ransac-thresh"),
    (["--min-inliers", "0"], "min-inliers"),
])
def test_localize_options_are_checked_before_any_work(built, tmp_path: Path, extra, words,
                                                      capsys: pytest.CaptureFixture) -> None:
    images, out = built
    assert run("localize", out, images, tmp_path / "loc", "--device", "cpu", *extra) == 1
    err = capsys.readouterr().err
    assert words in err
    assert not (tmp_path / "loc" / "query_features.h5").exists()


def test_compare_with_no_preset_names_is_a_usage_error(small_scene: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert run("compare", small_scene, tmp_path / "cmp", "--presets", ",") == 1
    assert "--presets" in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "compare.md").exists()


def test_match_on_a_file_that_is_not_hdf5_says_so(built, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    _, out = built
    bogus = tmp_path / "features.h5"
    bogus.write_text("these are not features\n")
    assert run("match", bogus, out / "pairs.txt", tmp_path / "m.h5", "--preset", "aliked+mnn") == 1
    err = capsys.readouterr().err
    assert "not an HDF5 file" in err and "--overwrite" not in err

