"""Training data: a fixed split of photos, pools of synthetic homography pairs with cached features,
and ground-truth labels from the homography.

* Split: each photo goes to train / val / test by a hash of its key ``<folder>/<file>`` (about 5 %
  val, 5 % test), so the split never changes when photos are added elsewhere, and held-out photos
  are never trained on. :func:`write_split` stores the held-out list as a file.
* Pools: for a split and a seed, every photo gives ``pairs_per_photo`` pairs; each pair's random
  stream is seeded by (seed, photo key, index), so a pool is reproducible and can be generated in
  any order or resumed. Features (the pipeline's own extractor and guidance plugins) are cached in
  ``.pt`` shards written atomically (tmp + rename), so epochs never re-run the extractor.
* Labels: :func:`gt_matches_from_homography` (positive: mutual nearest and < 3 px symmetric
  reprojection error; unmatched: nearest > 5 px; in between: ignored, -2).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..formats.images import list_images, read_image
from ..guidance.base import sample_dense
from .homography import photometric_augment, render_views, to_uint8_like, warp_points

logger = logging.getLogger(__name__)

IGNORE = -2
UNMATCHED = -1


# --------------------------------------------------------------------------------------------
# photos and the split


def split_of(key: str, val_percent: int = 5, test_percent: int = 5) -> str:
    """'train', 'val' or 'test' for a photo key, from a stable hash (never Python's ``hash``)."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100
    if bucket < val_percent:
        return "val"
    if bucket < val_percent + test_percent:
        return "test"
    return "train"


def list_photos(roots: Sequence[Path | str]) -> list[tuple[str, Path]]:
    """(key, path) of every image below each root; key = ``<root folder name>/<relative path>``."""
    photos = []
    for root in roots:
        root = Path(root)
        photos += [(f"{root.name}/{rel}", root / rel) for rel in list_images(root)]
    if not photos:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, roots))}")
    return photos


def photos_of_split(roots: Sequence[Path | str], split: str) -> list[tuple[str, Path]]:
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"unknown split {split!r}")
    return [p for p in list_photos(roots) if split == "all" or split_of(p[0]) == split]


def write_split(roots: Sequence[Path | str], path: Path | str) -> dict[str, int]:
    """Write ``<split> <key>`` for every held-out (val / test) photo; returns split sizes."""
    counts = {"train": 0, "val": 0, "test": 0}
    lines = []
    for key, _ in list_photos(roots):
        s = split_of(key)
        counts[s] += 1
        if s != "train":
            lines.append(f"{s} {key}")
    Path(path).write_text("# held-out photos (hash split, never trained on): <split> <key>\n"
                          + "\n".join(sorted(lines)) + "\n")
    return counts


# --------------------------------------------------------------------------------------------
# features of a rendered view, with the pipeline's own plugins


class FeatureFn:
    """Runs the pipeline's extractor (and guidance) on a (3, H, W) image in [0, 1].

    Returns keypoints (N, 2) float32, scores (N,), descriptors (N, D) float16, guidance (N, C)
    float16 (the dtype ``features.h5`` stores guidance in).
    """

    def __init__(self, features_conf: dict, guidance_conf: dict | None) -> None:
        from ..config import registry

        self.features_conf = dict(features_conf)
        self.guidance_conf = dict(guidance_conf) if guidance_conf else None
        self.extractor = registry.extractor(self.features_conf).eval()
        self.guidance = registry.guidance(self.guidance_conf).eval() if guidance_conf else None

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.extractor(image[None])
        out = {
            "keypoints": feats["keypoints"].float().contiguous(),
            "scores": feats["scores"].float().contiguous(),
            "descriptors": feats["descriptors"].half().contiguous(),
        }
        if self.guidance is not None:
            g = self.guidance(image[None], feats)
            size = (image.shape[-1], image.shape[-2])
            out["guidance"] = sample_dense(g["dense"].float(), feats["keypoints"].float(), size).half()
        return out


# --------------------------------------------------------------------------------------------
# pools of pairs


@dataclass
class PoolConfig:
    roots: list[str]
    split: str = "train"
    seed: int = 0
    # one pair per shift and photo; all pairs of a photo share view 0 (fewer extractor runs)
    shifts: list[float] = field(default_factory=lambda: [100.0, 200.0])  # SH100, SH200 at 640 px
    patch_size: tuple[int, int] = (320, 240)
    augment: float = 1.0  # photometric strength (0 for test pools)
    shard_size: int = 16  # photos per shard
    max_photos: int | None = None
    repeats: int = 1  # crops per photo (different random crops and homographies)


