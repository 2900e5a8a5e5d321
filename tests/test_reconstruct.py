"""``reconstruct`` end to end on the bundled sample scene (8 images, Strecha ground truth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniglue_sfm import cli, reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.config import presets
from omniglue_sfm.evaluation.reconstruction import evaluate

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "herzjesu_p8_small"
# Fewer keypoints and smaller extraction images keep each run well under a minute on 2 CPU
# cores; the product presets (2048 / 8192 keypoints) are measured in the README instead.
FAST = {"features": {"max_keypoints": 512, "resize_max": 768}}
FAST_SIFT = {"features": {"max_keypoints": 1024, "resize_max": 768}}
OUTPUTS = ("database.db", "sparse/images.bin", "sparse/cameras.bin", "sparse/points3D.bin",
           "model.ply", "stats.json")


def _check_sample_model(out: Path, result) -> None:
    stats = json.loads((out / "stats.json").read_text())
    assert stats["registered"] == stats["total"] == 8, stats.get("unregistered")
    assert stats["mean_reprojection_error"] < 1.5
    assert stats["num_points3D"] > 500
    assert stats["failed_images"] == {}
    for f in OUTPUTS:
        assert (out / f).exists(), f
    metrics = evaluate(out / "sparse", SAMPLE / "gt")
    assert metrics["registered"] == 8
    assert metrics["auc5"] > 0.5, metrics
    assert result.reconstruction.num_reg_images() == 8


def test_sample_scene_aliked_lightglue(tmp_path, capsys):
    out = tmp_path / "out"
    # the command line prints the summary table
    assert cli.main(["reconstruct", str(SAMPLE / "images"), str(out), "--preset", "aliked+lightglue",
                     "--max-keypoints", "512", "--resize-max", "768"]) == 0
    table = capsys.readouterr().out
    assert "images registered" in table and "8 / 8" in table
    for f in ("features.h5", "pairs.txt", "matches.h5"):
        assert (out / f).exists(), f
    assert len((out / "pairs.txt").read_text().splitlines()) == 28  # 8 images: exhaustive
    # a re-run (the library's entry point) finds every stage done and reuses the model
    again = reconstruct.main(SAMPLE / "images", out, presets.resolve("aliked+lightglue", FAST),
                             sfm_options=SfMOptions(progress=False))
    assert again.skipped
    _check_sample_model(out, again)
    assert again.stats["registered"] == 8


@pytest.mark.parametrize("preset", ["omniglue", "omniglue-guided"])
def test_sample_scene_omniglue_shipped_checkpoint(tmp_path, preset):
    """The default preset (unguided) and the guided one (ALIKED + aliked-grid guidance + the
    shipped guidance scales) end to end."""
    out = tmp_path / "out"
    result = reconstruct.main(SAMPLE / "images", out, presets.resolve(preset, FAST),
                              sfm_options=SfMOptions(progress=False))
    _check_sample_model(out, result)
    assert result.stats["preset"]["matcher"]["name"] == "omniglue"


def test_sample_scene_colmap_sift(tmp_path):
    out = tmp_path / "out"
    result = reconstruct.main(SAMPLE / "images", out, presets.resolve("sift", FAST_SIFT),
                              sfm_options=SfMOptions(progress=False))
    _check_sample_model(out, result)
    assert set(result.stats["stage_seconds"]) >= {"extract", "match", "sfm"}


def _noise_images(folder: Path, n: int = 2, size: int = 256) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_unrelated_images_exit_nonzero_with_reason(tmp_path, capsys):
    _noise_images(tmp_path / "images")
    code = cli.main(["reconstruct", str(tmp_path / "images"), str(tmp_path / "out"), "--preset", "sift"])
    err = capsys.readouterr().err
    assert code == 2
    assert "did not reconstruct" in err
    assert "Traceback" not in err


def test_missing_weights_is_a_clean_error(tmp_path, capsys, monkeypatch):
    _noise_images(tmp_path / "images")
    monkeypatch.setenv("OMNIGLUE_SFM_OMNIGLUE", str(tmp_path / "no_such_checkpoint.pt"))
    code = cli.main(["reconstruct", str(tmp_path / "images"), str(tmp_path / "out"), "--preset", "omniglue"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no_such_checkpoint.pt" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "features.h5").exists()  # checked before any work is done


def test_empty_folder_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert cli.main(["reconstruct", str(tmp_path / "images"), str(tmp_path / "out"), "--preset", "sift"]) == 1
    assert "no images" in capsys.readouterr().err


def test_default_pairs():
    assert reconstruct.default_pairs_mode(40) == "exhaustive"
    assert reconstruct.default_pairs_mode(41) == "retrieval"
