"""Quarter-turns of an image: the keypoint mapping (pixel centres at integers, as in ``features.h5``),
the turned image, and the turned camera (intrinsics and rotation about the optical axis).

A turn ``k`` is ``np.rot90(image, k)``: the photo turned ``k`` x 90 degrees counter-clockwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scenes import CameraPose


def rotate_points(points: np.ndarray, size: Sequence[int], k: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Points of an image of ``size`` (W, H) -> the same points in ``np.rot90(image, k)``, and that
    image's size. One counter-clockwise quarter-turn sends pixel (x, y) to (y, W - 1 - x)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    w, h = int(size[0]), int(size[1])
    for _ in range(k % 4):
        pts = np.stack([pts[:, 1], (w - 1) - pts[:, 0]], axis=1)
        w, h = h, w
    return pts, (w, h)


def to_upright(points: np.ndarray, size: Sequence[int], turn: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Original-pixel points of an image of ``size`` -> its upright view (``turn`` quarter-turns)."""
    return rotate_points(points, size, turn)


def from_upright(points: np.ndarray, upright_size: Sequence[int],
                 turn: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Points of the upright view (of ``upright_size``) -> original pixels (inverse of :func:`to_upright`)."""
    return rotate_points(points, upright_size, -turn % 4)


def turn_image(img: np.ndarray, turn: int) -> np.ndarray:
    """The view ``turn`` quarter-turns counter-clockwise of an (H, W, C) image."""
    return np.ascontiguousarray(np.rot90(img, turn % 4))


def camera_turn_rotation(turn: int) -> np.ndarray:
    """R such that camera coordinates of the turned view are ``R @ X_cam`` (about the optical axis).
    One counter-clockwise image quarter-turn maps normalised (x, y) to (y, -x)."""
    step = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return np.linalg.matrix_power(step, turn % 4)


def turn_intrinsics(K: np.ndarray, size: Sequence[int], turn: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pinhole K of an image of ``size`` (W, H) -> K of its view turned ``turn`` times, and its size."""
    K = np.asarray(K, dtype=np.float64).copy()
    w, h = int(size[0]), int(size[1])
    for _ in range(turn % 4):
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        K = np.array([[fy, 0.0, cy], [0.0, fx, (w - 1) - cx], [0.0, 0.0, 1.0]])
        w, h = h, w
    return K, (w, h)


def turn_camera(pose: CameraPose, turn: int) -> CameraPose:
    """The ground truth of an image's view turned ``turn`` quarter-turns counter-clockwise: same
    centre, camera rotated about its optical axis, K and size transformed like the pixels."""
    from .scenes import CameraPose

    R_turn = camera_turn_rotation(turn)
    K, size = (None, pose.size) if pose.K is None else turn_intrinsics(pose.K, pose.size, turn)
    return CameraPose(R=R_turn @ pose.R, t=R_turn @ pose.t, K=K, size=size)

