"""``export``: undistorted images + PINHOLE cameras (gsplat layout) and nerfstudio's transforms.json.

The sample (8 images at 480 px, one of them stored rotated with an EXIF orientation tag) is
reconstructed once; both formats are exported and checked by projecting the model's 3D points
through the exported cameras onto the keypoints, undistorted, and by comparing pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from conftest import resized_sample, small_preset
from PIL import Image

from omniglue_sfm import cli, export, reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.formats import h5io, outputs
from omniglue_sfm.formats.images import read_image
from omniglue_sfm.runtime import locks

ROTATED = "0003.jpg"  # stored turned by 90 degrees, EXIF orientation 6 turns it back


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = resized_sample(tmp_path_factory.mktemp("export_images"), 8, 480)
    with Image.open(images / ROTATED) as img:
        upright = img.copy()
    exif = Image.Exif()
    exif[274] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(images / ROTATED, quality=95, exif=exif)
    out = tmp_path_factory.mktemp("export_run") / "out"
    reconstruct.main(images, out, small_preset("lightglue", max_keypoints=512, resize_max=480),
                     sfm_options=SfMOptions(progress=False))
    return out


def _observations(out: Path, exported: pycolmap.Reconstruction) -> list[dict]:
    """Every observation of the original model: its image, keypoint (features.h5, original pixels,
    top-left pixel centre at 0), the keypoint undistorted into the exported camera and the 3D point."""
    original = pycolmap.Reconstruction(out / "sparse")
    by_name = {img.name: img for img in exported.images.values()}
    obs = []
    for image in original.images.values():
        kps = h5io.read_keypoints(out / "features.h5", image.name).astype(np.float64)
        cam, new = original.cameras[image.camera_id], by_name[image.name]
        new_cam = exported.cameras[new.camera_id]
        idx = [i for i, p in enumerate(image.points2D) if p.has_point3D()]
        xyz = np.array([original.points3D[image.points2D[i].point3D_id].xyz for i in idx])
        rays = cam.cam_from_img(kps[idx] + 0.5)  # COLMAP pixels: top-left centre at (0.5, 0.5)
        undist = new_cam.img_from_cam(np.hstack([rays, np.ones((len(idx), 1))]))
        obs.append({"name": image.name, "kp": kps[idx], "undist": undist, "xyz": xyz})
    return obs


def _colmap_errors(exported: pycolmap.Reconstruction, obs: list[dict]) -> np.ndarray:
    by_name = {img.name: img for img in exported.images.values()}
    errors = []
    for o in obs:
        image = by_name[o["name"]]
        cam = exported.cameras[image.camera_id]
        in_cam = np.asarray([image.cam_from_world() * p for p in o["xyz"]])
        errors.append(np.linalg.norm(cam.img_from_cam(in_cam) - o["undist"], axis=1))
    return np.concatenate(errors)


def _nerfstudio_errors(transforms: dict, obs: list[dict]) -> np.ndarray:
    """Project through transforms.json alone: its world, OpenGL camera axes and fl_x/fl_y/cx/cy."""
    frames = {f["file_path"]: f for f in transforms["frames"]}
    applied = np.asarray(transforms["applied_transform"])
    errors = []
    for o in obs:
        frame = frames[f"images/{o['name']}"]
        k = {key: frame.get(key, transforms.get(key)) for key in ("fl_x", "fl_y", "cx", "cy")}
        world = o["xyz"] @ applied[:, :3].T + applied[:, 3]
        world_to_gl = np.linalg.inv(np.asarray(frame["transform_matrix"]))
        gl = world @ world_to_gl[:3, :3].T + world_to_gl[:3, 3]
        x, y, z = gl[:, 0], -gl[:, 1], -gl[:, 2]  # OpenGL -> OpenCV axes
        assert (z > 0).all()
        uv = np.stack([k["fl_x"] * x / z + k["cx"], k["fl_y"] * y / z + k["cy"]], axis=1)
        errors.append(np.linalg.norm(uv - o["undist"], axis=1))
    return np.concatenate(errors)


def _patch_agreement(out: Path, dest: Path, obs: list[dict], half: int = 6) -> dict[str, float]:
    """Per image, the mean normalised cross-correlation of patches around each keypoint in the
    EXIF-oriented original and around its undistorted position in the exported image."""
    image_dir = Path(outputs.read_stats(out)["image_dir"])
    scores = {}
    for o in obs:
        a = read_image(image_dir / o["name"]).mean(axis=2)
        with Image.open(dest / "images" / o["name"]) as img:
            assert img.getexif().get(274, 1) == 1  # no orientation left for a viewer to apply
            b = np.asarray(img.convert("L"), dtype=np.float64)
        nccs = []
        for (x0, y0), (x1, y1) in zip(np.rint(o["kp"]).astype(int), np.rint(o["undist"] - 0.5).astype(int),
                                      strict=True):
            p = a[y0 - half:y0 + half + 1, x0 - half:x0 + half + 1]
            q = b[y1 - half:y1 + half + 1, x1 - half:x1 + half + 1]
            if p.shape != (2 * half + 1,) * 2 or q.shape != p.shape or p.std() < 5 or q.std() < 5:
                continue
            nccs.append(float(((p - p.mean()) * (q - q.mean())).mean() / (p.std() * q.std())))
        scores[o["name"]] = float(np.mean(nccs))
    return scores


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_reprojects_onto_undistorted_keypoints(sample_run: Path, tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / fmt
    assert cli.main(["export", str(sample_run), str(dest), "--format", fmt]) == 0
    model = pycolmap.Reconstruction(dest / "sparse" / "0")
    original = pycolmap.Reconstruction(sample_run / "sparse")
    assert {c.model.name for c in model.cameras.values()} == {"PINHOLE"}
    assert model.num_reg_images() == original.num_reg_images() == 8
    assert model.num_points3D() == original.num_points3D()
    names = sorted(img.name for img in model.images.values())
    assert sorted(p.name for p in (dest / "images").iterdir()) == names
    for image in model.images.values():  # every exported picture has its camera's size, upright
        cam = model.cameras[image.camera_id]
        with Image.open(dest / "images" / image.name) as img:
            assert img.size == (cam.width, cam.height)
    obs = _observations(sample_run, model)
    errors = _colmap_errors(model, obs)
    assert errors.mean() < 1.0 and np.median(errors) < 1.0, errors.mean()
    # undistortion moves nothing: the exported model explains the keypoints as well as the original
    assert abs(errors.mean() - original.compute_mean_reprojection_error()) < 0.25
    scores = _patch_agreement(sample_run, dest, obs)
    assert min(scores.values()) > 0.6, scores  # the rotated image too: pixels agree with the camera
    if fmt == "nerfstudio":
        transforms = json.loads((dest / "transforms.json").read_text())
        ns_errors = _nerfstudio_errors(transforms, obs)
        np.testing.assert_allclose(ns_errors, errors, atol=1e-3)
        assert transforms["camera_model"] == "PINHOLE"
        assert all("mask_path" not in f for f in transforms["frames"])
        assert (dest / transforms["ply_file_path"]).is_file()
    else:
        assert not (dest / "transforms.json").exists()


def test_export_refuses_a_non_empty_destination_and_missing_images(sample_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert cli.main(["export", str(sample_run), str(dest)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (dest / "keep.txt").read_text() == "mine"  # nothing lost
    assert cli.main(["export", str(sample_run), str(sample_run.parent), "--overwrite"]) == 1
    assert "holds the input" in capsys.readouterr().err
    assert (sample_run / "sparse" / "images.bin").is_file()
    model_only = tmp_path / "model"
    pycolmap.Reconstruction(sample_run / "sparse").write(model_only.mkdir() or model_only)
    assert cli.main(["export", str(model_only), str(tmp_path / "x")]) == 1
    assert "--images" in capsys.readouterr().err
    other_size = resized_sample(tmp_path, 8, 256)  # not the folder the model was made from
    assert cli.main(["export", str(model_only), str(tmp_path / "x"), "--images", str(other_size)]) == 1
    assert "but its camera is" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "y")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_transforms_json_axes_follow_nerfstudio() -> None:
    """nerfstudio's camera-to-world: centre, viewing direction and up vector of a COLMAP pose,
    expressed in nerfstudio's world (``applied_transform``) with OpenGL camera axes."""
    image = pycolmap.Image(name="a.jpg", camera_id=1, image_id=1)
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([1.0, 2.0, 3.0]))
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=100, height=80,
                                                    params=[50, 50, 50, 40], camera_id=1))
    rec.add_image_with_trivial_frame(image, pose)
    c2w = export.camera_to_world_gl(rec.images[1])
    centre_colmap = -np.array([1.0, 2.0, 3.0])
    applied = np.asarray(export.APPLIED_TRANSFORM)
    np.testing.assert_allclose(c2w[:3, 3], applied[:, :3] @ centre_colmap)
    # the OpenGL viewing direction (-z) is the COLMAP optical axis (+z), mapped into nerfstudio's world
    np.testing.assert_allclose(-c2w[:3, 2], applied[:, :3] @ np.array([0, 0, 1.0]))
    # OpenGL up (+y) is COLMAP's -y (image rows grow downwards)
    np.testing.assert_allclose(c2w[:3, 1], applied[:, :3] @ np.array([0, -1.0, 0]))
    data = export.transforms_json(rec, with_masks=True)
    assert data["fl_x"] == 50 and data["w"] == 100 and data["h"] == 80
    assert data["frames"][0]["mask_path"] == "masks/a.jpg.png"


def test_a_second_export_into_the_same_destination_stops_at_once(sample_run: Path, tmp_path: Path) -> None:
    """One run per output (issue #10): the lock sits beside DEST, since DEST is replaced whole."""
    import fcntl


    dest = tmp_path / "dest"
    with open(tmp_path / ".dest.export.tmp.lock", "a") as held:  # as another export would hold it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(locks.OutputLockedError, match="in use by another omniglue-sfm run"):
            export.main(sample_run, dest, export.ExportOptions(format="gsplat"))
    assert not dest.exists() and not (tmp_path / "dest.export.tmp").exists()
