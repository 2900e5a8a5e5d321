"""Training supervision from a COLMAP model: labels, pair selection, top-k remapping, collation,
the keypoint/points2D check and the refusal of the test scene, on a tiny synthetic scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from omniglue_sfm.formats import h5io, sharded
from omniglue_sfm.training import data as D
from omniglue_sfm.training import scene_pairs as S
from omniglue_sfm.training.losses import precision_recall

W, H, F = 640, 480, 500.0
DEPTH = 8.0
# camera centres on the x axis: at depth 8 a point moves 31.25 px (b) and 62.5 px (c) left
CENTRES = {"a.jpg": 0.0, "b.jpg": 0.5, "sub/c.jpg": 1.0}
NAMES = list(CENTRES)
DESC_DIM, GUIDE_DIM = 8, 4


def cell(col: int, row: int) -> np.ndarray:
    return np.array([60.0 + 50 * col, 40.0 + 50 * row])


def unproject(name: str, xy: np.ndarray) -> np.ndarray:
    """The 3D point at DEPTH seen at features.h5 pixel ``xy`` of image ``name``."""
    u, v = np.asarray(xy, np.float64) + 0.5
    return np.array([(u - W / 2) * DEPTH / F + CENTRES[name], (v - H / 2) * DEPTH / F, DEPTH])


def project(name: str, x: np.ndarray) -> np.ndarray:
    cam = x - np.array([CENTRES[name], 0.0, 0.0])
    return cam[:2] / cam[2] * F + np.array([W / 2, H / 2]) - 0.5


def build_scene(root: Path, perturb: str | None = None,
                scores_of: dict[tuple[str, str], float] | None = None) -> dict:
    """A 3-image model + features.h5 in ``root``. Returns roles: role -> {image name: keypoint index}.

    Roles (pair a-b): C0..C39 seen by a and b (C0..C19 also by c); F0..F4 seen by a only,
    projecting into b far from its keypoints; N seen by a only, projecting 3.6 px from the b
    keypoint ``N_b`` (no 3D point); O seen by a only, projecting outside b, 4 px from b's X2;
    G seen by b only;
    D seen twice by a (D, D2) and once by b; E seen by a and b with b's keypoint 6 px off;
    X* keypoints without a 3D point. ``scores_of``: (role, image) -> score (others: 0.5 to 1).
    """
    rng = np.random.default_rng(0)
    kps: dict[str, list[np.ndarray]] = {n: [] for n in NAMES}
    roles: dict[str, dict[str, int]] = {}
    points: list[tuple[np.ndarray, list[tuple[str, int]]]] = []

    def kp(name: str, xy, role: str) -> int:
        kps[name].append(np.asarray(xy, np.float32))
        roles.setdefault(role, {})[name] = len(kps[name]) - 1
        return len(kps[name]) - 1

    def point(role: str, x: np.ndarray, seen: dict[str, np.ndarray]) -> None:
        points.append((x, [(n, kp(n, xy, role)) for n, xy in seen.items()]))

    for k in range(40):
        x = unproject("a.jpg", cell(1 + k % 10, k // 10))
        seen = {n: project(n, x) for n in NAMES[: 3 if k < 20 else 2]}
        point(f"C{k}", x, seen)
    for k in range(5):
        x = unproject("a.jpg", cell(1 + k, 5))
        point(f"F{k}", x, {"a.jpg": project("a.jpg", x)})
    x = unproject("a.jpg", cell(2, 6))
    point("N", x, {"a.jpg": project("a.jpg", x)})
    kp("b.jpg", project("b.jpg", x) + np.array([3.0, 2.0]), "N_b")
    x = unproject("a.jpg", np.array([28.25, 240.0]))  # 3 px left of b's image, near b's X2
    point("O", x, {"a.jpg": project("a.jpg", x)})
    x = unproject("b.jpg", cell(4, 7) - np.array([31.25, 0.0]))
    point("G", x, {"b.jpg": project("b.jpg", x)})
    x = unproject("a.jpg", cell(6, 6))
    points.append((x, [("a.jpg", kp("a.jpg", project("a.jpg", x), "D")),
                       ("a.jpg", kp("a.jpg", project("a.jpg", x) + np.array([1.5, 0.0]), "D2")),
                       ("b.jpg", kp("b.jpg", project("b.jpg", x), "D"))]))
    x = unproject("a.jpg", cell(8, 6))
    points.append((x, [("a.jpg", kp("a.jpg", project("a.jpg", x), "E")),
                       ("b.jpg", kp("b.jpg", project("b.jpg", x) + np.array([6.0, 0.0]), "E"))]))
    extras = {"a.jpg": [(85, 465), (335, 315), (585, 215)], "b.jpg": [(185, 465), (435, 315), (1.0, 240)],
              "sub/c.jpg": [(235, 265)]}
    for name, extra in extras.items():
        for k, xy in enumerate(extra):
            kp(name, xy, f"X{k}")

    # shuffle each image's keypoint order, so indices differ between images
    perms = {n: rng.permutation(len(kps[n])) for n in NAMES}  # new position -> old index
    new_of = {n: np.argsort(perms[n]) for n in NAMES}  # old index -> new position
    roles = {r: {n: int(new_of[n][k]) for n, k in v.items()} for r, v in roles.items()}
    points = [(x, [(n, int(new_of[n][k])) for n, k in obs]) for x, obs in points]
    xy = {n: np.stack(kps[n])[perms[n]] for n in NAMES}

    rec = pycolmap.Reconstruction()
    for i, name in enumerate(NAMES, 1):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=W, height=H,
                                                        params=[F, F, W / 2, H / 2], camera_id=i))
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 0.0, 0.0, 1.0])),
                                np.array([-CENTRES[name], 0.0, 0.0]))
        rec.add_image_with_trivial_frame(pycolmap.Image(
            name=name, keypoints=xy[name].astype(np.float64) + 0.5, camera_id=i, image_id=i), pose)
    ids = {name: i for i, name in enumerate(NAMES, 1)}
    for x, obs in points:
        pid = rec.add_point3D(x, pycolmap.Track(), np.array([128, 128, 128], np.uint8))
        for name, k in obs:
            rec.add_observation(pid, pycolmap.TrackElement(ids[name], k))
    (root / "sparse").mkdir(parents=True)
    rec.write(root / "sparse")

    with sharded.ShardedH5(root / "features.h5", "features", {"features": {"name": "synthetic"}}) as store:
        for name in NAMES:
            n = len(xy[name])
            scores = rng.uniform(0.5, 1.0, n).astype(np.float32)
            for (role, image), score in (scores_of or {}).items():
                if image == name:
                    scores[roles[role][name]] = score
            keypoints = xy[name].copy()
            if perturb == "moved" and name == "b.jpg":
                keypoints[0] += 0.01
            if perturb == "dropped" and name == "b.jpg":
                keypoints, scores = keypoints[:-1], scores[:-1]
            n = len(keypoints)
            store.add(name, {"keypoints": keypoints, "scores": scores,
                             "descriptors": rng.normal(size=(DESC_DIM, n)).astype(np.float32),
                             "guidance": rng.normal(size=(GUIDE_DIM, n)).astype(np.float16),
                             "image_size": np.array([W, H])})
    return roles


def expected_ab(roles: dict, pos_px: float | None = 4.0, neg_px: float = 8.0):
    """The labels of pair (a, b), role by role (see build_scene)."""
    a, b = "a.jpg", "b.jpg"
    gt0 = np.full(1 + max(v[a] for v in roles.values() if a in v), D.IGNORE)
    gt1 = np.full(1 + max(v[b] for v in roles.values() if b in v), D.IGNORE)
    for k in range(40):
        gt0[roles[f"C{k}"][a]] = roles[f"C{k}"][b]
        gt1[roles[f"C{k}"][b]] = roles[f"C{k}"][a]
    for k in range(5):
        gt0[roles[f"F{k}"][a]] = D.UNMATCHED
    gt0[roles["O"][a]] = D.UNMATCHED
    gt1[roles["G"][b]] = D.UNMATCHED
    if neg_px < 3.6:
        gt0[roles["N"][a]] = D.UNMATCHED
    if pos_px is None:
        gt0[roles["E"][a]], gt1[roles["E"][b]] = roles["E"][b], roles["E"][a]
    return gt0, gt1


@pytest.fixture()
def scene(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "scene_out"
    return root, build_scene(root)


def _rec(root: Path) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(root / "sparse")


def _kp(root: Path, name: str) -> np.ndarray:
    return h5io.read_features(root / "features.h5", name)["keypoints"]


# --------------------------------------------------------------------------------------------
# labels


def test_exact_labels_of_a_pair(scene) -> None:
    root, roles = scene
    rec = _rec(root)
    gt0, gt1 = S.gt_matches_from_model(rec, "a.jpg", "b.jpg", _kp(root, "a.jpg"), _kp(root, "b.jpg"))
    e0, e1 = expected_ab(roles)
    assert gt0.dtype == torch.int64 and gt1.dtype == torch.int64
    np.testing.assert_array_equal(gt0.numpy(), e0)
    np.testing.assert_array_equal(gt1.numpy(), e1)
    # the individual cases, spelled out
    assert gt0[roles["C3"]["a.jpg"]] == roles["C3"]["b.jpg"]
    assert gt0[roles["F0"]["a.jpg"]] == D.UNMATCHED  # projects far from every keypoint of b
    assert gt0[roles["O"]["a.jpg"]] == D.UNMATCHED  # projects outside b
    assert gt0[roles["N"]["a.jpg"]] == D.IGNORE  # projects 3.6 px from a keypoint of b
    assert gt1[roles["N_b"]["b.jpg"]] == D.IGNORE  # no 3D point
    assert gt1[roles["G"]["b.jpg"]] == D.UNMATCHED
    assert gt0[roles["D"]["a.jpg"]] == gt0[roles["D2"]["a.jpg"]] == gt1[roles["D"]["b.jpg"]] == D.IGNORE
    assert gt0[roles["E"]["a.jpg"]] == gt1[roles["E"]["b.jpg"]] == D.IGNORE  # 6 px > pos_px
    assert gt0[roles["X0"]["a.jpg"]] == D.IGNORE


def test_labels_are_mutual_and_symmetric(scene) -> None:
    root, _ = scene
    rec = _rec(root)
    gt0, gt1 = S.gt_matches_from_model(rec, "a.jpg", "b.jpg", _kp(root, "a.jpg"), _kp(root, "b.jpg"))
    back1, back0 = S.gt_matches_from_model(rec, "b.jpg", "a.jpg", _kp(root, "b.jpg"), _kp(root, "a.jpg"))
    assert torch.equal(gt0, back0) and torch.equal(gt1, back1)
    pos = (gt0 >= 0).nonzero()[:, 0]
    assert torch.equal(gt1[gt0[pos]], pos)
    assert int((gt1 >= 0).sum()) == len(pos) == 40


def test_thresholds_change_the_labels(scene) -> None:
    root, roles = scene
    rec = _rec(root)
    kp_a, kp_b = _kp(root, "a.jpg"), _kp(root, "b.jpg")
    for pos_px, neg_px in [(None, 8.0), (4.0, 2.0)]:
        gt0, gt1 = S.gt_matches_from_model(rec, "a.jpg", "b.jpg", kp_a, kp_b, pos_px=pos_px, neg_px=neg_px)
        e0, e1 = expected_ab(roles, pos_px, neg_px)
        np.testing.assert_array_equal(gt0.numpy(), e0)
        np.testing.assert_array_equal(gt1.numpy(), e1)


def test_keypoints_must_be_the_models_points2d(tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    build_scene(moved, perturb="moved")
    with pytest.raises(ValueError, match="differ by"):
        S.records_from_scene(moved, min_shared=10)
    dropped = tmp_path / "dropped"
    build_scene(dropped, perturb="dropped")
    with pytest.raises(ValueError, match="points2D"):
        S.records_from_scene(dropped, min_shared=10)


def test_points_behind_the_other_camera_are_unmatched() -> None:
    """b looks backwards: each image's 3D point is behind the other camera (-1), even though the
    un-checked projection lands on a keypoint (which has no 3D point: -2)."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=W, height=H,
                                                    params=[F, F, W / 2, H / 2], camera_id=1))
    kp_a = np.array([[339.5, 249.5], [319.5, 239.5]], np.float32)  # X's image; X2 mirrored
    kp_b = np.array([[319.5, 239.5], [339.5, 229.5]], np.float32)  # X2's image; X mirrored
    poses = {1: np.array([0.0, 0.0, 0.0, 1.0]), 2: np.array([0.0, 1.0, 0.0, 0.0])}  # b: 180 deg about y
    for i, kp in ((1, kp_a), (2, kp_b)):
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=f"{i}.jpg", keypoints=kp.astype(np.float64) + 0.5, camera_id=1, image_id=i),
            pycolmap.Rigid3d(pycolmap.Rotation3d(poses[i]), np.zeros(3)))
    for i, x in ((1, [0.2, 0.1, 5.0]), (2, [0.0, 0.0, -5.0])):
        pid = rec.add_point3D(np.array(x), pycolmap.Track(), np.zeros(3, np.uint8))
        rec.add_observation(pid, pycolmap.TrackElement(i, 0))
    gt0, gt1 = S.gt_matches_from_model(rec, 1, 2, kp_a, kp_b)
    assert gt0.tolist() == [D.UNMATCHED, D.IGNORE] and gt1.tolist() == [D.UNMATCHED, D.IGNORE]


