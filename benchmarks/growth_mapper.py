"""The mapper alone at large N: synthetic features and matches whose truth is known, mapped by
``omniglue-sfm sfm`` (database import, verification, mapping, export), scored by ``evaluate``.

    python benchmarks/growth_mapper.py run --root growth_runs/mapper --sizes 1000 2000 5000 10000
    python benchmarks/growth_mapper.py report --root growth_runs/mapper

The geometry is ``growth_scene``'s courtyard for N views (same camera path, same facades), but
nothing is rendered: 3D points are sampled on the facades (5 per m², up to 7 m high), the
boxes and the pavement in front of them (2 per m²); a view observes a point when it projects
into the image in front of the first surface (a low-resolution depth map from the ray caster).
Keypoints are the projections plus 0.5 px Gaussian noise, with 15% extra keypoints that observe
nothing; each view is paired with the 8 views it shares most points with (perfect retrieval);
a pair's matches are its shared points plus 10% wrong matches. They are written as our own
``features.h5`` / ``matches.h5`` (with tiny grey 640x480 JPEGs carrying the scene's EXIF focal,
all hard links of one file, for the camera and the point colours), so ``sfm`` runs exactly as
after ``match``.

Why not ``pycolmap.synthesize_dataset``: it makes every 3D point visible in every image and its
pairing loops over all N^2 image pairs (200 images took 24 s with SPARSE pairs here; 10,000 would
take about 17 hours, and every track would be 10,000 long). Its scenes are small-N unit tests; a
scene that grows needs visibility that stays local, as here.

``--density`` scales the point densities (a series is one density; resuming onto inputs made with
another is refused): 0.3 keeps about 80 keypoints per image, a cheaper series and a test of the
mappers on sparse matches.

Each step is a process timed by ``os.wait4`` (wall, CPU, peak memory), results go to
``ROOT/n<N>/results.json`` as soon as a step ends, and a stopped series resumes.
"""

from __future__ import annotations

import argparse
import io as _bytes_io
import json
import math
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import growth  # noqa: E402
import growth_scene  # noqa: E402

from omniglue_sfm.formats import matches_h5, textfiles  # noqa: E402

SIZE = (640, 480)
FACADE_DENSITY = 5.0  # points per m^2 on facades and boxes (up to MAX_HEIGHT)
GROUND_DENSITY = 2.0  # ... on the pavement within GROUND_BAND of the walls
MAX_HEIGHT = 7.0
GROUND_BAND = 12.0
PIXEL_NOISE = 0.5
EXTRA_KEYPOINTS = 0.15
WRONG_MATCHES = 0.10
PAIRS_PER_IMAGE = 8
MIN_SHARED = 15
DEPTH_STRIDE = 8


def sample_points(scene: growth_scene.Scene, A: float, B: float, rng: np.random.Generator,
                  density: float = 1.0) -> np.ndarray:
    """3D points on the facades, boxes and pavement; ``density`` scales both point densities."""
    pts = []
    for o, u, v in zip(scene.origins, scene.us, scene.vs, strict=True):
        height = min(np.linalg.norm(v), MAX_HEIGHT)
        area = np.linalg.norm(u) * height
        count = rng.poisson(area * FACADE_DENSITY * density)
        a, b = rng.random((count, 1)), rng.random((count, 1)) * height / np.linalg.norm(v)
        pts.append(o + a * u + b * v)
    # pavement: a band along the walls, inside the courtyard
    perimeter = 2 * (A + B)
    count = rng.poisson(perimeter * GROUND_BAND * GROUND_DENSITY * density)
    s, depth = rng.random(count) * perimeter, rng.random(count) * GROUND_BAND
    ground = np.zeros((count, 3))
    for k, (corner, a, length) in enumerate(growth_scene.block_sides(A, B)):
        start = sum(side[2] for side in growth_scene.block_sides(A, B)[:k])
        sel = (s >= start) & (s < start + length)
        ground[sel, :2] = corner + np.outer(s[sel] - start, a) + np.outer(depth[sel], growth_scene.inward(a))
    pts.append(ground)
    return np.concatenate(pts)


