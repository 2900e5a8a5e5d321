"""benchmarks/gpu_check.py's CPU path (the GPU path runs where a CUDA device is lent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_path_prints_its_tables(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main(["--smoke", "--cpu", "--skip-reconstruct", "--repeats", "1"]) == 0
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = capsys.readouterr().out
    assert "## Matching" in out and "## Extraction" in out
    for matcher in module.MATCHERS:
        assert f"| 128 | 2 | fp32 | {matcher} |" in out
    assert "images/s" in out and "peak GPU memory" in out
