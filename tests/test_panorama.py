"""Equirectangular panoramas -> pinhole rig views: geometry, detection and the rig config."""

from __future__ import annotations

import numpy as np
import pytest
from captures import render_room_panorama, room_rig_from_world

from omniglue_sfm.geometry import panorama as P
from omniglue_sfm.geometry.panorama import PanoramaError, PanoramaOptions


def test_pixels_and_directions_are_inverse():
    d = P.pixels_to_directions(64, 32)
    u, v = P.directions_to_pixels(d, 64, 32)
    uu, vv = np.meshgrid(np.arange(64), np.arange(32))
    np.testing.assert_allclose(u, uu, atol=1e-9)
    np.testing.assert_allclose(v, vv, atol=1e-9)
    # the centre column looks forward (z), a quarter to the right looks at x
    np.testing.assert_allclose(d[16, 32] @ [0, 0, 1], 1.0, atol=0.01)
    np.testing.assert_allclose(d[16, 48] @ [1, 0, 0], 1.0, atol=0.01)


def test_views_are_pinhole_images_of_the_scene():
    """A view cut from a rendered panorama equals the room seen by that pinhole camera: the
    centre pixel of view k is the panorama pixel in its viewing direction."""
    pano = render_room_panorama(np.array([0.0, 0.0, 1.5]), 30.0, width=512)
    options = PanoramaOptions(views=6, fov=90)
    views = P.cut(pano, options)
    assert len(views) == 6 and views[0].shape == (128, 128, 3)
    for k, view in enumerate(views):
        direction = P.yaw_rotation(60.0 * k) @ [0, 0, 1]
        u, v = P.directions_to_pixels(direction, 512, 256)
        expected = pano[int(round(float(v))), int(round(float(u))) % 512].astype(int)
        assert np.abs(view[63:65, 63:65].astype(int).mean(axis=(0, 1)) - expected).max() < 40
    size, params = P.camera_params(options, 512)
    assert size == 128 and params.startswith("64.000000,64.000000,64")


def test_rig_config_poses():
    options = PanoramaOptions(views=4, fov=100)
    config = P.rig_config(options)
    assert len(config.cameras) == 4 and config.cameras[0].ref_sensor
    r1 = config.cameras[1].cam_from_rig.rotation.matrix()
    # view 1 looks 90 degrees to the right of view 0: the rig's x axis is its forward axis
    np.testing.assert_allclose(r1 @ [1, 0, 0], [0, 0, 1], atol=1e-9)
    assert config.cameras[3].image_prefix == "view_3/"
    assert room_rig_from_world(0.0) @ [1, 0, 0] == pytest.approx([0, 0, 1])


def test_detection_and_errors():
    assert P.is_equirectangular((2048, 1024)) and P.is_equirectangular((2049, 1024))
    assert not P.is_equirectangular((1024, 683))
    panos = {"a.jpg": (2048, 1024), "b.jpg": (4096, 2048)}
    assert P.check_panoramas(panos, "auto") and not P.check_panoramas(panos, "off")
    assert not P.check_panoramas({"p.jpg": (1024, 683)}, "auto")
    with pytest.raises(PanoramaError, match="1 of 2 images are 2:1 panoramas"):
        P.check_panoramas({"a.jpg": (2048, 1024), "p.jpg": (1024, 683)}, "auto")
    with pytest.raises(PanoramaError, match="p.jpg is 1024x683, not 2:1"):
        P.check_panoramas({"p.jpg": (1024, 683)}, "on")
    with pytest.raises(ValueError, match="gaps"):
        PanoramaOptions(views=3, fov=90)
    assert P.pano_of_view("view_2/sub/a.jpg") == (2, "sub/a.jpg") and P.pano_of_view("a.jpg") is None
    assert P.same_panorama("view_0/a.jpg", "view_3/a.jpg")
    assert not P.same_panorama("view_0/a.jpg", "view_0/b.jpg")
