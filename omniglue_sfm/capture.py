"""What ``reconstruct`` was given, made ready for the stages: photos (with or without GPS), a video,
or 360-degree panoramas; and the georegistration of the model that comes out.

* **Photos with GPS** (EXIF, :mod:`omniglue_sfm.formats.gps`): when at least ``GPS_MIN_FRACTION``
  of the photos carry a position, the positions (local ENU metres, :mod:`omniglue_sfm.geometry.geo`)
  choose the pairs (``spatial``), enter the database as pose priors, and the model is aligned to
  them afterwards (``sparse/`` in metres, ``georef.json``). A bad tag (zero, absurd) is an error
  before any work; ``--gps off`` ignores GPS altogether.
* **A video** (a file, :data:`omniglue_sfm.frames.VIDEO_EXTENSIONS`): its frames are selected into
  ``OUT/frames/`` (:mod:`omniglue_sfm.frames`), share one camera, and are paired sequentially with
  loop closure.
* **Panoramas** (every image 2:1, or ``--panoramas on``): each is cut into pinhole views in
  ``OUT/views/view_<k>/`` (:mod:`omniglue_sfm.geometry.panorama`) with one known PINHOLE camera
  per view direction; the views of a panorama form a rig frame in the database, views of the same
  panorama are not paired (they share no baseline), and the rig geometry stays fixed while mapping.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pycolmap

from . import frames, pairs
from .formats import gps, outputs, provenance
from .formats.images import list_images, oriented_size
from .geometry import geo, panorama
from .geometry.cameras import CameraOptions

log = logging.getLogger(__name__)

GPS_MODES = ("auto", "off")
PANORAMA_MODES = ("auto", "on", "off")
GPS_MIN_FRACTION = 0.5  # GPS is used (and spatial pairs are the default) when this many photos have it
FRAMES_DIR = "frames"
VIEWS_DIR = "views"
VIEWS_FILE = "views.json"
ALIGN_MIN_ERROR_M = 1.0  # RANSAC inlier threshold of the GPS alignment: 3 sigma, at least this


@dataclass(frozen=True)
class CaptureOptions:
    gps: str = "auto"  # auto: use GPS when most photos have it; off: ignore it
    panoramas: str = "auto"  # auto: all images 2:1 -> panoramas; on / off: say so
    panorama: panorama.PanoramaOptions = field(default_factory=panorama.PanoramaOptions)
    frames: frames.FrameOptions = field(default_factory=frames.FrameOptions)

    def __post_init__(self) -> None:
        if self.gps not in GPS_MODES:
            raise ValueError(f"unknown --gps {self.gps!r}; choose one of {GPS_MODES}")
        if self.panoramas not in PANORAMA_MODES:
            raise ValueError(f"unknown --panoramas {self.panoramas!r}; choose one of {PANORAMA_MODES}")


@dataclass
class Capture:
    """The images the stages read, and what the capture adds to them."""

    source: Path
    kind: str  # "photos", "video" or "panoramas"
    image_dir: Path
    names: list[str]
    positions: dict[str, np.ndarray] = field(default_factory=dict)  # ENU metres
    covariances: dict[str, np.ndarray] = field(default_factory=dict)
    frame: geo.LocalFrame | None = None
    gps_digest: str | None = None
    rig: pycolmap.RigConfig | None = None
    stats: dict = field(default_factory=dict)

    @property
    def priors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {n: (p, self.covariances[n]) for n, p in self.positions.items()}

    def default_pairs(self, options: pairs.PairsOptions, fallback: str) -> pairs.PairsOptions:
        """The pair mode when none was asked for: spatial with GPS, sequential with loop closure for
        a video, else ``fallback`` (exhaustive or retrieval by image count)."""
        if options.mode is not None:
            return options
        if self.kind == "video":
            return replace(options, mode="sequential", loop_closure=True)
        if self.positions:
            return replace(options, mode="spatial")
        return replace(options, mode=fallback)

    def camera(self, camera: CameraOptions) -> CameraOptions:
        """Video frames share one camera; panorama views have exact PINHOLE cameras per direction."""
        if self.kind == "video" and camera.mode == "auto":
            return replace(camera, mode="single")
        if self.kind == "panoramas":
            return CameraOptions("per_folder", "PINHOLE", self.stats["panoramas"]["camera_params"])
        return camera

    def filter_pairs(self, pair_list: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.kind != "panoramas":
            return pair_list
        return [(a, b) for a, b in pair_list if not panorama.same_panorama(a, b)]


def prepare(source: Path | str, output_dir: Path | str, options: CaptureOptions | None = None) -> Capture:
    """Read what ``source`` is (a folder of photos or panoramas, or a video) and make the images the
    stages read; errors (a bad GPS tag, an undecodable video, mixed panoramas) come before any work."""
    source, output_dir = Path(source), Path(output_dir)
    options = options or CaptureOptions()
    if source.is_file():
        if not frames.is_video(source):
            raise ValueError(f"{source} is a file but not a video ({', '.join(frames.VIDEO_EXTENSIONS)}): "
                             "give a folder of photos or a video")
        result = frames.main(source, output_dir / FRAMES_DIR, options.frames)
        stats = {"kind": "video", "frames": {"video": str(source.resolve()), "kept": len(result.frames),
                                             "decoded": result.decoded, "dropped": result.dropped,
                                             "options": result.options}}
        return Capture(source, "video", output_dir / FRAMES_DIR, result.names, stats=stats)
    names = list_images(source)
    if not names:
        raise FileNotFoundError(f"no images found in {source}")
    if options.panoramas != "off":
        sizes = {}
        for n in names:
            try:
                sizes[n] = oriented_size(source / n)[0]
            except (OSError, ValueError):
                continue  # unreadable: extract reports it
        if panorama.check_panoramas(sizes, options.panoramas):
            return _panoramas(source, output_dir, sorted(sizes), sizes, options.panorama)
    capture = Capture(source, "photos", source, names, stats={"kind": "photos"})
    if options.gps != "off":
        _add_gps(capture)
    return capture


def _add_gps(capture: Capture) -> None:
    scan = gps.scan(capture.image_dir, capture.names)
    if scan.bad:
        raise ValueError(scan.bad_message() + " (fix or remove the tags, or ignore GPS with --gps off)")
    info = {"images_with_gps": len(scan.fixes), "total": len(capture.names)}
    if not scan.fixes:
        capture.stats["gps"] = info
        return
    if scan.fraction < GPS_MIN_FRACTION:
        log.info("GPS: only %d of %d photos have a position: not used", len(scan.fixes), len(capture.names))
        capture.stats["gps"] = {**info, "used": False}
        return
    lla = np.array([f.lla() for f in scan.fixes.values()])
    capture.frame = geo.LocalFrame.around(lla)
    for name, fix in scan.fixes.items():
        capture.positions[name] = capture.frame.to_enu(fix.lla())[0]
        capture.covariances[name] = geo.prior_covariance(fix.accuracy)
    capture.gps_digest = scan.digest()
    capture.stats["gps"] = {**info, "used": True, "digest": capture.gps_digest,
                            "origin": capture.frame.todict(),
                            "spread_m": round(geo.spread(list(capture.positions.values())), 3)}
    log.info("GPS: %d of %d photos have a position (spread %.1f m)", len(scan.fixes), len(capture.names),
             capture.stats["gps"]["spread_m"])


def _panoramas(source: Path, output_dir: Path, names: list[str], sizes: dict[str, tuple[int, int]],
               options: panorama.PanoramaOptions) -> Capture:
    """Cut every panorama into views (resumable: a panorama whose file and options did not change
    keeps its views)."""
    width = min(sizes[n][0] for n in names)
    if options.size is None:  # one view size for all, from the smallest panorama
        options = replace(options, size=options.view_size(width))
    size, params = panorama.camera_params(options, width)
    views_dir = output_dir / VIEWS_DIR
    record_path = views_dir / VIEWS_FILE
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    opts = {"views": options.views, "fov": options.fov, "size": size}
    done = record.get("panoramas", {}) if record.get("options") == opts else {}
    if not done and views_dir.exists():
        shutil.rmtree(views_dir)
    views_dir.mkdir(parents=True, exist_ok=True)
    current = {}
    for name in names:
        digest = provenance.file_digest(source / name)
        if done.get(name) != digest or not all((views_dir / panorama.view_name(k, name)).is_file()
                                               for k in range(options.views)):
            panorama.write_views(source / name, name, views_dir, options)
        current[name] = digest
    for gone in set(done) - set(current):
        for k in range(options.views):
            (views_dir / panorama.view_name(k, gone)).unlink(missing_ok=True)
    outputs.write_json(record_path, {"options": opts, "panoramas": current})
    view_names = panorama.view_names(names, options)
    stats = {"kind": "panoramas", "panoramas": {
        "count": len(names), "views": options.views, "fov": options.fov, "view_size": size,
        "camera_params": params}}
    log.info("%d panoramas -> %d pinhole views of %d px in %s", len(names), len(view_names), size, views_dir)
    return Capture(source, "panoramas", views_dir, view_names, rig=panorama.rig_config(options), stats=stats)


NOT_GEOREGISTERED = ("not georegistered: the model could not be aligned to the GPS positions (fewer than "
                     f"{geo.MIN_ALIGNMENT_IMAGES} registered images with one, or all on a line); "
                     "it is not in metres")


def georegister(output_dir: Path, capture: Capture, rec: pycolmap.Reconstruction, fingerprint: str | None,
                reused: bool) -> dict | None:
    """Align the model (``sparse/``, ``model.ply``) to the photos' GPS positions and write
    ``georef.json``; None (and no ``georef.json``) without GPS. A reused model whose
    ``georef.json`` records the same model and GPS is left as it is."""
    output_dir = Path(output_dir)
    if not capture.positions or capture.frame is None:
        (output_dir / geo.GEOREF_FILE).unlink(missing_ok=True)  # from another run: no longer true
        return None
    key = {"model": fingerprint, "gps": capture.gps_digest}
    previous = geo.read_georef(output_dir)
    if reused and previous is not None and previous.alignment.get("key") == key:
        return previous.alignment
    sigmas = [float(np.sqrt(c[0, 0])) for c in capture.covariances.values()]
    max_error = max(ALIGN_MIN_ERROR_M, 3.0 * float(np.median(sigmas)))
    alignment = geo.align_to_positions(rec, capture.positions, max_error)
    if alignment is None:
        (output_dir / geo.GEOREF_FILE).unlink(missing_ok=True)
        log.warning("GPS: %s", NOT_GEOREGISTERED)
        return None
    rec.write(output_dir / "sparse")
    rec.export_PLY(output_dir / "model.ply")
    summary = {**alignment.summary(), "max_error_m": max_error, "key": key}
    geo.Georef(capture.frame, summary).write(output_dir)
    r = summary["residual_m"]
    log.info("georegistered to GPS (%d images): residual median %.2f m, max %.2f m", summary["images"],
             r["median"], r["max"])
    return summary