def photo_seed(seed: int, key: str, repeat: int) -> int:
    return int(hashlib.sha1(f"{seed}:{key}:{repeat}".encode()).hexdigest()[:12], 16)


def pool_items(cfg: PoolConfig) -> list[tuple[str, Path, int]]:
    """(photo key, path, repeat) of every crop of the pool, in a seeded shuffled order (so a
    partial pool still covers many photos)."""
    photos = photos_of_split(cfg.roots, cfg.split)
    if cfg.max_photos:
        photos = photos[: cfg.max_photos]
    items = [(key, path, r) for r in range(cfg.repeats) for key, path in photos]
    order = np.random.default_rng(cfg.seed).permutation(len(items))
    return [items[i] for i in order]


def make_photo_pairs(cfg: PoolConfig, key: str, path: Path, repeat: int = 0) -> dict:
    """Render view 0 and one view 1 per shift: images (3, H, W), H_0to1 list, shifts in px."""
    from .homography import sample_crop, sample_homography, scaled_shift

    rng = np.random.default_rng(photo_seed(cfg.seed, key, repeat))
    shifts = [scaled_shift(s, cfg.patch_size) for s in cfg.shifts]
    photo = torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255
    crop = sample_crop((photo.shape[2], photo.shape[1]), cfg.patch_size, max(shifts), rng)
    hs = [sample_homography(cfg.patch_size, s, rng) for s in shifts]
    im0, ims1 = render_views(photo, crop, hs, cfg.patch_size)
    im0 = to_uint8_like(photometric_augment(im0, rng, cfg.augment))
    ims1 = [to_uint8_like(photometric_augment(im, rng, cfg.augment)) for im in ims1]
    return {"image0": im0, "images1": ims1, "H_0to1": [torch.from_numpy(h) for h in hs],
            "shifts": shifts}


def build_pool(cfg: PoolConfig, out_dir: Path | str, feature_fn: FeatureFn,
               limit: int | None = None, progress: bool = True) -> int:
    """Generate (or resume) the pool's feature shards in ``out_dir``; returns pairs present.

    ``limit`` caps the number of photos (crops) processed.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = pool_items(cfg)[:limit]
    shards = [items[i:i + cfg.shard_size] for i in range(0, len(items), cfg.shard_size)]
    per = len(cfg.shifts)
    done = 0
    bar = tqdm(total=len(items) * per, desc=f"pool {cfg.split}", disable=not progress)
    for s, shard in enumerate(shards):
        path = out_dir / f"shard_{s:05d}.pt"
        if path.is_file():
            done += len(shard) * per
            bar.update(len(shard) * per)
            continue
        records = []
        t0 = time.time()
        size = torch.tensor([cfg.patch_size[0], cfg.patch_size[1]], dtype=torch.float32)
        for key, photo_path, repeat in shard:
            views = make_photo_pairs(cfg, key, photo_path, repeat)
            f0 = {**feature_fn(views["image0"]), "image_size": size}
            for im1, h, shift in zip(views["images1"], views["H_0to1"], views["shifts"], strict=True):
                f1 = {**feature_fn(im1), "image_size": size}
                records.append({"view0": f0, "view1": f1, "H_0to1": h, "photo": key,
                                "repeat": repeat, "shift": shift})
                bar.update(1)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"records": records, "features": feature_fn.features_conf,
                    "guidance": feature_fn.guidance_conf, "pool": dict(cfg.__dict__)}, tmp)
        os.replace(tmp, path)
        done += len(records)
        logger.info("wrote %s (%d pairs, %.1f s)", path, len(records), time.time() - t0)
    bar.close()
    return done


def load_pool(dirs: Iterable[Path | str], max_keypoints: int | None = None) -> list[dict]:
    """Every cached pair in the shards of ``dirs`` (sorted, so the order is reproducible).

    ``max_keypoints`` keeps only the highest-scoring keypoints of each view (cheaper training).
    """
    records = []
    for d in dirs:
        for path in sorted(Path(d).glob("shard_*.pt")):
            records += torch.load(path, map_location="cpu", weights_only=False)["records"]
    if max_keypoints:
        cache: dict[int, dict] = {}  # views shared by several pairs stay shared
        for r in records:
            for v in ("view0", "view1"):
                view = r[v]
                if id(view) not in cache:
                    cache[id(view)] = top_keypoints(view, max_keypoints)
                r[v] = cache[id(view)]
    return records


def top_keypoints(view: dict, k: int) -> dict:
    """The ``k`` highest-scoring keypoints of a cached view (order kept)."""
    n = view["keypoints"].shape[0]
    if n <= k:
        return view
    keep = view["scores"].topk(k).indices.sort().values
    return {key: (val[keep] if torch.is_tensor(val) and val.shape[:1] == (n,) else val)
            for key, val in view.items()}


# --------------------------------------------------------------------------------------------
# ground truth


def gt_matches_from_homography(
    kp0: torch.Tensor, kp1: torch.Tensor, h_0to1: torch.Tensor | np.ndarray,
    pos_th: float = 3.0, neg_th: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels for (N, 2) and (M, 2) keypoints related by ``h_0to1``.

    Distance = max of the reprojection errors in both directions (glue-factory's symmetric
    error). Returns gt0 (N,) / gt1 (M,) int64: index of the match, -1 unmatched (nearest > neg_th),
    -2 ignore (neither).
    """
    h = torch.as_tensor(h_0to1, dtype=torch.float64)
    d01 = torch.cdist(warp_points(h, kp0), kp1.float())
    d10 = torch.cdist(kp0.float(), warp_points(torch.linalg.inv(h), kp1))
    dist = torch.maximum(d01, d10)
    n, m = dist.shape
    gt0 = torch.full((n,), IGNORE, dtype=torch.long)
    gt1 = torch.full((m,), IGNORE, dtype=torch.long)
    if n == 0 or m == 0:
        return gt0.fill_(UNMATCHED), gt1.fill_(UNMATCHED)
    min0, arg0 = dist.min(1)
    min1, arg1 = dist.min(0)
    mutual = arg1[arg0] == torch.arange(n)
    pos0 = mutual & (min0 < pos_th)
    gt0[min0 > neg_th] = UNMATCHED
    gt1[min1 > neg_th] = UNMATCHED
    gt0[pos0] = arg0[pos0]
    gt1[arg0[pos0]] = torch.arange(n)[pos0]
    return gt0, gt1


