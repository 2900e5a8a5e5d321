"""Cost of telling whether an image changed since its features were extracted (issue #22, item 1).

Makes FOLDER with 2,000 photo-sized files (3 MB each, random bytes) unless it exists, then times:
recording every file (stat + SHA-1, what extraction does once per image), the per-run check of
unchanged files (stat only: size, mtime, inode change time, inode) and, for comparison, a check
that hashes every file on every run (what an older record without the inode fields costs).

    python benchmarks/source_check.py /tmp/source_check   [--files 2000] [--mb 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from omniglue_sfm.formats.provenance import source_changed, source_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mb", type=int, default=3)
    args = parser.parse_args()
    if not args.folder.exists():
        args.folder.mkdir(parents=True)
        block = os.urandom(args.mb << 20)
        for i in range(args.files):
            (args.folder / f"{i:05d}.jpg").write_bytes(block[:(args.mb << 20) - i])
    paths = sorted(args.folder.iterdir())
    t0 = time.perf_counter()
    records = [source_record(p) for p in paths]
    t_record = time.perf_counter() - t0
    t0 = time.perf_counter()
    changed = sum(source_changed(r, p) for r, p in zip(records, paths, strict=True))
    t_check = time.perf_counter() - t0
    stat_only = ("source_ctime_ns", "source_inode")
    older = [{k: v for k, v in r.items() if k not in stat_only} for r in records]
    t0 = time.perf_counter()
    sum(source_changed(r, p) for r, p in zip(older, paths, strict=True))
    t_hash = time.perf_counter() - t0
    print(f"{len(paths)} files of {args.mb} MB: record (stat + SHA-1) {t_record:.1f} s; check of unchanged "
          f"files {t_check * 1000:.0f} ms ({t_check / len(paths) * 1e6:.0f} us/file, {changed} changed); "
          f"hashing every file instead {t_hash:.1f} s")


if __name__ == "__main__":
    main()
