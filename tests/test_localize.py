"""Localization: PnP pieces and the full per-query path on a synthetic map (fast), and held-out
images of the sample scene against ground truth (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from omniglue_sfm import localize, match
from omniglue_sfm.config import presets
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import matches_h5, sharded, textfiles
from omniglue_sfm.geometry import cameras, pnp
from omniglue_sfm.localize import maps as loc_maps
from omniglue_sfm.localize import query as loc_query

DESC_DIM = 32


def synthetic_map(tmp_path: Path, num_images: int = 4, num_points: int = 400, split: bool = False,
                  seed: int = 0) -> tuple[localize.LocalizationMap, np.ndarray, np.ndarray]:
    """A model whose 3D points each carry one random descriptor, with a matching features.h5.

    Returns the map, the points (N, 3) and their descriptors (N, D). With ``split`` images 0-1
    see only points with x < 0 and the others only x > 0 (two covisibility clusters).
    """
    rng = np.random.default_rng(seed)
    w, h, f = 640, 480, 500.0
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=w, height=h,
                                                    params=[f, w / 2, h / 2], camera_id=1))
    xyz = np.column_stack([rng.uniform(-3, 3, num_points), rng.uniform(-2, 2, num_points),
                           rng.uniform(6, 9, num_points)])
    desc = rng.normal(size=(num_points, DESC_DIM)).astype(np.float32)
    pids = [rec.add_point3D(p, pycolmap.Track(), np.array([200, 120, 40], np.uint8)) for p in xyz]
    config = {"features": {"name": "synthetic"}}
    with sharded.ShardedH5(tmp_path / "features.h5", "features", config) as store:
        for i in range(num_images):
            pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 0.01 * i, 0.0, 1.0])),
                                    np.array([0.6 * i - 0.9, 0.0, 0.0]))
            uv, visible = project(pose, f, (w, h), xyz)
            if split:
                visible &= (xyz[:, 0] < 0) if i < 2 else (xyz[:, 0] > 0)
            idx = np.flatnonzero(visible)
            name = f"map{i}.jpg"
            # COLMAP keypoints put the top-left pixel centre at 0.5, features.h5 at 0
            rec.add_image_with_trivial_frame(
                pycolmap.Image(name=name, keypoints=uv[idx], camera_id=1, image_id=i + 1), pose)
            for k, j in enumerate(idx):
                rec.add_observation(pids[j], pycolmap.TrackElement(i + 1, k))
            store.add(name, {"keypoints": (uv[idx] - 0.5).astype(np.float32), "descriptors": desc[idx].T,
                             "scores": np.ones(len(idx), np.float32),
                             "image_size": np.array([w, h])})
    preset = {"name": "synthetic", "features": config["features"], "matcher": {"name": "mnn"}}
    image_ids = {rec.image(i).name: int(i) for i in rec.reg_image_ids()}
    lmap = localize.LocalizationMap(tmp_path, rec, tmp_path / "features.h5", tmp_path / "global.h5", preset,
                                    image_ids, pnp.MapExtent.of(rec))
    return lmap, xyz, desc


def project(pose: pycolmap.Rigid3d, f: float, size: tuple[int, int], xyz: np.ndarray):
    m = pose.matrix()
    cam = xyz @ m[:, :3].T + m[:, 3]
    uv = cam[:, :2] / cam[:, 2:] * f + np.array(size) / 2
    inside = (uv > 1).all(axis=1) & (uv[:, 0] < size[0] - 1) & (uv[:, 1] < size[1] - 1)
    visible = (cam[:, 2] > 0) & inside
    return uv, visible


def write_query(path: Path, name: str, keypoints: np.ndarray, desc: np.ndarray, size=(640, 480)) -> None:
    with sharded.ShardedH5(path, "features", {"features": {"name": "synthetic"}}) as store:
        store.add(name, {"keypoints": keypoints.astype(np.float32), "descriptors": desc.T.astype(np.float32),
                         "scores": np.ones(len(keypoints), np.float32), "image_size": np.array(size)})


QUERY_POSE = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.02, -0.03, 0.01, 1.0])),
                              np.array([0.3, 0.1, 0.4]))


def test_estimate_pose_recovers_pose_and_unknown_focal():
    rng = np.random.default_rng(1)
    xyz = np.column_stack([rng.uniform(-3, 3, 300), rng.uniform(-2, 2, 300), rng.uniform(6, 9, 300)])
    uv, vis = project(QUERY_POSE, 500.0, (640, 480), xyz)
    uv, xyz = uv[vis] + rng.normal(0, 0.5, (vis.sum(), 2)), xyz[vis]
    outliers = rng.choice(len(uv), len(uv) // 4, replace=False)
    uv[outliers] = rng.uniform([0, 0], [640, 480], (len(outliers), 2))
    guess = pycolmap.Camera(model="SIMPLE_RADIAL", width=640, height=480, params=[1.2 * 640, 320, 240, 0.0])
    ret = pnp.estimate_pose(uv, xyz, guess, max_error=4.0, estimate_focal=True)
    assert ret is not None
    assert ret["camera"].params[0] == pytest.approx(500.0, rel=0.02)
    assert guess.params[0] == pytest.approx(768.0)  # the caller's camera is not modified
    est_center = ret["cam_from_world"].inverse().translation
    assert np.linalg.norm(est_center - QUERY_POSE.inverse().translation) < 0.05
    assert ret["num_inliers"] >= 0.9 * (len(uv) - len(outliers))


def test_localize_query_synthetic_map(tmp_path):
    lmap, xyz, desc = synthetic_map(tmp_path)
    uv, vis = project(QUERY_POSE, 500.0, (640, 480), xyz)
    idx = np.flatnonzero(vis)
    write_query(tmp_path / "q.h5", "query.jpg", uv[idx] - 0.5, desc[idx] + 0.05)
    matcher = match.PairMatcher(lmap.preset["matcher"], lmap.preset, lmap.features_path, "cpu")
    opts = localize.LocalizeOptions(ransac_thresh=12.0)
    query = cameras.Query("query.jpg", pycolmap.Camera(model="SIMPLE_PINHOLE", width=640, height=480,
                                                        params=[500.0, 320, 240]))
    result = loc_query.localize_query(lmap, tmp_path / "q.h5", query, tmp_path, sorted(lmap.image_ids),
                                     matcher, match.FeatureCache(lmap.features_path), opts)
    assert result.localized, result.reason
    assert result.focal_source == "given"
    assert result.num_inliers > 0.9 * len(idx)
    w, x, y, z = result.qvec
    est = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([x, y, z, w])), np.array(result.tvec))
    assert np.linalg.norm(est.inverse().translation - QUERY_POSE.inverse().translation) < 0.01
    assert sum(result.inlier_map_images.values()) == result.num_inliers


def test_unmatchable_query_is_not_localized_and_gets_no_pose(tmp_path):
    """hloc falls back to the top retrieved image's pose here; we must report a failure."""
    lmap, xyz, desc = synthetic_map(tmp_path)
    rng = np.random.default_rng(5)
    kps = rng.uniform([0, 0], [640, 480], (300, 2))
    write_query(tmp_path / "q.h5", "other.jpg", kps, rng.normal(size=(300, DESC_DIM)))
    matcher = match.PairMatcher({"name": "mnn", "min_similarity": 0.9}, lmap.preset, lmap.features_path,
                                "cpu")
    result = loc_query.localize_query(lmap, tmp_path / "q.h5", cameras.Query("other.jpg"), tmp_path,
                                     sorted(lmap.image_ids), matcher, match.FeatureCache(lmap.features_path),
                                     localize.LocalizeOptions())
    assert not result.localized
    assert result.reason
    assert result.qvec is None and result.tvec is None
    textfiles.write_poses(tmp_path / "poses.txt", [(r.name, r.qvec, r.tvec) for r in [result] if r.localized])
    assert (tmp_path / "poses.txt").read_text() == ""


