"""Fault injection (issue #10): ``kill -9`` of ``reconstruct`` at 10 random moments spread over
extract, match and sfm. Every re-run must end with the files of an uninterrupted run and leave no
temporary file behind.

All runs are pinned to one CPU: COLMAP's bundle adjustment is then deterministic, so the model,
the database and the PLY compare byte for byte (the HDF5 files compare array by array, since
their layout on disk depends on the order shards were merged).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_h5, resized_sample

STAGES = ("extract", "match", "sfm")
NUM_KILLS = 10
SEED = int(os.environ.get("FAULT_INJECTION_SEED", "2026"))
BYTE_EQUAL = ("pairs.txt", "database.db", "model.ply", "sparse/cameras.bin", "sparse/images.bin",
              "sparse/points3D.bin", "sparse/frames.bin", "sparse/rigs.bin")
H5_FILES = {"features.h5": "features", "matches.h5": "matches", "global.h5": "global"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _command(images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "omniglue_sfm", "reconstruct", str(images), str(out),
            "--preset", "aliked+mnn", "--max-keypoints", "512", "--device", "cpu"]


def _timed_run(images: Path, out: Path) -> dict[str, float]:
    """An uninterrupted run; returns how long each stage took (from its "==> stage" line)."""
    proc = subprocess.Popen(_command(images, out), env=ENV, preexec_fn=_one_cpu,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    starts: dict[str, float] = {}
    for line in proc.stderr:
        stage = line.removeprefix("==> ").strip()
        if line.startswith("==> ") and stage in STAGES and stage not in starts:
            starts[stage] = time.monotonic()
    assert proc.wait() == 0
    ends = [starts["match"], starts["sfm"], time.monotonic()]
    return {s: end - starts[s] for s, end in zip(STAGES, ends, strict=True)}


def _kill_during(images: Path, out: Path, stage: str, delay: float) -> bool:
    """Start a run, SIGKILL it ``delay`` s after it announces ``stage``; False if it finished first."""
    proc = subprocess.Popen(_command(images, out), env=ENV, preexec_fn=_one_cpu,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith(f"==> {stage}"):
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait()
    return proc.returncode == -signal.SIGKILL


def _leftovers(out: Path) -> list[str]:
    """Temporary files and folders a finished run must not leave behind."""
    found = []
    for path in out.rglob("*"):
        name = path.name
        if (name.endswith((".tmp", ".parts")) or name.startswith((".write-probe-", "shard-"))
                or ".merge" in name):
            found.append(str(path.relative_to(out)))
    return found


@pytest.mark.slow
def test_kill_reconstruct_at_random_moments_and_resume(tmp_path: Path) -> None:
    images = resized_sample(tmp_path / "images", 5, 320)
    reference = tmp_path / "reference"
    durations = _timed_run(images, reference)

    rng = np.random.default_rng(SEED)
    killed = []
    for k in range(NUM_KILLS):
        stage = STAGES[k % len(STAGES)]
        delay = float(rng.uniform(0.0, durations[stage]))
        out = tmp_path / f"run{k}"
        killed.append(_kill_during(images, out, stage, delay))
        rerun = subprocess.run(_command(images, out), env=ENV, preexec_fn=_one_cpu, capture_output=True,
                               text=True)
        assert rerun.returncode == 0, (stage, delay, rerun.stderr[-2000:])
        for name in BYTE_EQUAL:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (stage, delay, name)
        for name, kind in H5_FILES.items():
            assert_same_h5(out / name, reference / name, kind)
        assert _leftovers(out) == [], (stage, delay)
    assert sum(killed) >= NUM_KILLS - 2, f"only {sum(killed)} of {NUM_KILLS} runs were killed mid-way"
