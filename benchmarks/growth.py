"""How cost grows with the number of images: every stage, both mappers, accuracy and retrieval
recall on rendered scenes with exact ground truth (benchmarks/growth_scene.py).

    python benchmarks/growth.py run --root growth_runs --sizes 50 100 200 400 800 1600
    python benchmarks/growth.py report --root growth_runs --png docs/growth.png --markdown table.md

``run``: for each N (ascending), render the scene (if not done), then run the pipeline through
the command line, one process per stage, as ``reconstruct`` runs it with retrieval pairs:
``extract --global`` (the orientation pass included; its share is read from the log), ``vlad``,
``pairs --mode retrieval`` on it (``--retrieval global``: on the extractor's ``global.h5``, as
before reconstruct retrieved with VLAD), ``match``, then ``sfm --mapper M`` and ``evaluate`` for
each mapper. Each process is timed by ``os.wait4``: wall seconds, CPU seconds (user + system:
what other jobs on a shared machine do not inflate) and peak resident memory. The sfm stage's own
split (database import, verification, mapping, export) comes from its ``stats.json`` (wall).
Then the retrieval recall of each pair option against the pairs that truly overlap (overlap
score >= 0.3 and >= 0.5 from the ground truth's depth maps, ``overlaps.txt``), and for N <= 200
the two-view precision of the raw matches (``evaluate-pairs``). Every step's result is written to
``ROOT/n<N>/results.json`` as soon as it ends: a stopped series resumes at the first step not
done (the pipeline's own files resume too).

``report``: one table, the growth exponent k of each stage (least squares of log time against
log N over the sizes >= ``--fit-from``), and a log-log PNG of time per stage against N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import growth_scene  # noqa: E402

PYTHON = sys.executable
RECALL_THRESHOLDS = (0.3, 0.5)
PAIR_OPTIONS = (("global", 5), ("global", 10), ("global", 20), ("vlad", 5), ("vlad", 10), ("vlad", 20),
                ("sequential+loop", 5))
# what the table and the fit show: (name, where the seconds come from)
STAGES = ("scene", "extract", "orientation", "pairs", "match", "vlad",
          "database", "verification", "mapping_incremental", "mapping_global")


# --------------------------------------------------------------------------------------------
# measuring one process


def timed(cmd: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` (output to ``log_path``): wall and CPU seconds, peak RSS (MB), exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall": round(time.perf_counter() - start, 2),
            "cpu": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_mb": round(usage.ru_maxrss / 1024, 1), "rc": proc.returncode}


def omniglue(*args: str) -> list[str]:
    return [PYTHON, "-m", "omniglue_sfm", *args]


def pipeline_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMNIGLUE_SFM_OFFLINE", "1")
    # one torch thread per process, as the test suite runs: on a shared machine (2 cores, load 5-12
    # here) torch's second thread spins against the other jobs and inflates CPU time several-fold;
    # COLMAP keeps its own thread count
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --------------------------------------------------------------------------------------------
# one size


class Results:
    """``ROOT/n<N>/results.json``: one entry per finished step, written at once (resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"steps": {}}

    def __contains__(self, step: str) -> bool:
        return step in self.data["steps"]

    def __getitem__(self, step: str) -> dict:
        return self.data["steps"][step]

    def put(self, step: str, value: dict) -> None:
        self.data["steps"][step] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def count_lines(path: Path) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def read_pairs(path: Path) -> set[tuple[str, str]]:
    out = set()
    for line in path.read_text().splitlines():
        a, b = line.split()[:2]
        out.add(tuple(sorted((a, b))))
    return out


def recall_of(pairs: set, truth: dict, laps: dict) -> dict:
    out = {"pairs": len(pairs)}
    for thr in RECALL_THRESHOLDS:
        true = {p for p, s in truth.items() if s >= thr}
        cross = {p for p in true if laps[p[0]] != laps[p[1]]}  # revisits: the loop closures
        out[f"recall@{thr}"] = round(len(pairs & true) / max(len(true), 1), 4)
        out[f"loop_recall@{thr}"] = round(len(pairs & cross) / max(len(cross), 1), 4)
        out[f"true@{thr}"] = len(true)
    out["precision"] = round(len({p for p in pairs if p in truth}) / max(len(pairs), 1), 4)
    return out


