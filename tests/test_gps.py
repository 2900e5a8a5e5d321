"""EXIF GPS: reading, validation of bad tags, the local ENU frame, georef.json and alignment."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest
from captures import ORIGIN, gps_tagged_sample
from PIL import Image

from omniglue_sfm.formats import gps
from omniglue_sfm.formats.gps import GpsFix, GpsTagError
from omniglue_sfm.geometry import geo


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    return gps_tagged_sample(tmp_path_factory.mktemp("gps"), long_side=128, sigma_h=1.0, sigma_v=2.0)


def test_tags_round_trip_to_the_millimetre(tagged):
    scan = gps.scan(tagged.images, sorted(tagged.truth_enu))
    assert scan.fraction == 1.0 and not scan.missing and not scan.bad
    for name, fix in scan.fixes.items():
        np.testing.assert_allclose(ORIGIN.to_enu(fix.lla())[0], tagged.tagged_enu[name], atol=1e-3)
        assert fix.accuracy == pytest.approx(2.0)
    assert 1.0 < tagged.noise_rms < 4.0


def _tag(tmp_path, fix, name="x.jpg"):
    src = tmp_path / "plain.jpg"
    Image.new("RGB", (32, 16), (90, 120, 30)).save(src)
    gps.write_gps(src, tmp_path / name, fix)
    return tmp_path / name


@pytest.mark.parametrize("fix, message", [
    (GpsFix(0.0, 0.0, 0.0), "no GPS fix"),
    (GpsFix(95.0, 10.0), "not a place on Earth"),
    (GpsFix(45.0, 10.0, 60_000.0), "altitude"),
])
def test_bad_tags_are_errors_that_name_the_file(tmp_path, fix, message):
    path = _tag(tmp_path, fix)
    with pytest.raises(GpsTagError, match=message) as err:
        gps.read_gps(path)
    assert str(path) in str(err.value)
    scan = gps.scan(tmp_path, ["x.jpg", "plain.jpg"])
    assert list(scan.bad) == ["x.jpg"] and scan.missing == ["plain.jpg"]
    assert "x.jpg" in scan.bad_message() and "\n" not in scan.bad_message()


def test_southern_western_and_below_sea_level(tmp_path):
    fix = gps.read_gps(_tag(tmp_path, GpsFix(-33.8568, -70.6483, -12.5, 4.0)))
    assert (fix.lat, fix.lon, fix.alt, fix.accuracy) == pytest.approx((-33.8568, -70.6483, -12.5, 4.0))
    assert gps.read_gps(_tag(tmp_path, None, "none.jpg")) is None


def test_digest_follows_the_tags(tmp_path, tagged):
    names = sorted(tagged.truth_enu)
    first = gps.scan(tagged.images, names).digest()
    assert gps.scan(tagged.images, names).digest() == first
    gps.write_gps(tagged.images / names[0], tmp_path / names[0], GpsFix(50.0, 7.0, 50.0))
    for n in names[1:]:
        (tmp_path / n).write_bytes((tagged.images / n).read_bytes())
    assert gps.scan(tmp_path, names).digest() != first


def test_local_frame_and_ecef():
    frame = geo.LocalFrame.around(np.array([[50.0, 7.0, 100.0], [50.001, 7.001, 110.0]]))
    assert (frame.lat, frame.lon, frame.alt) == pytest.approx((50.0005, 7.0005, 105.0))
    lla = np.array([[50.0008, 7.0002, 103.0]])
    enu = frame.to_enu(lla)
    np.testing.assert_allclose(frame.to_lla(enu), lla, atol=1e-9)
    ecef = pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84).ellipsoid_to_ecef(lla)
    m = frame.enu_to_ecef()
    np.testing.assert_allclose(m[:3, :3] @ enu[0] + m[:3, 3], ecef[0], atol=1e-4)
    # across the antimeridian the origin stays near +-180, not at 0
    assert abs(geo.LocalFrame.around(np.array([[0, 179.9, 0], [0, -179.9, 0]])).lon) > 179


def test_alignment_recovers_a_similarity_and_reports_residuals(tmp_path):
    rng = np.random.default_rng(1)
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model="SIMPLE_PINHOLE", width=100, height=100, params=[100, 50, 50], camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    truth = {}
    for i in range(1, 7):
        centre = rng.normal(0, 5, 3)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), -centre)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{i}.jpg", camera_id=1, image_id=i), pose)
        truth[f"{i}.jpg"] = centre
    # the model: the truth seen through a similarity (scale 0.1)
    rotation = pycolmap.Rotation3d(np.array([0.2, 0.1, 0.3, 0.927]))
    sim = pycolmap.Sim3d(0.1, rotation, np.array([1.0, 2.0, 3.0]))
    rec.transform(sim)
    noisy = {n: c + rng.normal(0, 0.3, 3) for n, c in truth.items()}
    alignment = geo.align_to_positions(rec, noisy, max_error=2.0)
    assert alignment is not None and alignment.inliers == 6
    assert alignment.sim3.scale == pytest.approx(10.0, rel=0.1)
    moved = geo.camera_centres(rec)
    err = [np.linalg.norm(moved[n] - truth[n]) for n in truth]
    assert max(err) < 0.6
    summary = alignment.summary()
    assert summary["residual_m"]["max"] < 1.5 and set(summary["per_image_m"]) == set(truth)
    georef = geo.Georef(ORIGIN, summary)
    georef.write(tmp_path)
    back = geo.read_georef(tmp_path)
    assert back.frame == ORIGIN and back.alignment["images"] == 6
    assert geo.read_georef(tmp_path / "nowhere") is None
    # too few positions: no alignment, the model unchanged
    assert geo.align_to_positions(rec, dict(list(noisy.items())[:2]), 2.0) is None


def test_spatial_pairs_nearest_within_radius(tagged, tmp_path):
    from omniglue_sfm import pairs

    names = sorted(tagged.truth_enu)
    pos = {n: np.array([float(i), 0.0, 100.0 * i]) for i, n in enumerate(names)}  # z is ignored
    got = pairs.spatial(names, pos, num_matched=2)
    expected = {(names[i], names[i + 1]) for i in range(7)} | {(names[0], names[2]), (names[5], names[7])}
    assert {tuple(sorted(p)) for p in got} == expected
    assert pairs.spatial(names, pos, num_matched=5, radius=1.5) == pairs.spatial(names, pos, 2, 1.5)
    assert len(pairs.spatial(names, pos, num_matched=2, radius=0.5)) == 0
    # from the photos' EXIF: fewer pairs than exhaustive, every image in some pair
    out = tmp_path / "pairs.txt"
    got = pairs.main(tagged.images, out, pairs.PairsOptions("spatial", num_matched=3))
    assert len(got) < 28 and {n for p in got for n in p} == set(names)
    with pytest.raises(ValueError, match="radius"):
        pairs.PairsOptions("spatial", radius=0)
