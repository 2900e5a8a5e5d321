"""Arguments shared by several commands, and their conversion into the library's option dataclasses.

Each ``add_*`` function registers a group of arguments; the matching function of the same group
(:func:`preset_choice`, :func:`run_options`, ...) turns the parsed namespace into the dataclass
the library takes. Values that can be checked without any work are checked here or in the
dataclasses' ``__post_init__`` (a usage error exits 1 before anything runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import frames
from ..capture import GPS_MODES, PANORAMA_MODES, CaptureOptions
from ..colmap.mapper import MAPPERS, SfMOptions
from ..config import presets
from ..config.options import RunOptions
from ..config.rotation import ROTATION_MODES
from ..formats.masks import MASK_SUFFIX
from ..geometry.cameras import CAMERA_MODES, CameraOptions
from ..geometry.panorama import PanoramaOptions
from ..pairs import DEFAULT_NUM_MATCHED, DEFAULT_RADIUS_M, DEFAULT_WINDOW, RETRIEVAL_DESCRIPTORS, PairsOptions
from ..runtime.executors import EXECUTORS, ExecutorOptions


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# the preset: --preset, --preset-file, knobs, --rotation, --masks


def add_preset(parser: argparse.ArgumentParser, knobs: bool = True, default: str = "omniglue") -> None:
    """``--preset``, ``--preset-file`` and (``knobs``) ``--max-keypoints`` / ``--resize-max``."""
    parser.add_argument("--preset", default=default, metavar="NAME",
                        help=f"pipeline preset: {', '.join(presets.names(aliases=False))}, or one of "
                             f"--preset-file (default: {default})")
    parser.add_argument("--preset-file", type=Path, default=None, metavar="TOML",
                        help="your own presets, in presets.toml's shape (base = \"NAME\" starts from a "
                             "built-in one); validated before any work")
    if knobs:
        add_knobs(parser)


def add_knobs(parser: argparse.ArgumentParser) -> None:
    """``--max-keypoints`` / ``--resize-max``: override the preset's [features]."""
    parser.add_argument("--max-keypoints", type=positive_int, default=None, metavar="N",
                        help="keypoints per image (overrides the preset's max_keypoints)")
    parser.add_argument("--resize-max", type=positive_int, default=None, metavar="PX",
                        help="long side of the image features are extracted from (overrides resize_max)")


def add_rotation(parser: argparse.ArgumentParser) -> None:
    """``--rotation auto|off`` (for reconstruct and extract)."""
    parser.add_argument("--rotation", choices=ROTATION_MODES, default=None,
                        help="auto: find photos turned by 90/180/270 degrees and extract them upright "
                             "(the default of every learned preset); off: take every image as stored. "
                             "The sift preset ignores it (SIFT is rotation invariant)")


def add_masks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", type=Path, default=None, metavar="DIR",
                        help=f"mask folder: <name>{MASK_SUFFIX} per image <name>, same size; keypoints "
                             "where the mask is 0 are dropped")


def preset_choice(args: argparse.Namespace, name: str | None = None) -> presets.PresetChoice:
    """The preset the arguments name (``name`` instead of ``args.preset``), with their overrides."""
    return presets.PresetChoice(name or args.preset, getattr(args, "preset_file", None),
                                getattr(args, "max_keypoints", None), getattr(args, "resize_max", None),
                                getattr(args, "rotation", None), getattr(args, "masks", None))


def resolved_preset(args: argparse.Namespace, name: str | None = None) -> dict:
    """:func:`preset_choice`, resolved and validated (before any work)."""
    return preset_choice(args, name).resolve()


# --------------------------------------------------------------------------------------------
# how the run executes: --device, --batch-size, --executor and Ray, --overwrite


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")


def add_batch_size(parser: argparse.ArgumentParser, help_text: str = "pairs per matching batch") -> None:
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                        help=f"{help_text} (default 16 GPU, 4 CPU); speed only, not recorded")


def add_overwrite(parser: argparse.ArgumentParser, help_text: str = "discard existing outputs") -> None:
    parser.add_argument("--overwrite", action="store_true", help=help_text)