def run_size(n: int, args: argparse.Namespace) -> None:
    base = args.root / f"n{n}"
    scene, out = base / "scene", base / "out"
    base.mkdir(parents=True, exist_ok=True)
    results = Results(base / "results.json")
    env = pipeline_env()
    images, gt = scene / "images", scene / "gt"

    def step(name: str, cmd: list[str], parse=None) -> dict | None:
        if name in results:
            return results[name]
        print(f"[n={n}] {name}: {' '.join(cmd[2:])}", flush=True)
        record = timed(cmd, base / "logs" / f"{name}.log", env)
        if parse is not None and record["rc"] == 0:
            record.update(parse())
        results.put(name, record)
        print(f"[n={n}] {name}: {json.dumps(record)}", flush=True)
        return record

    step("scene", [PYTHON, str(REPO / "benchmarks" / "growth_scene.py"), str(scene), "--views", str(n),
                   "--seed", str(args.seed), "--textures", args.textures])
    knobs = ["--max-keypoints", str(args.max_keypoints)]

    def orientation_seconds() -> dict:
        found = re.findall(r"orientation pass: .*?([\d.]+) s", (base / "logs" / "extract.log").read_text())
        return {"orientation_wall": float(found[-1])} if found else {}

    step("extract", omniglue("extract", str(images), str(out / "features.h5"), "--global",
                             str(out / "global.h5"), *knobs), orientation_seconds)
    if args.retrieval == "vlad":  # as reconstruct: VLAD of the scene's own features, before pairs
        step("vlad", omniglue("vlad", str(out / "features.h5"), str(out / "vlad.h5")))
    done = results["pairs"].get("retrieval", "global") if "pairs" in results else args.retrieval
    if done != args.retrieval:  # one series, one retrieval: never resume onto other pairs
        raise SystemExit(f"{base} has pairs retrieved with {done!r}, not {args.retrieval!r}: "
                         "use another --root")
    step("pairs", omniglue("pairs", str(images), str(out / "pairs.txt"), "--mode", "retrieval", "--global",
                           str(out / f"{args.retrieval}.h5"), "--num-matched", str(args.num_matched)),
         lambda: {"pairs": count_lines(out / "pairs.txt"), "retrieval": args.retrieval})

    def match_stats() -> dict:
        text = (base / "logs" / "match.log").read_text()
        found = re.search(r"matched (\d+) pair\(s\).*?([\d.]+) matches/pair", text)
        if not found:
            return {}
        return {"matched_pairs": int(found.group(1)), "matches_per_pair": float(found.group(2))}

    step("match", omniglue("match", str(out / "features.h5"), str(out / "pairs.txt"),
                           str(out / "matches.h5")), match_stats)
    for mapper in args.mappers:
        sfm_dir = out / f"sfm-{mapper}"

        def sfm_stats(sfm_dir: Path = sfm_dir) -> dict:
            stats = json.loads((sfm_dir / "stats.json").read_text())
            return {"seconds": stats.get("seconds", {}), "registered": stats.get("registered"),
                    "verified_pairs": stats.get("pairs", {}).get("verified_pairs"),
                    "points3D": stats.get("num_points3D"), "num_models": stats.get("num_models")}

        record = step(f"sfm-{mapper}", omniglue("sfm", str(images), str(out / "features.h5"),
                                                str(out / "matches.h5"), str(sfm_dir), "--pairs",
                                                str(out / "pairs.txt"), "--mapper", mapper), sfm_stats)
        if record and record["rc"] == 0:
            log = base / "logs" / f"evaluate-{mapper}.log"
            step(f"evaluate-{mapper}",
                 omniglue("evaluate", str(sfm_dir / "sparse"), "--gt", str(gt), "--json"),
                 lambda log=log: json.loads(log.read_text().strip().splitlines()[-1]))
    step("vlad", omniglue("vlad", str(out / "features.h5"), str(out / "vlad.h5")))
    if "recall" not in results:
        results.put("recall", retrieval_recall(scene, out, n))
    if n <= args.two_view_max and "two_view" not in results:
        log = base / "logs" / "two_view.log"
        step("two_view", omniglue("evaluate-pairs", str(out), "--gt", str(gt), "--json"),
             lambda: json.loads(log.read_text().strip().splitlines()[-1]))


