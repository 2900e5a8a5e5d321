"""Turned photos on full-resolution Herz-Jesu P8 (../shared/data): registration and pose AUC.

    .venv/bin/python benchmarks/herzjesu_rotated.py [--presets omniglue aliked+lightglue sift]
        [--variants rotated unrotated]

Builds the rotated variant once (``OUT/scene``): every third image (0000, 0003, 0006) stored turned
clockwise by 90, 180 and 270 degrees in turn, its ``.camera`` file transformed with it
(``tests/turned_scene.py``). Then reconstructs each variant with each preset (run back to
back, ``--overwrite``), scores it with ``evaluate`` and prints one JSON line per run and a
Markdown table: registered images, pose AUC@5/10, seconds, the orientation pass's seconds and the
turns it found. ``--rotation off`` runs the learned presets without rotation handling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omniglue_sfm import reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.config import presets
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.config.rotation import ROTATION_MODES
from omniglue_sfm.evaluation.reconstruction import evaluate
from omniglue_sfm.formats.images import list_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from turned_scene import write_turned_scene  # noqa: E402  (a test fixture: the turned copy of a scene)

SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "scenes" / "herzjesu_p8"
TURNS_CW = (90, 180, 270)


def turned_names(names: list[str]) -> dict[str, int]:
    """Every third image (from the first), turned by 90, 180, 270 degrees in turn."""
    return {name: TURNS_CW[j % 3] for j, name in enumerate(names[::3])}


def run(scene: Path, out: Path, preset: str, rotation: str | None) -> dict:
    t0 = time.perf_counter()
    overrides = None if rotation is None else {"rotation": rotation}
    result = reconstruct.main(scene / "images", out, presets.resolve(preset, overrides),
                              RunOptions(overwrite=True), sfm_options=SfMOptions(progress=False))
    seconds = time.perf_counter() - t0
    metrics = evaluate(out / "sparse", scene / "gt")
    pass_info = result.stats.get("orientation") or {}
    return {"preset": preset, "registered": metrics["registered"], "total": metrics["total"],
            "auc5": round(metrics["auc5"], 4), "auc10": round(metrics["auc10"], 4),
            "seconds": round(seconds, 1), "orientation_seconds": pass_info.get("seconds"),
            "turns_found": pass_info.get("turned"),
            "stage_seconds": {k: round(v, 1) for k, v in result.stats["stage_seconds"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["omniglue", "aliked+lightglue", "sift"],
                        choices=presets.names())
    parser.add_argument("--variants", nargs="+", default=["rotated", "unrotated"],
                        choices=["rotated", "unrotated"])
    parser.add_argument("--scene", type=Path, default=SCENE, help="folder with images/ and gt/")
    parser.add_argument("--out", type=Path, default=Path("outputs/herzjesu_rotated"))
    parser.add_argument("--rotation", choices=ROTATION_MODES, default=None,
                        help="override the presets' rotation handling")
    args = parser.parse_args()
    if not (args.scene / "images").is_dir():
        raise SystemExit(f"scene not found: {args.scene} (needs images/ and gt/)")
    turned = turned_names(list_images(args.scene / "images"))
    rotated = args.out / "scene"
    if "rotated" in args.variants and not (rotated / "gt").is_dir():
        write_turned_scene(args.scene, rotated, turned)
    rows = []
    for variant in args.variants:
        scene = rotated if variant == "rotated" else args.scene
        for name in args.presets:
            row = {"variant": variant, **run(scene, args.out / f"{variant}.{name}", name, args.rotation)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nturned (clockwise): {turned}\n")
    print("| preset | variant | registered | AUC@5 | AUC@10 | seconds | orientation pass (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['preset']}` | {r['variant']} | {r['registered']}/{r['total']} | {r['auc5']:.3f} | "
              f"{r['auc10']:.3f} | {r['seconds']:.0f} | {r['orientation_seconds'] or '-'} |")


if __name__ == "__main__":
    main()
