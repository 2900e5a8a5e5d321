"""``frames``: a video -> the frames worth reconstructing, as JPEG photos with their time stamps.

Decoding is PyAV's (FFmpeg's libraries in the wheel: every common container and codec, frame
time stamps and the phone's rotation tag, no ffmpeg program to find).

The rule (defaults in brackets):

1. **How many.** ``num_frames`` [150] frames, or ``fps`` frames per second of video when given
   (then ``num_frames`` is ignored). The video's duration is cut into that many equal windows.
2. **Sharp ones.** In each window the sharpest frame is the candidate (sharpness: the variance of
   the Laplacian of the grey frame scaled to ``SHARPNESS_SIDE`` pixels). A candidate below
   ``min_sharpness`` [0.35] times the median sharpness of all candidates is dropped as blurred.
3. **No repeats.** A candidate that looks like the last kept frame (mean absolute difference of
   their 64-pixel grey thumbnails below ``duplicate_threshold`` [0.012] of the grey range) is
   dropped: the camera stood still.
4. **Written** as ``OUT/frame_<video frame number, 6 digits>.jpg`` (JPEG ``quality`` [95],
   the long side scaled to ``max_size`` when given, turned upright by the video's rotation tag),
   with ``OUT/frames.json``: the video's SHA-1, the options, and every kept frame's time stamp
   (seconds), frame number and sharpness, and how many frames each step dropped.

A re-run with the same video and options reuses the frames; another video or other options replace
them (and what was extracted from them is redone, as for a replaced photo). Frames are written to a
temporary folder first: a video that cannot be decoded leaves the previous frames as they were.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .formats import provenance

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts", ".m2ts", ".3gp", ".mpg", ".mpeg")
FRAMES_FILE = "frames.json"
FRAMES_VERSION = 1
DEFAULT_NUM_FRAMES = 150
DEFAULT_MIN_SHARPNESS = 0.35
DEFAULT_DUPLICATE_THRESHOLD = 0.012
SHARPNESS_SIDE = 480  # sharpness is measured at this long side: the same for any video resolution
THUMB_SIDE = 64


class VideoError(ValueError):
    """A video that cannot be read or holds no usable frame."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot read video {path}: {reason}")
        self.path = str(path)


def is_video(path: Path | str) -> bool:
    path = Path(path)
    return path.suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class FrameOptions:
    """Which frames to keep (see the module docstring)."""

    num_frames: int = DEFAULT_NUM_FRAMES
    fps: float | None = None
    min_sharpness: float = DEFAULT_MIN_SHARPNESS
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD
    max_size: int | None = None
    quality: int = 95

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"--num-frames must be at least 1, got {self.num_frames}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"--fps must be positive, got {self.fps}")
        if not 0 <= self.min_sharpness < 1:
            raise ValueError(f"--min-sharpness is a fraction of the median, in [0, 1): {self.min_sharpness}")
        if not 0 <= self.duplicate_threshold < 1:
            raise ValueError(f"--duplicate-threshold is in [0, 1): {self.duplicate_threshold}")
        if self.max_size is not None and self.max_size < 16:
            raise ValueError(f"--max-size must be at least 16 pixels, got {self.max_size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality is 1..100, got {self.quality}")

    def windows(self, duration: float) -> int:
        if self.fps is not None:
            return max(1, round(duration * self.fps))
        return self.num_frames


@dataclass
class FrameRecord:
    name: str
    index: int  # frame number in the video (decode order of the video stream)
    time: float  # seconds from the start of the stream
    sharpness: float


@dataclass
class FramesResult:
    output_dir: Path
    frames: list[FrameRecord]
    video: str
    digest: str
    options: dict
    decoded: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: bool = False  # True when a previous run's frames were reused

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.frames]

    def todict(self) -> dict:
        return {"version": FRAMES_VERSION, "video": self.video, "video_sha1": self.digest,
                "options": self.options, "decoded": self.decoded, "dropped": self.dropped,
                "frames": [asdict(f) for f in self.frames]}


# --------------------------------------------------------------------------------------------
# measures