def observations(renderer: growth_scene.Renderer, views: list, points: np.ndarray) -> list[np.ndarray]:
    """Per view: (ids of the points it sees, their exact projections (M, 2))."""
    cell = 8.0
    keys = np.floor(points[:, :2] / cell).astype(np.int64)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    sorted_keys = keys[order]
    uniq, start = np.unique(sorted_keys, axis=0, return_index=True)
    ends = np.r_[start[1:], len(order)]
    index = {tuple(k): (s, e) for k, s, e in zip(uniq.tolist(), start, ends, strict=True)}
    K = renderer.K
    W, H = renderer.size
    out = []
    reach = int(math.ceil(40.0 / cell))
    for view in views:
        cx, cy = np.floor(view.center[:2] / cell).astype(int)
        ids = [order[s:e] for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)
               if (s_e := index.get((cx + dx, cy + dy))) is not None for s, e in [s_e]]
        ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        cam = (points[ids] - view.center) @ view.R.T
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = K[0, 0] * cam[:, 0] / z + K[0, 2]
            v = K[1, 1] * cam[:, 1] / z + K[1, 2]
        inside = (z > 0.3) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
        depth = renderer.trace(view.R, view.center, DEPTH_STRIDE)[0].reshape(
            len(range(0, H, DEPTH_STRIDE)), -1)
        col = np.clip(np.round(u[inside] / DEPTH_STRIDE).astype(int), 0, depth.shape[1] - 1)
        row = np.clip(np.round(v[inside] / DEPTH_STRIDE).astype(int), 0, depth.shape[0] - 1)
        seen = z[inside] <= depth[row, col] * 1.03 + 0.05
        keep = np.flatnonzero(inside)[seen]
        out.append((ids[keep], np.stack([u[keep], v[keep]], 1)))
    return out


