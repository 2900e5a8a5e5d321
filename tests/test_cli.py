"""The one error policy of ``cli.py``: every command fails on a user error with one ``error:`` line,
no traceback, and exit code 1 (2: the scene did not reconstruct)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl

import pytest

from omniglue_sfm import cli
from omniglue_sfm.formats import sharded
from omniglue_sfm.runtime import locks

# one user error per command: (argv with {tmp} for a fresh empty folder, words the message must hold)
USER_ERRORS = {
    "frames": (["frames", "{tmp}/missing.mp4", "{tmp}/frames"], "missing.mp4"),
    "extract": (["extract", "{tmp}", "{tmp}/features.h5", "--preset", "sift"], "COLMAP's own SIFT"),
    "pairs": (["pairs", "{tmp}", "{tmp}/pairs.txt", "--mode", "retrieval"], "global descriptors"),
    "match": (["match", "{tmp}/missing.h5", "{tmp}/pairs.txt", "{tmp}/matches.h5"], "missing.h5"),
    "vlad": (["vlad", "{tmp}/missing.h5", "{tmp}/vlad.h5"], "missing.h5"),
    "merge": (["merge", "{tmp}/out.h5", "{tmp}/missing.h5"], "missing.h5"),
    "sfm": (["sfm", "{tmp}/missing", "{tmp}/f.h5", "{tmp}/m.h5", "{tmp}/out"], "does not exist"),
    "reconstruct": (["reconstruct", "{tmp}", "{tmp}/out", "--preset", "sift"], "no images"),
    "evaluate": (["evaluate", "{tmp}", "--gt", "{tmp}/missing"], "missing"),
    "evaluate-pairs": (["evaluate-pairs", "{tmp}/missing", "--gt", "{tmp}"], "does not exist"),
    "localize": (["localize", "{tmp}", "{tmp}", "{tmp}/out"], "COLMAP model"),
    "viz": (["viz", "model", "{tmp}/missing", "{tmp}/render.png"], "missing"),
    "compare": (["compare", "{tmp}/missing", "{tmp}/out"], "does not exist"),
    "evaluate-localization": (["evaluate-localization", "{tmp}", "--gt", "{tmp}/missing"], "missing"),
    "train": (["train", "{tmp}/missing.toml"], "missing.toml"),
    "finetune": (["finetune", "{tmp}/missing", "--out", "{tmp}/out.pt"], "missing"),
    "export": (["export", "{tmp}", "{tmp}/dest"], "no COLMAP model"),
    "triangulate": (["triangulate", "{tmp}", "{tmp}/out", "--reference", "{tmp}/missing"], "does not exist"),
    "weights": (["weights", "fetch", "og_export", "--from", "{tmp}/missing.zip"], "missing.zip"),
}


def _commands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_every_command_has_a_user_error_test():
    assert sorted(USER_ERRORS) == _commands()


@pytest.mark.parametrize("command", sorted(USER_ERRORS))
def test_user_error_is_one_line_without_traceback(command, tmp_path, capsys):
    argv, words = USER_ERRORS[command]
    code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert words in lines[0]


def test_a_scene_that_does_not_reconstruct_exits_2(capsys):
    from omniglue_sfm.colmap.mapper import ReconstructionError

    assert cli.exit_code(ReconstructionError("x")) == 2
    assert cli.exit_code(ValueError("x")) == 1
    assert cli.error_message(KeyError("no features for 'a.jpg'")) == "no features for 'a.jpg'"


def test_a_bug_keeps_its_traceback(monkeypatch):
    from omniglue_sfm.evaluation import reconstruction as evaluate

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["evaluate", ".", "--gt", "."])


# --------------------------------------------------------------------------------------------
# issue #10: checks that come before any work


def _image_folder(tmp_path, textured, n=2):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(n):
        Image.fromarray(textured(64, 80, seed=i)).save(images / f"{i}.png")
    return images


def _no_work(monkeypatch):
    """Any stage that starts work fails the test (the checks must come first)."""
    from omniglue_sfm import colmap_sift, reconstruct

    def work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(reconstruct, "run_learned", work)
    monkeypatch.setattr(colmap_sift, "main", work)
    monkeypatch.setattr(reconstruct, "check_weights", lambda preset: None)
    monkeypatch.setattr(sharded, "ShardedH5", work)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@contextlib.contextmanager
def _held(lock_file):
    """Hold ``lock_file`` as another run would (flock locks belong to the open file)."""
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def test_reconstruct_into_a_locked_output_folder_stops_at_once(tmp_path, textured, monkeypatch, capsys):
    images = _image_folder(tmp_path, textured)
    out = tmp_path / "out"
    out.mkdir()
    _no_work(monkeypatch)
    with _held(out / ".omniglue-sfm.lock"):
        code = cli.main(["reconstruct", str(images), str(out), "--preset", "aliked-mnn"])
    assert code == 1
    assert "in use by another omniglue-sfm run" in _one_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == [".omniglue-sfm.lock"]


@pytest.mark.parametrize("command", ["extract", "match"])
def test_extract_or_match_into_a_locked_file_stops_at_once(command, tmp_path, textured, monkeypatch, capsys):
    images = _image_folder(tmp_path, textured)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "pairs.txt").write_text("0.png 1.png\n")
    (tmp_path / "features.h5").write_bytes(b"")
    _no_work(monkeypatch)
    name = "features.h5" if command == "extract" else "matches.h5"
    argv = ([command, str(images), str(out / name)] if command == "extract"
            else [command, str(tmp_path / "features.h5"), str(tmp_path / "pairs.txt"), str(out / name)])
    with _held(out / f".{name}.lock"):
        code = cli.main([*argv, "--preset", "aliked-mnn"])
    assert code == 1
    assert "in use by another omniglue-sfm run" in _one_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == [f".{name}.lock"]


def test_lock_is_released_after_a_run(tmp_path):

    with locks.output_lock(tmp_path):
        with locks.output_lock(tmp_path):  # this process holds it already (reconstruct -> sfm): no-op
            pass
        with pytest.raises(BlockingIOError), _held(tmp_path / ".omniglue-sfm.lock"):
            pass
    with _held(tmp_path / ".omniglue-sfm.lock"):  # free again, for another process too
        pass


@pytest.mark.parametrize(("option", "words"), [
    (["--camera-model", "NOSUCH"], "unknown camera model 'NOSUCH'"),
    (["--camera-params", "500,32"], "model SIMPLE_RADIAL takes 4"),
    (["--camera-model", "PINHOLE", "--camera-params", "500,x,32,24"], "not all numbers"),
])
def test_bad_camera_options_fail_before_any_work(option, words, tmp_path, textured, monkeypatch, capsys):
    images = _image_folder(tmp_path, textured)
    out = tmp_path / "out"
    _no_work(monkeypatch)
    code = cli.main(["reconstruct", str(images), str(out), "--preset", "aliked-mnn", *option])
    assert code == 1
    assert words in _one_error(capsys)
    assert not (out / "features.h5").exists()


def test_extract_on_a_folder_without_images_is_an_error_and_writes_nothing(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out" / "features.h5"
    code = cli.main(["extract", str(images), str(out), "--preset", "aliked-mnn"])
    assert code == 1
    assert "no images found" in _one_error(capsys)
    assert not out.exists()


def test_output_folder_that_is_a_file_is_a_clear_error(tmp_path, textured, monkeypatch, capsys):
    images = _image_folder(tmp_path, textured)
    out = tmp_path / "out"
    out.write_text("not a folder")
    _no_work(monkeypatch)
    code = cli.main(["reconstruct", str(images), str(out), "--preset", "aliked-mnn"])
    assert code == 1
    assert "exists and is not a folder" in _one_error(capsys)
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["sfm", "localize"])
def test_sfm_or_localize_output_that_is_a_file_is_a_clear_error(command, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    if command == "sfm":
        for name in ("images", "f.h5", "m.h5"):
            (tmp_path / name).mkdir()
        argv = ["sfm", str(tmp_path / "images"), str(tmp_path / "f.h5"), str(tmp_path / "m.h5"), str(out)]
    else:
        argv = ["localize", str(tmp_path), str(tmp_path), str(out)]
    code = cli.main(argv)
    assert code == 1
    assert "exists and is not a folder" in _one_error(capsys)
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["reconstruct", "extract"])
def test_cuda_device_without_cuda_fails_before_any_work(command, tmp_path, textured, monkeypatch, capsys):
    import torch

    images = _image_folder(tmp_path, textured)
    out = tmp_path / "out"
    _no_work(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    target = str(out) if command == "reconstruct" else str(out / "features.h5")
    code = cli.main([command, str(images), target, "--preset", "aliked-mnn", "--device", "cuda"])
    assert code == 1
    assert "no usable CUDA" in _one_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["reconstruct", "a", "b", "--pairs", "bogus"],
    ["extract", "a"],
    ["nosuch-command"],
    ["match", "a", "b", "c", "--no-such-option"],
])
def test_usage_errors_exit_1_as_readme_says(argv, capsys):
    code = _exit_code(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")], err


def _exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize(("command", "preset"), [("extract", "aliked-mnn"), ("reconstruct", "aliked-mnn"),
                                               ("reconstruct", "sift")])
def test_no_readable_image_is_bad_input_exit_1(command, preset, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_text("not an image")
    (images / "b.jpg").write_bytes(b"")
    target = tmp_path / "out" / ("features.h5" if command == "extract" else "")
    code = cli.main([command, str(images), str(target), "--preset", preset, "--device", "cpu"])
    line = _one_error(capsys)
    assert code == 1
    assert "none of the 2 image(s)" in line and "empty file (0 bytes)" in line


@contextlib.contextmanager
def _read_only(folder):
    """``folder`` unwritable for this process: chmod for a normal user; root ignores permission
    bits, so there the immutable attribute (chattr +i); skip where neither is possible."""
    import os
    import subprocess

    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot make a folder read-only here (root without chattr +i)")
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    try:
        yield
    finally:
        undo()


@pytest.mark.parametrize("command", ["reconstruct", "extract", "sfm", "localize"])
def test_read_only_output_fails_before_any_work(command, tmp_path, textured, monkeypatch, capsys):
    images = _image_folder(tmp_path, textured)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("f.h5", "m.h5"):  # sfm's inputs (only their existence is checked first)
        (tmp_path / name).mkdir()
    _no_work(monkeypatch)
    argv = {
        "reconstruct": ["reconstruct", str(images), str(out), "--preset", "aliked-mnn"],
        "extract": ["extract", str(images), str(out / "features.h5"), "--preset", "aliked-mnn"],
        "sfm": ["sfm", str(images), str(tmp_path / "f.h5"), str(tmp_path / "m.h5"), str(out)],
        "localize": ["localize", str(tmp_path), str(images), str(out)],
    }[command]
    with _read_only(out):
        code = cli.main(argv)
    assert code == 1
    assert f"cannot write to {out}" in _one_error(capsys)
    assert list(out.iterdir()) == []


def test_localize_into_a_locked_output_folder_stops_at_once(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with _held(out / ".omniglue-sfm.lock"):
        code = cli.main(["localize", str(tmp_path), str(tmp_path), str(out)])
    assert code == 1
    assert "in use by another omniglue-sfm run" in _one_error(capsys)


@pytest.mark.parametrize(("argv", "words"), [
    (["match", "{tmp}/f.h5", "{tmp}/pairs.txt", "{tmp}/m.h5", "--shard", "5/2"], "shard"),
    (["match", "{tmp}/f.h5", "{tmp}/missing.txt", "{tmp}/m.h5"], "missing.txt"),
    (["match", "{tmp}/f.h5", "{tmp}/pairs.txt", "{tmp}/m.h5", "--preset", "nosuch"], "nosuch"),
    (["extract", "{tmp}/no-such-folder", "{tmp}/f.h5"], "no-such-folder"),
    (["extract", "{tmp}", "{tmp}/f.h5", "--preset", "nosuch"], "nosuch"),
], ids=["bad-shard", "missing-pairs", "match-unknown-preset", "missing-images", "extract-unknown-preset"])
def test_extract_and_match_user_errors_are_one_line(argv, words, tmp_path, capsys):
    """Issue #10, case 6: extract and match go through the one error policy too."""
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\n")

    with sharded.ShardedH5(tmp_path / "f.h5", "features", {"features": {"name": "aliked"}}) as store:
        store.add("a.jpg", {"keypoints": [[0.0, 0.0]]})
    try:
        code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as stop:  # usage errors stop in argparse, with the same policy
        code = stop.code
    assert code == 1
    assert words in _one_error(capsys)


