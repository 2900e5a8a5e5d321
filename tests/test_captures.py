"""Field captures end to end (``reconstruct`` on GPS-tagged photos, a video, 360-degree panoramas),
at small sizes, and the bad inputs of each: one-line errors that lose nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from captures import ORIGIN, PANO_POSES, gps_tagged_sample, room_panoramas, walkaround_video
from conftest import small_preset

from omniglue_sfm import cli, export, localize, reconstruct
from omniglue_sfm.capture import CaptureOptions
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.evaluation.reconstruction import evaluate, umeyama
from omniglue_sfm.formats import gps
from omniglue_sfm.frames import FrameOptions
from omniglue_sfm.geometry import geo
from omniglue_sfm.geometry.panorama import PanoramaOptions, pano_of_view
from omniglue_sfm.pairs import PairsOptions

# small and fast on 2 CPU cores: ALIKED at 384 px, mutual nearest neighbours
PRESET = small_preset("mnn", max_keypoints=1024, resize_max=384)
QUIET = SfMOptions(progress=False)


@pytest.fixture(scope="module")
def gps_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gps_run")
    scene = gps_tagged_sample(root / "images", long_side=384, sigma_h=1.0, sigma_v=2.0)
    out = root / "out"
    result = reconstruct.main(scene.images, out, PRESET, pair_options=PairsOptions(num_matched=4),
                              sfm_options=QUIET)
    return scene, out, result


def test_gps_photos_reconstruct_georegistered_in_metres(gps_run):
    scene, out, result = gps_run
    stats = json.loads((out / "stats.json").read_text())
    assert stats["registered"] == 8 and stats["pairs_mode"] == "spatial"
    pairs = (out / "pairs.txt").read_text().splitlines()
    assert len(pairs) < 28  # fewer than exhaustive
    assert stats["gps"]["used"] and stats["gps"]["images_with_gps"] == 8
    assert stats["pose_priors"] == {"images": 8, "used_by_mapper": True}
    # georef.json: the local ENU frame, and sparse/ is in it
    georef = geo.read_georef(out)
    assert georef is not None and stats["georef"]["images"] == 8
    centres = geo.camera_centres(result.reconstruction)
    truth = {n: georef.frame.to_enu(ORIGIN.to_lla(c))[0] for n, c in scene.truth_enu.items()}
    errors = np.array([np.linalg.norm(centres[n] - truth[n]) for n in truth])
    rms = float(np.sqrt(np.mean(errors ** 2)))
    print(f"georegistered centres vs truth: rms {rms:.3f} m, max {errors.max():.3f} m; "
          f"injected GPS noise rms {scene.noise_rms:.3f} m; residual {stats['georef']['residual_m']}")
    assert rms < scene.noise_rms
    # the ECEF transform puts the model on the globe
    ecef = georef.frame.enu_to_ecef() @ np.append(centres["0000.jpg"], 1.0)
    assert 6.3e6 < np.linalg.norm(ecef[:3]) < 6.4e6


def test_evaluate_reports_the_gps_residual(gps_run):
    from captures import SAMPLE

    _, out, _ = gps_run
    metrics = evaluate(out / "sparse", SAMPLE / "gt")
    assert metrics["registered"] == 8 and metrics["auc5"] > 0.3
    assert metrics["georef_residual_m"]["max"] < 6.0


def test_localized_query_comes_back_in_the_map_frame(gps_run, tmp_path):
    scene, out, result = gps_run
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(scene.images / "0004.jpg", queries / "q.jpg")
    report = localize.main(out, queries, tmp_path / "loc")
    q = report["queries"]["q.jpg"]
    assert q["localized"], q["reason"]
    map_centre = geo.camera_centres(result.reconstruction)["0004.jpg"]
    assert np.linalg.norm(np.array(q["position"]) - map_centre) < 0.2  # metres
    lat, lon, alt = q["lat_lon_alt"]
    back = geo.read_georef(out).frame.to_enu(np.array([lat, lon, alt]))[0]
    np.testing.assert_allclose(back, q["position"], atol=1e-3)
    assert report["frame"]["origin"] == geo.read_georef(out).frame.todict()


def test_changed_gps_tag_redoes_what_depends_on_it(gps_run, tmp_path):
    scene, out, _ = gps_run
    # a copy of the finished run; one photo re-tagged 30 m away
    images, copy = tmp_path / "images", tmp_path / "out"
    shutil.copytree(scene.images, images)
    shutil.copytree(out, copy)
    fix = gps.read_gps(images / "0007.jpg")
    moved = gps.GpsFix(fix.lat + 0.0003, fix.lon, fix.alt, 2.0)  # 33 m north
    gps.write_gps(images / "0007.jpg", images / "0007.jpg", moved)
    again = reconstruct.main(images, copy, PRESET, pair_options=PairsOptions(num_matched=4),
                             sfm_options=QUIET)
    assert not again.skipped  # the priors changed: mapping ran again
    residuals = geo.read_georef(copy).alignment["per_image_m"]
    assert residuals["0007.jpg"] > 20  # the moved tag is the outlier now
    # and with the same tags, everything is reused
    assert reconstruct.main(images, copy, PRESET, pair_options=PairsOptions(num_matched=4),
                            sfm_options=QUIET).skipped


def test_mapping_without_priors_is_still_georegistered(gps_run, tmp_path):
    scene, out, _ = gps_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    result = reconstruct.main(scene.images, copy, PRESET, pair_options=PairsOptions(num_matched=4),
                              sfm_options=SfMOptions(progress=False, prior_position=False))
    assert not result.skipped and result.stats["pose_priors"]["used_by_mapper"] is False
    assert result.stats["registered"] == 8
    assert geo.read_georef(copy).alignment["residual_m"]["max"] < 6.0


def test_gps_photos_that_cannot_be_aligned_say_so_in_stats_and_summary(gps_run, tmp_path, monkeypatch):
    """GPS photos whose model cannot be aligned to their tags (geo.align_to_positions finds no
    alignment: tags on a line, too few registered): the run succeeds, but stats.json and the
    summary say the model is not in metres (a log line alone was easy to miss)."""
    from omniglue_sfm import capture
    from omniglue_sfm.colmap.summary import summary_rows

    scene, out, _ = gps_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    monkeypatch.setattr(capture.geo, "align_to_positions", lambda *args, **kwargs: None)
    result = reconstruct.main(scene.images, copy, PRESET, pair_options=PairsOptions(num_matched=4),
                              sfm_options=QUIET)
    assert "not georegistered" in result.stats["georef"]["error"]
    assert not (copy / geo.GEOREF_FILE).exists()
    assert json.loads((copy / "stats.json").read_text())["georef"] == result.stats["georef"]
    assert ("GPS", result.stats["georef"]["error"]) in summary_rows(result.stats)


def test_gps_off_ignores_tags(gps_run, tmp_path):
    scene, _, _ = gps_run
    from omniglue_sfm import capture

    cap = capture.prepare(scene.images, tmp_path, CaptureOptions(gps="off"))
    assert not cap.positions and cap.default_pairs(PairsOptions(), "exhaustive").mode == "exhaustive"


# --------------------------------------------------------------------------------------------
# video


def test_video_reconstructs_with_every_kept_frame(tmp_path):
    video, _ = walkaround_video(tmp_path / "walk.mp4", long_side=384)
    out = tmp_path / "out"
    result = reconstruct.main(video, out, PRESET, sfm_options=QUIET,
                              capture=CaptureOptions(frames=FrameOptions(fps=2)))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kind"] == "video" and stats["frames"]["kept"] == 8
    assert stats["frames"]["dropped"] == {"blurred": 1, "duplicates": 1}
    assert stats["registered"] == stats["total"] == 8  # every kept frame
    assert stats["pairs_mode"] == "sequential" and stats["num_cameras"] == 1
    assert stats["image_dir"] == str((out / "frames").resolve())
    assert json.loads((out / "frames" / "frames.json").read_text())["frames"][0]["time"] >= 0
    assert result.reconstruction.num_reg_images() == 8
    # a re-run reuses the frames and the model; another frame rule invalidates what used them
    assert reconstruct.main(video, out, PRESET, sfm_options=QUIET,
                            capture=CaptureOptions(frames=FrameOptions(fps=2))).skipped


# --------------------------------------------------------------------------------------------
# 360-degree panoramas

PANO_OPTIONS = PanoramaOptions(views=4, fov=100)


def test_panoramas_map_as_rigs_match_the_truth_and_export(tmp_path):
    scene = room_panoramas(tmp_path / "panos", width=768, poses=PANO_POSES[:4])
    out = tmp_path / "out"
    result = reconstruct.main(scene.images, out, small_preset("mnn", max_keypoints=1024, resize_max=256),
                              sfm_options=QUIET, capture=CaptureOptions(panorama=PANO_OPTIONS))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kind"] == "panoramas" and stats["panoramas"]["count"] == 4
    assert stats["registered"] == stats["total"] == 16
    pairs = [line.split() for line in (out / "pairs.txt").read_text().splitlines()]
    assert all(pano_of_view(a)[1] != pano_of_view(b)[1] for a, b in pairs)  # never within a panorama
    rec = result.reconstruction
    assert rec.num_rigs() == 1 and rec.num_reg_frames() == 4
    # each frame is one panorama: its pose against the truth, after a similarity
    est = {}
    for frame in rec.frames.values():
        names = {pano_of_view(rec.images[d.id].name)[1] for d in frame.image_ids}
        assert len(names) == 1
        rig_from_world = frame.rig_from_world
        rotation = np.asarray(rig_from_world.rotation.matrix())
        est[names.pop()] = (-rotation.T @ np.asarray(rig_from_world.translation), rotation)
    names = sorted(est)
    s, R, t = umeyama(np.array([est[n][0] for n in names]), np.array([scene.centres[n] for n in names]))
    for n in names:
        centre_error = np.linalg.norm(s * R @ est[n][0] + t - scene.centres[n])
        rotation = est[n][1] @ R.T  # rig_from_world in the truth's frame
        cos = (np.trace(rotation @ scene.rig_from_world[n].T) - 1) / 2
        angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        print(f"{n}: centre error {centre_error:.4f} m, rotation error {angle:.3f} deg")
        assert centre_error < 0.05 and angle < 1.0
    # exported as pinhole views for gaussian splatting / nerfstudio
    exported = export.main(out, tmp_path / "ns", export.ExportOptions(format="nerfstudio"))
    assert exported.num_images == 16
    transforms = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    assert len(transforms["frames"]) == 16
    assert (tmp_path / "ns" / "images" / "view_0" / "pano_00.jpg").is_file()


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 1, nothing lost


def _cli_error(argv, capsys) -> str:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _snapshot(folder):
    # every file but the output folder's lock (made and kept by any run)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_undecodable_video_is_one_line_and_keeps_the_frames(tmp_path, capsys):
    video, _ = walkaround_video(tmp_path / "walk.mp4", long_side=160)
    out = tmp_path / "out"
    assert cli.main(["frames", str(video), str(out / "frames"), "--fps", "2"]) == 0
    before = _snapshot(out)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[:200] + bytes(4000))
    message = _cli_error(["reconstruct", broken, out, "--preset", "aliked+lightglue"], capsys)
    assert "cannot read video" in message and "broken.mp4" in message
    assert _snapshot(out) == before


@pytest.mark.parametrize("fix, words", [
    (gps.GpsFix(0.0, 0.0, 0.0), "no GPS fix"),
    (gps.GpsFix(123.0, 7.0, 50.0), "not a place on Earth"),
])
def test_bad_gps_tag_is_one_line_that_names_the_photo(tmp_path, capsys, fix, words):
    scene = gps_tagged_sample(tmp_path / "images", long_side=96,
                              names=["0000.jpg", "0001.jpg", "0002.jpg"])
    gps.write_gps(scene.images / "0001.jpg", scene.images / "0001.jpg", fix)
    before = _snapshot(scene.images)
    message = _cli_error(["reconstruct", scene.images, tmp_path / "out"], capsys)
    assert words in message and "0001.jpg" in message and "--gps off" in message
    assert _snapshot(scene.images) == before and not (tmp_path / "out" / "features.h5").exists()


def test_panorama_shape_errors(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (256, 128), (10, 20, 30)).save(folder / "pano.jpg")
    Image.new("RGB", (200, 150), (10, 20, 30)).save(folder / "photo.jpg")
    message = _cli_error(["reconstruct", folder, tmp_path / "out"], capsys)
    assert "1 of 2 images are 2:1 panoramas" in message and "--panoramas" in message
    message = _cli_error(["reconstruct", folder, tmp_path / "out", "--panoramas", "on"], capsys)
    assert "photo.jpg is 200x150, not 2:1" in message
    assert not (tmp_path / "out" / "views").exists()
