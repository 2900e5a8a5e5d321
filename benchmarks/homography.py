"""Homography benchmark: OmniGlue vs LightGlue vs mutual nearest neighbour on held-out photos.

Pairs are synthetic homographies (SH100 / SH200: crop corners moved by up to 100 / 200 px at
640 px, scaled to the crop size of the training config) of the ``test`` split of the training
photos (never trained on), with a fixed seed; every matcher gets the same cached ALIKED
keypoints (the extract stage's plugin). Metrics and protocol: omniglue_sfm/training/evaluate.py.

Results are kept per method in ``--results`` (JSON), so methods can be run one at a time on a
busy machine; ``--force`` recomputes. One markdown table is printed at the end.

    python benchmarks/homography.py                                  # all methods
    python benchmarks/homography.py --methods lightglue mnn          # some of them
    python benchmarks/homography.py --checkpoint run/last.pt         # a training checkpoint
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from omniglue_sfm.training import homography_eval as E
from omniglue_sfm.training.data import FeatureFn, PoolConfig, build_pool, load_pool
from omniglue_sfm.training.homography import scaled_shift
from omniglue_sfm.training.train import load_config

REPO = Path(__file__).resolve().parents[1]
METHODS = ("omniglue", "omniglue-unguided", "lightglue", "mnn")


def load_omniglue(checkpoint: str, overrides: dict):
    from omniglue_sfm.matchers.omniglue import OmniGlue
    from omniglue_sfm.matchers.omniglue_plugin import load_model

    path = Path(checkpoint)
    if path.is_file() and path.name == "last.pt":  # a training-state file, not an export
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = OmniGlue({**state["conf"], **overrides})
        model.load_state_dict(state["model"])
    else:
        model = load_model(checkpoint, overrides)[0]
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "omniglue_sfm/training/configs/aliked_sh.toml"))
    ap.add_argument("--checkpoint", default="omniglue", help="OmniGlue weights: name, export or last.pt")
    ap.add_argument("--cache", default=str(REPO / "training_cache/bench_homography"))
    ap.add_argument("--results", default="", help="JSON of per-method results (default: in --cache)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--repeats", type=int, default=1, help="crops per test photo")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--max-pairs", type=int, default=0, help="per subset, 0 = all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    d = cfg["data"]
    pool = PoolConfig(roots=[str(r) for r in d["roots"]], split="test", seed=args.seed,
                      shifts=[float(s) for s in d.get("shifts", [100.0, 200.0])],
                      patch_size=tuple(d.get("patch_size", [320, 240])), augment=float(d.get("augment", 1.0)),
                      repeats=args.repeats, shard_size=8)
    cache = Path(args.cache)
    build_pool(pool, cache / "pairs", FeatureFn(cfg["features"], cfg.get("guidance")))
    records = load_pool([cache / "pairs"])
    subsets = {}
    for shift in pool.shifts:
        px = scaled_shift(shift, pool.patch_size)
        sel = [r for r in records if abs(r["shift"] - px) < 1e-6]
        subsets[f"SH{shift:.0f} ({px:.0f} px @ {pool.patch_size[0]}x{pool.patch_size[1]})"] = (
            sel[: args.max_pairs] if args.max_pairs else sel)

    results_path = Path(args.results) if args.results else cache / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for method in args.methods:
        if method in results and not args.force:
            continue
        guided = False
        if method == "omniglue":
            model = load_omniglue(args.checkpoint, {})
            fn, guided = E.omniglue_fn(model), bool(model.conf["guidance"])
        elif method == "omniglue-unguided":
            fn = E.omniglue_fn(load_omniglue(args.checkpoint, {"guidance": False}))
        elif method == "lightglue":
            fn = E.lightglue_fn()
        else:
            fn = E.mnn_fn()
        results[method] = {name: E.evaluate_matcher(fn, sel, guided) for name, sel in subsets.items()}
        results_path.write_text(json.dumps(results, indent=2))
        print(method, json.dumps(results[method]))
    labels = {"omniglue": "ALIKED+OmniGlue (ours, aliked-grid guidance)",
              "omniglue-unguided": "ALIKED+OmniGlue (same weights, guidance off)",
              "lightglue": "ALIKED+LightGlue (official)", "mnn": "ALIKED+MNN"}
    print(E.markdown_table({labels[m]: results[m] for m in METHODS if m in results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
