"""How many of a scene's geometrically verified pairs does retrieval find? (issue #13, pair selection)

Ground truth: every pair of the scene matched exhaustively (``--preset``'s matcher, on the features
of ``OUT/features.h5``) and verified by COLMAP's two-view geometry (pycolmap); a pair counts as
"true" when it keeps at least ``--min-inliers`` inliers. Then, for each k, the share of true pairs
that retrieval (``pairs --mode retrieval --num-matched k``) selects, and how many pairs it selects,
with ``OUT/global.h5`` and with VLAD descriptors (``omniglue-sfm vlad``) of ``OUT/features.h5``.

  python benchmarks/retrieval_recall.py OUT --images IMAGES --preset aliked+mnn --k 5 10 20

``OUT`` is a ``reconstruct`` output folder (features.h5 and global.h5 are read, not changed); the
exhaustive matches and the verification database go to ``OUT/recall/``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pycolmap

from omniglue_sfm import match, pairs, sfm, vlad
from omniglue_sfm.formats import h5io, matches_h5, textfiles
from omniglue_sfm.geometry.cameras import CameraOptions


def verified_pairs(out: Path, images: Path, preset: str, min_inliers: int) -> tuple[set, int]:
    """(canonical pairs with >= min_inliers verified inliers, number of pairs tried)."""
    work = out / "recall"
    work.mkdir(exist_ok=True)
    names = h5io.list_names(out / "features.h5")
    every = [matches_h5.canonical_pair(a, b) for a, b in itertools.combinations(sorted(names), 2)]
    textfiles.write_pairs(work / "pairs.txt", every)
    match.main(out / "features.h5", work / "pairs.txt", work / "matches.h5", preset)
    db_path = sfm.build_database(work / "database.db", images, out / "features.h5", work / "matches.h5",
                                 names, every, CameraOptions())
    sfm.verify(db_path)
    true = set()
    with pycolmap.Database.open(db_path) as db:
        ids = {img.image_id: img.name for img in db.read_all_images()}
        for pair_id, inliers in zip(*db.read_two_view_geometry_num_inliers(), strict=True):
            if inliers >= min_inliers:
                a, b = pycolmap.pair_id_to_image_pair(pair_id)
                true.add(matches_h5.canonical_pair(ids[a], ids[b]))
    return true, len(every)


def recall_table(global_path: Path, true: set, ks: list[int]) -> list[tuple[int, int, int, float]]:
    """(k, pairs selected, true pairs found, recall) for every k, retrieving with ``global_path``."""
    rows = []
    for k in ks:
        chosen = {matches_h5.canonical_pair(a, b) for a, b in pairs.retrieval(global_path, None, k)}
        found = len(true & chosen)
        rows.append((k, len(chosen), found, found / max(1, len(true))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="reconstruct output folder (features.h5, global.h5)")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--preset", default="aliked+mnn", help="matcher of the exhaustive ground truth")
    parser.add_argument("--min-inliers", type=int, default=100)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--vlad-words", type=int, default=vlad.DEFAULT_WORDS)
    args = parser.parse_args()
    true, tried = verified_pairs(args.out, args.images, args.preset, args.min_inliers)
    vlad.main(args.out / "features.h5", args.out / "recall" / "vlad.h5", args.vlad_words)
    print(f"\nground truth: {len(true)} of {tried} pairs keep >= {args.min_inliers} verified inliers "
          f"({args.preset}, exhaustive)")
    print("| descriptor | k | pairs selected | verified pairs found | recall |\n|---|---|---|---|---|")
    methods = {"global.h5 (extract --global)": args.out / "global.h5",
               f"VLAD, {args.vlad_words} words from the scene (`vlad`)": args.out / "recall" / "vlad.h5"}
    for label, path in methods.items():
        for k, chosen, found, recall in recall_table(path, true, args.k):
            print(f"| {label} | {k} | {chosen} | {found} / {len(true)} | {recall:.0%} |")


if __name__ == "__main__":
    main()
