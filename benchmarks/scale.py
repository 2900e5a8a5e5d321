"""Matching throughput against the number of Ray workers on this machine, and a projection.

Measured (this machine): pairs/s of ``match`` with the local executor (one process, T torch
threads) and with ``--executor ray`` on a local Ray instance with W workers of one CPU (one torch
thread) each; the ratio Ray(W) / local(T = W) is the executor's overhead on the same CPUs. Each
configuration runs ``--repeats`` times in alternating order (local, ray, ray, local, ...) in this
one process, on the same features and pairs, and the best time counts (others share the CPUs).
Timed: ``match.main`` end to end (actor start and model loading included; ``ray.init`` not).

Projected (not measured): pairs/s for N workers = N x (1 / per-pair cost of one worker) x the
efficiency measured at the largest W here. ``--gpu-ms-per-pair`` (e.g. from
``benchmarks/matcher_speed.py`` on a GPU) adds the same projection for N GPUs, one worker each.

  python benchmarks/scale.py --images datasets/herzjesu_p8_small/images --long-side 480 \
      --max-keypoints 1024 --workers 1 2 --repeats 2
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from omniglue_sfm import extract, match
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io, textfiles
from omniglue_sfm.runtime import executors

REPO = Path(__file__).resolve().parents[1]


def small_copies(src: Path, dst: Path, long_side: int, count: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.jpg"))[:count]:
        with Image.open(path) as img:
            img = img.convert("RGB")
            f = long_side / max(img.size)
            size = (round(img.width * f), round(img.height * f))
            img.resize(size, Image.Resampling.BOX).save(dst / path.name)
    return dst


def timed_match(work: Path, preset: dict, executor: executors.ExecutorOptions, tag: str) -> float:
    out = work / f"matches-{tag}.h5"
    for p in (out, out.with_name(out.name + ".parts")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    match.main(work / "features.h5", work / "pairs.txt", out, preset, RunOptions(device="cpu",
                                                                                 executor=executor))
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=REPO / "datasets" / "herzjesu_p8_small" / "images")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--long-side", type=int, default=480)
    parser.add_argument("--max-keypoints", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu-ms-per-pair", type=float, default=None,
                        help="per-pair cost of one GPU worker (an input, not measured)")
    parser.add_argument("--project", type=int, nargs="+", default=[4, 16, 64])
    args = parser.parse_args()
    import ray

    preset = {"name": "scale-aliked-lightglue",
              "features": {"name": "aliked", "model": "aliked-n16", "max_keypoints": args.max_keypoints,
                           "resize_max": args.long_side},
              "matcher": {"name": "lightglue", "features": "aliked"}}
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    try:
        images = small_copies(args.images, work / "images", args.long_side, args.num_images)
        extract.main(images, work / "features.h5", preset, RunOptions(device="cpu"))
        names = h5io.list_names(work / "features.h5")
        textfiles.write_pairs(work / "pairs.txt", list(itertools.combinations(names, 2)))
        num_pairs = len(names) * (len(names) - 1) // 2
        ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
        best: dict[tuple[str, int], float] = {}
        for r in range(args.repeats):
            for w in args.workers:
                runs = [("local", w), ("ray", w)]
                for kind, n in (runs if r % 2 == 0 else runs[::-1]):  # alternate the order
                    torch.set_num_threads(n)  # the local executor's threads (the driver's, under Ray)
                    ex = executors.ExecutorOptions(kind, num_workers=n if kind == "ray" else None)
                    seconds = timed_match(work, preset, ex, f"{kind}{n}")
                    print(f"repeat {r}: {kind} x{n}: {seconds:.1f} s", flush=True)
                    best[kind, n] = min(best.get((kind, n), float("inf")), seconds)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(best, args, num_pairs)
    return 0


def report(best: dict[tuple[str, int], float], args: argparse.Namespace, num_pairs: int) -> None:
    print(f"\nMEASURED on this machine: {num_pairs} pairs, {args.num_images} images at {args.long_side} px, "
          f"ALIKED <= {args.max_keypoints} keypoints + LightGlue, CPU, best of {args.repeats}")
    print("| workers (CPUs) | local pairs/s (threads = CPUs) | Ray pairs/s | Ray / local |")
    print("|---|---|---|---|")
    for w in args.workers:
        local, ray_ = num_pairs / best["local", w], num_pairs / best["ray", w]
        print(f"| {w} | {local:.2f} | {ray_:.2f} | {ray_ / local:.2f} |")
    w_max = max(args.workers)
    per_pair = best["ray", 1] / num_pairs if ("ray", 1) in best else best["local", 1] / num_pairs
    efficiency = (num_pairs / best["ray", w_max]) / (w_max * num_pairs / best["ray", min(args.workers)]
                                                    / min(args.workers))
    print(f"\nmeasured: one Ray worker {per_pair * 1000:.0f} ms/pair (CPU, 1 thread, end to end); "
          f"scaling efficiency at {w_max} workers {efficiency:.0%} of linear")
    print("PROJECTED (not measured): pairs/s = N x efficiency / per-pair cost")
    gpu = args.gpu_ms_per_pair
    print("| N | CPU workers (1 core each) |" + (" GPU workers (1 GPU each) |" if gpu else ""))
    print("|---|---|" + ("---|" if args.gpu_ms_per_pair else ""))
    for n in args.project:
        row = f"| {n} | {n * efficiency / per_pair:.1f} |"
        if args.gpu_ms_per_pair:
            row += f" {n * efficiency / (args.gpu_ms_per_pair / 1000):.0f} |"
        print(row)


if __name__ == "__main__":
    sys.exit(main())