def grey_small(rgb: np.ndarray, side: int) -> np.ndarray:
    """Float32 grey image in [0, 1] with the long side at most ``side`` (area average)."""
    img = Image.fromarray(rgb).convert("L")
    factor = side / max(img.size)
    if factor < 1:
        img = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))),
                         Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (higher: sharper)."""
    if min(grey.shape) < 3:
        return 0.0
    lap = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1]) - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def thumbnail(grey: np.ndarray) -> np.ndarray:
    img = Image.fromarray((grey * 255).astype(np.uint8))
    return np.asarray(img.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.float32) / 255.0


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


# --------------------------------------------------------------------------------------------
# decoding


def _upright(frame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90.0) % 4  # display matrix: counterclockwise
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(path, f"{type(err).__name__}: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoError(path, "it has no video stream")
    return container


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000.0  # AV_TIME_BASE
    return None


def _frames(path: Path, container):
    """(index, time, frame) of every decoded frame; decoding errors become :class:`VideoError`."""
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    index = -1
    try:
        for frame in container.decode(stream):
            index += 1
            rate = float(stream.average_rate or 30)
            t = float(frame.time) - start if frame.time is not None else index / rate
            yield index, t, frame
    except av.FFmpegError as err:
        raise VideoError(path, f"decoding failed after {index + 1} frame(s): {err}") from err


def _count(path: Path) -> float:
    """The duration of a video whose header does not say it: decode it once."""
    with _open(path) as container:
        last = 0.0
        for _, t, _frame in _frames(path, container):
            last = t
    return last


# --------------------------------------------------------------------------------------------
# stage


def _same_previous(output_dir: Path, digest: str, options: dict) -> FramesResult | None:
    path = output_dir / FRAMES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    recorded = (data.get("version"), data.get("video_sha1"), data.get("options"))
    if recorded != (FRAMES_VERSION, digest, options):
        return None
    frames = [FrameRecord(**f) for f in data.get("frames", [])]
    if not frames or not all((output_dir / f.name).is_file() for f in frames):
        return None
    return FramesResult(output_dir, frames, data.get("video", ""), digest, options, data.get("decoded", 0),
                        data.get("dropped", {}), skipped=True)


def recorded_frames(output_dir: Path | str) -> dict | None:
    """``frames.json`` of ``output_dir`` (None when absent or unreadable)."""
    try:
        return json.loads((Path(output_dir) / FRAMES_FILE).read_text())
    except (OSError, ValueError):
        return None


def main(video: Path | str, output_dir: Path | str, options: FrameOptions | None = None) -> FramesResult:
    """Select and write the frames of ``video`` into ``output_dir`` (see the module docstring)."""
    video, output_dir = Path(video), Path(output_dir)
    options = options or FrameOptions()
    if not video.is_file():
        raise FileNotFoundError(f"video does not exist: {video}")
    digest = provenance.file_digest(video)
    opts = asdict(options)
    if options.fps is not None:
        opts["num_frames"] = None  # not used: another --num-frames changes nothing
    previous = _same_previous(output_dir, digest, opts)
    if previous is not None:
        log.info("frames: reusing %d frames in %s (same video and options)", len(previous.frames), output_dir)
        return previous

    container = _open(video)
    with container:
        stream = container.streams.video[0]
        duration = _duration(container, stream)
    if duration is None or duration <= 0:
        duration = _count(video)
    windows = options.windows(duration)
    width = max(duration, 1e-9) / windows

    tmp = output_dir.with_name(output_dir.name + ".frames.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        candidates = _window_candidates(video, windows, width)
        if not candidates:
            raise VideoError(video, "no frame could be decoded")
        kept, dropped = _select(candidates, options)
        records = []
        for cand in kept:
            name = f"frame_{cand['index']:06d}.jpg"
            _save(cand["rgb"], tmp / name, options)
            records.append(FrameRecord(name, cand["index"], round(cand["time"], 6),
                                       round(cand["sharpness"], 8)))
        decoded = candidates[-1]["decoded"]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = FramesResult(output_dir, records, str(video.resolve()), digest, opts, decoded, dropped)
    (tmp / FRAMES_FILE).write_text(json.dumps(result.todict(), indent=1) + "\n")
    _swap_in(tmp, output_dir)
    log.info("frames: %d of %d decoded frames kept (%s)", len(records), decoded,
             ", ".join(f"{k}: {v}" for k, v in dropped.items()))
    return result


def _window_candidates(video: Path, windows: int, width: float) -> list[dict]:
    """The sharpest frame of each time window (pixels kept only for the current best)."""
    best: dict[int, dict] = {}
    decoded = 0
    with _open(video) as container:
        for index, t, frame in _frames(video, container):
            decoded += 1
            window = min(int(max(t, 0.0) / width), windows - 1)
            rgb = _upright(frame)
            grey = grey_small(rgb, SHARPNESS_SIDE)
            score = sharpness(grey)
            current = best.get(window)
            if current is None or score > current["sharpness"]:
                best[window] = {"index": index, "time": t, "sharpness": score, "rgb": rgb,
                                "thumb": thumbnail(grey)}
    out = [best[w] for w in sorted(best)]
    if out:
        out[-1]["decoded"] = decoded
    return out


def _select(candidates: list[dict], options: FrameOptions) -> tuple[list[dict], dict[str, int]]:
    median = float(np.median([c["sharpness"] for c in candidates]))
    sharp = [c for c in candidates if c["sharpness"] >= options.min_sharpness * median]
    kept: list[dict] = []
    for cand in sharp:
        if kept and difference(cand["thumb"], kept[-1]["thumb"]) < options.duplicate_threshold:
            continue
        kept.append(cand)
    return kept, {"blurred": len(candidates) - len(sharp), "duplicates": len(sharp) - len(kept)}


def _save(rgb: np.ndarray, path: Path, options: FrameOptions) -> None:
    img = Image.fromarray(rgb)
    if options.max_size and max(img.size) > options.max_size:
        f = options.max_size / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BOX)
    img.save(path, quality=options.quality)


def _swap_in(tmp: Path, output_dir: Path) -> None:
    """Replace the frames (and frames.json) of ``output_dir`` with those of ``tmp``; other files stay."""
    output_dir.mkdir(parents=True, exist_ok=True)
    old = recorded_frames(output_dir)
    new_names = {p.name for p in tmp.iterdir()}
    for rec in (old or {}).get("frames", []):
        name = str(rec.get("name", ""))
        if name and "/" not in name and name not in new_names:
            (output_dir / name).unlink(missing_ok=True)
    for path in sorted(tmp.iterdir()):
        if path.name != FRAMES_FILE:
            os.replace(path, output_dir / path.name)
    os.replace(tmp / FRAMES_FILE, output_dir / FRAMES_FILE)  # last: it vouches for the frames
    shutil.rmtree(tmp, ignore_errors=True)