def record_to_features(view: dict, with_guidance: bool) -> dict[str, torch.Tensor]:
    out = {
        "keypoints": view["keypoints"].float(),
        "descriptors": view["descriptors"].float(),
        "scores": view["scores"].float(),
        "image_size": view["image_size"].float(),
    }
    if with_guidance:
        out["guidance"] = view["guidance"].float()
    return out


def collate_records(records: list[dict], with_guidance: bool = True) -> dict[str, torch.Tensor]:
    """Padded matcher batch (``matchers.base.collate_pairs``) plus gt_matches0/1 (padding: -2).

    Labels come from a record's ``gt0`` / ``gt1`` when present (e.g. records of real scenes,
    ``training.scenes``), else from its ``H_0to1``; ``H_0to1`` is stacked into the batch only when
    every record has one.
    """
    from ..matchers.base import collate_pairs

    pairs = [(record_to_features(r["view0"], with_guidance), record_to_features(r["view1"], with_guidance))
             for r in records]
    data = collate_pairs(pairs)
    b, n = data["mask0"].shape
    m = data["mask1"].shape[1]
    gt0 = torch.full((b, n), IGNORE, dtype=torch.long)
    gt1 = torch.full((b, m), IGNORE, dtype=torch.long)
    for i, r in enumerate(records):
        if "gt0" not in r:  # labels are cheap: computed once per record and kept
            if "H_0to1" not in r:
                raise KeyError("a training record needs either gt0/gt1 labels or an H_0to1 homography")
            r["gt0"], r["gt1"] = gt_matches_from_homography(
                r["view0"]["keypoints"], r["view1"]["keypoints"], r["H_0to1"])
        gt0[i, : r["gt0"].shape[0]] = r["gt0"]
        gt1[i, : r["gt1"].shape[0]] = r["gt1"]
    data["gt_matches0"], data["gt_matches1"] = gt0, gt1
    if all("H_0to1" in r for r in records):
        data["H_0to1"] = torch.stack([torch.as_tensor(r["H_0to1"], dtype=torch.float64) for r in records])
    return data
