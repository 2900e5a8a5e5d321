"""Listing and fetching the checkpoints we know (``weights.KNOWN``): ``omniglue-sfm weights``.

:func:`listing` says, for every checkpoint, where it is looked for, its official URL and licence,
and whether (and where) it is found; it never downloads. :func:`fetch` downloads one (or copies it
from a local file or ``file://`` URL given as ``source``), checks it and puts it into the cache
folder (``$OMNIGLUE_SFM_CACHE``, default ``~/.cache/omniglue_sfm``), where the weights policy finds
it:

* an archive (``og_export.zip``, ``sp_v6.tgz``): every member's checksum is verified (zip CRCs,
  gzip CRC), members that would land outside the folder, links and devices are refused, and the
  unpacked tree must hold exactly one SavedModel (``saved_model.pb``), which becomes
  ``CACHE/og_export`` / ``CACHE/sp_v6``;
* a checkpoint file (``dinov2_vitb14_pretrain.pth``, ...): it must load as a state dict of tensors
  (``torch.load(weights_only=True)``).

Nothing is left half-written: the work happens in a temporary folder inside the cache and the
result is moved into place at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import weights

CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One line of ``omniglue-sfm weights``."""

    name: str
    filename: str  # a folder for archive checkpoints (SavedModels)
    looks_in: tuple[str, ...]  # the places the weights policy looks, in order
    url: str | None
    licence: str
    found: Path | None
    problem: str | None = None  # e.g. an environment variable that points nowhere


def listing() -> list[Entry]:
    """Every known checkpoint, with where it is looked for and whether it is found (no download)."""
    out = []
    for name, spec in weights.KNOWN.items():
        shown = spec.filename + ("/" if spec.archive else "")
        places = [f"${spec.env_var}", str(weights.cache_dir() / shown)]
        if not spec.archive:
            places.append(f"torch hub checkpoints/{spec.filename}")
        places += [f"package {pkg}: {rel}" for pkg, rel in spec.packaged]
        found, problem = None, None
        try:
            found = weights.resolve_known(name, download=False)
        except weights.WeightsNotFoundError as err:
            first = str(err).splitlines()[0]
            problem = first if os.environ.get(spec.env_var) else None
        out.append(Entry(name, shown, tuple(places), spec.url, spec.licence, found, problem))
    return out


@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path  # where the checkpoint now is
    source: str  # what was downloaded or copied
    size: int  # bytes of the download
    sha256: str  # of the download
    already_there: bool = False


def fetch(name: str, source: str | Path | None = None, force: bool = False) -> Fetched:
    """Download (or copy from ``source``: a path or URL), check and install checkpoint ``name``
    into the cache folder. Already there (and not ``force``): nothing is done."""
    if name not in weights.KNOWN:
        raise KeyError(f"unknown checkpoint {name!r}; known: {', '.join(weights.KNOWN)}")
    spec = weights.KNOWN[name]
    cache = weights.cache_dir()
    target = cache / spec.filename
    if weights.present(spec, target) and not force:
        return Fetched(name, target, str(target), 0, "", already_there=True)
    source = str(source) if source is not None else spec.url
    if not source:
        raise ValueError(f"{name} has no download URL; put the file at {target} or give --from PATH")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-", dir=cache) as tmp:
        download = Path(tmp) / (_basename(source) or f"{name}.download")
        size, digest = _download(source, download)
        if spec.archive:
            unpacked = Path(tmp) / "unpacked"
            unpack(download, unpacked, spec.archive)
            model = find_saved_model(unpacked, spec.marker, download.name)
            _replace(model, target)
        else:
            check_state_dict(download)
            _replace(download, target)
    return Fetched(name, target, source, size, digest)


def _basename(source: str) -> str:
    path = urllib.parse.urlparse(source).path if "://" in source else source
    return PurePosixPath(path).name


def _download(source: str, dest: Path) -> tuple[int, str]:
    """Copy ``source`` (a local path, or any URL urllib opens: https, file) to ``dest``; returns
    (bytes, SHA-256)."""
    from tqdm import tqdm

    digest, size = hashlib.sha256(), 0
    if "://" in source:
        opened = urllib.request.urlopen(source)  # noqa: S310 (https and file URLs are what we want)
        total = opened.headers.get("Content-Length")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        opened = open(path, "rb")  # noqa: SIM115 (closed below)
        total = path.stat().st_size
    with opened as reader, open(dest, "wb") as writer, tqdm(
            total=int(total) if total else None, unit="B", unit_scale=True, desc=dest.name,
            disable=None, leave=False) as bar:
        for block in iter(lambda: reader.read(CHUNK), b""):
            writer.write(block)
            digest.update(block)
            size += len(block)
            bar.update(len(block))
    if size == 0:
        raise ValueError(f"{source} is empty")
    return size, digest.hexdigest()


def _safe_member(name: str, archive: Path) -> None:
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ValueError(f"{archive.name}: refusing member {name!r} (it would land outside the folder)")


def unpack(archive: Path, dest: Path, kind: str) -> None:
    """Check every member of a ``zip`` or ``tgz`` archive and unpack it into ``dest``."""
    dest.mkdir(parents=True)
    if kind == "zip":
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()  # reads every member, checks its CRC
                if bad is not None:
                    raise ValueError(f"{archive.name}: member {bad!r} is corrupt (CRC mismatch)")
                for info in zf.infolist():
                    _safe_member(info.filename, archive)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ValueError(f"{archive.name}: refusing symbolic link {info.filename!r}")
                zf.extractall(dest)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{archive.name} is not a valid zip archive: {err}") from None
    elif kind == "tgz":
        try:
            with tarfile.open(archive, "r:gz") as tf:
                members = tf.getmembers()  # reads the whole stream: gzip's CRC is checked at its end
                for member in members:
                    _safe_member(member.name, archive)
                    if not (member.isfile() or member.isdir()):
                        raise ValueError(f"{archive.name}: refusing {member.name!r} (not a file or folder)")
                tf.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"{archive.name} is not a valid .tgz archive: {err}") from None
    else:
        raise ValueError(f"unknown archive kind {kind!r}")


def find_saved_model(root: Path, marker: str, what: str) -> Path:
    """The one folder under ``root`` (itself included) that holds ``marker``."""
    found = sorted({p.parent for p in root.rglob(marker) if p.is_file()})
    if len(found) != 1:
        holds = "no" if not found else f"{len(found)}"
        raise ValueError(f"{what} holds {holds} SavedModel folder(s) ({marker}); expected exactly one")
    return found[0]


def check_state_dict(path: Path) -> None:
    """A checkpoint file must load as a dict of tensors (no code is run: ``weights_only``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path.name} is not a readable PyTorch checkpoint: {err}") from None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path.name} is not a state dict of tensors")


def _replace(src: Path, target: Path) -> None:
    """Move ``src`` to ``target``, replacing what is there (a folder or a file)."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, target)
