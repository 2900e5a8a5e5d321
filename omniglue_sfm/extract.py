"""Stage 1: image folder -> ``features.h5`` (+ ``global.h5`` for retrieval pairs).

Each image is read (EXIF orientation applied, see :mod:`omniglue_sfm.formats.images`), downscaled so its
long side is at most ``resize_max``, and run through the preset's extractor (and guidance
backbone, when the preset has one) once. Keypoints are stored in original-image pixels.
Resumable: images already in the output (made with the same configuration) are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import orientation
from .config import presets, registry
from .config.options import RunOptions
from .config.rotation import OrientationOptions, options_from_preset
from .features.image import extract_image
from .formats import provenance, sharded
from .formats.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    list_images,
    read_image_sized,
)
from .formats.masks import MaskSet
from .runtime import executors, locks
from .runtime.devices import check_device, default_device

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
    rotation = options_from_preset(preset)
    if rotation is not None:  # absent when off: files made before rotation handling stay valid
        config["rotation"] = rotation.record()
    if preset.get("masks"):  # the folder (absolute): another folder is another configuration
        config["masks"] = MaskSet(preset["masks"]).config_value()
    return config


def check_reads_original(preset: dict) -> None:
    """An extractor that reads the original image (the released OmniGlue's front end) sees it as
    its authors' code does: full size, as stored; the knobs that would change that are errors."""
    name = preset.get("name", "?")
    if preset["features"].get("resize_max"):
        raise ValueError(f"preset {name!r} extracts from the full-resolution image, as the released "
                         "model's authors do; --resize-max / resize_max do not apply to it")
    if options_from_preset(preset) is not None:
        raise ValueError(f"preset {name!r} takes images as stored (the released model's authors do not "
                         "turn them); leave --rotation out or set it to off")


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
                "node must see the image folder at the same path (shared storage; see docs/scale.md, Ray)")
        try:
            img, full_size = read_image_sized(path, self.resize_max)
        except ImageReadError as err:
            return ImageResult(name, failed=err.reason)
        source = provenance.source_record(path)
        turn = self.spec.turns.get(name, 0)
        if self.spec.turns:
            source["turn"] = turn
        item, gvec = extract_image(img, self.extractor, self.guidance, self.resize_max, self.device,
                                   full_size, turn)
        if self.spec.masks is not None:
            item = self.spec.masks.apply(name, item)
            source = {**source, **self.spec.masks.record(name)}
        return ImageResult(name, item, gvec, source)


def _store_image(result: ImageResult, store: sharded.ShardedH5, gstore: sharded.ShardedH5 | None,
                 changed: set[str], summary: ExtractSummary, config: dict) -> None:
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


TurnsFn = Callable[[list[str]], Mapping[str, int]]  # image names -> quarter-turns


@dataclass(frozen=True)
class ImageSet:
    """The images a stage reads: a folder, optionally a subset of its images, and who tells the
    turns of those that need new features (default: the orientation pass over them)."""

    folder: Path
    names: Sequence[str] | None = None  # POSIX paths relative to ``folder``; None: every image in it
    turns: TurnsFn | None = None  # e.g. localization queries: their turns against the map

    @classmethod
    def of(cls, images: ImageSet | Path | str) -> ImageSet:
        return images if isinstance(images, ImageSet) else cls(Path(images))

    def listed(self) -> list[str]:
        """The names, or every image found in the folder (an error when there is none)."""
        if self.names is not None:
            return list(self.names)
        names = list_images(self.folder)
        if not names:
            raise FileNotFoundError(f"no images found in {self.folder} (searched recursively for "
                                    f"{', '.join(IMAGE_EXTENSIONS)})")
        return names


