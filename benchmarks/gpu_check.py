"""GPU readiness check: what one CUDA device does with the default pipeline, in one short run.

    bash benchmarks/gpu_check.sh                 # on a CUDA machine: under 8 minutes, prints 3 tables
    bash benchmarks/gpu_check.sh --smoke         # the CPU path, tiny sizes (what the tests run)

Prints:

1. Batched matching throughput (pairs/s) of the default matcher (``omniglue`` preset: OmniGlue v2,
   LightGlue-ALIKED's weights, adaptive) against LightGlue (``aliked+lightglue``, the same weights)
   at 1,024 and 2,048 keypoints, in fp32, bf16 and fp16 (autocast), batches of 1, 8 and 32
   (padded as in ``match``), with each configuration's peak GPU memory. Features are real ALIKED
   keypoints of the sample scene (``benchmarks/matcher_speed.py``'s pair); timing: one warm-up,
   then the median of ``--repeats`` interleaved calls, synchronised.
2. Extraction images/s of the default preset's extractor (ALIKED, 2,048 keypoints, 1,600 px; the
   sample's 1,024 px photos), fp32 as ``extract`` runs it.
3. The sample's ``reconstruct`` wall time (a fresh output, default preset, all stages), its
   registered images, and the peak GPU memory of the whole check.

On a machine without CUDA it runs the same code on the CPU (fp32 only); ``--smoke`` shrinks every
size so that the path is tested in seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import matcher_speed  # noqa: E402

SAMPLE = REPO / "datasets" / "herzjesu_p8_small" / "images"
MATCHERS = {"omniglue (default)": "omniglue", "LightGlue (same weights)": "aliked+lightglue"}
PEAK_MIB = [0.0]  # the largest max_memory_allocated seen (peaks are reset per configuration)


def precisions(device: torch.device) -> list[tuple[str, torch.dtype | None]]:
    if device.type != "cuda":
        return [("fp32", None)]
    out = [("fp32", None)]
    if torch.cuda.is_bf16_supported():
        out.append(("bf16", torch.bfloat16))
    out.append(("fp16", torch.float16))
    return out


def timed_call(matcher, data: dict, device: torch.device, dtype: torch.dtype | None) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        matcher(data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matching_table(device: torch.device, sizes: list[int], batches: list[int], repeats: int) -> list[str]:
    from omniglue_sfm.config import presets, registry
    from omniglue_sfm.matchers.base import to_device

    feats = matcher_speed.real_features(max(sizes))
    available = min(f["keypoints"].shape[0] for f in feats)
    matchers = {label: registry.matcher(presets.get(name)["matcher"]).to(device).eval()
                for label, name in MATCHERS.items()}
    rows = ["| keypoints | batch | precision | matcher | pairs/s | ms/pair | peak GPU MiB | "
            "time / LightGlue |", "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        n_eff = min(n, available)
        for batch in batches:
            data = to_device(matcher_speed.make_batch(feats, n_eff, batch), device)
            for label, dtype in precisions(device):
                times: dict[str, list[float]] = {k: [] for k in matchers}
                peaks: dict[str, float] = {}
                for m in matchers.values():  # warm-up (kernels, autotuning)
                    timed_call(m, data, device, dtype)
                for _ in range(repeats):
                    for name, m in matchers.items():  # interleaved
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                        times[name].append(timed_call(m, data, device, dtype))
                        if device.type == "cuda":
                            peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
                            PEAK_MIB[0] = max(PEAK_MIB[0], peaks[name])
                reference = statistics.median(times["LightGlue (same weights)"])
                for name, ts in times.items():
                    sec = statistics.median(ts)
                    peak = f"{peaks[name]:.0f}" if name in peaks else "-"
                    rows.append(f"| {n_eff} | {batch} | {label} | {name} | {batch / sec:.1f} | "
                                f"{sec / batch * 1000:.2f} | {peak} | {sec / reference:.2f} |")
            del data
    return rows


def extraction_table(device: torch.device, max_keypoints: int, resize_max: int, rounds: int) -> list[str]:
    from omniglue_sfm.config import presets, registry
    from omniglue_sfm.features.image import extract_image
    from omniglue_sfm.formats.images import read_image_sized

    config = {**presets.get("omniglue")["features"], "max_keypoints": max_keypoints, "resize_max": resize_max}
    extractor = registry.extractor(config).to(device).eval()
    images = [read_image_sized(p, resize_max)[0] for p in sorted(SAMPLE.glob("*.jpg"))]
    extract_image(images[0], extractor, None, resize_max, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        for img in images:
            extract_image(img, extractor, None, resize_max, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        PEAK_MIB[0] = max(PEAK_MIB[0], torch.cuda.max_memory_allocated() / 2**20)
    seconds = time.perf_counter() - start
    count = rounds * len(images)
    return ["| extractor | keypoints | long side | images | images/s |", "|---|---|---|---|---|",
            f"| {config['name']} ({config.get('model', '')}) | {max_keypoints} | {resize_max} | {count} | "
            f"{count / seconds:.2f} |"]


def reconstruct_row(smoke: bool) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        images = SAMPLE
        knobs: list[str] = []
        if smoke:  # three images, small: the CPU path in seconds
            images = work / "images"
            images.mkdir()
            for p in sorted(SAMPLE.glob("*.jpg"))[:3]:
                shutil.copy(p, images / p.name)
            knobs = ["--max-keypoints", "256", "--resize-max", "320", "--rotation", "off"]
        out = work / "out"
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "omniglue_sfm", "reconstruct", str(images), str(out), *knobs]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
        stages = ", ".join(f"{k} {v:.1f}" for k, v in (stats.get("stage_seconds") or {}).items())
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
        return ["| run | exit | wall s | stages (s) | registered |", "|---|---|---|---|---|",
                f"| reconstruct {'3 sample images, small' if smoke else 'sample (8 images), default'} | "
                f"{proc.returncode} | {wall:.1f} | {stages} | {stats.get('registered', '-')} / "
                f"{stats.get('total', '-')} |"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the CPU path in seconds")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is there")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-reconstruct", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.smoke:
        sizes, batches, repeats, kp, side, rounds = [128], [1, 2], 1, 256, 320, 1
    else:
        sizes, batches, repeats, kp, side, rounds = [1024, 2048], [1, 8, 32], args.repeats, 2048, 1600, 3
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    scale = "smoke sizes" if args.smoke else "full sizes"
    print(f"# GPU check: {name}, torch {torch.__version__}, {scale}\n", flush=True)
    start = time.perf_counter()
    for title, rows in (("Matching", lambda: matching_table(device, sizes, batches, repeats)),
                        ("Extraction", lambda: extraction_table(device, kp, side, rounds)),
                        ("Reconstruct", lambda: [] if args.skip_reconstruct
                         else reconstruct_row(args.smoke))):
        t0 = time.perf_counter()
        lines = rows()
        if lines:
            print(f"## {title} ({time.perf_counter() - t0:.0f} s)\n")
            print("\n".join(lines) + "\n", flush=True)
    peak = (f"{PEAK_MIB[0]:.0f} MiB allocated by torch in this process (reconstruct runs in its own: "
            "see the nvidia-smi line of gpu_check.sh)" if device.type == "cuda" else "- (CPU)")
    print(f"peak GPU memory: {peak}; whole check {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