def make_inputs(root: Path, n: int, seed: int, density: float = 1.0) -> dict:
    """features.h5, matches.h5, pairs.txt, images/, gt/ for N views under ``root``."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    views, A, B = growth_scene.make_views(n, 2, 1.0, seed)
    scene = growth_scene.build_scene(A, B, seed, [])
    K = growth_scene.intrinsics(SIZE)
    renderer = growth_scene.Renderer(scene, K, SIZE, seed)
    points = sample_points(scene, A, B, rng, density)
    obs = observations(renderer, views, points)
    # keypoints: projections + noise, extra keypoints, shuffled
    keypoints, index_of = [], []
    for ids, uv in obs:
        extra = int(len(ids) * EXTRA_KEYPOINTS)
        kp = np.concatenate([uv + rng.normal(0, PIXEL_NOISE, uv.shape),
                             rng.random((extra, 2)) * (np.array(SIZE) - 1)]).astype(np.float32)
        perm = rng.permutation(len(kp))
        kp = kp[perm]
        where = np.empty(len(perm), np.int64)
        where[perm] = np.arange(len(perm))
        keypoints.append(kp)
        index_of.append(dict(zip(ids.tolist(), where[: len(ids)].tolist(), strict=True)))
    # pairs: the views sharing most points (perfect retrieval), within 30 m
    centres = np.stack([v.center for v in views])
    sorted_ids = [np.sort(ids) for ids, _ in obs]
    pairs = set()
    for i in range(n):
        near = np.flatnonzero(np.linalg.norm(centres - centres[i], axis=1) < 30.0)
        shared = [(len(np.intersect1d(sorted_ids[i], sorted_ids[j], assume_unique=True)), j)
                  for j in near if j != i]
        best = sorted((s for s in shared if s[0] >= MIN_SHARED), reverse=True)[:PAIRS_PER_IMAGE]
        pairs.update(tuple(sorted((i, j))) for _, j in best)
    pairs = sorted(pairs)
    names = [v.name for v in views]
    # files
    root.mkdir(parents=True, exist_ok=True)
    feats_config = {"features": {"name": "synthetic", "seed": seed, "views": n}}
    with h5py.File(root / "features.h5.tmp", "w") as h5:
        h5.attrs["config"] = json.dumps(feats_config, sort_keys=True)
        for name, kp in zip(names, keypoints, strict=True):
            g = h5.create_group(name)
            g.create_dataset("keypoints", data=kp)
            g.create_dataset("scores", data=np.ones(len(kp), np.float32))
            g.create_dataset("image_size", data=np.array(SIZE, np.int64))
    os.replace(root / "features.h5.tmp", root / "features.h5")

    match_config = {"features": feats_config, "matcher": {"name": "synthetic-exact"}}
    num_matches = 0
    with h5py.File(root / "matches.h5.tmp", "w") as h5:
        h5.attrs["config"] = json.dumps(match_config, sort_keys=True)
        for i, j in pairs:
            a, b = names[i], names[j]  # canonical: names sort as indices
            common = np.intersect1d(sorted_ids[i], sorted_ids[j], assume_unique=True)
            m0 = np.full(len(keypoints[i]), -1, np.int32)
            ia = np.array([index_of[i][p] for p in common], np.int64)
            jb = np.array([index_of[j][p] for p in common], np.int64)
            m0[ia] = jb
            wrong = int(len(common) * WRONG_MATCHES)
            free = np.flatnonzero(m0 < 0)
            if wrong and len(free):
                src = rng.choice(free, min(wrong, len(free)), replace=False)
                used = set(jb.tolist())
                candidates = rng.permutation(len(keypoints[j]))[: 3 * len(src)]
                dst = [d for d in candidates if d not in used][: len(src)]
                m0[src[: len(dst)]] = dst
            num_matches += int((m0 >= 0).sum())
            g = h5.create_group(matches_h5.pair_key(a, b))
            g.create_dataset("matches0", data=m0)
            g.create_dataset("matching_scores0", data=(m0 >= 0).astype(np.float32))
            g.attrs["num_keypoints1"] = len(keypoints[j])
    os.replace(root / "matches.h5.tmp", root / "matches.h5")
    textfiles.write_pairs(root / "pairs.txt", [(names[i], names[j]) for i, j in pairs])
    # one grey JPEG with the scene's EXIF focal, hard-linked under every name
    (root / "images").mkdir(exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    buffer = _bytes_io.BytesIO()
    Image.new("RGB", SIZE, (128, 128, 128)).save(buffer, "JPEG", quality=80, exif=growth_scene.exif_bytes())
    master = root / "grey.jpg"
    master.write_bytes(buffer.getvalue())
    for view in views:
        target = root / "images" / view.name
        if not target.exists():
            os.link(master, target)
        growth_scene.write_camera(root / "gt" / f"{view.name}.camera", K, view, SIZE)
    return {"seconds": round(time.perf_counter() - t0, 1), "density": density, "points3D": int(len(points)),
            "keypoints_per_image": round(float(np.mean([len(k) for k in keypoints])), 1),
            "pairs": len(pairs), "matches_per_pair": round(num_matches / max(len(pairs), 1), 1)}


def run_size(n: int, args: argparse.Namespace) -> None:
    base = args.root / f"n{n}"
    base.mkdir(parents=True, exist_ok=True)
    results = growth.Results(base / "results.json")
    if "inputs" not in results:
        print(f"[n={n}] making inputs", flush=True)
        results.put("inputs", make_inputs(base / "data", n, args.seed, args.density))
        print(f"[n={n}] inputs: {json.dumps(results['inputs'])}", flush=True)
    recorded = results["inputs"].get("density", 1.0)
    if recorded != args.density:  # a series is one density: never resume onto other inputs
        raise SystemExit(f"{base} was made with --density {recorded}, not {args.density}: "
                         "use another --root or the same density")
    data = base / "data"
    env = growth.pipeline_env()
    for mapper in args.mappers:
        name = f"sfm-{mapper}"
        if name not in results:
            out = base / name
            cmd = growth.omniglue("sfm", str(data / "images"), str(data / "features.h5"),
                                  str(data / "matches.h5"), str(out), "--pairs", str(data / "pairs.txt"),
                                  "--mapper", mapper)
            print(f"[n={n}] {name}", flush=True)
            record = growth.timed(["timeout", str(args.timeout), *cmd], base / "logs" / f"{name}.log", env)
            if record["rc"] == 0:
                stats = json.loads((out / "stats.json").read_text())
                record.update({"seconds": stats.get("seconds", {}), "registered": stats.get("registered"),
                               "verified_pairs": stats.get("pairs", {}).get("verified_pairs")})
            results.put(name, record)
            print(f"[n={n}] {name}: {json.dumps(record)}", flush=True)
        evaluate = f"evaluate-{mapper}"
        if results[name]["rc"] == 0 and evaluate not in results:
            log = base / "logs" / f"{evaluate}.log"
            record = growth.timed(growth.omniglue("evaluate", str(base / name / "sparse"), "--gt",
                                                  str(data / "gt"), "--json"), log, env)
            if record["rc"] == 0:
                record.update(json.loads(log.read_text().strip().splitlines()[-1]))
            results.put(evaluate, record)
            print(f"[n={n}] {evaluate}: {json.dumps(record)}", flush=True)


LOCAL_RADIUS_M = 30.0


def local_auc(model_dir: Path, gt_dir: Path, radius: float = LOCAL_RADIUS_M) -> dict:
    """Pose AUC@5 over the pairs whose true centres are within ``radius`` m: a model bent by drift
    along a long path keeps it while the AUC over all pairs (far pairs included) collapses."""
    from omniglue_sfm.evaluation import reconstruction
    from omniglue_sfm.geometry.scenes import model_poses, read_strecha_dir

    gt = read_strecha_dir(gt_dir)
    names = sorted(gt)
    centres = np.stack([-gt[n].R.T @ gt[n].t for n in names])
    errors = reconstruction.pair_errors(model_poses(model_dir), gt)  # combinations(names, 2) order
    near = np.concatenate([np.linalg.norm(centres[i + 1:] - centres[i], axis=1) < radius
                           for i in range(len(names) - 1)])
    return {"radius_m": radius, "pairs": int(near.sum()),
            "auc5": float(reconstruction.pose_auc(errors[near])[0])}


def local_of(base: Path, steps: dict, mapper: str) -> dict:
    """``local_auc`` of a finished run, computed once and kept in its results.json."""
    key = f"local-{mapper}"
    if key not in steps and (base / f"sfm-{mapper}" / "sparse").is_dir():
        growth.Results(base / "results.json").put(
            key, local_auc(base / f"sfm-{mapper}" / "sparse", base / "data" / "gt"))
        steps = json.loads((base / "results.json").read_text())["steps"]
    return steps.get(key, {})


def report(root: Path) -> str:
    lines = ["| N | points | keypoints/img | pairs | matches/pair | mapper | sfm wall s (CPU) | database s | "
             "verification s | mapping s | peak MB | registered | AUC@5 | "
             f"AUC@5 within {LOCAL_RADIUS_M:.0f} m | centre err. m |",
             "|" + "---|" * 15]
    fits: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(root.glob("n*/results.json"), key=lambda p: int(p.parent.name[1:])):
        n = int(path.parent.name[1:])
        steps = json.loads(path.read_text())["steps"]
        inp = steps.get("inputs", {})
        for mapper in ("incremental", "global"):
            rec = steps.get(f"sfm-{mapper}")
            if rec is None:
                continue
            ev = steps.get(f"evaluate-{mapper}", {})
            secs = rec.get("seconds", {})
            ok = rec["rc"] == 0
            near = local_of(path.parent, steps, mapper) if ok else {}
            lines.append(
                f"| {n} | {inp.get('points3D', '-')} | {inp.get('keypoints_per_image', '-')} | "
                f"{inp.get('pairs', '-')} | {inp.get('matches_per_pair', '-')} | {mapper} | "
                + (f"{rec['wall']:.0f} ({rec['cpu']:.0f}) | {secs.get('database', math.nan):.1f} | "
                   f"{secs.get('verification', math.nan):.1f} | {secs.get('mapping', math.nan):.1f} | "
                   f"{rec['peak_mb']:.0f} | {rec.get('registered')} / {n} | {ev.get('auc5', math.nan):.3f} | "
                   f"{near.get('auc5', math.nan):.3f} | {ev.get('center_error') or math.nan:.3f} |" if ok else
                   f"stopped (rc {rec['rc']}) after {rec['wall']:.0f} s | | | | "
                   f"{rec['peak_mb']:.0f} | | | | |"))
            if ok:
                for part in ("database", "verification", "mapping"):
                    fits.setdefault(f"{part} ({mapper})", []).append((n, secs.get(part, math.nan)))
                fits.setdefault(f"sfm process CPU ({mapper})", []).append((n, rec["cpu"]))
    lines += ["", "| part | k (time ~ N^k) | sizes |", "|---|---|---|"]
    for part, pts in fits.items():
        if len(pts) < 2:  # one size: no exponent
            continue
        k = growth.fit_exponent([p[0] for p in pts], [p[1] for p in pts])
        lines.append(f"| {part} | {k:.2f} | {', '.join(str(p[0]) for p in pts)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    r.add_argument("--mappers", nargs="+", default=["global", "incremental"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--timeout", type=int, default=4 * 3600, help="seconds one sfm run may take")
    r.add_argument("--density", type=float, default=1.0,
                   help="scale of the 3D point densities (0.3: about 80 keypoints per image, a cheaper "
                        "series and a test of the mappers on sparse matches)")
    q = sub.add_parser("report")
    q.add_argument("--root", type=Path, required=True)
    q.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    if args.command == "run":
        for n in sorted(args.sizes):
            run_size(n, args)
        print(report(args.root))
    else:
        text = report(args.root)
        if args.markdown:
            args.markdown.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