def main(
    images: ImageSet | Path | str,
    features_path: Path | str,
    preset: dict | str,
    run: RunOptions | None = None,
    *,
    global_path: Path | str | None = None,
) -> ExtractSummary:
    """Extract features (and global descriptors when ``global_path`` is given) of ``images``.

    With the preset's ``masks`` (a folder, see :mod:`omniglue_sfm.formats.masks`) keypoints in
    masked-out pixels are dropped. With its rotation handling on, each image is extracted upright;
    when any image needs new features its turn is estimated (``ImageSet.turns``, else the
    orientation pass), otherwise the stored turns stand. ``run``: device, executor, overwrite.
    """
    start = time.perf_counter()
    images = ImageSet.of(images)
    run = run or RunOptions()
    preset = presets.resolve(preset)
    config = features_config(preset)
    mask_set = MaskSet(preset["masks"]) if preset.get("masks") else None
    names = images.listed()
    if mask_set is not None:
        mask_set.check(names, images.folder)
    check_device(run.device)
    run.executor.check()
    features_path = Path(features_path)
    if global_path is not None and Path(global_path).resolve() == features_path.resolve():
        raise ValueError(f"--global {global_path} and the features file {features_path} are the same file: "
                         "the global descriptors need a file of their own (e.g. global.h5)")
    features_path.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(images, features_path, preset, config, names,
               Path(global_path) if global_path is not None else None, run, mask_set)
    with locks.output_lock(features_path):  # one run per output file
        return _extract(job, start)


@dataclass
class _Job:
    images: ImageSet
    features_path: Path
    preset: dict
    config: dict  # features_config(preset)
    names: list[str]
    global_path: Path | None
    run: RunOptions
    mask_set: MaskSet | None


def _image_turns(job: _Job, store: sharded.ShardedH5, changed: set[str],
                 summary: ExtractSummary) -> dict[str, int]:
    """Each image's turn (all 0 with rotation handling off); an image whose turn changed joins ``changed``."""
    if "rotation" not in job.config:
        return {}
    rotation = OrientationOptions(**job.config["rotation"])
    if not any(n not in store or n in changed for n in job.names):
        # nothing new: the stored turns stand (no pass, no probe on a resumed run)
        return {n: provenance.stored_turn(store.item_attrs(n)) for n in job.names}
    if job.images.turns is not None:  # the caller's estimate (localization queries against a map)
        estimated = job.images.turns(job.names)
        turns = {n: int(estimated.get(n, 0)) % 4 for n in job.names}
    else:
        estimate = orientation.orientation_pass(job.images.folder, job.names, job.preset, job.config,
                                                job.features_path, rotation, job.run.device)
        turns, summary.orientation = estimate.turns, estimate.summary()
    turned = {n for n in job.names if n in store and n not in changed
              and provenance.stored_turn(store.item_attrs(n)) != turns[n]}
    if turned:
        log.info("%d image(s) have another turn than their stored features; re-extracting: %s",
                 len(turned), ", ".join(sorted(turned)[:10]))
        changed |= turned
    return turns


def _extract(job: _Job, start: float) -> ExtractSummary:
    config, names, image_dir, run = job.config, job.names, job.images.folder, job.run
    store = sharded.ShardedH5(job.features_path, "features", config, overwrite=run.overwrite,
                              flush_every=run.flush_every)
    gstore = None
    if job.global_path is not None:
        gconfig = {**config, "global": "guidance" if "guidance" in config else "mean-dense"}
        gstore = sharded.ShardedH5(job.global_path, "global", gconfig, overwrite=run.overwrite,
                                   flush_every=run.flush_every)
    # an image replaced under the same name: its features (and global descriptor) are redone
    changed = {n for n in names
               if n in store and provenance.source_changed(store.item_attrs(n), image_dir / n)}
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
        spec = ExtractWorkerSpec(image_dir, config, run.device, job.mask_set, turns)
        chunks = executors.chunked(todo, RAY_IMAGES_PER_CHUNK if run.executor.is_ray else 1)
        with executors.start(run.executor) as ex, store, (gstore if gstore is not None else nullcontext()), \
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