def add_executor(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and its Ray options (extract, match, reconstruct)."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="where the work runs: this process (local) or a Ray cluster (ray). The "
                             "files are the same as a local run's only when each actor has as many torch "
                             "threads (--ray-cpus-per-worker) as the local run (torch's default: the "
                             "machine's cores); with the default of 1 thread, the last bits of the "
                             "networks' outputs may differ and move a few matches")
    parser.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="Ray cluster to join (e.g. 10.0.0.1:6379, or auto); default: start a local "
                             "Ray instance")
    parser.add_argument("--ray-workers", type=int, default=None, metavar="N",
                        help="Ray actors (default: as many as the cluster's CPUs, or GPUs, allow)")
    parser.add_argument("--ray-cpus-per-worker", type=int, default=1, metavar="N",
                        help="CPUs (torch threads) of each Ray actor (default 1)")
    parser.add_argument("--ray-gpus-per-worker", type=float, default=None, metavar="G",
                        help="GPUs of each Ray actor (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--flush-every", type=positive_int, default=64, help=argparse.SUPPRESS)


def executor_options(args: argparse.Namespace) -> ExecutorOptions:
    return ExecutorOptions(args.executor, args.ray_address, args.ray_workers, args.ray_cpus_per_worker,
                           args.ray_gpus_per_worker)


def run_options(args: argparse.Namespace) -> RunOptions:
    """From whichever of ``--device``, ``--batch-size``, ``--executor``..., ``--overwrite`` the
    command has (the others keep their defaults)."""
    executor = executor_options(args) if hasattr(args, "executor") else ExecutorOptions()
    return RunOptions(getattr(args, "device", None), getattr(args, "batch_size", None), executor,
                      bool(getattr(args, "overwrite", False)), getattr(args, "flush_every", 64))


# --------------------------------------------------------------------------------------------
# pairs and mapping


def add_pairs(parser: argparse.ArgumentParser) -> None:
    """``--window``, ``--quadratic``, ``--loop-closure`` and ``--num-matched``."""
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help="sequential: neighbours after each image")
    parser.add_argument("--quadratic", action="store_true",
                        help="sequential: also offsets 2^k beyond the window")
    parser.add_argument("--loop-closure", action="store_true",
                        help="sequential: also the --num-matched most similar images (needs global "
                             "descriptors)")
    parser.add_argument("--num-matched", type=int, default=DEFAULT_NUM_MATCHED,
                        help="retrieval/covisibility/spatial/loop closure: pairs per image")
    parser.add_argument("--radius", type=float, default=DEFAULT_RADIUS_M, metavar="METRES",
                        help="spatial: neighbours within this horizontal GPS distance")
    parser.add_argument("--with-retrieval", action="store_true",
                        help="spatial: also the --num-matched most similar images by appearance")


def add_retrieval(parser: argparse.ArgumentParser) -> None:
    """``--retrieval``: what a pipeline's retrieval pairs compare (the ``pairs`` stage takes a file)."""
    parser.add_argument("--retrieval", choices=RETRIEVAL_DESCRIPTORS, default="vlad",
                        help="descriptor of retrieval pairs and loop closure: vlad (VLAD of the scene's "
                             "own local features, rebuilt each run; finds more overlapping pairs) or "
                             "global (the extractor's dense-map mean, global.h5)")


def pairs_options(args: argparse.Namespace, mode: str | None = None) -> PairsOptions:
    """From the arguments of :func:`add_pairs` and :func:`add_retrieval` (``mode``: the parsed
    pairs mode)."""
    return PairsOptions(mode, args.window, args.loop_closure, getattr(args, "quadratic", False),
                        args.num_matched, getattr(args, "radius", DEFAULT_RADIUS_M),
                        getattr(args, "with_retrieval", False), getattr(args, "retrieval", "vlad"))


