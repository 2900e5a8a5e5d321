"""Issue #10: an output folder never mixes configurations nor keeps stale features."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from conftest import SAMPLE_IMAGES, resized_sample, save_resized, small_preset

from omniglue_sfm import cli, colmap_sift, extract, localize, reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.config import presets
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io, outputs, sharded

SIFT = {"features": {"max_keypoints": 1024, "resize_max": 400}}
OPTS = SfMOptions(progress=False)
CPU = RunOptions(device="cpu")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four consecutive sample images at 400 px: both SIFT and ALIKED reconstruct them."""
    return resized_sample(tmp_path_factory.mktemp("stale_scene"), 4, 400)


def _sift_database_is_consistent(db_path: Path) -> bool:
    with pycolmap.Database.open(db_path) as db:
        for image in db.read_all_images():
            n_kp = db.num_keypoints_for_image(image.image_id)
            if n_kp == 0 or n_kp != db.num_descriptors_for_image(image.image_id):
                return False
    return True


def test_sift_after_learned_run_rebuilds_the_database(scene, tmp_path):
    """sift, then aliked+mnn (--overwrite), then sift: the last database is SIFT's, not a mix."""
    out = tmp_path / "out"
    reconstruct.main(scene, out, presets.resolve("sift", SIFT), sfm_options=OPTS)
    reconstruct.main(scene, out, small_preset(resize_max=400), replace(CPU, overwrite=True), sfm_options=OPTS)
    result = colmap_sift.main(scene, out, reconstruct.presets.resolve("sift", SIFT), options=OPTS)
    assert not result.skipped
    assert _sift_database_is_consistent(out / "database.db")


def _learned_out(scene: Path, out: Path) -> None:
    reconstruct.main(scene, out, small_preset(resize_max=400), CPU, sfm_options=OPTS)


