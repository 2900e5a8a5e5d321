"""Full-resolution Herz-Jesu P8 (../shared/data) with several presets: time, registration, pose AUC.

    .venv/bin/python pipelines/herzjesu_eval.py [--presets aliked+lightglue sift] [--out outputs/herzjesu]

Prints one JSON line per preset: the evaluate keys plus the wall time of the reconstruction.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omniglue_sfm import presets, reconstruct
from omniglue_sfm.evaluate import evaluate

SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "scenes" / "herzjesu_p8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["aliked+lightglue", "sift"], choices=presets.names())
    parser.add_argument("--scene", type=Path, default=SCENE, help="folder with images/ and gt/")
    parser.add_argument("--out", type=Path, default=Path("outputs/herzjesu"))
    args = parser.parse_args()
    if not (args.scene / "images").is_dir():
        raise SystemExit(f"scene not found: {args.scene} (needs images/ and gt/)")
    for name in args.presets:
        out = args.out / name
        t0 = time.perf_counter()
        reconstruct.main(args.scene / "images", out, name)
        result = evaluate(out / "sparse", args.scene / "gt")
        print(json.dumps({"preset": name, "seconds": round(time.perf_counter() - t0, 1), **result}))


if __name__ == "__main__":
    main()
