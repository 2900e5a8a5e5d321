"""Train OmniGlue (``omniglue-sfm train CONFIG.toml``) and adapt it to a user's own photos
(``omniglue-sfm finetune IMAGES --init CKPT --out CKPT --steps N``).

Two kinds of data (``[data] kind``): ``homography`` (synthetic pairs cut from photos, the paper's
first stage) and ``scenes`` (real 3D correspondences from COLMAP models plus their features.h5,
the paper's second stage: any model works, MegaDepth's included; ``training.scenes``). The
loss is the NLL of the assignment after every layer (deep supervision); with the token
confidence heads trainable, LightGlue's confidence loss is added. ``[train] trainable`` limits
which parameters learn (e.g. only ``guidance_scale`` on a LightGlue warm start); the exported
checkpoint then stores only the tensors that differ from the warm start.

A run lives in ``out_dir``: ``last.pt`` (model, optimiser, step, RNG; rewritten atomically every
``checkpoint_every`` steps, so ``kill -9`` loses at most that many steps and re-running the same
command resumes), ``log.csv`` (step, loss, lr, val precision / recall) and ``config.json``.
Feature caches (``data.cache_dir``) are built first and reused; the trainer re-reads the shards
every ``reload_every`` steps, so it can start while a separate ``--stage cache`` process is still
filling the pool.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..matchers.omniglue import OmniGlue
from ..matchers.omniglue_plugin import warm_start
from .data import FeatureFn, PoolConfig, build_pool, collate_records, load_pool
from .losses import match_counts, nll_loss, precision_recall
from .scene_pairs import label_precision_recall, records_from_scene

logger = logging.getLogger(__name__)

DEFAULT_TRAIN = {
    "steps": 1000,
    "batch_size": 4,
    "lr": 1e-4,
    "weight_decay": 0.0,
    "warmup_steps": 50,
    "decay_start": 0.6,  # fraction of steps after which the LR decays exponentially
    "final_lr_factor": 0.1,
    "grad_clip": 1.0,
    "checkpoint_every": 25,
    "val_every": 100,
    "val_pairs": 64,
    "reload_every": 50,
    "warm_start": "aliked_lightglue",  # LightGlue checkpoint to start from, or "" for random
    "threads": 1,
    "max_minutes": 0,  # stop (with a checkpoint) after this wall time; 0 = no limit
    "init_checkpoint": "",  # start from these OmniGlue weights (an export) instead of the warm start
    "trainable": [],  # parameter-name prefixes that learn; [] = all
    "confidence_weight": 1.0,  # weight of the token-confidence loss (when those heads learn)
}


# --------------------------------------------------------------------------------------------
# configuration


def load_config(path: Path | str) -> dict:
    """Read a training TOML; relative data / output paths are relative to the working directory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    for section in ("data", "model"):
        if section not in cfg:
            raise ValueError(f"{path}: missing [{section}] section")
    if cfg["data"].get("kind", "homography") not in ("homography", "scenes"):
        raise ValueError(f"{path}: [data] kind must be 'homography' or 'scenes'")
    if cfg["data"].get("kind", "homography") == "homography" and "features" not in cfg:
        raise ValueError(f"{path}: missing [features] section (homography data extracts features)")
    cfg["train"] = {**DEFAULT_TRAIN, **cfg.get("train", {})}
    unknown = set(cfg["train"]) - set(DEFAULT_TRAIN)
    if unknown:
        raise ValueError(f"{path}: unknown [train] keys {sorted(unknown)}")
    cfg.setdefault("name", path.stem)
    cfg.setdefault("seed", 0)
    cfg.setdefault("out_dir", f"training_cache/runs/{cfg['name']}")
    return cfg


def pool_config(cfg: dict, split: str) -> PoolConfig:
    d = cfg["data"]
    seed = d.get("val_seed", 1000) if split == "val" else d.get("train_seed", cfg["seed"])
    return PoolConfig(
        roots=[str(r) for r in d["roots"]], split=split, seed=seed,
        shifts=[float(s) for s in d.get("shifts", [100.0, 200.0])],
        patch_size=tuple(d.get("patch_size", [320, 240])),
        augment=float(d.get("augment", 1.0)),
        repeats=int(d.get("repeats", 1)) if split != "val" else 1,
        max_photos=d.get("max_photos"),
    )


def pool_dirs(cfg: dict) -> tuple[Path, Path]:
    root = Path(cfg["data"]["cache_dir"])
    return root / "train", root / "val"


def scene_records(cfg: dict) -> tuple[list[dict], list[dict]]:
    """Training and validation pairs of ``[data] scenes`` / ``val_scenes`` (pipeline outputs:
    features.h5 + sparse/). Validation scenes must be other scenes, not other pairs."""
    d = cfg["data"]
    common = {"max_keypoints": d.get("max_keypoints"), "min_shared": int(d.get("min_shared", 50)),
              "max_pairs": d.get("max_pairs_per_scene"), "seed": int(cfg["seed"])}
    overlap = set(d.get("scenes", [])) & set(d.get("val_scenes", []))
    if overlap:
        raise ValueError(f"[data] scenes and val_scenes share {sorted(overlap)}")
    train = [r for scene in d.get("scenes", []) for r in records_from_scene(scene, **common)]
    val = [r for scene in d.get("val_scenes", []) for r in records_from_scene(scene, **common)]
    return train, val