def test_random_matches_fail_pnp_with_a_reason(tmp_path):
    lmap, xyz, desc = synthetic_map(tmp_path)
    rng = np.random.default_rng(7)
    result = localize.QueryResult("q")
    db_ids = sorted(lmap.image_ids.values())
    sizes = [lmap.reconstruction.image(i).num_points2D() for i in db_ids]
    matches = [np.stack([rng.permutation(200)[:150], rng.permutation(n)[:150]], axis=1) for n in sizes]
    cam = pycolmap.Camera(model="SIMPLE_PINHOLE", width=640, height=480, params=[500.0, 320, 240])
    kp = rng.uniform([0, 0], [640, 480], (200, 2))
    ret = loc_query.pose_from_correspondences(lmap, kp, db_ids, matches, cam, False,
                                             localize.LocalizeOptions(), result)
    assert result.num_correspondences > 100
    assert ret is None or ret["num_inliers"] < 0.2 * result.num_correspondences


# --------------------------------------------------------------------------------------------
# believable poses only (issue #10, case 4)


def _partly_wrong_query(tmp_path: Path, xyz: np.ndarray, desc: np.ndarray, true_share: float) -> None:
    """A query whose matches are right for ``true_share`` of its keypoints and wrong (a random other
    3D point's descriptor at a random place) for the rest, as with a mirrored copy of a map photo."""
    rng = np.random.default_rng(11)
    uv, vis = project(QUERY_POSE, 500.0, (640, 480), xyz)
    idx = np.flatnonzero(vis)
    num_true = int(true_share * len(idx))
    wrong = rng.permutation(len(xyz))[: len(idx) - num_true]
    kps = np.concatenate([uv[idx[:num_true]] - 0.5, rng.uniform([0, 0], [640, 480], (len(wrong), 2))])
    write_query(tmp_path / "q.h5", "query.jpg", kps, np.concatenate([desc[idx[:num_true]], desc[wrong]]))


