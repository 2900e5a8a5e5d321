"""Reconstruct the bundled sample scene and score it against its ground truth.

    .venv/bin/python pipelines/reconstruct_sample.py [--preset aliked+lightglue] [--out outputs/sample]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omniglue_sfm import reconstruct
from omniglue_sfm.config import presets
from omniglue_sfm.evaluation.reconstruction import evaluate

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "herzjesu_p8_small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="aliked+lightglue", choices=presets.names())
    parser.add_argument("--out", type=Path, default=Path("outputs/sample"))
    args = parser.parse_args()
    reconstruct.main(SAMPLE / "images", args.out / args.preset, args.preset)
    print(json.dumps(evaluate(args.out / args.preset / "sparse", SAMPLE / "gt")))


if __name__ == "__main__":
    main()
