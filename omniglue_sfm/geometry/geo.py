"""Georegistration: a local east-north-up frame in metres, ``georef.json``, and aligning a model to GPS.

The frame: an ENU tangent frame of the WGS84 ellipsoid (x east, y north, z up, metres) at an
origin chosen from the photos' fixes (their mean latitude, longitude and altitude, rounded to
1e-7 degrees and 1 cm so that it reads well). Conversions are pycolmap's ``GPSTransform``.

``georef.json`` beside ``sparse/`` says that the model is in that frame::

    {"version": 1, "crs": "local ENU (x east, y north, z up), metres, WGS84 ellipsoid",
     "origin": {"lat": .., "lon": .., "alt": ..},
     "enu_to_ecef": 4x4 matrix (ECEF metres = M @ [x, y, z, 1]),
     "alignment": {"images": N, "inliers": N, "scale": s, "residual_m": {"mean", "median", "max", "rmse"},
                   "per_image_m": {name: metres}}}

A point ``p`` of the model is ``enu_to_ecef @ [p, 1]`` in ECEF and :meth:`LocalFrame.to_lla` in
latitude, longitude and altitude.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

GEOREF_FILE = "georef.json"
GEOREF_VERSION = 1
CRS = "local ENU (x east, y north, z up), metres, WGS84 ellipsoid"
MIN_ALIGNMENT_IMAGES = 3
DEFAULT_ACCURACY_M = 5.0  # horizontal GPS accuracy when the photo does not say (a phone outdoors)
VERTICAL_FACTOR = 2.0  # GPS altitude is about twice as uncertain as the horizontal position


def _gps() -> pycolmap.GPSTransform:
    return pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84)


@dataclass(frozen=True)
class LocalFrame:
    """An ENU frame at ``(lat, lon, alt)`` (degrees, metres)."""

    lat: float
    lon: float
    alt: float = 0.0

    @classmethod
    def around(cls, lla: np.ndarray) -> LocalFrame:
        """The frame at the mean of ``lla`` (N, 3), rounded (1e-7 degree, 1 cm)."""
        lla = np.asarray(lla, dtype=np.float64).reshape(-1, 3)
        if not len(lla):
            raise ValueError("a local frame needs at least one position")
        lat, lon, alt = lla.mean(axis=0)
        # longitudes around +-180: average them on the circle
        lons = np.radians(lla[:, 1])
        lon = math.degrees(math.atan2(np.sin(lons).mean(), np.cos(lons).mean()))
        return cls(round(float(lat), 7), round(float(lon), 7), round(float(alt), 2))

    def to_enu(self, lla: np.ndarray) -> np.ndarray:
        lla = np.asarray(lla, dtype=np.float64).reshape(-1, 3)
        return np.asarray(_gps().ellipsoid_to_enu(lla, self.lat, self.lon, self.alt))

    def to_lla(self, enu: np.ndarray) -> np.ndarray:
        enu = np.asarray(enu, dtype=np.float64).reshape(-1, 3)
        return np.asarray(_gps().enu_to_ellipsoid(enu, self.lat, self.lon, self.alt))

    def enu_to_ecef(self) -> np.ndarray:
        """4x4: ECEF = M @ [enu, 1] (the frame's axes in ECEF and its origin)."""
        points = np.vstack([np.zeros(3), np.eye(3)])
        ecef = np.asarray(_gps().enu_to_ecef(points, self.lat, self.lon, self.alt))
        matrix = np.eye(4)
        matrix[:3, :3] = (ecef[1:] - ecef[0]).T
        matrix[:3, 3] = ecef[0]
        return matrix

    def todict(self) -> dict:
        return {"lat": self.lat, "lon": self.lon, "alt": self.alt}


def prior_covariance(accuracy: float | None) -> np.ndarray:
    """3x3 position covariance (m^2) of a fix with horizontal ``accuracy`` (None: the default)."""
    sigma = accuracy if accuracy is not None else DEFAULT_ACCURACY_M
    return np.diag([sigma**2, sigma**2, (VERTICAL_FACTOR * sigma) ** 2])


@dataclass
class Alignment:
    """A model moved onto GPS positions: ``sim3`` (new from old world) and per-image residuals."""

    sim3: pycolmap.Sim3d
    residuals: dict[str, float]  # name -> |aligned centre - GPS position|, metres
    inliers: int = 0

    def summary(self) -> dict:
        r = np.array(list(self.residuals.values()))
        return {
            "images": len(r), "inliers": int(self.inliers), "scale": float(self.sim3.scale),
            "residual_m": {"mean": float(r.mean()), "median": float(np.median(r)), "max": float(r.max()),
                           "rmse": float(np.sqrt((r**2).mean()))},
            "per_image_m": {n: round(float(v), 4) for n, v in sorted(self.residuals.items())},
        }


def camera_centres(rec: pycolmap.Reconstruction) -> dict[str, np.ndarray]:
    return {rec.images[i].name: np.asarray(rec.images[i].projection_center()) for i in rec.reg_image_ids()}


def align_to_positions(
    rec: pycolmap.Reconstruction, positions: Mapping[str, np.ndarray], max_error: float,
) -> Alignment | None:
    """Move ``rec`` (in place) onto ``positions`` (name -> ENU metres) with pycolmap's robust
    location alignment (RANSAC, inliers within ``max_error`` metres). None (``rec`` unchanged) when
    fewer than ``MIN_ALIGNMENT_IMAGES`` registered images have a position or no alignment is found."""
    centres = camera_centres(rec)
    names = sorted(n for n in positions if n in centres)
    if len(names) < MIN_ALIGNMENT_IMAGES:
        return None
    targets = np.array([positions[n] for n in names], dtype=np.float64)
    if np.linalg.matrix_rank(targets - targets.mean(axis=0), tol=1e-3) < 2:
        return None  # all positions on one spot or one line: the rotation is not determined
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = float(max_error)
    ransac.random_seed = 0
    sim3 = pycolmap.align_reconstruction_to_locations(rec, names, targets, MIN_ALIGNMENT_IMAGES, ransac)
    if sim3 is None:
        return None
    rec.transform(sim3)
    moved = camera_centres(rec)
    residuals = {n: float(np.linalg.norm(moved[n] - positions[n])) for n in names}
    inliers = sum(1 for v in residuals.values() if v <= max_error)
    return Alignment(sim3, residuals, inliers)


@dataclass
class Georef:
    """What ``georef.json`` holds."""

    frame: LocalFrame
    alignment: dict = field(default_factory=dict)

    def todict(self) -> dict:
        return {"version": GEOREF_VERSION, "crs": CRS, "origin": self.frame.todict(),
                "enu_to_ecef": self.frame.enu_to_ecef().tolist(), "alignment": self.alignment}

    def write(self, directory: Path | str) -> Path:
        path = Path(directory) / GEOREF_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.todict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    def to_lla(self, points: np.ndarray) -> np.ndarray:
        return self.frame.to_lla(points)


def read_georef(directory: Path | str) -> Georef | None:
    """The ``georef.json`` in ``directory``, None when there is none; a malformed one is an error."""
    path = Path(directory) / GEOREF_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        origin = data["origin"]
        frame = LocalFrame(float(origin["lat"]), float(origin["lon"]), float(origin["alt"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a georef file of this package: {err}") from err
    return Georef(frame, dict(data.get("alignment") or {}))


def spread(positions: Sequence[np.ndarray]) -> float:
    """The largest distance of a position from their centroid (metres): how far the photos spread."""
    points = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if not len(points):
        return 0.0
    return float(np.linalg.norm(points - points.mean(axis=0), axis=1).max())