def retrieval_recall(scene: Path, out: Path, n: int) -> dict:
    """Recall of each pair option against the truly overlapping pairs (pairs.main, in-process)."""
    from omniglue_sfm import pairs

    truth = growth_scene.read_overlaps(scene)
    laps = json.loads((scene / "scene.json").read_text())["laps_of"]
    names = sorted(laps)
    result = {}
    tmp = out / "recall-pairs.txt"
    for source, k in PAIR_OPTIONS:
        if source == "sequential+loop":
            options = pairs.PairsOptions(mode="sequential", window=k, loop_closure=True, num_matched=k)
            global_path = out / "global.h5"
        else:
            options = pairs.PairsOptions(mode="retrieval", num_matched=k)
            global_path = out / ("global.h5" if source == "global" else "vlad.h5")
        pairs.main(None, tmp, options, global_path=global_path, names=names)
        result[f"{source}@{k}"] = recall_of(read_pairs(tmp), truth, laps)
    tmp.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------------------------
# report


def load_all(root: Path) -> dict[int, dict]:
    out = {}
    for path in sorted(root.glob("n*/results.json")):
        n = int(path.parent.name[1:])
        out[n] = json.loads(path.read_text())["steps"]
    return dict(sorted(out.items()))


def stage_seconds(steps: dict, kind: str) -> dict[str, float]:
    """Seconds of each stage of one size (``kind``: "wall" or "cpu"; sub-stages are wall only)."""
    out = {}
    for name in ("scene", "extract", "pairs", "match", "vlad"):
        if name in steps and steps[name].get("rc") == 0:
            out[name] = steps[name][kind]
    if "extract" in steps and "orientation_wall" in steps["extract"]:
        out["orientation"] = steps["extract"]["orientation_wall"]
    for mapper in ("incremental", "global"):
        rec = steps.get(f"sfm-{mapper}")
        if rec and rec.get("rc") == 0:
            secs = rec.get("seconds", {})
            out[f"mapping_{mapper}"] = secs.get("mapping", math.nan)
            if mapper == "incremental" or "database" not in out:
                out["database"] = secs.get("database", math.nan)
                out["verification"] = secs.get("verification", math.nan)
            out[f"sfm_{mapper}"] = rec[kind]
    return out


def fit_exponent(ns: list[int], ts: list[float]) -> float:
    pts = [(math.log(n), math.log(t)) for n, t in zip(ns, ts, strict=True)
           if t and t > 0 and math.isfinite(t)]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else math.nan


