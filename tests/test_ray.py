"""``--executor ray``: the same arrays as the local executor, and clear errors (issue #13)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import resized_sample, small_preset

from omniglue_sfm import cli, extract, match, pairs
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.runtime import executors

ray = pytest.importorskip("ray")


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file (and every item attribute but timestamps), by path."""
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]
        for key, value in obj.attrs.items():
            out[f"{name}@{key}"] = np.asarray(value)

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return out


def assert_same_arrays(a: Path, b: Path) -> None:
    x, y = h5_arrays(a), h5_arrays(b)
    assert sorted(x) == sorted(y)
    different = [k for k in x if not np.array_equal(x[k], y[k])]
    assert not different, f"{len(different)} arrays differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for this module (workers inherit PYTHONPATH)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def run_stages(images: Path, out: Path, preset: dict, executor: executors.ExecutorOptions) -> None:
    extract.main(images, out / "features.h5", preset, RunOptions(device="cpu", executor=executor))
    pairs.main(images, out / "pairs.txt")
    match.main(out / "features.h5", out / "pairs.txt", out / "matches.h5", preset,
               RunOptions(device="cpu", batch_size=2, executor=executor))


def test_ray_gives_the_local_arrays(tmp_path: Path, local_ray: None) -> None:
    (tmp_path / "images").mkdir()
    images = resized_sample(tmp_path / "images", 4, 256)
    preset = small_preset("lightglue", max_keypoints=128)
    run_stages(images, tmp_path / "local", preset, executors.ExecutorOptions())
    ray_options = executors.ExecutorOptions("ray", num_workers=2)
    run_stages(images, tmp_path / "ray", preset, ray_options)
    assert_same_arrays(tmp_path / "local" / "features.h5", tmp_path / "ray" / "features.h5")
    assert_same_arrays(tmp_path / "local" / "matches.h5", tmp_path / "ray" / "matches.h5")
    # the Ray run resumes like a local one: nothing left to do
    again = match.main(tmp_path / "ray" / "features.h5", tmp_path / "ray" / "pairs.txt",
                       tmp_path / "ray" / "matches.h5", preset, RunOptions(device="cpu", batch_size=2,
                                                                           executor=ray_options))
    assert again.num_pairs == 0 and again.num_skipped_existing == 6


def test_worker_that_cannot_see_an_image_says_so(tmp_path: Path) -> None:
    spec = extract.ExtractWorkerSpec(tmp_path, extract.features_config(small_preset()), "cpu")
    worker = spec.build(remote=True)
    with pytest.raises(FileNotFoundError, match="same path.*shared storage"):
        worker(["gone.jpg"], {})
    # here (the local executor) a missing file is a skipped image, as before
    local = spec.build(remote=False)(["gone.jpg"], {})
    assert local[0].failed


def test_without_ray_executor_ray_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    images = resized_sample(tmp_path, 2, 128)
    code = cli.main(["extract", str(images), str(tmp_path / "f.h5"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 1 and "pip install" in err and "[ray]" in err
    assert not (tmp_path / "f.h5").exists()


def test_ray_address_needs_executor_ray(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["extract", str(tmp_path), str(tmp_path / "f.h5"), "--ray-address", "127.0.0.1:1"])
    assert code == 1 and "--executor ray" in capsys.readouterr().err


def load_ray_check():
    """benchmarks/ray_check.py (the loopback cluster and the worker killer) as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ray_check.py"
    spec = importlib.util.spec_from_file_location("ray_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_node_cluster_survives_a_killed_worker(tmp_path: Path) -> None:
    """Two Ray nodes on 127.0.0.1; one worker process is killed -9 mid-match; the run completes with
    the local executor's arrays."""
    rc = load_ray_check()
    (tmp_path / "images").mkdir()
    images = resized_sample(tmp_path / "images", 6, 256)
    py, preset = sys.executable, "aliked+lightglue"
    local, remote = tmp_path / "local", tmp_path / "ray"
    cli_prefix = [py, "-m", "omniglue_sfm"]
    env = {**rc.loopback_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([*cli_prefix, "extract", str(images), str(local / "features.h5"), "--preset", preset],
                   check=True, env=env)
    subprocess.run([*cli_prefix, "pairs", str(images), str(local / "pairs.txt")], check=True, env=env)
    remote.mkdir()
    for name in ("features.h5", "pairs.txt"):
        shutil.copy(local / name, remote / name)
    # as many torch threads in each actor as in the local run (results depend on the thread count)
    threads = subprocess.run([py, "-c", "import torch; print(torch.get_num_threads())"], check=True,
                             capture_output=True, text=True).stdout.strip()  # (this process has 1)
    match_args = ["--preset", preset, "--batch-size", "1", "--flush-every", "1"]
    subprocess.run([*cli_prefix, "match", str(local / "features.h5"), str(local / "pairs.txt"),
                    str(local / "matches.h5"), *match_args], check=True, env=env)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", env["PYTHONPATH"])
        code = rc.run_on_loopback(
            [*cli_prefix, "match", str(remote / "features.h5"), str(remote / "pairs.txt"),
             str(remote / "matches.h5"), *match_args, "--executor", "ray", "--ray-cpus-per-worker", threads],
            cpus=int(threads), out=remote, kill_after=0.0)
    assert code == 0  # also 1 when the run ended before a worker could be killed
    assert rc.compare_runs(local, remote) == 0


def test_sift_pipeline_refuses_executor_ray(tmp_path: Path) -> None:
    from omniglue_sfm import reconstruct

    images = resized_sample(tmp_path, 2, 128)
    with pytest.raises(ValueError, match="leave --executor out"):
        reconstruct.main(images, tmp_path / "out", "sift",
                         RunOptions(executor=executors.ExecutorOptions("ray")))
    assert not (tmp_path / "out").exists()