@pytest.mark.parametrize(("focal", "localized"), [("given", True), ("guessed", False)])
def test_a_fifth_of_right_matches_needs_a_known_focal_length(tmp_path, focal, localized):
    """The mirrored map photo of issue #10 had 17% inliers and a guessed focal: such a pose is
    rejected with the reason; the same evidence with a known focal length is enough."""
    lmap, xyz, desc = synthetic_map(tmp_path)
    _partly_wrong_query(tmp_path, xyz, desc, true_share=0.2)
    camera = pycolmap.Camera(model="SIMPLE_PINHOLE", width=640, height=480, params=[500.0, 320, 240])
    query = cameras.Query("query.jpg", camera if focal == "given" else None)
    matcher = match.PairMatcher(lmap.preset["matcher"], lmap.preset, lmap.features_path, "cpu")
    cache = match.FeatureCache(lmap.features_path)
    result = loc_query.localize_query(lmap, tmp_path / "q.h5", query, tmp_path, sorted(lmap.image_ids),
                                     matcher, cache, localize.LocalizeOptions())
    assert result.localized == localized, (result.reason, result.num_inliers, result.num_correspondences)
    if not localized:
        assert "share of PnP inliers" in result.reason and "focal length guessed" in result.reason
        assert result.qvec is None and result.num_inliers > 0


def _pnp_result(inliers: int, focal: float, centre: np.ndarray) -> dict:
    camera = pycolmap.Camera(model="SIMPLE_RADIAL", width=640, height=480, params=[focal, 320, 240, 0.0])
    world_from_cam = pycolmap.Rigid3d(pycolmap.Rotation3d(), centre)
    return {"num_inliers": inliers, "camera": camera, "cam_from_world": world_from_cam.inverse()}