def report(args: argparse.Namespace) -> str:
    data = load_all(args.root)
    if not data:
        raise SystemExit(f"no results under {args.root}")
    lines = ["| N | pairs | matches/pair | extract s (cpu) | orient. s | pairs s | match s (cpu) | "
             "database s | verif. s | mapping inc. s | mapping glob. s | peak MB (extract/match/sfm) | "
             "registered inc. / glob. | AUC@5 inc. / glob. | centre err. m inc. / glob. |",
             "|" + "---|" * 15]

    def g(d: dict, *keys, fmt="{:.1f}", default="-"):
        for k in keys:
            if not isinstance(d, dict) or k not in d or d[k] is None:
                return default
            d = d[k]
        return fmt.format(d) if isinstance(d, (int, float)) else str(d)

    for n, s in data.items():
        wall = stage_seconds(s, "wall")
        cpu = stage_seconds(s, "cpu")
        peaks = "/".join(g(s, k, "peak_mb", fmt="{:.0f}") for k in ("extract", "match", "sfm-incremental"))
        lines.append(
            f"| {n} | {g(s, 'pairs', 'pairs', fmt='{:d}')} | {g(s, 'match', 'matches_per_pair')} | "
            f"{g(wall, 'extract')} ({g(cpu, 'extract')}) | {g(wall, 'orientation')} | {g(wall, 'pairs')} | "
            f"{g(wall, 'match')} ({g(cpu, 'match')}) | {g(wall, 'database')} | {g(wall, 'verification')} | "
            f"{g(wall, 'mapping_incremental')} | {g(wall, 'mapping_global')} | {peaks} | "
            f"{g(s, 'evaluate-incremental', 'registered', fmt='{:d}')} / "
            f"{g(s, 'evaluate-global', 'registered', fmt='{:d}')} of {n} | "
            f"{g(s, 'evaluate-incremental', 'auc5', fmt='{:.3f}')} / "
            f"{g(s, 'evaluate-global', 'auc5', fmt='{:.3f}')} | "
            f"{g(s, 'evaluate-incremental', 'center_error', fmt='{:.3f}')} / "
            f"{g(s, 'evaluate-global', 'center_error', fmt='{:.3f}')} |")
    # exponents
    fit_ns = [n for n in data if n >= args.fit_from]
    exps = ["", "| stage | k (wall) | k (CPU) | seconds per image at the largest N (CPU) |",
            "|---|---|---|---|"]
    exponents = {}
    for stage in (*STAGES, "sfm_incremental", "sfm_global"):
        walls = [stage_seconds(data[n], "wall").get(stage, math.nan) for n in fit_ns]
        cpus = [stage_seconds(data[n], "cpu").get(stage, math.nan) for n in fit_ns]
        kw, kc = fit_exponent(fit_ns, walls), fit_exponent(fit_ns, cpus)
        if math.isnan(kw):
            continue
        exponents[stage] = kc
        cpu_sub = stage in ("scene", "extract", "pairs", "match", "vlad", "sfm_incremental", "sfm_global")
        last = [(n, c if cpu_sub else w) for n, c, w in zip(fit_ns, cpus, walls, strict=True)
                if math.isfinite(c if cpu_sub else w)]
        per_image = f"{last[-1][1] / last[-1][0]:.3f}" if last else "-"
        exps.append(f"| {stage} | {kw:.2f} | {kc:.2f} | {per_image} |" if cpu_sub
                    else f"| {stage} | {kw:.2f} | (wall only) | {per_image} (wall) |")
    # retrieval recall
    rec = ["", "| N | option | pairs | recall (overlap >= 0.3) | recall (>= 0.5) | loop recall (>= 0.3) | "
               "precision |", "|---|---|---|---|---|---|---|"]
    for n, s in data.items():
        for option, r in (s.get("recall") or {}).items():
            rec.append(f"| {n} | {option} | {r['pairs']} | {r['recall@0.3']:.3f} | {r['recall@0.5']:.3f} | "
                       f"{r['loop_recall@0.3']:.3f} | {r['precision']:.3f} |")
    two = ["", "| N | two-view epipolar precision | matches per pair | pairs |", "|---|---|---|---|"]
    for n, s in data.items():
        t = s.get("two_view")
        if t and "epipolar_precision" in t:
            two.append(f"| {n} | {t['epipolar_precision']:.3f} | {t['mean_matches']:.0f} | "
                       f"{t['pairs'] - t['failed_pairs']} matched |")
    text = "\n".join(lines + exps + rec + two) + "\n"
    if args.png:
        plot(data, args.png, exponents)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return text