def build_caches(cfg: dict, progress: bool = True) -> None:
    if cfg["data"].get("kind", "homography") == "scenes":
        return  # scene data is read from the pipeline's own outputs: nothing to cache
    ff = FeatureFn(cfg["features"], cfg.get("guidance"))
    train_dir, val_dir = pool_dirs(cfg)
    build_pool(pool_config(cfg, "val"), val_dir, ff, progress=progress)
    build_pool(pool_config(cfg, "train"), train_dir, ff, progress=progress)


# --------------------------------------------------------------------------------------------
# schedule and state


def learning_rate(step: int, t: dict) -> float:
    """Linear warm-up, constant, then exponential decay to ``final_lr_factor`` at the last step."""
    lr = t["lr"]
    if step < t["warmup_steps"]:
        return lr * (step + 1) / t["warmup_steps"]
    start = int(t["decay_start"] * t["steps"])
    if step <= start or t["steps"] <= start:
        return lr
    frac = (step - start) / max(1, t["steps"] - start)
    return lr * t["final_lr_factor"] ** frac


def make_model(cfg: dict) -> OmniGlue:
    model = OmniGlue(dict(cfg["model"]))
    ws = cfg["train"]["warm_start"]
    if ws:
        fresh = warm_start(model, ws)
        logger.info("warm start from %s; freshly initialised: %s", ws, ", ".join(fresh))
    return model


def trainable_parameters(model: OmniGlue, prefixes: list[str]) -> list[torch.nn.Parameter]:
    """Parameters whose names start with one of ``prefixes`` (all when empty); freezes the rest."""
    chosen = []
    for name, param in model.named_parameters():
        param.requires_grad_(not prefixes or any(name.startswith(p) for p in prefixes))
        if param.requires_grad:
            chosen.append(param)
    if not chosen:
        raise ValueError(f"[train] trainable {prefixes} matches no parameter of the model")
    return chosen


def training_loss(out: dict, data: dict, confidence_weight: float) -> tuple[torch.Tensor, dict]:
    """Mean NLL over the per-layer assignments (deep supervision) + token-confidence BCE.

    Confidence targets (LightGlue): a point is confident at layer i when its prediction there
    (best index or unmatched) equals the final layer's."""
    gt0, gt1 = data["gt_matches0"], data["gt_matches1"]
    layers = out["log_assignments"]
    losses = [nll_loss(log_p, gt0, gt1) for log_p in layers]
    loss = torch.stack([part[0] for part in losses]).mean()
    parts = losses[-1][1]
    if confidence_weight and any(p.requires_grad for t in out["token_confidences"] for p in t):
        final = [_predictions(layers[-1], 2), _predictions(layers[-1], 1)]
        masks = [data["mask0"], data["mask1"]]
        bce = []
        for i, tokens in enumerate(out["token_confidences"]):
            preds = [_predictions(layers[i], 2), _predictions(layers[i], 1)]
            for side in (0, 1):
                target = (preds[side] == final[side]).float()
                err = F.binary_cross_entropy(tokens[side].float(), target, reduction="none")
                bce.append((err * masks[side]).sum() / masks[side].sum().clamp(min=1))
        loss = loss + confidence_weight * torch.stack(bce).mean()
    return loss, parts


def _predictions(log_p: torch.Tensor, dim: int) -> torch.Tensor:
    """Best index per point of image 0 (dim 2) or 1 (dim 1), the dustbin included."""
    return log_p[:, :-1, :].argmax(2) if dim == 2 else log_p[:, :, :-1].argmax(1)