@pytest.mark.parametrize(("num_localized", "code"), [(0, 2), (1, 0)])
def test_localize_exit_code_as_readme_says(num_localized, code, tmp_path, monkeypatch, capsys):
    """README: 2 when no query was localized (each reason is printed), 0 otherwise."""
    from omniglue_sfm import localize

    query = {"localized": bool(num_localized), "num_inliers": 40, "num_correspondences": 50,
             "reason": None if num_localized else "pose rejected: too few PnP inliers"}
    report = {"queries": {"q.jpg": query}, "num_localized": num_localized, "num_queries": 1, "seconds": 0.1}
    monkeypatch.setattr(localize, "main", lambda *args, **kwargs: report)
    assert cli.main(["localize", str(tmp_path), str(tmp_path), str(tmp_path / "out")]) == code
    assert ("FAILED     pose rejected" in capsys.readouterr().out) == (not num_localized)


@pytest.mark.parametrize("size, words", [("1280", "expected WxH"), ("0x960", "at least 1"),
                                         ("axb", "expected WxH")])
def test_viz_size_errors_name_the_option(size, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error, before any work
        cli.main(["viz", "model", str(tmp_path), str(tmp_path / "r.png"), "--size", size])
    assert exit_info.value.code == 1
    line = _one_error(capsys)
    assert "--size" in line and words in line
