"""Test scenes for field captures, built from the repository alone:

* :func:`gps_tagged_sample`: copies of the bundled sample with EXIF GPS tags made from its
  ground-truth camera centres through a chosen origin, with Gaussian noise;
* :func:`encode_video`: a video encoded (PyAV) from a sequence of images;
* :func:`render_room_panoramas`: equirectangular images of a textured box room, ray-cast in numpy
  from known positions and headings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from omniglue_sfm.formats.gps import GpsFix, write_gps
from omniglue_sfm.geometry.geo import LocalFrame
from omniglue_sfm.scenes import read_strecha_dir

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "herzjesu_p8_small"
# a place for the sample: Cologne (any origin works; this one is realistic)
ORIGIN = LocalFrame(50.9375, 6.9603, 55.0)
# the sample's ground-truth frame has z pointing down-ish (the cameras' image y): east = x,
# north = -y, up = -z (a rotation: det = +1)
GT_TO_ENU = np.diag([1.0, -1.0, -1.0])


@dataclass
class GpsScene:
    images: Path
    truth_enu: dict[str, np.ndarray]  # true camera centres in ENU metres
    tagged_enu: dict[str, np.ndarray]  # the (noisy) positions written into the tags
    frame: LocalFrame

    @property
    def noise_rms(self) -> float:
        d = [np.linalg.norm(self.tagged_enu[n] - self.truth_enu[n]) for n in self.truth_enu]
        return float(np.sqrt(np.mean(np.square(d))))


def gps_tagged_sample(out: Path, long_side: int | None = 512, sigma_h: float = 1.0, sigma_v: float = 2.0,
                      seed: int = 0, accuracy: float | None = 2.0, names: list[str] | None = None) -> GpsScene:
    """Copies of the sample photos (resized to ``long_side``) tagged with their true centres plus
    Gaussian noise (``sigma_h`` east/north, ``sigma_v`` up, metres)."""
    out.mkdir(parents=True, exist_ok=True)
    gt = read_strecha_dir(SAMPLE / "gt")
    rng = np.random.default_rng(seed)
    truth, tagged = {}, {}
    for name in sorted(names or gt):
        enu = GT_TO_ENU @ gt[name].center
        noisy = enu + rng.normal(0.0, 1.0, 3) * np.array([sigma_h, sigma_h, sigma_v])
        lat, lon, alt = ORIGIN.to_lla(noisy)[0]
        src = SAMPLE / "images" / name
        if long_side:
            with Image.open(src) as img:
                f = long_side / max(img.size)
                img.convert("RGB").resize((round(img.width * f), round(img.height * f)),
                                          Image.Resampling.BOX).save(out / name, quality=95)
            src = out / name
        write_gps(src, out / name, GpsFix(float(lat), float(lon), float(alt), accuracy))
        truth[name], tagged[name] = enu, noisy
    return GpsScene(out, truth, tagged, ORIGIN)


def encode_video(frames: list[np.ndarray], path: Path, fps: float = 10.0, codec: str = "libx264") -> Path:
    """Encode RGB frames (all of one size, even sides) into ``path`` with PyAV."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {"crf": "18"}
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def sample_frames(long_side: int = 320) -> list[np.ndarray]:
    """The sample's 8 photos as RGB arrays of even sides (a video's frames)."""
    out = []
    for src in sorted((SAMPLE / "images").glob("*.jpg")):
        with Image.open(src) as img:
            f = long_side / max(img.size)
            w, h = 2 * round(img.width * f / 2), 2 * round(img.height * f / 2)
            out.append(np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BOX)))
    return out


def blurred(rgb: np.ndarray, radius: float = 4.0) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))


def walkaround_video(path: Path, long_side: int = 320, fps: int = 10) -> tuple[Path, dict]:
    """A video of the sample walk-around: each photo a half-second segment (4 frames of it, then a
    blurred frame: a quick turn), then the last photo again (the camera stands still) and a segment
    of blurred frames. Read at 2 frames per second, the rule keeps the 8 photos: the blurred frames
    lose to the sharp ones in their window or fall under the blur limit, and the repeat is a
    near-duplicate. Returns the path and the frame numbers of the photos' first frames."""
    photos = sample_frames(long_side)
    frames, first = [], {}
    for i, rgb in enumerate(photos):
        first[i] = len(frames)
        frames += [rgb] * 4 + [blurred(rgb)]
    frames += [photos[-1]] * 5  # standing still
    frames += [blurred(photos[0], 6.0)] * 5  # a blurred pan
    return encode_video(frames, path, fps), first