def save_state(path: Path, model: OmniGlue, opt: torch.optim.Optimizer, step: int, cfg: dict,
               extra: dict) -> None:
    """Atomic (tmp + rename): a kill at any moment leaves either the old or the new file."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "conf": dict(model.conf), "config": cfg, "extra": extra,
             "torch_rng": torch.get_rng_state()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The pairs of a step depend only on (seed, step, pool size): resuming replays them exactly."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n, size=min(batch_size, n), replace=False).tolist()


# --------------------------------------------------------------------------------------------
# evaluation on cached pairs


@torch.no_grad()
def evaluate_pairs(model: OmniGlue, records: list[dict], with_guidance: bool, batch_size: int = 8
                   ) -> dict[str, float]:
    was_training = model.training
    model.eval()
    counts = []
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        data = collate_records(chunk, with_guidance)
        out = model(data)
        for b, r in enumerate(chunk):
            n = r["view0"]["keypoints"].shape[0]
            if "H_0to1" in r:
                counts.append(match_counts(out["matches0"][b, :n], r["gt0"], r["view0"]["keypoints"],
                                           r["view1"]["keypoints"], r["H_0to1"], data["mask0"][b, :n]))
            else:  # real scenes: labels from the 3D model
                counts.append(label_precision_recall(out["matches0"][b, :n], r["gt0"]))
    model.train(was_training)
    p, r = precision_recall(counts)
    return {"precision": p, "recall": r}


# --------------------------------------------------------------------------------------------
# the training loop


CSV_FIELDS = ["step", "loss", "nll_pos", "nll_neg", "lr", "pairs_seen", "elapsed_s", "val_precision",
              "val_recall"]


def _trim_csv(path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def train(cfg: dict, records: list[dict] | None = None, val_records: list[dict] | None = None,
          init_state: dict | None = None, progress: bool = True) -> Path:
    """Run (or resume) training as configured; returns the path of ``last.pt``.

    ``records`` / ``val_records`` bypass the caches (tests, finetuning); ``init_state`` is a
    model state dict to start from instead of the warm start.
    """
    from tqdm import tqdm

    t = cfg["train"]
    torch.set_num_threads(int(t["threads"]))
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    ckpt_path, log_path = out / "last.pt", out / "log.csv"
    with_guidance = bool(cfg.get("guidance")) and cfg["model"].get("guidance", True)
    if not with_guidance and any(p.startswith("guidance") for p in t["trainable"]):
        raise ValueError("[train] trainable names the guidance scales, but the data has no guidance "
                         "([guidance] section) or [model] guidance is false: they would never learn")

    torch.manual_seed(cfg["seed"])
    if init_state is None and t["init_checkpoint"]:
        from ..matchers.omniglue_plugin import load_model

        init_state = load_model(t["init_checkpoint"])[0].state_dict()
    model = make_model(cfg) if init_state is None else OmniGlue(dict(cfg["model"]))
    if init_state is not None:
        model.load_state_dict(init_state)
    opt = torch.optim.AdamW(trainable_parameters(model, list(t["trainable"])), lr=t["lr"],
                            weight_decay=t["weight_decay"])
    step, extra = 0, {"pairs_seen": 0, "elapsed_s": 0.0}
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, extra = state["step"], state["extra"]
        logger.info("resuming %s at step %d", ckpt_path, step)
    _trim_csv(log_path, step)
    new_log = not log_path.is_file()
    log_f = open(log_path, "a", newline="")
    writer = csv.DictWriter(log_f, CSV_FIELDS)
    if new_log:
        writer.writeheader()

    fixed_pool = records is not None
    train_dir, val_dir = None, None
    if fixed_pool:
        pool = records
    elif cfg["data"].get("kind", "homography") == "scenes":
        pool, scene_val = scene_records(cfg)
        fixed_pool = True
        if val_records is None:
            val_records = scene_val[: t["val_pairs"]]
    else:
        train_dir, val_dir = pool_dirs(cfg)
        max_kp = cfg["data"].get("train_max_keypoints")
        pool = load_pool([train_dir], max_kp)
        if val_records is None:
            val_records = load_pool([val_dir], max_kp)[: t["val_pairs"]]
    if not pool:
        raise FileNotFoundError(f"no training pairs: run with --stage cache first ({train_dir})"
                           if train_dir else "no training pairs in the configured data")
    model.train()
    t_start = time.time() - extra["elapsed_s"]
    session_start = time.time()
    bar = tqdm(total=t["steps"], initial=step, desc="train", disable=not progress)
    while step < t["steps"]:
        if not fixed_pool and step % t["reload_every"] == 0:
            # the cache builder may still be adding shards
            pool = load_pool([train_dir], cfg["data"].get("train_max_keypoints"))
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, t)
        batch = [pool[i] for i in batch_indices(len(pool), t["batch_size"], cfg["seed"], step)]
        data = collate_records(batch, with_guidance)
        outp = model(data)
        loss, parts = training_loss(outp, data, t["confidence_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t["grad_clip"])
        opt.step()
        step += 1
        extra["pairs_seen"] += len(batch)
        extra["elapsed_s"] = time.time() - t_start
        row = {"step": step, "loss": f"{loss.item():.4f}", "nll_pos": f"{parts['nll_pos'].mean():.4f}",
               "nll_neg": f"{parts['nll_neg'].mean():.4f}", "lr": f"{learning_rate(step - 1, t):.3g}",
               "pairs_seen": extra["pairs_seen"], "elapsed_s": f"{extra['elapsed_s']:.0f}"}
        if val_records and (step % t["val_every"] == 0 or step == t["steps"]):
            metrics = evaluate_pairs(model, val_records, with_guidance)
            row["val_precision"] = f"{metrics['precision']:.2f}"
            row["val_recall"] = f"{metrics['recall']:.2f}"
            extra["val"] = metrics
        writer.writerow(row)
        bar.set_postfix(loss=row["loss"], lr=row["lr"])
        bar.update(1)
        out_of_time = t["max_minutes"] and time.time() - session_start > 60 * t["max_minutes"]
        if step % t["checkpoint_every"] == 0 or step == t["steps"] or out_of_time:
            log_f.flush()
            extra["pool_size"] = len(pool)
            save_state(ckpt_path, model, opt, step, cfg, extra)
        if out_of_time:
            logger.info("max_minutes reached at step %d; re-run to continue", step)
            break
    bar.close()
    log_f.close()
    return ckpt_path
