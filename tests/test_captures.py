"""Field captures end to end (``reconstruct`` on GPS-tagged photos, a video, 360-degree panoramas),
at small sizes, and the bad inputs of each: one-line errors that lose nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from captures import ORIGIN, gps_tagged_sample, walkaround_video
from conftest import small_preset

from omniglue_sfm import cli, localize, reconstruct
from omniglue_sfm.capture import CaptureOptions
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.evaluation.reconstruction import evaluate
from omniglue_sfm.formats import gps
from omniglue_sfm.geometry import geo
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
    gps.write_gps(images / "0007.jpg", images / "0007.jpg", gps.GpsFix(fix.lat + 0.0003, fix.lon, fix.alt, 2.0))
    again = reconstruct.main(images, copy, PRESET, pair_options=PairsOptions(num_matched=4), sfm_options=QUIET)
    assert not again.skipped  # the priors changed: mapping ran again
    residuals = geo.read_georef(copy).alignment["per_image_m"]
    assert residuals["0007.jpg"] > 20  # the moved tag is the outlier now
    # and with the same tags, everything is reused
    assert reconstruct.main(images, copy, PRESET, pair_options=PairsOptions(num_matched=4),
                            sfm_options=QUIET).skipped


def test_gps_off_ignores_tags(gps_run, tmp_path):
    scene, _, _ = gps_run
    from omniglue_sfm import capture

    cap = capture.prepare(scene.images, tmp_path, CaptureOptions(gps="off"))
    assert not cap.positions and cap.default_pairs(PairsOptions(), "exhaustive").mode == "exhaustive"
