"""A trained model out of the trainer: ``export`` (the shippable checkpoint) and ``finetune``
(few-shot adaptation to a user's photos, paper section 4.4)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path

import torch

from ..formats import h5io
from ..formats.images import list_images
from ..matchers.omniglue import OmniGlue
from ..matchers.omniglue_plugin import load_checkpoint, load_model, save_checkpoint
from ..runtime import weights
from .data import FeatureFn, PoolConfig, build_pool, load_pool
from .train import DEFAULT_TRAIN, train


def export(ckpt_path: Path | str, out_path: Path | str, metadata: dict | None = None,
           quantize: bool = True) -> Path:
    """Write the shippable ``{"conf", "state_dict", "metadata"}`` file (+ ``.json`` metadata)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    conf = dict(state["conf"])
    cfg = state["config"]
    model = OmniGlue(conf)
    model.load_state_dict(state["model"])
    features = cfg.get("features")
    if features is None and cfg["data"].get("scenes"):  # what the scenes' features.h5 hold

        features = h5io.read_config(Path(cfg["data"]["scenes"][0]) / "features.h5").get("features")
    meta = {
        "features": features, "guidance": cfg.get("guidance"), "steps": state["step"],
        "pairs_seen": state["extra"]["pairs_seen"], "train_wall_s": round(state["extra"]["elapsed_s"]),
        "val": state["extra"].get("val"), "data": cfg["data"], "train": cfg["train"],
        "warm_start": cfg["train"]["warm_start"], "unique_pairs_cached": state["extra"].get("pool_size"),
        "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), torch {torch.__version__}",
        **(metadata or {}),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # a model trained on top of a LightGlue warm start with frozen parts ships as the difference
    # only a base every user can resolve (a known name, not a local path) makes a portable file
    ws = cfg["train"]["warm_start"]
    frozen_trunk = cfg["train"].get("trainable") and not cfg["train"].get("init_checkpoint")
    base = ws if frozen_trunk and ws in weights.KNOWN else None
    save_checkpoint(model, out_path, meta, quantize=quantize, base=base)
    out_path.with_suffix(".json").write_text(json.dumps({"conf": conf, "metadata": meta}, indent=2,
                                                        default=str) + "\n")
    return out_path


def finetune(images: Path | str, init: str, out: Path | str, steps: int, lr: float = 3e-5,
             batch_size: int = 2, cache_dir: Path | str | None = None, seed: int = 0,
             progress: bool = True) -> Path:
    """Few-shot adaptation (paper §4.4): homography pairs of the user's photos, from ``init``.

    Features are extracted with the configuration recorded in ``init``'s metadata, so the
    adapted model sees the same features it was trained on.
    """
    images = Path(images)
    names = list_images(images)
    if not names:
        raise FileNotFoundError(f"no images in {images}")
    ckpt = load_checkpoint(init)
    meta = ckpt.get("metadata", {})
    feats = meta.get("features") or {"name": "aliked", "model": "aliked-n16", "max_keypoints": 512}
    guidance = meta.get("guidance")
    data = meta.get("data", {})
    key = f"{images.resolve()}:{json.dumps(feats, sort_keys=True)}:{seed}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir) if cache_dir else Path(out).parent / f".finetune_{tag}"
    cfg = {
        "name": f"finetune_{tag}", "seed": seed, "out_dir": str(cache_dir / "run"),
        "features": feats, "guidance": guidance, "model": dict(ckpt["conf"]),
        "data": {"roots": [str(images)], "patch_size": data.get("patch_size", [320, 240]),
                 "shifts": data.get("shifts", [100.0, 200.0]), "augment": data.get("augment", 1.0),
                 "repeats": max(1, math.ceil(steps * batch_size / (2 * len(names)))), "train_seed": seed},
        "train": {**DEFAULT_TRAIN, "steps": steps, "lr": lr, "batch_size": batch_size,
                  "warmup_steps": max(1, steps // 10), "warm_start": "", "val_every": 10**9,
                  "checkpoint_every": max(1, min(25, steps))},
    }
    pool_cfg = PoolConfig(roots=[str(images)], split="all", seed=seed, shifts=cfg["data"]["shifts"],
                          patch_size=tuple(cfg["data"]["patch_size"]), augment=cfg["data"]["augment"],
                          repeats=min(cfg["data"]["repeats"], 8), shard_size=4)
    build_pool(pool_cfg, cache_dir / "pairs", FeatureFn(feats, guidance), progress=progress)
    records = load_pool([cache_dir / "pairs"])
    last = train(cfg, records=records, val_records=[], progress=progress,
                 init_state=load_model(init)[0].state_dict())
    return export(last, out, {"finetuned_from": str(init), "finetune_images": str(images),
                              "finetune_photos": len(names), "base_metadata": meta})