def add_sfm(parser: argparse.ArgumentParser) -> None:
    """``--camera-mode``, ``--camera-model``, ``--camera-params`` and ``--mapper``."""
    parser.add_argument("--camera-mode", choices=CAMERA_MODES, default="auto",
                        help="auto: images sharing folder, size and EXIF focal share a camera "
                             "(no EXIF: one camera per image)")
    parser.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model name")
    parser.add_argument("--camera-params", default=None,
                        help="known intrinsics, comma separated in the model's order (e.g. 'f,cx,cy,k')")
    parser.add_argument("--mapper", choices=MAPPERS, default="incremental",
                        help="incremental (COLMAP; the default at every size) or global (GLOMAP, "
                             "pycolmap >= 4): its mapping measured 1.1-2.8x faster from 400 to 2,000 "
                             "views, more accurate at some sizes and less at others; at 10,000 only global "
                             "finished here (50 min), its model bent along the path (docs/growth.md)")
    parser.add_argument("--no-prior-position", dest="prior_position", action="store_false",
                        help="map without the photos' GPS positions as pose priors (the model is still "
                             "aligned to GPS afterwards)")


def sfm_options(args: argparse.Namespace) -> SfMOptions:
    """From the arguments of :func:`add_sfm` (and the global ``--verbose``)."""
    return SfMOptions(CameraOptions(args.camera_mode, args.camera_model, args.camera_params), args.mapper,
                      verbose=bool(getattr(args, "verbose", False)),
                      prior_position=bool(getattr(args, "prior_position", True)))


# --------------------------------------------------------------------------------------------
# field captures: GPS, panoramas, video frames


def add_capture(parser: argparse.ArgumentParser) -> None:
    """``--gps``, ``--panoramas``, ``--pano-views``, ``--pano-fov``, ``--pano-view-size`` and the
    frame rule's options (:func:`add_frames`)."""
    parser.add_argument("--gps", choices=GPS_MODES, default="auto",
                        help="auto: when most photos have EXIF GPS, pair by position, map with GPS priors "
                             "and georegister the model (metres, georef.json); off: ignore GPS")
    parser.add_argument("--panoramas", choices=PANORAMA_MODES, default="auto",
                        help="auto: images that are all 2:1 are equirectangular panoramas, cut into a rig of "
                             "pinhole views; on / off: say so")
    defaults = PanoramaOptions()
    parser.add_argument("--pano-views", type=int, default=defaults.views, metavar="N",
                        help=f"panoramas: pinhole views around the horizon (default {defaults.views})")
    parser.add_argument("--pano-fov", type=float, default=defaults.fov, metavar="DEG",
                        help=f"panoramas: field of view of each view, degrees (default {defaults.fov:g})")
    parser.add_argument("--pano-view-size", type=int, default=None, metavar="PX",
                        help="panoramas: view side in pixels (default: the panorama's angular resolution)")
    add_frames(parser)


def capture_options(args: argparse.Namespace) -> CaptureOptions:
    return CaptureOptions(args.gps, args.panoramas,
                          PanoramaOptions(args.pano_views, args.pano_fov, args.pano_view_size),
                          frame_options(args))


def add_frames(parser: argparse.ArgumentParser) -> None:
    """The video frame rule's options (see :mod:`omniglue_sfm.frames`)."""
    parser.add_argument("--num-frames", type=int, default=frames.DEFAULT_NUM_FRAMES, metavar="N",
                        help=f"video: frames to keep, one per equal time window (default "
                             f"{frames.DEFAULT_NUM_FRAMES})")
    parser.add_argument("--fps", type=float, default=None,
                        help="video: frames per second of video to keep, instead of --num-frames")
    parser.add_argument("--min-sharpness", type=float, default=frames.DEFAULT_MIN_SHARPNESS, metavar="F",
                        help=f"video: drop a frame less sharp than F x the median as blurred (default "
                             f"{frames.DEFAULT_MIN_SHARPNESS})")
    parser.add_argument("--duplicate-threshold", type=float, default=frames.DEFAULT_DUPLICATE_THRESHOLD,
                        metavar="D",
                        help=f"video: drop a frame whose thumbnail differs from the last kept one by less "
                             f"than D (mean absolute difference, 0..1): the camera stood still (default "
                             f"{frames.DEFAULT_DUPLICATE_THRESHOLD})")


def frame_options(args: argparse.Namespace) -> frames.FrameOptions:
    return frames.FrameOptions(args.num_frames, args.fps, args.min_sharpness, args.duplicate_threshold,
                               getattr(args, "max_size", None))