def test_pose_doubt_names_each_rule():
    extent = pnp.MapExtent(centre=np.zeros(3), radius=10.0)
    rules = pnp.PoseRules(min_inliers=12, min_inlier_ratio=0.2)
    near = np.array([1.0, 2.0, 3.0])
    assert pnp.pose_doubt(_pnp_result(100, 500, near), 200, False, extent, rules) is None
    assert pnp.pose_doubt(_pnp_result(100, 500, near), 200, True, extent, rules) is None
    few = pnp.pose_doubt(_pnp_result(20, 500, near), 30, True, extent, rules)
    assert "too few PnP inliers (20 < 24" in few
    assert "share" in pnp.pose_doubt(_pnp_result(30, 500, near), 200, False, extent, rules)
    assert pnp.pose_doubt(_pnp_result(50, 500, near), 200, False, extent, rules) is None  # 25%
    assert "share" in pnp.pose_doubt(_pnp_result(50, 500, near), 200, True, extent, rules)  # < 30%
    assert "focal length 100 px" in pnp.pose_doubt(_pnp_result(100, 100, near), 200, True, extent, rules)
    assert "focal length 4000 px" in pnp.pose_doubt(_pnp_result(100, 4000, near), 200, True, extent, rules)
    assert pnp.pose_doubt(_pnp_result(100, 4000, near), 200, False, extent, rules) is None  # given focal
    far = np.array([0.0, 0.0, 25.0])
    assert "far outside the map" in pnp.pose_doubt(_pnp_result(100, 500, far), 200, False, extent, rules)


def test_map_extent_is_robust_to_a_few_far_points():
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=64, height=48,
                                                    params=[50.0, 32, 24], camera_id=1))
    for i in range(3):
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{i}.jpg", camera_id=1, image_id=i + 1),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(), np.array([i - 1.0, 0, 0])))
    rng = np.random.default_rng(0)
    for p in rng.uniform(-2, 2, (97, 3)):
        rec.add_point3D(p, pycolmap.Track(), np.zeros(3, np.uint8))
    for p in [[1e6, 0, 0], [0, 1e6, 0]]:  # a couple of points at infinity
        rec.add_point3D(np.array(p, float), pycolmap.Track(), np.zeros(3, np.uint8))
    extent = pnp.MapExtent.of(rec)
    np.testing.assert_allclose(extent.centre, 0, atol=1e-9)
    assert 1.5 < extent.radius < 4


def test_correspondences_deduplicate_and_follow_tracks(tmp_path):
    lmap, _, _ = synthetic_map(tmp_path, num_images=2)
    rec = lmap.reconstruction
    im1, im2 = rec.image(1), rec.image(2)
    # query keypoint k matches keypoint k of image 1; image 2 sees the same 3D points elsewhere
    m1 = np.stack([np.arange(20), np.arange(20)], axis=1)
    pid_to_kp2 = {p.point3D_id: k for k, p in enumerate(im2.points2D) if p.has_point3D()}
    m2 = np.array([[k, pid_to_kp2[im1.point2D(k).point3D_id]] for k in range(20)
                   if im1.point2D(k).point3D_id in pid_to_kp2])
    kp_idx, p3d, src = pnp.correspondences(rec, [1, 2], [m1, m2])
    assert len(kp_idx) == 20  # the same (keypoint, 3D point) through two images counts once
    for k, pid in zip(kp_idx, p3d, strict=True):
        assert im1.point2D(int(k)).point3D_id == pid
    assert set(src.tolist()) == {0}


def test_covisibility_clusters_split_disconnected_images(tmp_path):
    lmap, _, _ = synthetic_map(tmp_path, split=True)
    clusters = pnp.covisibility_clusters(lmap.reconstruction, [1, 2, 3, 4])
    assert sorted(sorted(c) for c in clusters) == [[1, 2], [3, 4]]
    lmap2, _, _ = synthetic_map(tmp_path / "b", split=False)
    assert len(pnp.covisibility_clusters(lmap2.reconstruction, [1, 2, 3, 4])) == 1


