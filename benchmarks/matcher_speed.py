"""Matcher speed: OmniGlue against LightGlue on the same keypoints, in the same run.

Features are real ALIKED keypoints (with aliked-grid guidance) of two images of the bundled
sample scene, cut to the n best by score (random features when ``--random``). Each pair of a
batch of B keeps a slightly different number of keypoints (n - 4k), so batches are padded as in
the ``match`` stage. Matchers: the shipped OmniGlue as the ``omniglue`` preset runs it (adaptive
depth and point pruning, guidance off), the same with adaptivity off, as ``omniglue-guided``
runs it (learned guidance scales on), and LightGlue (kornia, official ALIKED weights) with
adaptivity on (the reference of the ratio column) and off. Beside the time, the
accuracy of each configuration on the real pair at batch 1: matches and their epipolar
precision under the sample's ground truth (symmetric epipolar distance < 2 px).

Timing: one warm-up call, then ``--repeats`` rounds in which every matcher runs once
(interleaved, so a load change on a shared machine hits all of them); the median is reported.
Peak memory: CUDA ``max_memory_allocated``; CPU the growth of the resident set's high-water
mark over the call (Linux; see ``PeakRSS``).

    python benchmarks/matcher_speed.py                       # 512/1024/2048, batch 1 and 16
    python benchmarks/matcher_speed.py --quick               # batch 1 only, fewer repeats
    python benchmarks/matcher_speed.py --threads 1 --sizes 1024 2048
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from omniglue_sfm.matchers.base import collate_pairs, features_to_tensors, to_device

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "herzjesu_p8_small" / "images"


# ------------------------------------------------------------------ features


def real_features(n_max: int) -> tuple[dict, dict]:
    """ALIKED keypoints + aliked-grid guidance of the first two sample images, best first."""
    from omniglue_sfm.config import registry
    from omniglue_sfm.features.image import extract_image
    from omniglue_sfm.formats.images import list_images, read_image

    names = list_images(SAMPLE)[:2]
    ex = registry.extractor({"name": "aliked", "model": "aliked-n16", "max_keypoints": n_max,
                             "detection_threshold": 0.0})
    guide = registry.guidance({"name": "aliked-grid"})
    out = []
    for name in names:
        item, _ = extract_image(read_image(SAMPLE / name), ex, guide, None, torch.device("cpu"))
        feats = features_to_tensors(item)
        order = feats["scores"].argsort(descending=True)
        out.append({k: (v[order] if k != "image_size" else v) for k, v in feats.items()})
    return out[0], out[1]


def random_features(n_max: int, seed: int = 0) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([1024.0, 683.0])

    def one() -> dict:
        return {"keypoints": torch.rand(n_max, 2, generator=gen) * (size - 1),
                "descriptors": F.normalize(torch.randn(n_max, 128, generator=gen), dim=1),
                "scores": torch.rand(n_max, generator=gen).sort(descending=True).values,
                "image_size": size,
                "guidance": F.normalize(torch.randn(n_max, 128, generator=gen), dim=1)}

    return one(), one()


def make_batch(feats: tuple[dict, dict], n: int, batch: int) -> dict:
    def cut(f: dict, k: int) -> dict:
        return {key: (v if key == "image_size" else v[:k]) for key, v in f.items()}

    pairs = [(cut(feats[0], n - 4 * k), cut(feats[1], n - 4 * k)) for k in range(batch)]
    return collate_pairs(pairs)


# ------------------------------------------------------------------ matchers


REFERENCE = "LightGlue (adaptive)"


def build_matchers(device: torch.device) -> tuple[dict, str]:
    """The matchers of the presets ``aliked+lightglue``, ``omniglue`` (the default) and
    ``omniglue-guided``, and both kinds with early exit and pruning off."""
    from omniglue_sfm.config import presets, registry

    off = {"depth_confidence": -1, "width_confidence": -1}
    lightglue = presets.get("aliked+lightglue")["matcher"]
    omniglue = presets.get("omniglue")["matcher"]
    matchers = {
        REFERENCE: registry.matcher(lightglue),
        "LightGlue (no pruning)": registry.matcher({**lightglue, **off}),
        "OmniGlue (default preset)": registry.matcher(omniglue),
        "OmniGlue (no pruning)": registry.matcher({**omniglue, **off}),
        "OmniGlue guided (omniglue-guided)": registry.matcher(presets.get("omniglue-guided")["matcher"]),
    }
    return {k: m.to(device).eval() for k, m in matchers.items()}, "shipped checkpoint"


def epipolar_accuracy(matchers: dict, feats: tuple[dict, dict], n: int, threshold_px: float = 2.0) -> dict:
    """(matches, epipolar precision) of each matcher on the real pair cut to n keypoints."""
    import numpy as np

    from omniglue_sfm.evaluation.reconstruction import relative_pose
    from omniglue_sfm.evaluation.two_view import fundamental_matrix, symmetric_epipolar_distance
    from omniglue_sfm.formats.images import list_images
    from omniglue_sfm.geometry.scenes import read_strecha_dir

    gt = read_strecha_dir(SAMPLE.parent / "gt")
    a, b = list_images(SAMPLE)[:2]
    R, t = relative_pose(gt[a], gt[b])
    F_gt = fundamental_matrix(gt[a].K, gt[b].K, R, t)
    data = make_batch(feats, n, 1)
    out = {}
    for name, m in matchers.items():
        with torch.inference_mode():
            m0 = m(data)["matches0"][0].cpu()
        valid = (m0 >= 0).nonzero()[:, 0]
        p0 = data["keypoints0"][0, valid].numpy().astype(np.float64)
        p1 = data["keypoints1"][0, m0[valid]].numpy().astype(np.float64)
        dist = symmetric_epipolar_distance(F_gt, p0, p1)
        out[name] = (len(valid), float((dist < threshold_px).mean()) if len(valid) else float("nan"))
    return out


# ------------------------------------------------------------------ measurement


class PeakRSS:
    """Peak growth of the resident set during a block (Linux): freed heap memory is first given
    back to the system (``malloc_trim``) so that the block must grow the process again, the
    kernel's high-water mark is reset (``/proc/self/clear_refs`` 5), and VmHWM - VmRSS(before)
    is read afterwards. ``peak`` is None where that is not available."""

    def __init__(self) -> None:
        self.peak: int | None = None

    @staticmethod
    def _status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024

    def __enter__(self) -> PeakRSS:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.base: int | None = self._status("VmRSS")
        except (OSError, AttributeError):
            self.base = None
        return self

    def __exit__(self, *exc) -> None:
        if self.base is not None:
            self.peak = self._status("VmHWM") - self.base


CLOCK = time.perf_counter


def run_once(matcher, data: dict, device: torch.device) -> tuple[float, float]:
    """(seconds, peak MiB) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        with torch.inference_mode():
            matcher(data)
        torch.cuda.synchronize()
        return time.perf_counter() - t, (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as mem, torch.inference_mode():
        t = CLOCK()
        matcher(data)
        dt = CLOCK() - t
    return dt, float("nan") if mem.peak is None else mem.peak / 2**20


def bench(matchers: dict, data: dict, device: torch.device, repeats: int, autocast: bool) -> dict:
    data = to_device(data, device)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.float16)) if autocast else torch.inference_mode
    times: dict[str, list[float]] = {k: [] for k in matchers}
    mems: dict[str, float] = {}
    with ctx():
        for m in matchers.values():
            run_once(m, data, device)  # warm-up
        for _ in range(repeats):
            for name, m in matchers.items():
                dt, mem = run_once(m, data, device)
                times[name].append(dt)
                mems[name] = max(mems.get(name, 0.0), mem)
    return {k: (statistics.median(v), mems[k]) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="batch 1 only, 2 repeats")
    ap.add_argument("--random", action="store_true", help="random features instead of ALIKED")
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="CPU: time with the process CPU clock instead of the wall clock (robust on a "
                         "shared, oversubscribed machine; with --threads 1, the time of an idle one)")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    if args.quick:
        args.batches, args.repeats = [1], min(args.repeats, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feats = random_features(max(args.sizes)) if args.random else real_features(max(args.sizes))
    n_avail = min(f["keypoints"].shape[0] for f in feats)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))

    rows = []
    for device in devices:
        matchers, og_note = build_matchers(device)
        modes = [False, True] if device.type == "cuda" else [False]
        for autocast in modes:
            for n in args.sizes:
                for b in args.batches:
                    n_eff = min(n, n_avail)
                    res = bench(matchers, make_batch(feats, n_eff, b), device, args.repeats, autocast)
                    ref = res[REFERENCE][0]
                    dev = device.type + (" fp16" if autocast else "")
                    acc = {} if args.random or b != 1 else epipolar_accuracy(
                        {k: m.cpu() for k, m in matchers.items()}, feats, n_eff)
                    matchers = {k: m.to(device) for k, m in matchers.items()}
                    for name, (sec, mib) in res.items():
                        rows.append((dev, n_eff, b, name, b / sec, sec / b * 1000, mib, sec / ref,
                                     acc.get(name)))

    threads = torch.get_num_threads()
    print(f"\nfeatures: {'random' if args.random else 'ALIKED (sample scene)'}; OmniGlue: {og_note}; "
          f"CPU threads: {threads}; CPU clock: {'process CPU time' if args.cpu_time else 'wall'}; "
          f"torch {torch.__version__}\n")
    print("| device | keypoints | batch | matcher | pairs/s | ms/pair | peak MiB "
          f"| time / {REFERENCE} | matches | epipolar precision |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dev, n, b, name, pps, ms, mib, ratio, acc in rows:
        accuracy = f"{acc[0]} | {acc[1]:.3f}" if acc else "- | -"
        print(f"| {dev} | {n} | {b} | {name} | {pps:.2f} | {ms:.0f} | {mib:.0f} | {ratio:.2f} | {accuracy} |")


if __name__ == "__main__":
    main()
