"""``compare``: the table, weight checks, and a real run on a tiny copy of the sample scene (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from omniglue_sfm import compare, reconstruct
from omniglue_sfm.config import presets
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.runtime import weights


def _ok_row(**extra) -> dict:
    row = {"status": "ok", "registered": 7, "total": 8, "num_points3D": 1234, "mean_track_length": 3.456,
           "mean_reprojection_error": 0.789, "seconds_total": 6.1,
           "seconds": {"extract": 1.0, "pairs": 0.01, "match": 2.0, "sfm": 3.0}}
    row.update(extra)
    return row


def test_markdown_table_lists_every_preset_with_its_status():
    rows = {
        "aliked-lightglue": _ok_row(auc5=0.5, auc10=0.6, auc20=0.7, center_error=0.0123, pair_auc5=0.4321,
                                    epipolar_precision=0.875),
        "aliked-mnn": _ok_row(features_shared_with="aliked-lightglue", center_error=math.inf),
        "superpoint-superglue": {"status": "skipped", "reason": "weights file 'superpoint_v1.pth' not found"},
        "sift": {"status": "failed", "reason": "the scene did not reconstruct: too few inliers"},
    }
    table = compare.markdown_table(rows, with_gt=True)
    lines = table.splitlines()
    header = lines[0]
    assert "AUC@5" in header and "centre error" in header and "3D points" in header
    ncols = header.count("|")
    assert all(line.count("|") == ncols for line in lines[1:6])
    assert "| aliked-lightglue | 7/8 | 1234 | 3.46 | 0.789 |" in table
    assert "0.500" in table and "0.0123" in table
    assert "pair AUC@5" in header and "epi prec" in header
    assert "| 0.0123 | 0.432 | 0.875 |" in table
    assert lines[3].endswith("| - | - |")  # no two-view metrics (e.g. sift: no h5 files): "-"
    assert "(shared: aliked-lightglue)" in table
    assert "| superpoint-superglue | skipped |" in table
    assert "- **sift** failed: the scene did not reconstruct: too few inliers" in table
    assert "AUC" not in compare.markdown_table(rows, with_gt=False)


def _missing(spec_name: str) -> bool:
    try:
        weights.resolve(weights.KNOWN[spec_name], download=False)
    except weights.WeightsNotFoundError:
        return True
    return False


def test_missing_weights_are_detected_before_any_work(monkeypatch):
    monkeypatch.setenv("OMNIGLUE_SFM_OFFLINE", "1")
    if not _missing("superpoint"):
        pytest.skip("SuperPoint weights are installed here")
    with pytest.raises(weights.WeightsNotFoundError):
        reconstruct.check_weights(presets.get("superpoint+superglue"))
    reconstruct.check_weights(presets.get("sift"))  # COLMAP's own: nothing to load


def test_unknown_preset_and_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        compare.main(tmp_path / "nope", tmp_path / "out", ["aliked+mnn"])
    (tmp_path / "imgs").mkdir()
    report = compare.main(tmp_path / "imgs", tmp_path / "out", ["no-such-preset"],
                          compare.CompareOptions(render=False))
    assert report["rows"]["no-such-preset"]["status"] == "failed"
    assert "unknown preset" in report["rows"]["no-such-preset"]["reason"]


@pytest.mark.slow
def test_compare_two_presets_share_features_and_skip_missing_weights(tmp_path, monkeypatch):
    from conftest import SAMPLE_IMAGES, save_resized

    monkeypatch.setenv("OMNIGLUE_SFM_OFFLINE", "1")
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:4]:
        save_resized(src, images / src.name, 512)
    gt = Path(__file__).resolve().parents[1] / "datasets" / "herzjesu_p8_small" / "gt"
    out = tmp_path / "out"
    knobs = {"features": {"max_keypoints": 512, "resize_max": 512}}
    chosen = [presets.resolve(name, knobs) for name in ("aliked+lightglue", "aliked+mnn",
                                                        "superpoint+superglue")]
    report = compare.main(images, out, chosen, compare.CompareOptions(gt=gt), RunOptions(device="cpu"))
    rows = report["rows"]
    assert rows["aliked-lightglue"]["status"] == "ok", rows["aliked-lightglue"]
    assert rows["aliked-lightglue"]["registered"] >= 3
    assert rows["aliked-mnn"]["status"] in ("ok", "failed")
    if rows["aliked-mnn"]["status"] == "ok":
        assert rows["aliked-mnn"]["features_shared_with"] == "aliked-lightglue"
        shared, first = out / "aliked-mnn" / "features.h5", out / "aliked-lightglue" / "features.h5"
        assert shared.read_bytes() == first.read_bytes()
    if _missing("superpoint"):
        assert rows["superpoint-superglue"]["status"] == "skipped"
        assert "superpoint" in rows["superpoint-superglue"]["reason"]
    saved = json.loads((out / "compare.json").read_text())
    assert set(saved["rows"]) == set(rows)
    assert "auc5" in saved["rows"]["aliked-lightglue"]
    assert (out / "compare.md").read_text().startswith("| preset |")
    assert (out / "compare.png").stat().st_size > 1000