def test_switching_pipeline_in_one_output_is_refused_without_overwrite(scene, tmp_path, capsys):
    learned, sift = tmp_path / "learned", tmp_path / "sift"
    _learned_out(scene, learned)
    before = (learned / "sparse" / "images.bin").read_bytes()
    assert cli.main(["reconstruct", str(scene), str(learned), "--preset", "sift"]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err and "sift" in err
    assert (learned / "sparse" / "images.bin").read_bytes() == before
    assert outputs.read_stats(learned)["preset"]["name"] == "test-aliked-mnn"

    reconstruct.main(scene, sift, presets.resolve("sift", SIFT), sfm_options=OPTS)
    with pytest.raises(h5io.ConfigMismatchError, match="--overwrite"):
        _learned_out(scene, sift)
    assert outputs.read_stats(sift)["preset"]["name"] == "sift"

    # --overwrite starts afresh: no learned file is left beside the SIFT model
    assert cli.main(["reconstruct", str(scene), str(learned), "--preset", "sift", "--overwrite"]) == 0
    assert outputs.read_stats(learned)["preset"]["name"] == "sift"
    assert not any((learned / f).exists() for f in ("features.h5", "matches.h5", "global.h5"))


def _h5_items(path: Path, kind: str, dataset: str) -> dict:
    with h5py.File(path, "r") as h5:
        return {k: h5[k][dataset][()] for k in h5io.list_names(path, kind)}


def test_replaced_image_is_reextracted_and_its_matches_redone(scene, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted(scene.glob("*.jpg")):
        shutil.copy(src, images / src.name)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    _learned_out(images, out)
    # another photo under the same name
    save_resized(sorted(SAMPLE_IMAGES.glob("*.jpg"))[5], images / "0003.jpg", 400)
    _learned_out(images, out)
    _learned_out(images, fresh)
    for name, kps in _h5_items(fresh / "features.h5", "features", "keypoints").items():
        np.testing.assert_allclose(_h5_items(out / "features.h5", "features", "keypoints")[name], kps,
                                   err_msg=name)
    got = _h5_items(out / "matches.h5", "matches", "matches0")
    for key, m0 in _h5_items(fresh / "matches.h5", "matches", "matches0").items():
        np.testing.assert_array_equal(got[key], m0, err_msg=key)


def test_features_without_source_record_are_kept(scene, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted(scene.glob("*.jpg"))[:2]:
        shutil.copy(src, images / src.name)
    features = tmp_path / "features.h5"
    extract.main(images, features, small_preset(resize_max=400), RunOptions(device="cpu"))
    with h5py.File(features, "r+") as h5:  # an older features.h5: no record of the source
        for name in h5io.list_names(features):
            for attr in list(h5[name].attrs):
                del h5[name].attrs[attr]
    before = _h5_items(features, "features", "keypoints")
    save_resized(sorted(SAMPLE_IMAGES.glob("*.jpg"))[5], images / "0001.jpg", 400)
    extract.main(images, features, small_preset(resize_max=400), RunOptions(device="cpu"))
    after = _h5_items(features, "features", "keypoints")
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


@pytest.mark.parametrize("damaged", ["features.h5", "matches.h5"])
def test_truncated_h5_is_a_clean_error_naming_the_file(scene, tmp_path, damaged):
    out = tmp_path / "out"
    _learned_out(scene, out)
    (out / "stats.json").unlink()  # force the stages to read their files again
    path = out / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(cli.user_errors()) as caught:
        _learned_out(scene, out)
    message = cli.error_message(caught.value)
    assert cli.exit_code(caught.value) == 1
    assert str(path) in message and "--overwrite" in message
    # and --overwrite recovers
    reconstruct.main(scene, out, small_preset(resize_max=400), replace(CPU, overwrite=True), sfm_options=OPTS)


@pytest.mark.parametrize("preset", [None, "sift"])
@pytest.mark.parametrize("stale_features", [False, True])
def test_localize_on_a_sift_map_says_sift_maps_cannot_localize(scene, tmp_path, preset, stale_features):
    out = tmp_path / "out"
    reconstruct.main(scene, out, presets.resolve("sift", SIFT), sfm_options=OPTS)
    if stale_features:  # left by a learned run into the same folder before it was refused
        with sharded.ShardedH5(out / "features.h5", "features",
                               {"features": small_preset()["features"]}) as s:
            s.add("0000.jpg", {"keypoints": np.zeros((1, 2), np.float32)})
    query = sorted(scene.glob("*.jpg"))[0]
    with pytest.raises(localize.LocalizationError, match="COLMAP's own SIFT") as caught:
        localize.main(out, query, tmp_path / "loc", run=CPU, preset=preset)
    assert "extract" not in str(caught.value)


def test_replaced_image_rebuilds_the_sift_database(scene, tmp_path):
    """The sift pipeline too: a photo replaced under the same name is not matched with the SIFT
    keypoints of the old one (issue #10, case 3)."""
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted(scene.glob("*.jpg")):
        shutil.copy(src, images / src.name)
    out = tmp_path / "out"
    first = colmap_sift.main(images, out, reconstruct.presets.resolve("sift", SIFT), options=OPTS)
    assert colmap_sift.main(images, out, reconstruct.presets.resolve("sift", SIFT), options=OPTS).skipped
    save_resized(sorted(SAMPLE_IMAGES.glob("*.jpg"))[6], images / "0003.jpg", 400)
    again = colmap_sift.main(images, out, reconstruct.presets.resolve("sift", SIFT), options=OPTS)
    assert not again.skipped and first.stats["fingerprint"] != again.stats["fingerprint"]
    fresh = colmap_sift.main(images, tmp_path / "fresh", reconstruct.presets.resolve("sift", SIFT),
                             options=OPTS)
    with pycolmap.Database.open(out / "database.db") as db, \
            pycolmap.Database.open(tmp_path / "fresh" / "database.db") as ref:
        for name in ("0000.jpg", "0003.jpg"):
            np.testing.assert_array_equal(db.read_keypoints(db.read_image_with_name(name).image_id),
                                          ref.read_keypoints(ref.read_image_with_name(name).image_id))
    assert again.stats["fingerprint"] == fresh.stats["fingerprint"]


# --------------------------------------------------------------------------------------------
# found in review: matches, maps and models that could be used with features they were not made from


def test_a_turn_is_part_of_what_features_were_made_from():
    from omniglue_sfm.formats import provenance

    upright = {"source_sha1": "abc"}
    assert provenance.source_sha1(upright) == "abc"  # older files stay valid
    assert provenance.source_sha1({**upright, "turn": 0}) == "abc"
    turned = {provenance.source_sha1({**upright, "turn": k}) for k in (1, 2, 3)}
    assert len(turned) == 3 and "abc" not in turned
    masked = {**upright, "mask_sha1": "m"}
    assert provenance.source_sha1({**masked, "turn": 1}) != provenance.source_sha1(masked)


def _stamp_sources(root: Path, sources: dict[str, str]) -> None:
    """Record ``sources`` as what each image's features were made from, and every pair's matches
    as made from them (what extract and match write)."""
    from omniglue_sfm.formats import matches_h5

    with h5py.File(root / "features.h5", "r+") as h5:
        for name, sha in sources.items():
            h5[name].attrs["source_sha1"] = sha
    with h5py.File(root / "matches.h5", "r+") as h5:
        for a in sources:
            for b in sources:
                found = matches_h5.locate_pair(h5, a, b) if a < b else None
                if found:
                    first, second = matches_h5.canonical_pair(a, b)
                    h5[found[0]].attrs["source_sha1_0"] = sources[first]
                    h5[found[0]].attrs["source_sha1_1"] = sources[second]


@pytest.mark.parametrize("change", ["image", "turn"])
def test_sfm_refuses_matches_made_from_other_features(tmp_path, change):
    """features.h5 re-extracted after match ran (a replaced photo, or the same photo at another
    turn): sfm alone must not import the old matches against the new keypoints."""
    from test_sfm import synthetic_scene

    from omniglue_sfm import sfm

    synthetic_scene(tmp_path)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    _stamp_sources(tmp_path, {n: f"sha-{n}" for n in names})
    result = sfm.main(tmp_path / "images", tmp_path / "features.h5", tmp_path / "matches.h5", tmp_path / "ok",
                      options=OPTS)
    assert result.stats["registered"] == len(names)  # consistent records: imported as before
    with h5py.File(tmp_path / "features.h5", "r+") as h5:
        if change == "image":
            h5[names[2]].attrs["source_sha1"] = "sha-replaced"
        else:
            h5[names[2]].attrs["turn"] = 1
    with pytest.raises(sfm.ReconstructionError, match="matched from other features"):
        sfm.main(tmp_path / "images", tmp_path / "features.h5", tmp_path / "matches.h5", tmp_path / "stale",
                 options=OPTS)


def test_a_model_whose_last_run_failed_is_not_exported_or_localized(tmp_path):
    out = tmp_path / "out"
    (out / "sparse").mkdir(parents=True)
    pycolmap.Reconstruction().write(out / "sparse")
    outputs.write_stats(out, {"registered": 4})
    assert outputs.find_model(out) == out / "sparse"
    outputs.write_stats(out, {"error": "no image pair has enough verified matches"})
    with pytest.raises(FileNotFoundError, match="last sfm run .* failed"):
        outputs.find_model(out)
    with pytest.raises(FileNotFoundError, match="last sfm run .* failed"):
        localize.load_map(out)
    assert cli.main(["export", str(out), str(tmp_path / "exported")]) == 1
