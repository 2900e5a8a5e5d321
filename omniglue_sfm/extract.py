"""Stage 1: image folder -> ``features.h5`` (+ ``global.h5`` for retrieval pairs).

Each image is read (EXIF orientation applied, see :mod:`omniglue_sfm.images`), downscaled so its
long side is at most ``resize_max``, and run through the preset's extractor (and guidance
backbone, when the preset has one) once. Keypoints are stored in original-image pixels.
Resumable: images already in the output (made with the same configuration) are skipped.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import executors, io, orientation, presets, registry
from .guidance.aliked_grid import global_descriptor
from .guidance.base import sample_dense
from .images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    list_images,
    none_readable,
    read_image_sized,
    resize_for_extraction,
    scale_keypoints,
)
from .masks import MaskSet, add_masks_argument
from .matchers.base import features_to_tensors
from .runtime import check_device, default_device

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    names: list[str] = field(default_factory=list)  # images with features (new or already there)
    failed: dict[str, str] = field(default_factory=dict)  # image name -> reason
    seconds: float = 0.0
    turns: dict[str, int] = field(default_factory=dict)  # quarter-turns, when rotation handling is on
    orientation: dict | None = None  # what the orientation pass did (TurnEstimate.summary), if it ran


def features_config(preset: dict) -> dict:
    """The part of a preset that determines ``features.h5`` (what resume compares)."""
    presets.require_learned(preset, "its features are extracted inside the sfm stage, not by `extract`")
    if "features" not in preset:
        raise ValueError("preset has no [features] section")
    config = {"features": preset["features"]}
    if registry.reads_original(preset):
        check_reads_original(preset)
    if preset.get("guidance"):
        config["guidance"] = preset["guidance"]
    rotation = orientation.options_from_preset(preset)
    if rotation is not None:  # absent when off: files made before rotation handling stay valid
        config["rotation"] = rotation.record()
    return config


def check_reads_original(preset: dict) -> None:
    """An extractor that reads the original image (the released OmniGlue's front end) sees it as
    its authors' code does: full size, as stored; the knobs that would change that are errors."""
    name = preset.get("name", "?")
    if preset["features"].get("resize_max"):
        raise ValueError(f"preset {name!r} extracts from the full-resolution image, as the released "
                         "model's authors do; --resize-max / resize_max do not apply to it")
    if orientation.options_from_preset(preset) is not None:
        raise ValueError(f"preset {name!r} takes images as stored (the released model's authors do not "
                         "turn them); leave --rotation out or set it to off")


def extract_original(
    img: np.ndarray, extractor: torch.nn.Module, guidance: torch.nn.Module | None,
    full_size: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """:func:`extract_image` for an extractor (and guidance) that reads the original uint8 image
    itself (``reads_original``): keypoints come back in its pixels, guidance is sampled by the
    guidance plugin at them and stored float32 (the released OmniGlue's input, as its authors
    compute it)."""
    if full_size is not None and tuple(full_size) != (img.shape[1], img.shape[0]):
        raise ValueError(f"{type(extractor).__name__} needs the image decoded at full size")
    pred = extractor.extract_original(img)
    item = {
        "keypoints": pred["keypoints"].astype(np.float32),
        "scores": pred["scores"].astype(np.float32),
        "descriptors": pred["descriptors"].T.astype(np.float32),  # (D, N)
        "image_size": np.array([img.shape[1], img.shape[0]], dtype=np.int64),
    }
    gvec = None
    if guidance is not None:
        sampled, gvec = guidance.describe_original(img, pred["keypoints"])
        item["guidance"] = sampled.T.astype(np.float32)  # (C, N)
    return item, gvec


def extract_image(
    img: np.ndarray, extractor: torch.nn.Module, guidance: torch.nn.Module | None,
    resize_max: int | None, device: torch.device, full_size: tuple[int, int] | None = None, turn: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of one (H, W, 3) uint8 image: the ``features.h5`` item and its global descriptor.

    ``full_size`` (W, H): the original's size when ``img`` was decoded reduced (large images).
    With ``turn`` the image is extracted upright (turned ``turn`` quarter-turns counter-clockwise)
    and its keypoints are mapped back to the original pixels; ``image_size`` stays the original's.
    """
    if getattr(extractor, "reads_original", False):
        if turn:
            raise ValueError(f"{type(extractor).__name__} takes images as stored, not turned")
        return extract_original(img, extractor, guidance, full_size)
    full_w, full_h = full_size or (img.shape[1], img.shape[0])
    img = orientation.turn_image(img, turn) if turn else img
    upright_size = (full_h, full_w) if turn % 2 else (full_w, full_h)  # full size, turned upright
    resized, scale = resize_for_extraction(img, resize_max, upright_size)
    tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None]
    tensor = tensor.to(device=device, dtype=torch.float32) / 255.0
    with torch.inference_mode():
        pred = extractor(tensor)
        kp = pred["keypoints"]
        item = {
            "keypoints": scale_keypoints(kp.cpu().numpy(), scale),
            "scores": pred["scores"].cpu().numpy().astype(np.float32),
            "descriptors": pred["descriptors"].t().cpu().numpy().astype(np.float32),  # (D, N)
            "image_size": np.array([full_w, full_h], dtype=np.int64),
        }
        if turn:
            back = orientation.from_upright(item["keypoints"], upright_size, turn)[0]
            item["keypoints"] = back.astype(np.float32)
        if guidance is not None:
            gout = guidance(tensor, pred)
            size = (resized.shape[1], resized.shape[0])
            sampled = sample_dense(gout["dense"], kp, size)  # (N, C)
            item["guidance"] = sampled.t().cpu().numpy().astype(np.float16)
            gdesc = gout["global_descriptor"]
        elif "dense" in pred:
            gdesc = global_descriptor(pred["dense"])
        else:
            gdesc = None
    gvec = None if gdesc is None else gdesc.float().cpu().numpy().astype(np.float32)
    return item, gvec


RAY_IMAGES_PER_CHUNK = 4  # images per Ray call: small, so a lost worker loses little


@dataclass
class ImageResult:
    """What a worker made of one image: its features, or why it could not be read."""

    name: str
    item: dict[str, np.ndarray] | None = None
    global_descriptor: np.ndarray | None = None
    source: dict | None = None
    failed: str | None = None


@dataclass(frozen=True)
class ExtractWorkerSpec:
    """What an extraction worker needs (picklable: it travels to Ray actors)."""

    image_dir: Path
    config: dict  # features_config()
    device: str | None
    masks: MaskSet | None = None
    turns: Mapping[str, int] = field(default_factory=dict)  # name -> quarter-turns (rotation on)

    def build(self, remote: bool) -> ExtractWorker:
        return ExtractWorker(self, remote)


class ExtractWorker:
    """The extractor (and guidance) loaded once; turns a chunk of image names into ImageResults."""

    def __init__(self, spec: ExtractWorkerSpec, remote: bool) -> None:
        self.spec, self.remote = spec, remote
        self.device = default_device(spec.device)
        config = spec.config
        self.extractor = registry.extractor(config["features"]).to(self.device).eval()
        self.guidance = (registry.guidance(config["guidance"]).to(self.device).eval()
                         if "guidance" in config else None)
        self.resize_max = config["features"].get("resize_max")

    def __call__(self, names: list[str], inputs: object = None) -> list[ImageResult]:
        return [self.one(name) for name in names]

    def one(self, name: str) -> ImageResult:
        path = Path(self.spec.image_dir) / name
        if self.remote and not path.exists():  # the driver listed it: this node does not see it
            raise FileNotFoundError(
                f"Ray worker {executors.here()} cannot find image {path}, which the driver sees: every "
                "node must see the image folder at the same path (shared storage; see README, Ray)")
        try:
            img, full_size = read_image_sized(path, self.resize_max)
        except ImageReadError as err:
            return ImageResult(name, failed=err.reason)
        source = io.source_record(path)
        turn = self.spec.turns.get(name, 0)
        if self.spec.turns:
            source["turn"] = turn
        item, gvec = extract_image(img, self.extractor, self.guidance, self.resize_max, self.device,
                                   full_size, turn)
        if self.spec.masks is not None:
            item = self.spec.masks.apply(name, item)
            source = {**source, **self.spec.masks.record(name)}
        return ImageResult(name, item, gvec, source)


def _store_image(result: ImageResult, store: io.ShardedH5, gstore: io.ShardedH5 | None, changed: set[str],
                 summary: ExtractSummary, config: dict) -> None:
    name = result.name
    if result.failed is not None:
        log.warning("skipping %s: %s", name, result.failed)
        summary.failed[name] = result.failed
        return
    if name not in store or name in changed:
        store.add(name, result.item, result.source)
    if gstore is not None and (name not in gstore or name in changed):
        if result.global_descriptor is None:
            raise ValueError(f"extractor {config['features']['name']!r} gives no dense map, "
                             "so no global descriptor; use a preset with guidance")
        gstore.add(name, {"global_descriptor": result.global_descriptor})


def main(
    image_dir: Path,
    features_path: Path,
    preset: dict | str,
    image_names: list[str] | None = None,
    global_path: Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    flush_every: int = 64,
    masks: Path | None = None,
    executor: executors.ExecutorOptions | None = None,
    turns: Callable[[list[str]], Mapping[str, int]] | None = None,
) -> ExtractSummary:
    """Extract features (and global descriptors when ``global_path`` is given) for a folder.

    ``masks``: a folder (see :mod:`omniglue_sfm.masks`); keypoints in masked-out pixels are dropped.
    ``executor``: where the images are processed (default: here; see :mod:`omniglue_sfm.executors`).
    With the preset's rotation handling on, each image is extracted upright. When any image needs
    new features, ``turns`` (names -> quarter-turns; localization queries) or else the orientation
    pass estimates them; otherwise the stored turns stand.
    """
    start = time.perf_counter()
    preset = presets.resolve(preset)
    config = features_config(preset)
    mask_set = MaskSet(masks) if masks is not None else None
    if mask_set is not None:
        config["masks"] = mask_set.config_value()
    image_dir = Path(image_dir)
    names = list(image_names) if image_names is not None else list_images(image_dir)
    if not names and image_names is None:
        raise FileNotFoundError(f"no images found in {image_dir} (searched recursively for "
                                f"{', '.join(IMAGE_EXTENSIONS)})")
    if mask_set is not None:
        mask_set.check(names)
    check_device(device)
    features_path = Path(features_path)
    features_path.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(image_dir, features_path, preset, config, names, global_path, overwrite, device, flush_every,
               turns, mask_set, executor or executors.ExecutorOptions())
    with io.output_lock(features_path):  # one run per output file
        return _extract(job, start)


@dataclass
class _Job:
    image_dir: Path
    features_path: Path
    preset: dict
    config: dict
    names: list[str]
    global_path: Path | None
    overwrite: bool
    device: str | None
    flush_every: int
    turns: Callable[[list[str]], Mapping[str, int]] | None
    mask_set: MaskSet | None
    executor: executors.ExecutorOptions


def orientation_pass(job: _Job, rotation: orientation.OrientationOptions) -> orientation.TurnEstimate:
    """Estimate every image's turn with low-resolution features of the preset's own extractor,
    matched by the preset's own matcher (see :mod:`omniglue_sfm.orientation`)."""
    from . import match  # match does not import extract; imported here to keep extract light

    dev = default_device(job.device)
    low_conf = {**job.config["features"], "max_keypoints": rotation.max_keypoints}
    low = registry.extractor(low_conf).to(dev).eval()
    matcher_conf = job.preset.get("matcher") or {"name": "mnn"}
    matcher = match.PairMatcher(matcher_conf, job.config, job.features_path, dev)

    def features_of(img: np.ndarray) -> dict:
        return extract_image(img, low, None, None, dev)[0]

    def match_fn(fa: dict, fb: dict) -> np.ndarray:
        return matcher.match_to_references(features_to_tensors(fa), [features_to_tensors(fb)])[0]

    read = orientation.read_or_none(job.image_dir, draft_side=rotation.resize_max)
    return orientation.estimate_turns(job.names, orientation_candidates, read, features_of, match_fn,
                                      rotation)


ORIENTATION_EXHAUSTIVE_MAX = 40  # orientation pass: exhaustive pairs up to this many images
ORIENTATION_WINDOW = 5  # above: a sequential window (plus quadratic links) in name order


def orientation_candidates(names: list[str]) -> list[tuple[str, str]]:
    """The pairs the orientation pass may match (it stops early; see orientation.solve_turns)."""
    from . import pairs

    if len(names) <= ORIENTATION_EXHAUSTIVE_MAX:
        return pairs.exhaustive(names)
    return pairs.sequential(names, window=ORIENTATION_WINDOW, quadratic=True)


def _image_turns(job: _Job, store: io.ShardedH5, changed: set[str],
                 summary: ExtractSummary) -> dict[str, int]:
    """Each image's turn (all 0 with rotation handling off); an image whose turn changed joins ``changed``."""
    if "rotation" not in job.config:
        return {}
    rotation = orientation.OrientationOptions(**job.config["rotation"])
    if not any(n not in store or n in changed for n in job.names):
        # nothing new: the stored turns stand (no pass, no probe on a resumed run)
        return {n: io.stored_turn(store.item_attrs(n)) for n in job.names}
    if job.turns is not None:  # the caller's estimate (localization queries against a map)
        estimated = job.turns(job.names)
        turns = {n: int(estimated.get(n, 0)) % 4 for n in job.names}
    else:
        estimate = orientation_pass(job, rotation)
        turns, summary.orientation = estimate.turns, estimate.summary()
    turned = {n for n in job.names if n in store and n not in changed
              and io.stored_turn(store.item_attrs(n)) != turns[n]}
    if turned:
        log.info("%d image(s) have another turn than their stored features; re-extracting: %s",
                 len(turned), ", ".join(sorted(turned)[:10]))
        changed |= turned
    return turns


def _extract(job: _Job, start: float) -> ExtractSummary:
    config, names, image_dir = job.config, job.names, job.image_dir
    store = io.ShardedH5(job.features_path, "features", config, overwrite=job.overwrite,
                         flush_every=job.flush_every)
    gstore = None
    if job.global_path is not None:
        gconfig = {**config, "global": "guidance" if "guidance" in config else "mean-dense"}
        gstore = io.ShardedH5(job.global_path, "global", gconfig, overwrite=job.overwrite,
                              flush_every=job.flush_every)
    # an image replaced under the same name: its features (and global descriptor) are redone
    changed = {n for n in names if n in store and io.source_changed(store.item_attrs(n), image_dir / n)}
    if job.mask_set is not None:  # a changed mask: the features are redone too
        changed |= {n for n in names if n in store and job.mask_set.changed(store.item_attrs(n), n)}
    if changed:
        log.info("%d image(s) changed since their features were extracted; re-extracting: %s",
                 len(changed), ", ".join(sorted(changed)[:10]))
    summary = ExtractSummary()
    turns = _image_turns(job, store, changed, summary)
    todo = [n for n in names
            if n not in store or n in changed or (gstore is not None and n not in gstore)]
    if todo:
        spec = ExtractWorkerSpec(image_dir, config, job.device, job.mask_set, turns)
        chunks = executors.chunked(todo, RAY_IMAGES_PER_CHUNK if job.executor.is_ray else 1)
        with executors.start(job.executor) as ex, store, (gstore if gstore is not None else nullcontext()), \
                tqdm(total=len(todo), desc="extract", unit="img", dynamic_ncols=True) as bar:
            for _, results in ex.map(spec, chunks):
                for result in results:
                    _store_image(result, store, gstore, changed, summary, config)
                bar.update(len(results))
    else:
        store.finalize()
        if gstore is not None:
            gstore.finalize()
    summary.names = [n for n in names if n not in summary.failed]
    summary.turns = {n: turns[n] for n in summary.names} if turns else {}
    summary.seconds = time.perf_counter() - start
    if summary.failed:
        log.warning("%d image(s) could not be read: %s", len(summary.failed), ", ".join(summary.failed))
    return summary


# --------------------------------------------------------------------------------------------
# command line


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("extract", help="image folder -> features.h5 (+ global.h5)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, help="image folder (searched recursively)")
    p.add_argument("out_h5", type=Path, help="features.h5 to write (resumed if it exists)")
    presets.add_arguments(p)  # --preset, --preset-file, --max-keypoints, --resize-max
    p.add_argument("--global", dest="global_h5", type=Path, default=None,
                   help="also write global descriptors (for `pairs --mode retrieval`) here")
    add_masks_argument(p)
    orientation.add_argument(p)
    p.add_argument("--overwrite", action="store_true", help="discard existing outputs")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    executors.add_arguments(p)
    p.add_argument("--flush-every", type=int, default=64, help=argparse.SUPPRESS)
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    preset = presets.PresetChoice.from_args(args).resolve()  # validated before any work
    summary = main(args.images, args.out_h5, preset, global_path=args.global_h5,
                   overwrite=args.overwrite, device=args.device, flush_every=args.flush_every,
                   masks=args.masks, executor=executors.ExecutorOptions.from_args(args))
    n = len(summary.names)
    print(f"features for {n} image(s) in {args.out_h5} ({summary.seconds:.1f} s)")
    for name, reason in summary.failed.items():
        print(f"  failed: {name}: {reason}")
    if summary.failed and n == 0:
        raise none_readable(args.images, summary.failed)
    return 0