# the plot shows each stage process's CPU seconds (what the machine's other jobs inflate least)
COLOURS = {"scene": (150, 150, 150), "extract": (31, 119, 180), "pairs": (188, 189, 34),
           "match": (214, 39, 40), "vlad": (140, 86, 75), "sfm_incremental": (44, 160, 44),
           "sfm_global": (255, 127, 14)}


def plot(data: dict[int, dict], path: Path, exponents: dict[str, float]) -> None:
    """Log-log CPU seconds of each stage's process against N (PIL; no plotting library needed)."""
    from PIL import Image, ImageDraw

    W, H, left, right, top, bottom = 900, 560, 70, 250, 30, 50
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    series = {st: [(n, stage_seconds(s, "cpu").get(st, math.nan)) for n, s in data.items()]
              for st in COLOURS}
    values = [t for pts in series.values() for _, t in pts if t and t > 0 and math.isfinite(t)]
    ns = list(data)
    x0, x1 = math.log10(min(ns)) - 0.05, math.log10(max(ns)) + 0.05
    y0, y1 = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))

    def xy(n: float, t: float) -> tuple[float, float]:
        return (left + (math.log10(n) - x0) / (x1 - x0) * (W - left - right),
                top + (y1 - math.log10(t)) / (y1 - y0) * (H - top - bottom))

    for e in range(y0, y1 + 1):
        y = xy(ns[0], 10.0 ** e)[1]
        draw.line([(left, y), (W - right, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"1e{e} s", fill="black")
    for n in ns:
        x = xy(n, 10.0 ** y0)[0]
        draw.line([(x, top), (x, H - bottom)], fill=(225, 225, 225))
        draw.text((x - 10, H - bottom + 6), str(n), fill="black")
    draw.text((left + 120, H - 22), "images N (log)   -   CPU seconds of each stage's process (log)",
              fill="black")
    # reference slopes 1 and 2 from the lowest extract point
    legend_y = top
    for st, pts in series.items():
        pts = [(n, t) for n, t in pts if t and t > 0 and math.isfinite(t)]
        if not pts:
            continue
        colour = COLOURS[st]
        draw.line([xy(n, t) for n, t in pts], fill=colour, width=3) if len(pts) > 1 else None
        for n, t in pts:
            x, y = xy(n, t)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        k = exponents.get(st, math.nan)
        draw.rectangle([W - right + 15, legend_y + 4, W - right + 35, legend_y + 10], fill=colour)
        draw.text((W - right + 42, legend_y), f"{st}  k={k:.2f}", fill="black")
        legend_y += 20
    first = ns[0]
    for slope, label in ((1, "slope 1"), (2, "slope 2")):
        base = 10.0 ** (y0 + 0.3)
        end = min(ns[-1], first * 10 ** ((y1 - y0 - 0.3) / slope))
        draw.line([xy(first, base), xy(end, base * (end / first) ** slope)], fill=(120, 120, 120), width=1)
        draw.text(xy(end, base * (end / first) ** slope), label, fill=(90, 90, 90))
    img.save(path, optimize=True)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) the series")
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    r.add_argument("--mappers", nargs="+", default=["incremental", "global"])
    r.add_argument("--max-keypoints", type=int, default=512)
    r.add_argument("--num-matched", type=int, default=8, help="retrieval pairs per image")
    r.add_argument("--retrieval", choices=("vlad", "global"), default="vlad",
                   help="retrieval descriptor (reconstruct's --retrieval; series before 2026-12-04: global)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--textures", default="auto", choices=("auto", "photos", "procedural"))
    r.add_argument("--two-view-max", type=int, default=200, help="evaluate-pairs up to this N")
    q = sub.add_parser("report", help="table, exponents and plot")
    q.add_argument("--root", type=Path, required=True)
    q.add_argument("--fit-from", type=int, default=100, help="fit exponents over N >= this")
    q.add_argument("--png", type=Path, default=None)
    q.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    if args.command == "run":
        for n in sorted(args.sizes):
            run_size(n, args)
        print(report(argparse.Namespace(root=args.root, fit_from=100, png=None, markdown=None)))
    else:
        print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