# --------------------------------------------------------------------------------------------
# pairs and records


def test_pair_selection(scene) -> None:
    root, _ = scene
    assert S.scene_pairs(root, min_shared=30) == [("a.jpg", "b.jpg")]
    everything = [("a.jpg", "b.jpg"), ("a.jpg", "sub/c.jpg"), ("b.jpg", "sub/c.jpg")]
    assert S.scene_pairs(root, min_shared=20) == everything
    assert S.scene_pairs(root, min_shared=21) == [("a.jpg", "b.jpg")]
    two = S.scene_pairs(root, min_shared=10, max_pairs=2, seed=3)
    assert len(two) == 2 and set(two) <= set(everything) and two == sorted(two)
    assert S.scene_pairs(root, min_shared=10, max_pairs=2, seed=3) == two
    assert {tuple(S.scene_pairs(root, min_shared=10, max_pairs=1, seed=s)) for s in range(20)} \
        == {(p,) for p in everything}


def test_records_share_views_and_carry_labels(scene) -> None:
    root, roles = scene
    records = S.records_from_scene(root, min_shared=20)
    assert [r["names"] for r in records] == S.scene_pairs(root, min_shared=20)
    assert [r["shared"] for r in records] == [42, 20, 20]
    ab, ac, bc = records
    assert ab["view0"] is ac["view0"] and ab["view1"] is bc["view0"] and ac["view1"] is bc["view1"]
    assert "H_0to1" not in ab and ab["scene"] == "scene_out"
    feats = h5io.read_features(root / "features.h5", "a.jpg")
    v = ab["view0"]
    np.testing.assert_array_equal(v["keypoints"].numpy(), feats["keypoints"])
    assert v["descriptors"].shape == (len(feats["keypoints"]), DESC_DIM)
    np.testing.assert_allclose(v["descriptors"].float().numpy(), feats["descriptors"].T, atol=2e-3)
    np.testing.assert_array_equal(v["guidance"].numpy(), feats["guidance"].T)
    assert v["image_size"].tolist() == [W, H]
    e0, e1 = expected_ab(roles)
    np.testing.assert_array_equal(ab["gt0"].numpy(), e0)
    np.testing.assert_array_equal(ab["gt1"].numpy(), e1)
    assert int((ac["gt0"] >= 0).sum()) == 20


