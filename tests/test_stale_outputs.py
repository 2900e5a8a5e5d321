"""Issue #10: an output folder never mixes configurations nor keeps stale features."""

from __future__ import annotations

from pathlib import Path

import pycolmap
import pytest
from conftest import SAMPLE_IMAGES, save_resized, small_preset

from omniglue_sfm import colmap_sift, reconstruct
from omniglue_sfm.mapping import SfMOptions

SIFT = {"features": {"max_keypoints": 1024, "resize_max": 400}}
OPTS = SfMOptions(progress=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four consecutive sample images at 400 px: both SIFT and ALIKED reconstruct them."""
    out = tmp_path_factory.mktemp("stale_scene")
    for src in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:4]:
        save_resized(src, out / src.name, 400)
    return out


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
    reconstruct.main(scene, out, "sift", preset_overrides=SIFT, options=OPTS, print_summary=False)
    reconstruct.main(scene, out, small_preset(resize_max=400), options=OPTS, overwrite=True,
                     device="cpu", print_summary=False)
    result = colmap_sift.main(scene, out, reconstruct.presets.resolve("sift", SIFT), options=OPTS)
    assert not result.skipped
    assert _sift_database_is_consistent(out / "database.db")