def test_query_lists_and_intrinsics(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    lst = tmp_path / "queries.txt"
    lst.write_text("# comment\na.jpg SIMPLE_RADIAL 640 480 500 320 240 0.01\nsub/b.jpg\n")
    image_dir, queries = cameras.resolve_queries(lst)
    assert image_dir == tmp_path
    assert [q.name for q in queries] == ["a.jpg", "sub/b.jpg"]
    assert queries[0].camera.params[0] == pytest.approx(500.0) and queries[1].camera is None
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg PINHOLE 640 480 500\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        cameras.read_intrinsics(bad)
    with pytest.raises(FileNotFoundError):
        cameras.resolve_queries(tmp_path / "missing")


def test_poses_roundtrip_in_colmap_convention(tmp_path):
    r = localize.QueryResult("dir/q 1.jpg", localized=True)
    r.qvec, r.tvec = pnp.rigid_to_lists(QUERY_POSE)
    textfiles.write_poses(tmp_path / "poses.txt", [(r.name, r.qvec, r.tvec)])
    poses = textfiles.read_poses(tmp_path / "poses.txt")
    assert list(poses) == ["dir/q 1.jpg"]
    assert np.allclose(poses["dir/q 1.jpg"].matrix(), QUERY_POSE.matrix(), atol=1e-8)
    assert r.qvec[0] > 0.99  # (w, x, y, z): a small rotation has w near 1


def test_map_preset_from_file_configs(tmp_path):
    feats = {"features": {"name": "aliked", "max_keypoints": 77}}
    with sharded.ShardedH5(tmp_path / "features.h5", "features", feats) as s:
        s.add("a.jpg", {"keypoints": np.zeros((1, 2), np.float32)})
    mconf = {"matcher": {"name": "mnn"}, "features": feats}
    with sharded.ShardedH5(tmp_path / "matches.h5", "matches", mconf) as s:
        s.add(matches_h5.pair_key("a.jpg", "b.jpg"), {"matches0": np.zeros(1, np.int32)})
    preset = loc_maps.map_preset(tmp_path)
    assert preset["features"] == feats["features"]
    assert preset["matcher"] == {"name": "mnn"}
    with pytest.raises(localize.LocalizationError, match="sparse"):
        localize.load_map(tmp_path)


# --------------------------------------------------------------------------------------------
# the sample scene (slow: builds a map with ALIKED + LightGlue on CPU)

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "herzjesu_p8_small"


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    from omniglue_sfm.evaluation import localization as evaluate_localization

    out = tmp_path_factory.mktemp("evaluate_localization")
    preset = presets.resolve("aliked+lightglue", {"features": {"max_keypoints": 1024}})
    report = evaluate_localization.main(SAMPLE / "images", SAMPLE / "gt", out, preset,
                                        RunOptions(device="cpu"),
                                        progress=False)
    return out, report


@pytest.mark.slow
def test_held_out_images_localize_within_gt_thresholds(held_out_run):
    out, report = held_out_run
    assert report["held_out"] == ["0003.jpg", "0005.jpg"]
    for name, r in report["per_query"].items():
        assert r["localized"], (name, r["reason"])
        assert r["position_error"] < 0.25 and r["rotation_error_deg"] < 2.0, (name, r)
    assert report["recall"]["0.25m_2deg"] == 1.0
    poses = textfiles.read_poses(out / "localize" / "poses.txt")
    assert sorted(poses) == ["0003.jpg", "0005.jpg"]


@pytest.mark.slow
def test_query_from_another_scene_is_not_localized(held_out_run, tmp_path):
    out, _ = held_out_run
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, size=(86, 128, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((1024, 683), Image.Resampling.BICUBIC).save(tmp_path / "noise.jpg")
    report = localize.main(out / "map", tmp_path, tmp_path / "loc", run=RunOptions(device="cpu"))
    r = report["queries"]["noise.jpg"]
    assert not r["localized"] and r["reason"]
    assert (tmp_path / "loc" / "poses.txt").read_text() == ""


# --------------------------------------------------------------------------------------------
# evaluate-localization pieces


def test_held_out_choice_is_deterministic_and_spares_the_first_two():
    from omniglue_sfm.evaluation.localization import choose_held_out

    names = [f"{i:04d}.jpg" for i in range(8)]
    assert choose_held_out(names, 2) == ["0003.jpg", "0005.jpg"]
    for k in range(1, 6):
        picked = choose_held_out(list(reversed(names)), k)
        assert len(picked) == k and not {"0000.jpg", "0001.jpg"} & set(picked)
    with pytest.raises(ValueError):
        choose_held_out(names, 6)


def test_query_errors_are_zero_for_a_pose_in_a_similar_frame():
    """A map that is the GT world scaled, rotated and moved: errors vanish after alignment."""
    from omniglue_sfm.evaluation.localization import query_errors, similarity_to_gt
    from omniglue_sfm.geometry.scenes import CameraPose

    rng = np.random.default_rng(0)
    def rotation(q: np.ndarray) -> np.ndarray:
        return pycolmap.Rotation3d(q / np.linalg.norm(q)).matrix()

    s, R_sim = 0.37, rotation(np.array([0.1, 0.3, -0.2, 0.9]))
    t_sim = np.array([1.0, -2.0, 0.5])

    def gt_pose(i: int) -> CameraPose:
        return CameraPose(R=rotation(rng.normal(size=4)), t=rng.normal(size=3) * 3)

    gt = {f"{i}.jpg": gt_pose(i) for i in range(6)}
    # map frame: x_map = s R_sim x_gt + t_sim; a camera keeps R_map = R_gt R_sim^T
    est = {}
    for n, p in gt.items():
        R_map = p.R @ R_sim.T
        c_map = s * R_sim @ p.center + t_sim
        est[n] = CameraPose(R=R_map, t=-R_map @ c_map)
    align = similarity_to_gt(est, gt)
    assert align["median_residual"] < 1e-9 and align["median_rotation_error_deg"] < 1e-6
    q = est["3.jpg"]
    rot = pycolmap.Rotation3d(q.R).quat  # (x, y, z, w)
    pos_err, rot_err = query_errors([rot[3], rot[0], rot[1], rot[2]], q.t, align, gt["3.jpg"])
    assert pos_err < 1e-9 and rot_err < 1e-6
    moved = query_errors([rot[3], rot[0], rot[1], rot[2]], q.t + np.array([0.0, 0.0, s * 0.5]), align,
                         gt["3.jpg"])
    assert moved[0] == pytest.approx(0.5, rel=1e-6)


def test_a_map_whose_features_were_extracted_again_is_refused(tmp_path):
    """The model's 2D points must be features.h5's keypoints: a features.h5 re-extracted after the
    model was made would give PnP the wrong 3D point for every match."""
    lmap, _, _ = synthetic_map(tmp_path)
    loc_maps.check_model_features(lmap.reconstruction, lmap.features_path)
    import h5py

    with h5py.File(lmap.features_path, "r+") as h5:
        kps = h5["map1.jpg/keypoints"][()]
        del h5["map1.jpg/keypoints"]
        h5["map1.jpg/keypoints"] = kps[::-1]  # the same points, another order: other indices
    with pytest.raises(localize.LocalizationError, match="'map1.jpg' are not those of"):
        loc_maps.check_model_features(lmap.reconstruction, lmap.features_path)


def test_map_global_descriptors_refuse_changed_photos_and_are_kept_per_map(tmp_path, monkeypatch):
    import h5py

    from omniglue_sfm.formats import provenance

    made = []
    monkeypatch.setattr(loc_maps.extract, "main", lambda images, features, preset, run, *, global_path:
                        made.append((features, global_path)))
    paths = []
    for which in ("a", "b"):
        lmap, _, _ = synthetic_map(tmp_path / which, seed=0)
        photos = tmp_path / which / "photos"
        photos.mkdir()
        with h5py.File(lmap.features_path, "r+") as h5:
            for k, name in enumerate(sorted(lmap.image_ids)):
                Image.fromarray(np.full((8, 8, 3), k, np.uint8)).save(photos / name)
                for key, value in provenance.source_record(photos / name).items():
                    h5[name].attrs[key] = value
        paths.append(loc_maps.ensure_map_global(lmap, tmp_path / "out", 1, photos, RunOptions(device="cpu")))
    assert paths[0] != paths[1]  # two maps localized into one OUT never share descriptors
    assert [m[1] for m in made] == paths and made[0][0] == tmp_path / "a" / "features.h5"
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(tmp_path / "b" / "photos" / "map2.jpg")
    with pytest.raises(localize.LocalizationError, match="not the files its features were made from"):
        loc_maps.ensure_map_global(lmap, tmp_path / "out", 1, photos, RunOptions(device="cpu"))
    assert len(made) == 2  # refused before any extraction
