"""Video -> frames: the frame rule (windows, sharpness, near-duplicates), time stamps, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from captures import blurred, encode_video, sample_frames, walkaround_video

from omniglue_sfm import frames
from omniglue_sfm.frames import FrameOptions, VideoError


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return walkaround_video(tmp_path_factory.mktemp("video") / "walk.mp4")


def test_sharpness_prefers_sharp_frames():
    rgb = sample_frames(160)[0]
    sharp = frames.sharpness(frames.grey_small(rgb, 480))
    soft = frames.sharpness(frames.grey_small(blurred(rgb), 480))
    assert sharp > 5 * soft > 0


def test_walkaround_keeps_one_sharp_frame_per_photo(video, tmp_path):
    path, first = video
    out = tmp_path / "frames"
    result = frames.main(path, out, FrameOptions(fps=2))
    assert len(result.frames) == 8, [(f.index, f.time) for f in result.frames]
    # one frame of each photo's segment, never its blurred last frame
    for i, rec in enumerate(result.frames):
        assert first[i] <= rec.index < first[i] + 4, (i, rec)
        assert rec.time == pytest.approx(rec.index / 10, abs=1e-3)
    assert result.dropped == {"blurred": 1, "duplicates": 1}
    data = json.loads((out / "frames.json").read_text())
    assert [f["name"] for f in data["frames"]] == result.names == sorted(p.name for p in out.glob("*.jpg"))
    assert data["options"]["fps"] == 2 and data["decoded"] == 50
    # a re-run reuses them; other options replace them (the old files go)
    assert frames.main(path, out, FrameOptions(fps=2)).skipped
    again = frames.main(path, out, FrameOptions(num_frames=4, min_sharpness=0))
    assert not again.skipped and len(again.frames) <= 4
    assert sorted(p.name for p in out.glob("*.jpg")) == again.names


def test_frames_are_upright_and_sized(tmp_path):
    rgb = sample_frames(160)[0]  # 160 x 106 (landscape)
    path = encode_video([rgb] * 6, tmp_path / "still.mp4", fps=6)
    result = frames.main(path, tmp_path / "f", FrameOptions(num_frames=3, max_size=80))
    assert len(result.frames) == 1  # a still camera: the rest are near-duplicates
    from PIL import Image

    with Image.open(tmp_path / "f" / result.names[0]) as img:
        assert img.size == (80, 53)


def test_undecodable_video_is_an_error_and_keeps_previous_frames(video, tmp_path):
    out = tmp_path / "frames"
    frames.main(video[0], out, FrameOptions(fps=2))
    before = sorted(p.name for p in out.iterdir())
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError, match="cannot read video"):
        frames.main(broken, out, FrameOptions(fps=2))
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list(tmp_path.glob("*.tmp"))


def test_options_are_checked():
    with pytest.raises(ValueError, match="fps"):
        FrameOptions(fps=0)
    with pytest.raises(ValueError, match="num-frames"):
        FrameOptions(num_frames=0)


def test_rotation_tag_turns_frames_upright(tmp_path):
    import av

    rgb = np.ascontiguousarray(sample_frames(160)[0])
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        stream.set_display_rotation(-90)  # a phone held upright: turn the picture clockwise
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    result = frames.main(path, tmp_path / "f", FrameOptions(num_frames=1))
    from PIL import Image

    with Image.open(tmp_path / "f" / result.names[0]) as img:
        assert img.size == (rgb.shape[0], rgb.shape[1])  # portrait
