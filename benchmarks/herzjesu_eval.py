"""Full-resolution Herz-Jesu P8 (../shared/data) with several presets: time, registration, pose AUC.

    .venv/bin/python benchmarks/herzjesu_eval.py [--presets omniglue aliked+lightglue] [--repeat 2]

Prints one JSON line per preset, run back to back in one process: the evaluate keys (SfM pose
AUC), the two-view keys of ``evaluate-pairs`` (prefixed ``pair_``; learned presets only), the
wall and process CPU seconds of the reconstruction and its seconds per stage. ``--repeat 2``
runs the list twice (the second time in reverse order) to show the run-to-run spread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omniglue_sfm import reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.config import presets
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.evaluation.reconstruction import evaluate
from omniglue_sfm.evaluation.two_view import evaluate_pairs

SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "scenes" / "herzjesu_p8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["aliked+lightglue", "sift"], choices=presets.names())
    parser.add_argument("--scene", type=Path, default=SCENE, help="folder with images/ and gt/")
    parser.add_argument("--out", type=Path, default=Path("outputs/herzjesu"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if not (args.scene / "images").is_dir():
        raise SystemExit(f"scene not found: {args.scene} (needs images/ and gt/)")
    for run in range(args.repeat):
        order = args.presets if run % 2 == 0 else list(reversed(args.presets))
        for name in order:
            out = args.out / f"{name}.{run}"
            t0, c0 = time.perf_counter(), time.process_time()
            result = reconstruct.main(args.scene / "images", out, name, RunOptions(overwrite=True),
                                      sfm_options=SfMOptions(progress=False))
            row = {"preset": name, "run": run, "seconds": round(time.perf_counter() - t0, 1),
                   "cpu_seconds": round(time.process_time() - c0, 1),
                   "stage_seconds": {k: round(v, 1) for k, v in result.stats["stage_seconds"].items()},
                   **evaluate(out / "sparse", args.scene / "gt")}
            if (out / "matches.h5").is_file():
                pairs = evaluate_pairs(out / "features.h5", out / "matches.h5", args.scene / "gt")
                row.update({f"pair_{k}": v for k, v in pairs.items()})
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
