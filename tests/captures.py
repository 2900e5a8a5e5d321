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
from omniglue_sfm.geometry.scenes import read_strecha_dir

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
                      seed: int = 0, accuracy: float | None = 2.0,
                      names: list[str] | None = None) -> GpsScene:
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


# --------------------------------------------------------------------------------------------
# a textured room, seen by 360-degree cameras

ROOM = np.array([[-4.0, -3.0, 0.0], [4.0, 3.0, 3.0]])  # x east, y north, z up (metres)
TEXTURE_PX_PER_M = 96


def _face_texture(seed: int, w_m: float, h_m: float) -> np.ndarray:
    """A deterministic texture (blobs at three scales and a few bright boxes) for a wall."""
    rng = np.random.default_rng(seed)
    w, h = round(w_m * TEXTURE_PX_PER_M), round(h_m * TEXTURE_PX_PER_M)
    out = np.zeros((h, w, 3), np.float32)
    for cell, weight in ((48, 0.5), (12, 0.3), (4, 0.2)):
        coarse = rng.random((max(2, h // cell), max(2, w // cell), 3)).astype(np.float32)
        img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        out += weight * np.asarray(img, np.float32)
    for _ in range(int(w_m * h_m * 2)):
        x, y = rng.integers(0, w - 20), rng.integers(0, h - 20)
        bw, bh = rng.integers(6, 40), rng.integers(6, 40)
        out[y:y + bh, x:x + bw] = rng.integers(0, 256, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def room_rig_from_world(heading_deg: float) -> np.ndarray:
    """Rotation of a panorama whose centre column looks at ``heading`` (degrees from east,
    counterclockwise), upright: rig frame x right, y down, z forward."""
    h = np.radians(heading_deg)
    z = np.array([np.cos(h), np.sin(h), 0.0])
    y = np.array([0.0, 0.0, -1.0])
    x = np.cross(y, z)
    return np.stack([x, y, z])  # rows: the rig axes in world coordinates


def render_room_panorama(centre: np.ndarray, heading_deg: float, width: int = 1024) -> np.ndarray:
    """An equirectangular image (width x width / 2) of the room from ``centre``."""
    from omniglue_sfm.geometry.panorama import pixels_to_directions

    height = width // 2
    rig_from_world = room_rig_from_world(heading_deg)
    d = pixels_to_directions(width, height) @ rig_from_world  # world directions
    lo, hi = ROOM
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d > 0, (hi - centre) / d, (lo - centre) / d)
    t[~np.isfinite(t)] = np.inf
    axis = np.argmin(t, axis=-1)
    hit = centre + d * np.take_along_axis(t, axis[..., None], -1)
    out = np.zeros((height, width, 3), np.uint8)
    for a in range(3):
        for side in (0, 1):
            mask = (axis == a) & ((d[..., a] > 0) == bool(side))
            if not mask.any():
                continue
            u_axis, v_axis = [i for i in range(3) if i != a]
            size = hi - lo
            tex = _face_texture(10 * a + side, size[u_axis], size[v_axis])
            uu = ((hit[..., u_axis] - lo[u_axis]) * TEXTURE_PX_PER_M).clip(0, tex.shape[1] - 1).astype(int)
            vv = ((hit[..., v_axis] - lo[v_axis]) * TEXTURE_PX_PER_M).clip(0, tex.shape[0] - 1).astype(int)
            out[mask] = tex[vv[mask], uu[mask]]
    return out


@dataclass
class PanoScene:
    images: Path
    centres: dict[str, np.ndarray]  # world
    rig_from_world: dict[str, np.ndarray]  # rotations


PANO_POSES = [((-1.0, -0.6, 1.5), 10.0), ((0.0, -0.4, 1.6), 35.0), ((1.0, 0.0, 1.5), 80.0),
              ((0.2, 0.8, 1.4), 150.0), ((-0.8, 0.5, 1.6), 220.0)]


def room_panoramas(out: Path, width: int = 1024, poses=PANO_POSES) -> PanoScene:
    out.mkdir(parents=True, exist_ok=True)
    centres, rotations = {}, {}
    for i, (centre, heading) in enumerate(poses):
        name = f"pano_{i:02d}.jpg"
        centre = np.array(centre, np.float64)
        Image.fromarray(render_room_panorama(centre, heading, width)).save(out / name, quality=95)
        centres[name], rotations[name] = centre, room_rig_from_world(heading)
    return PanoScene(out, centres, rotations)