def test_max_keypoints_keeps_top_scores_and_remaps_labels(tmp_path: Path) -> None:
    root = tmp_path / "scene_out"
    # b loses C5's keypoint and N_b (lowest scores): a's C5 and N then have nothing near in b
    roles = build_scene(root, scores_of={("C5", "b.jpg"): 0.01, ("N_b", "b.jpg"): 0.02,
                                         ("C5", "a.jpg"): 1.0, ("N", "a.jpg"): 1.0})
    full = {r["names"]: r for r in S.records_from_scene(root, min_shared=30)}[("a.jpg", "b.jpg")]
    n_b = len(full["view1"]["keypoints"])
    records = S.records_from_scene(root, max_keypoints=n_b - 2, min_shared=30)
    r = records[0]
    kept = {k: r[v]["point2D_idx"].numpy() for k, v in (("a", "view0"), ("b", "view1"))}
    for k, v in (("a", "view0"), ("b", "view1")):
        scores = full[v]["scores"].numpy()
        assert len(kept[k]) == n_b - 2 and np.all(np.diff(kept[k]) > 0)
        assert scores[kept[k]].min() >= np.delete(scores, kept[k]).max()
        np.testing.assert_array_equal(r[v]["keypoints"].numpy(), full[v]["keypoints"].numpy()[kept[k]])
    assert roles["C5"]["b.jpg"] not in kept["b"] and roles["N_b"]["b.jpg"] not in kept["b"]
    pos_a = {int(old): new for new, old in enumerate(kept["a"])}
    pos_b = {int(old): new for new, old in enumerate(kept["b"])}
    assert r["gt0"][pos_a[roles["C5"]["a.jpg"]]] == D.UNMATCHED
    assert r["gt0"][pos_a[roles["N"]["a.jpg"]]] == D.UNMATCHED
    # every positive of the subset is a positive of the full set, and every full positive whose
    # two keypoints were kept survives, under the new indices
    sub = {(int(kept["a"][i]), int(kept["b"][j])) for i, j in enumerate(r["gt0"].tolist()) if j >= 0}
    whole = {(i, j) for i, j in enumerate(full["gt0"].tolist())
             if j >= 0 and i in pos_a and j in pos_b}
    assert sub == whole and len(sub) >= 30
    for i, j in sub:
        assert r["gt1"][pos_b[j]] == pos_a[i]


