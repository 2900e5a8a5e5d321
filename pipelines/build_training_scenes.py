"""Build COLMAP models of the shared training scenes with the pipeline itself (OmniGlue v2 data).

Each scene gets ``OUT/<scene>/`` with ``features.h5`` (ALIKED, 1024 keypoints at 1024 px, plus the
aliked-grid guidance the matcher reads), ``matches.h5`` (ALIKED+LightGlue) and ``sparse/``. The
models supervise OmniGlue with real 3D correspondences (``omniglue_sfm.training.scenes``).
``herzjesu_p8`` is the test scene and is refused. Resumable: re-running skips finished stages.

    python pipelines/build_training_scenes.py ../shared/data/scenes training_cache/scenes \
        lund monstree sceaux_castle sacre_coeur
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omniglue_sfm import reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions

TEST_SCENES = {"herzjesu_p8"}

PRESET = {
    "name": "training-scenes",
    "features": {"name": "aliked", "model": "aliked-n16", "max_keypoints": 1024, "resize_max": 1024},
    "guidance": {"name": "aliked-grid"},
    "matcher": {"name": "lightglue", "features": "aliked"},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenes_root", type=Path)
    p.add_argument("out_root", type=Path)
    p.add_argument("scenes", nargs="+")
    args = p.parse_args()
    for scene in args.scenes:
        if scene in TEST_SCENES:
            print(f"{scene} is the test scene: never train on it", file=sys.stderr)
            return 1
    for scene in args.scenes:
        print(f"== {scene}", flush=True)
        reconstruct.main(args.scenes_root / scene / "images", args.out_root / scene, dict(PRESET),
                         sfm_options=SfMOptions(progress=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
