"""Resume after a real ``kill -9`` of the CLI: the finished result equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_h5, resized_sample

from omniglue_sfm.formats import h5io, sharded, textfiles

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "omniglue_sfm", *args, "--device", "cpu", "--flush-every", "1"]


def _run_and_kill(cmd: list[str], parts: Path, min_shards: int, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL it once ``parts`` holds ``min_shards`` shards."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        while len(list(parts.glob("shard-*.h5"))) < min_shards:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[3]} finished before it could be killed (rc {proc.returncode})")
            if time.monotonic() - start > timeout:
                pytest.fail("no shard appeared in time")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_and_resume_extract_and_match(tmp_path: Path) -> None:
    images = resized_sample(tmp_path / "images", 6, 256)

    killed, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"
    extract = ["extract", str(images)]
    _run_and_kill(_cli(*extract, str(killed), "--preset", "aliked+lightglue"),
                  tmp_path / "killed.h5.parts", min_shards=2)
    assert not killed.exists() and len(sharded.ShardedH5(killed, "features", _cfg(killed)).done) >= 2
    subprocess.run(_cli(*extract, str(killed), "--preset", "aliked+lightglue"), env=ENV, check=True,
                   capture_output=True)
    subprocess.run(_cli(*extract, str(clean), "--preset", "aliked+lightglue"), env=ENV, check=True,
                   capture_output=True)
    assert_same_h5(killed, clean, "features")

    names = h5io.list_names(clean)
    pairs = tmp_path / "pairs.txt"
    textfiles.write_pairs(pairs, [(names[i], names[i + 1]) for i in range(5)])
    mk, mc = tmp_path / "m_killed.h5", tmp_path / "m_clean.h5"
    match = ["match", str(clean), str(pairs)]
    _run_and_kill(_cli(*match, str(mk), "--preset", "aliked+lightglue", "--batch-size", "1"),
                  tmp_path / "m_killed.h5.parts", min_shards=1)
    subprocess.run(_cli(*match, str(mk), "--preset", "aliked+lightglue"), env=ENV, check=True,
                   capture_output=True)
    subprocess.run(_cli(*match, str(mc), "--preset", "aliked+lightglue"), env=ENV, check=True,
                   capture_output=True)
    assert_same_h5(mk, mc, "matches")


def _cfg(path: Path) -> dict:
    shard = next(iter(sorted(path.with_name(path.name + ".parts").glob("shard-*.h5"))))
    return h5io.read_config(shard)