def test_collate_records_uses_scene_labels(scene) -> None:
    root, _ = scene
    records = S.records_from_scene(root, min_shared=20)
    data = D.collate_records(records)
    assert "H_0to1" not in data
    n = max(len(r["gt0"]) for r in records)
    assert data["gt_matches0"].shape == (3, n) and data["guidance0"].shape[-1] == GUIDE_DIM
    for b, r in enumerate(records):
        k, m = len(r["gt0"]), len(r["gt1"])
        assert torch.equal(data["gt_matches0"][b, :k], r["gt0"])
        assert torch.equal(data["gt_matches1"][b, :m], r["gt1"])
        assert (data["gt_matches0"][b, k:] == D.IGNORE).all()
        assert (data["gt_matches1"][b, m:] == D.IGNORE).all()
        assert torch.equal(data["keypoints0"][b, :k], r["view0"]["keypoints"])
    no_labels = {k: v for k, v in records[0].items() if k not in ("gt0", "gt1")}
    with pytest.raises(KeyError, match="H_0to1"):
        D.collate_records([no_labels])


# --------------------------------------------------------------------------------------------
# the test scene and metrics


def test_the_test_scene_is_refused(tmp_path: Path) -> None:
    root = tmp_path / S.TEST_SCENE
    build_scene(root)
    with pytest.raises(ValueError, match="test scene"):
        S.records_from_scene(root, min_shared=10)
    with pytest.raises(ValueError, match="test scene"):
        S.scene_pairs(root, min_shared=10)
    other = tmp_path / "out"
    build_scene(other)
    assert S.scene_pairs(other, min_shared=30) == [("a.jpg", "b.jpg")]
    (other / "stats.json").write_text(json.dumps({"image_dir": f"/data/{S.TEST_SCENE}/images"}))
    with pytest.raises(ValueError, match="test scene"):
        S.records_from_scene(other, min_shared=10)


def test_label_precision_recall() -> None:
    gt0 = torch.tensor([2, -1, -2, 0, 1])
    gt1 = torch.tensor([3, 4, 0, -1])
    matches0 = torch.tensor([2, 0, 3, 1, -1])  # correct, on a -1, on an ignored, wrong index, none
    counts = S.label_precision_recall(matches0, gt0)
    assert counts == {"correct": 1, "wrong": 2, "predicted": 4, "gt": 3}
    assert S.label_precision_recall(matches0, gt0, gt1)["wrong"] == 3  # b's keypoint 3 is unmatched
    precision, recall = precision_recall([counts, {"correct": 3, "wrong": 0, "predicted": 3, "gt": 3}])
    assert precision == pytest.approx(100 * 4 / 6) and recall == pytest.approx(100 * 4 / 6)
