"""Command-line knobs: --max-keypoints, --resize-max, --batch-size and --preset-file (user presets,
validated before any work), and that overrides are part of the recorded configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omniglue_sfm import cli, match
from omniglue_sfm.config import presets
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io, matches_h5, textfiles


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error: ")]


def _run(argv: list[str]) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse usage errors
        return int(stop.code)


def test_builtin_presets_pass_the_user_file_validation() -> None:
    for name in presets.names():
        presets.validate(presets.get(name), name)  # raises on an unknown key or plugin


def test_user_presets_start_from_a_builtin_or_stand_alone(tmp_path: Path) -> None:
    path = tmp_path / "my.toml"
    path.write_text('''
[strict]
base = "aliked+mnn"
description = "mutual NN, stricter"
[strict.matcher]
min_similarity = 0.9

[tiny]
[tiny.features]
name = "disk"
max_keypoints = 300
resize_max = 640
[tiny.matcher]
name = "lightglue"
features = "disk"
filter_threshold = 0.2
''')
    strict = presets.PresetChoice("strict", path).resolve()
    assert strict["name"] == "strict" and strict["matcher"] == {"name": "mnn", "min_similarity": 0.9}
    assert strict["features"] == presets.get("aliked+mnn")["features"]
    tiny = presets.PresetChoice("tiny", path, max_keypoints=128).resolve()
    assert tiny["features"] == {"name": "disk", "max_keypoints": 128, "resize_max": 640}
    assert presets.PresetChoice("omniglue", path, resize_max=800).resolve()["features"]["resize_max"] == 800


BAD_FILES = {
    "unknown preset key": ('[p]\nbase = "omniglue"\nmatchr = 1\n', "unknown key(s) matchr"),
    "unknown matcher key": ('[p]\nbase = "omniglue"\n[p.matcher]\nfilter_treshold = 0.2\n',
                            "[matcher] key(s) filter_treshold unknown to matcher 'omniglue'"),
    "unknown extractor key": ('[p]\nbase = "disk+lightglue"\n[p.features]\nmodel = "aliked-n16"\n',
                              "[features] key(s) model unknown to extractor 'disk'"),
    "unregistered matcher": ('[p]\nbase = "omniglue"\n[p.matcher]\nname = "loftr"\n',
                             "unknown matcher 'loftr'"),
    "unregistered extractor": ('[p]\n[p.features]\nname = "sift2"\n[p.matcher]\nname = "mnn"\n',
                               "unknown extractor 'sift2'"),
    "built-in name": ('[omniglue]\nbase = "omniglue"\n', "name of a built-in preset"),
    "bad base": ('[p]\nbase = "omniglu"\n', "base = 'omniglu' is not a built-in preset"),
    "bad pipeline": ('[p]\nbase = "omniglue"\npipeline = "magic"\n',
                     "[p]: preset 'p': unknown pipeline 'magic'"),
    "sift with a matcher": ('[p]\nbase = "sift"\n[p.matcher]\nname = "mnn"\n', "has no [matcher]"),
    "bad size": ('[p]\nbase = "omniglue"\n[p.features]\nresize_max = 0\n', "resize_max must be"),
    "bad count": ('[p]\nbase = "omniglue"\n[p.features]\nmax_keypoints = "many"\n', "max_keypoints must be"),
    "bad rotation": ('[p]\nbase = "omniglue"\nrotation = "sideways"\n', "unknown rotation mode 'sideways'"),
    "bad rotation key": ('[p]\nbase = "omniglue"\n[p.rotation]\nmode = "auto"\nturns = 8\n',
                         "unknown rotation option(s) turns"),
    "not TOML": ("[p\n", "not valid TOML"),
    "empty": ("", "defines no preset"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_preset_file_is_one_error_line_before_any_work(case: str, tmp_path: Path, capsys) -> None:
    text, words = BAD_FILES[case]
    (tmp_path / "my.toml").write_text(text)
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out"
    code = _run(["extract", images, out / "features.h5", "--preset-file", tmp_path / "my.toml",
                 "--preset", "p"])
    lines = _errors(capsys)
    assert code == 1 and len(lines) == 1 and words in lines[0], lines
    assert not out.exists()


def test_unknown_preset_names_the_user_presets_too(tmp_path: Path, capsys) -> None:
    (tmp_path / "my.toml").write_text('[mine]\nbase = "omniglue"\n')
    code = _run(["compare", tmp_path, tmp_path / "out", "--presets", "omniglue,nope",
                 "--preset-file", tmp_path / "my.toml"])
    lines = _errors(capsys)
    assert code == 1 and "unknown preset 'nope'" in lines[0] and "mine" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["extract", "a", "b.h5", "--max-keypoints", "0"],
    ["reconstruct", "a", "b", "--resize-max", "big"],
    ["match", "a", "b", "c", "--batch-size", "-1"],
    ["compare", "a", "b", "--max-keypoints", "1.5"],
])
def test_bad_knob_values_are_usage_errors(argv: list[str], capsys) -> None:
    assert _run(argv) == 1
    assert _errors(capsys)


def test_knobs_are_recorded_and_another_value_is_not_resumed_into(small_scene: Path, tmp_path: Path,
                                                                  capsys) -> None:
    out = tmp_path / "features.h5"
    assert _run(["extract", small_scene, out, "--preset", "aliked+mnn", "--max-keypoints", "40",
                 "--resize-max", "200", "--device", "cpu"]) == 0
    recorded = h5io.read_config(out)["features"]
    assert recorded["max_keypoints"] == 40 and recorded["resize_max"] == 200
    assert all(0 < len(h5io.read_keypoints(out, n)) <= 40 for n in h5io.list_names(out))
    before = out.stat().st_mtime_ns
    capsys.readouterr()
    assert _run(["extract", small_scene, out, "--preset", "aliked+mnn", "--max-keypoints", "60",
                 "--resize-max", "200", "--device", "cpu"]) == 1
    lines = _errors(capsys)
    assert "another configuration" in lines[0] and out.stat().st_mtime_ns == before


def test_reconstruct_passes_its_knobs_on(small_scene: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    seen = {}
    real = match.main

    def spy(features, pairs_path, matches, preset, run, **kwargs):
        seen["batch_size"] = run.batch_size
        return real(features, pairs_path, matches, preset, run, **kwargs)

    monkeypatch.setattr(match, "main", spy)
    out = tmp_path / "out"
    code = _run(["reconstruct", small_scene, out, "--preset", "aliked+mnn", "--max-keypoints", "64",
                 "--resize-max", "256", "--batch-size", "2", "--device", "cpu"])
    assert code in (0, 2)  # 3 tiny images may not reconstruct; the knobs are what is tested
    assert seen["batch_size"] == 2
    assert h5io.read_config(out / "features.h5")["features"]["max_keypoints"] == 64
    assert h5io.read_config(out / "matches.h5")["features"]["features"]["max_keypoints"] == 64
    capsys.readouterr()
    assert _run(["reconstruct", small_scene, out, "--preset", "aliked+mnn", "--max-keypoints", "80",
                 "--resize-max", "256", "--device", "cpu"]) == 1
    assert "another configuration" in _errors(capsys)[0]
    assert _run(["reconstruct", small_scene, tmp_path / "sift", "--preset", "sift", "--batch-size", "2"]) == 1
    assert "--batch-size is for learned matchers" in _errors(capsys)[0]


def test_batch_size_does_not_change_the_matches(small_features: Path, tmp_path: Path) -> None:
    """Why --batch-size is not part of the recorded configuration."""
    names = h5io.list_names(small_features)
    textfiles.write_pairs(tmp_path / "pairs.txt", [(a, b) for a in names for b in names if a < b])
    from conftest import small_preset

    preset = small_preset("mnn")
    for size in (1, 3):
        match.main(small_features, tmp_path / "pairs.txt", tmp_path / f"m{size}.h5", preset,
                   RunOptions(device="cpu", batch_size=size))
    for a, b in textfiles.read_pairs(tmp_path / "pairs.txt"):
        np.testing.assert_array_equal(matches_h5.read_matches(tmp_path / "m1.h5", a, b)[0],
                                      matches_h5.read_matches(tmp_path / "m3.h5", a, b)[0])
