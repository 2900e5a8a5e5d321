"""Shared fixtures: small copies of the bundled sample scene and light presets (fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io

# The test machine has 2 cores shared with other jobs; several torch threads then spin against
# each other (a 256-keypoint LightGlue pass went from 0.4 s to 7 s). One thread is faster.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "datasets" / "herzjesu_p8_small" / "images"
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_SCENES = SHARED / "data" / "scenes"


def small_preset(matcher: str = "mnn", features: str = "aliked", max_keypoints: int = 256,
                 resize_max: int = 320, guidance: bool = False, **matcher_conf: object) -> dict:
    """A preset dict like presets.toml's, with few keypoints and small images."""
    feats: dict = {"name": features, "max_keypoints": max_keypoints, "resize_max": resize_max}
    if features == "aliked":
        feats["model"] = "aliked-n16"
    preset: dict = {"name": f"test-{features}-{matcher}", "features": feats,
                    "matcher": {"name": matcher, **matcher_conf}}
    if matcher == "lightglue":
        preset["matcher"].setdefault("features", features)
    if guidance:
        preset["guidance"] = {"name": "aliked-grid"}
    return preset


def save_resized(src: Path, dst: Path, long_side: int) -> None:
    with Image.open(src) as img:
        img = img.convert("RGB")
        factor = long_side / max(img.size)
        img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.BOX).save(
            dst, quality=95)


def resized_sample(out: Path, num_images: int, long_side: int) -> Path:
    """The first ``num_images`` sample images, resized, in ``out`` (created when missing)."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:num_images]:
        save_resized(src, out / src.name, long_side)
    return out


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 3 sample images at 256 px (long side)."""
    return resized_sample(tmp_path_factory.mktemp("small_scene"), 3, 256)


@pytest.fixture(scope="session")
def small_features(small_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ALIKED features (256 keypoints, with guidance) of ``small_scene``, extracted once per
    session; ``global.h5`` sits beside it."""
    from omniglue_sfm import extract

    out = tmp_path_factory.mktemp("small_features") / "features.h5"
    summary = extract.main(small_scene, out, small_preset(guidance=True), RunOptions(device="cpu"),
                           global_path=out.with_name("global.h5"))
    assert not summary.failed
    return out


@pytest.fixture()
def textured(tmp_path: Path):
    """A factory of deterministic textured RGB images (uint8, H x W x 3)."""
    def make(h: int, w: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))

    return make


def need_shared_scenes(*names: str) -> None:
    missing = [n for n in names if not (SHARED_SCENES / n / "images").is_dir()]
    if missing:
        pytest.skip(f"shared data absent: {', '.join(missing)} under {SHARED_SCENES}")


def assert_same_h5(a: Path, b: Path, kind: str) -> None:
    """Two features/matches/global files hold the same configuration, items and arrays."""
    import h5py


    keys = h5io.list_names(a, kind)
    assert keys == h5io.list_names(b, kind) and keys
    with h5py.File(a) as ha, h5py.File(b) as hb:
        assert ha.attrs["config"] == hb.attrs["config"]
        for key in keys:
            assert sorted(ha[key]) == sorted(hb[key])
            for dname in ha[key]:
                np.testing.assert_array_equal(ha[key][dname][()], hb[key][dname][()],
                                              err_msg=f"{key}/{dname}")
