"""The files between stages: ``features.h5``, ``matches.h5``, ``global.h5`` and ``pairs.txt``.

Contract (docs/design.md §1):

* ``features.h5``: one group per image, keyed by its POSIX path relative to the image folder
  (nested groups for sub-folders, as hloc does). Datasets ``keypoints`` float32 (N, 2) in
  original-image pixels (centre of the top-left pixel at (0, 0)), ``scores`` float32 (N,),
  ``descriptors`` (D, N), ``image_size`` int (W, H) and, for guided matchers, ``guidance``
  float16 (C, N). Keypoints are never stored in float16.
* ``matches.h5``: one entry per unordered pair, stored once under the canonical (sorted) order
  and found whichever order is asked for. Pair keys percent-encode each name, so they are
  collision-free (hloc's ``/`` -> ``-`` is not); a soft link at hloc's key of each pair lets
  hloc's readers find it (:func:`write_hloc_aliases`). ``matches0`` int32 (N0,) index into
  image 1 or -1; ``matching_scores0`` float32 (N0,). Readers also take hloc's own files
  (:func:`locate_pair`).
* Each ``features.h5`` image group records what its features were made from in its attributes
  ``source_size``, ``source_mtime_ns`` and ``source_sha1`` (the image file's); each
  ``matches.h5`` pair records ``source_sha1_0`` / ``source_sha1_1`` of the features it matched.
  A re-run re-extracts an image whose file changed and re-matches the pairs made from its old
  features (the new item lands in a newer shard, which wins on merge). Items without the record
  (older files) are kept.
* With rotation handling on, each ``features.h5`` group also records ``turn`` (0-3): the image
  was extracted turned upright by that many counter-clockwise quarter-turns, keypoints mapped
  back to original pixels (see :mod:`omniglue_sfm.orientation`).
* Every file carries the configuration that made it in its root attribute ``config`` (JSON).
  Re-opening with a different configuration raises :class:`ConfigMismatchError`; nothing is
  ever silently mixed.

Crash safety: results are buffered and flushed as small shard files
(``<file>.parts/shard-*.h5``), each written to a temporary name and renamed, which is atomic on
POSIX. ``kill -9`` can therefore only lose the unflushed buffer, never corrupt what was written.
``finalize()`` merges the shards into the final file, again through a temporary file and a
rename. A re-run reads the final file plus the surviving shards and skips the keys they hold.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

import h5py
import numpy as np

CONFIG_ATTR = "config"
log = logging.getLogger(__name__)


class ConfigMismatchError(RuntimeError):
    """An output file exists but was made with another configuration."""


class DamagedFileError(OSError):
    """An HDF5 file exists but cannot be read (truncated by a full disk, a copy cut short, ...)."""


LOCK_NAME = ".omniglue-sfm.lock"
_HELD_LOCKS: set[str] = set()  # lock files this process holds (a nested lock of one is a no-op)


class OutputLockedError(OSError):
    """Another run holds the lock of this output (one run per output folder or file at a time)."""


def lock_path(output: Path | str) -> Path:
    """The lock file of ``output``: ``OUT/.omniglue-sfm.lock`` for a folder, else a hidden
    ``.NAME.lock`` beside the file (so that match shards in one folder can run side by side)."""
    output = Path(output)
    return output / LOCK_NAME if output.is_dir() else output.with_name(f".{output.name}.lock")


@contextmanager
def output_lock(output: Path | str) -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``output``'s lock file while the block runs.

    A second run (another process) into the same output stops at once with
    :class:`OutputLockedError` (before it writes anything); taking a lock this process already
    holds is a no-op. The lock goes with the process, also on ``kill -9``. The (empty) lock file
    is left in place: deleting it would let two runs lock two different files.
    """
    path = lock_path(output)
    key = str(path.resolve())
    if key in _HELD_LOCKS:  # held by this process already (reconstruct -> sfm): nothing to do
        yield path
        return
    check_writable(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLockedError(
                f"{output} is in use by another omniglue-sfm run (it holds {path}); wait for that run "
                "to finish, or write to another output") from None
        _HELD_LOCKS.add(key)
        try:
            yield path
        finally:
            _HELD_LOCKS.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_writable(folder: Path | str) -> None:
    """Fail now, before any work, when files cannot be created in ``folder`` (read-only folder or
    file system). A probe file is created and removed: permission bits alone do not tell (root
    ignores them, a read-only mount does not show in them)."""
    folder = Path(folder)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionError(
                f"cannot write to {folder} ({os.strerror(err.errno)}): make it writable or choose "
                "another output") from None
        raise
    os.close(fd)
    os.unlink(probe)


def check_output_dir(output_dir: Path | str) -> None:
    """An output folder must be a writable folder or not exist yet (checked before any work)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output folder {output_dir} exists and is not a folder (a file?); "
                                 "give a folder path")
    if output_dir.is_dir():
        check_writable(output_dir)


@contextmanager
def locked_output_dir(output_dir: Path | str) -> Iterator[Path]:
    """Check, create and lock an output folder (see :func:`output_lock`) while the block runs."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir):
        yield output_dir


def open_h5(path: Path | str) -> h5py.File:
    """``path`` opened read-only; a damaged file raises :class:`DamagedFileError` naming it."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as err:
        if not Path(path).exists():
            raise
        raise damaged(path, err) from err


def damaged(path: Path | str, err: BaseException) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged and cannot be read ({err}); delete it or re-run with "
                            "--overwrite to recompute it")


@contextmanager
def read_h5(path: Path | str) -> Iterator[h5py.File]:
    """``with read_h5(path) as h5``: like ``open_h5``, and a read error inside the block (a
    truncated dataset) also raises :class:`DamagedFileError` naming the file."""
    with open_h5(path) as h5:
        try:
            yield h5
        except DamagedFileError:
            raise
        except OSError as err:
            raise damaged(path, err) from err


# --------------------------------------------------------------------------------------------
# names and keys


def pair_key(name0: str, name1: str) -> str:
    """Collision-free HDF5 key of an unordered pair (canonical order, percent-encoded names)."""
    a, b = sorted((name0, name1))
    return f"{quote(a, safe='')}/{quote(b, safe='')}"


def split_pair_key(key: str) -> tuple[str, str]:
    a, b = key.split("/")
    return unquote(a), unquote(b)


def canonical_pair(name0: str, name1: str) -> tuple[str, str]:
    a, b = sorted((name0, name1))
    return a, b


def hloc_pair_key(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's key of the ordered pair (name0, name1): each ``/`` of a name becomes ``-`` and the
    two names are joined by ``separator`` (``/``; old hloc files used ``_``). Lossy: ``a/b.jpg``
    and ``a-b.jpg`` get the same key (docs/design.md §1, "hloc interoperability")."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def is_ours(h5: h5py.File) -> bool:
    """Whether an open file was written by omniglue-sfm (it records its configuration)."""
    return CONFIG_ATTR in h5.attrs


def locate_pair(h5: h5py.File, name0: str, name1: str) -> tuple[str, bool] | None:
    """Where the matches of (name0, name1) are in an open matches file, and whether they are
    stored the other way round (as (name1, name0)); None when the pair is absent.

    Our files: :func:`pair_key`, canonical order. Files without our configuration (hloc's):
    hloc's own lookup, in its order: ``hloc_pair_key(name0, name1)``, then the reverse, then the
    same two with the old ``_`` separator.
    """
    if is_ours(h5):
        key = pair_key(name0, name1)
        return (key, canonical_pair(name0, name1) != (name0, name1)) if key in h5 else None
    for separator in ("/", "_"):
        for key, swapped in ((hloc_pair_key(name0, name1, separator), False),
                             (hloc_pair_key(name1, name0, separator), True)):
            if isinstance(h5.get(key), h5py.Group) and "matches0" in h5[key]:
                return key, swapped
    return None


def read_pair(h5: h5py.File, name0: str, name1: str, where: Path | str = "") -> tuple[np.ndarray, np.ndarray]:
    """Matches of a pair in the order asked, from an open file in our or hloc's layout:
    (K, 2) int64 indices into (name0, name1) and (K,) float32 scores (1 where the file has none).

    ``matches0`` may be any integer type (hloc writes int16): a value below -1 (an int16
    overflow) is an error, never read as "no match".
    """
    found = locate_pair(h5, name0, name1)
    if found is None:
        raise KeyError(f"no matches for pair ({name0!r}, {name1!r}) in {where or h5.filename}")
    key, swapped = found
    group = h5[key]
    m0 = np.asarray(group["matches0"][()]).astype(np.int64)
    if m0.ndim != 1 or (m0.size and m0.min() < -1):
        raise ValueError(f"{where or h5.filename}: matches0 of pair ({name0!r}, {name1!r}) is not a list of "
                         "indices >= -1 (an int16 overflow in an old hloc file?); re-match this pair")
    idx0 = np.flatnonzero(m0 >= 0)
    scores = (np.asarray(group["matching_scores0"][()], np.float32)[idx0] if "matching_scores0" in group
              else np.ones(len(idx0), np.float32))
    pairs = np.stack([idx0, m0[idx0]], axis=1)
    if swapped:
        pairs = pairs[:, ::-1].copy()
    return pairs, scores


HLOC_ALIASES_ATTR = "hloc_aliases"  # root attribute of matches.h5: how many hloc keys were linked
HLOC_UNREADABLE_ATTR = "hloc_unreadable_pairs"  # JSON list of pairs hloc's lookup cannot tell apart


def write_hloc_aliases(h5: h5py.File) -> list[tuple[str, str]]:
    """Soft links at hloc's key of every stored pair, so hloc's readers find our matches.

    A pair is stored once, canonical order (a, b), under :func:`pair_key`; the link
    ``hloc_pair_key(a, b)`` points at it (none is needed when both keys are equal). hloc's lookup
    then finds (a, b) directly and (b, a) reversed. hloc's encoding is lossy, so names that encode
    alike (``a/b.jpg``, ``a-b.jpg``) get no link; every pair whose hloc lookup (either order)
    would not land on its own entry is returned and recorded in the root attribute
    ``hloc_unreadable_pairs`` (JSON), never silently left pointing at another pair.
    """
    keys = _item_paths(h5, "matches")
    pairs = [split_pair_key(k) for k in keys]
    encodings: dict[str, set[str]] = {}
    for name in {n for p in pairs for n in p}:
        encodings.setdefault(name.replace("/", "-"), set()).add(name)
    ambiguous = {n for names in encodings.values() if len(names) > 1 for n in names}
    linked = 0
    for key, (a, b) in zip(keys, pairs, strict=True):
        alias = hloc_pair_key(a, b)
        if alias == key or a in ambiguous or b in ambiguous or alias in h5:
            continue
        parent, child = alias.split("/")
        h5.require_group(parent)[child] = h5py.SoftLink(f"/{key}")
        linked += 1
    unreadable = [(a, b) for key, (a, b) in zip(keys, pairs, strict=True)
                  if not (_hloc_finds(h5, a, b, key) and _hloc_finds(h5, b, a, key))]
    h5.attrs[HLOC_ALIASES_ATTR] = linked
    h5.attrs[HLOC_UNREADABLE_ATTR] = json.dumps(unreadable)
    return unreadable


def _hloc_finds(h5: h5py.File, name0: str, name1: str, key: str) -> bool:
    """Whether hloc's lookup of (name0, name1) lands on the entry stored under ``key``."""
    for candidate in (hloc_pair_key(name0, name1), hloc_pair_key(name1, name0)):
        link = h5.get(candidate, getlink=True)
        if link is None:
            continue
        if isinstance(link, h5py.SoftLink):
            return link.path == f"/{key}"
        return candidate == key
    return False


def config_to_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# what an item was made from


def source_record(path: Path | str) -> dict:
    """Size, mtime and SHA-1 of an input file: the attributes of its ``features.h5`` group."""
    path = Path(path)
    st = path.stat()
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns),
            "source_sha1": file_digest(path)}


def file_digest(path: Path | str, algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (no whole-file copy in memory)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def attr_text(value: object) -> str:
    """An HDF5 string attribute as str (h5py may give bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def source_changed(record: dict, path: Path | str) -> bool:
    """Whether ``path`` is no longer the file ``record`` (a group's attributes) was made from.

    No record (a file from an older version) counts as unchanged; a missing file too (it cannot be
    re-extracted anyway). Size and mtime equal: unchanged without hashing.
    """
    if "source_sha1" not in record:
        return False
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return False
    same_stat = (st.st_size, st.st_mtime_ns) == (int(record.get("source_size", -1)),
                                                  int(record.get("source_mtime_ns", -1)))
    if same_stat:
        return False
    return file_digest(path) != attr_text(record["source_sha1"])


def stored_turn(record: dict) -> int:
    """The quarter-turn a features group was extracted at (its ``turn`` attribute; 0 when absent)."""
    return int(record.get("turn", 0))


def read_turn(path: Path | str, name: str) -> int:
    """:func:`stored_turn` of one image of a ``features.h5``."""
    with read_h5(path) as h5:
        return stored_turn(dict(h5[name].attrs))


def source_sha1(record: dict) -> str:
    """What a features group was made from: the image's SHA-1 ('' when unknown), and its mask's
    when masked (so a changed mask, like a changed image, makes its pairs be matched again)."""
    image = attr_text(record.get("source_sha1", ""))
    return f"{image}+mask:{attr_text(record['mask_sha1'])}" if "mask_sha1" in record else image


# --------------------------------------------------------------------------------------------
# sharded, resumable writer


def _item_paths(h5: h5py.File, kind: str) -> list[str]:
    """Keys of the complete items in an open file (groups holding the marker dataset)."""
    marker = "keypoints" if kind == "features" else _MARKERS[kind]
    found: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group) and marker in obj:
            found.append(name)

    h5.visititems(visit)
    return found


_MARKERS = {"features": "keypoints", "matches": "matches0", "global": "global_descriptor"}


def _write_item(h5: h5py.File, key: str, item: dict[str, np.ndarray], attrs: dict | None) -> None:
    if key in h5:
        del h5[key]
    group = h5.create_group(key)
    for dname, value in item.items():
        group.create_dataset(dname, data=value)
    for aname, value in (attrs or {}).items():
        group.attrs[aname] = value


def _copy_items(src: h5py.File, dst: h5py.File, keys: Iterable[str]) -> None:
    for key in keys:
        if key in dst:
            del dst[key]
        parent = os.path.dirname(key)
        if parent and parent not in dst:
            dst.require_group(parent)
        src.copy(src[key], dst, name=key)


class ShardedH5:
    """A resumable HDF5 output of independent items (images or pairs).

    ``kind`` is ``"features"``, ``"matches"`` or ``"global"``; ``config`` is the configuration
    that makes the items (stored as JSON and checked on re-open).
    """

    def __init__(
        self,
        path: Path | str,
        kind: str,
        config: dict,
        overwrite: bool = False,
        flush_every: int = 64,
        flush_seconds: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.config_json = config_to_json(config)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._buffer: list[tuple[str, dict, dict | None]] = []
        self._attrs: dict[str, dict] = {}  # key -> attributes of its newest stored version
        self._last_flush = time.monotonic()
        if overwrite:
            self._remove_all()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done = self._scan_existing()

    # ---- state on disk
    def _shards(self) -> list[Path]:
        if not self.parts_dir.exists():
            return []
        return sorted(self.parts_dir.glob("shard-*.h5"))

    def _remove_all(self) -> None:
        if self.path.exists():
            self.path.unlink()
        if self.parts_dir.exists():
            for p in self.parts_dir.iterdir():
                p.unlink()
            self.parts_dir.rmdir()

    def _check_config(self, h5: h5py.File, where: Path) -> None:
        found = h5.attrs.get(CONFIG_ATTR)
        if found is None:
            raise ConfigMismatchError(
                f"{where} was not written by omniglue-sfm (no '{CONFIG_ATTR}' attribute); "
                "use another output folder or --overwrite."
            )
        if isinstance(found, bytes):
            found = found.decode()
        if found != self.config_json:
            raise ConfigMismatchError(
                f"{where} was made with another configuration:\n  found:    {found}\n"
                f"  expected: {self.config_json}\nUse another output folder or --overwrite."
            )

    def _scan_existing(self) -> set[str]:
        done: set[str] = set()
        sources = ([self.path] if self.path.exists() else []) + self._shards()
        for src in sources:
            with read_h5(src) as h5:
                self._check_config(h5, src)
                keys = _item_paths(h5, self.kind)
                done.update(keys)
                # sources are in write order (final file, then shards by time): the newest wins
                self._attrs.update({k: dict(h5[k].attrs) for k in keys})
        return done

    # ---- public API
    def __contains__(self, key: str) -> bool:
        return key in self._done or any(k == key for k, _, _ in self._buffer)

    def item_attrs(self, key: str) -> dict:
        """The attributes of the newest version of ``key`` ({} when absent or without any)."""
        for k, _, attrs in reversed(self._buffer):
            if k == key:
                return dict(attrs or {})
        return dict(self._attrs.get(key, {}))

    @property
    def done(self) -> set[str]:
        return set(self._done) | {k for k, _, _ in self._buffer}

    def add(self, key: str, item: dict[str, np.ndarray], attrs: dict | None = None) -> None:
        self._buffer.append((key, item, attrs))
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last_flush > self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Write the buffer as one new shard (temporary name, then atomic rename)."""
        if not self._buffer:
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        final = self.parts_dir / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"
        tmp = final.with_suffix(".h5.tmp")
        with h5py.File(tmp, "w") as h5:
            h5.attrs[CONFIG_ATTR] = self.config_json
            for key, item, attrs in self._buffer:
                _write_item(h5, key, item, attrs)
        _fsync(tmp)
        os.replace(tmp, final)
        self._done.update(k for k, _, _ in self._buffer)
        self._attrs.update({k: dict(attrs or {}) for k, _, attrs in self._buffer})
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def finalize(self) -> Path:
        """Merge everything into ``path`` (atomically) and delete the shards."""
        self.flush()
        shards = self._shards()
        if not shards and self.path.exists():
            return self.path
        tmp = self.path.with_name(self.path.name + ".merge.tmp")
        with h5py.File(tmp, "w") as out:
            out.attrs[CONFIG_ATTR] = self.config_json
            for src_path in ([self.path] if self.path.exists() else []) + shards:
                with read_h5(src_path) as src:
                    _copy_items(src, out, _item_paths(src, self.kind))
            _finish(out, self.kind, self.path)
        _fsync(tmp)
        os.replace(tmp, self.path)
        for shard in shards:
            shard.unlink()
        for leftover in self.parts_dir.glob("*.tmp") if self.parts_dir.exists() else []:
            leftover.unlink()
        if self.parts_dir.exists() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()
        return self.path

    def __enter__(self) -> ShardedH5:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception (Ctrl-C included) keep what was computed, as a shard, for the re-run.
        if exc_type is None:
            self.finalize()
        else:
            self.flush()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(h5: h5py.File, kind: str, final: Path) -> None:
    """Last step of writing a final file: a matches file gets its hloc aliases."""
    if kind != "matches":
        return
    unreadable = write_hloc_aliases(h5)
    if unreadable:
        log.warning(
            "%d pair(s) of %s cannot be found by hloc's readers (names that hloc's '/' -> '-' "
            "encoding cannot tell apart), e.g. %s; omniglue-sfm reads them all", len(unreadable), final,
            unreadable[0])


def merge_h5(sources: list[Path], dest: Path, kind: str) -> Path:
    """Merge finished files (e.g. match shards from several machines) with equal configs."""
    configs = set()
    for src in sources:
        with read_h5(src) as h5:
            configs.add(h5.attrs.get(CONFIG_ATTR))
    if None in configs:
        raise ConfigMismatchError(f"cannot merge files without a configuration (not written by omniglue-sfm, "
                                  f"e.g. hloc's): {sources}")
    if len(configs) != 1:
        raise ConfigMismatchError(f"cannot merge files made with different configurations: {sources}")
    config = json.loads(configs.pop())
    store = ShardedH5(dest, kind, config)
    tmp = dest.with_name(dest.name + ".merge.tmp")
    with h5py.File(tmp, "w") as out:
        out.attrs[CONFIG_ATTR] = store.config_json
        for src_path in ([dest] if dest.exists() else []) + list(sources):
            with read_h5(src_path) as src:
                _copy_items(src, out, _item_paths(src, kind))
        _finish(out, kind, dest)
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------------------------
# readers


def read_config(path: Path | str) -> dict:
    with read_h5(path) as h5:
        value = h5.attrs.get(CONFIG_ATTR)
    if value is None:
        raise ConfigMismatchError(f"{path} was not written by omniglue-sfm (no '{CONFIG_ATTR}' attribute, "
                                  "e.g. an hloc file): its configuration is unknown")
    return json.loads(value.decode() if isinstance(value, bytes) else value)


def list_names(path: Path | str, kind: str = "features") -> list[str]:
    with read_h5(path) as h5:
        return sorted(_item_paths(h5, kind))


def read_features(path: Path | str, name: str) -> dict[str, np.ndarray]:
    """All datasets of one image; ``keypoints`` float32 (N,2), ``descriptors`` (D,N), ..."""
    with read_h5(path) as h5:
        if name not in h5:
            raise KeyError(f"no features for image {name!r} in {path}")
        group = h5[name]
        return {k: group[k][()] for k in group.keys() if isinstance(group[k], h5py.Dataset)}


def read_keypoints(path: Path | str, name: str) -> np.ndarray:
    with read_h5(path) as h5:
        return h5[name]["keypoints"][()].astype(np.float32)


def write_pairs(path: Path | str, pairs: Iterable[tuple[str, str]]) -> None:
    """Atomic; a file that already holds exactly these pairs is left alone (not even its mtime)."""
    path = Path(path)
    text = "".join(f"{quote_name(a)} {quote_name(b)}\n" for a, b in pairs)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_UNSAFE_IN_LINE = re.compile(r"^#|[%\s\x00-\x1f\x7f]")


def quote_name(name: str) -> str:
    """Names in pairs.txt are whitespace separated: whitespace, control characters, ``%`` and a
    leading ``#`` (a comment line) are percent-encoded, nothing else, so a name without them is
    written as is, as hloc writes it."""
    return _UNSAFE_IN_LINE.sub(lambda m: quote(m.group(0), safe=""), name)


def read_pairs(path: Path | str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{path}:{line_no}: expected 'name0 name1', got {line!r}")
            pairs.append((unquote(parts[0]), unquote(parts[1])))
    return pairs


def unique_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop self-pairs and duplicates in either order, keep the first order seen."""
    seen: set[tuple[str, str]] = set()
    out = []
    for a, b in pairs:
        if a == b:
            continue
        c = canonical_pair(a, b)
        if c not in seen:
            seen.add(c)
            out.append((a, b))
    return out


def write_match_item(
    matches0: np.ndarray, scores0: np.ndarray, num_keypoints1: int
) -> tuple[dict[str, np.ndarray], dict]:
    """Datasets and attributes for one pair, already in canonical order."""
    return (
        {
            "matches0": np.asarray(matches0, dtype=np.int32),
            "matching_scores0": np.asarray(scores0, dtype=np.float32),
        },
        {"num_keypoints1": int(num_keypoints1)},
    )


def orient_matches(
    name0: str, name1: str, matches0: np.ndarray, scores0: np.ndarray, num_keypoints1: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """Bring a (name0, name1) result into canonical order for storage."""
    a, b = canonical_pair(name0, name1)
    if (a, b) == (name0, name1):
        return matches0, scores0, (a, b)
    flipped = np.full(num_keypoints1, -1, dtype=np.int32)
    flipped_scores = np.zeros(num_keypoints1, dtype=np.float32)
    valid = np.flatnonzero(matches0 >= 0)
    flipped[matches0[valid]] = valid
    flipped_scores[matches0[valid]] = scores0[valid]
    return flipped, flipped_scores, (a, b)


def read_matches(path: Path | str, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches of a pair in the order asked: (K, 2) int indices into (name0, name1), (K,) scores.
    Reads our layout and hloc's (see :func:`locate_pair`)."""
    with read_h5(path) as h5:
        return read_pair(h5, name0, name1, path)


def iter_match_keys(path: Path | str) -> Iterator[tuple[str, str]]:
    for key in list_names(path, "matches"):
        yield split_pair_key(key)


# --------------------------------------------------------------------------------------------
# stats.json (an SfM output folder's record) and poses.txt (localization results)


def write_json(path: Path | str, data: dict) -> None:
    """A JSON report, written under a temporary name and renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def write_stats(output_dir: Path | str, stats: dict) -> None:
    """``OUT/stats.json``."""
    write_json(Path(output_dir) / "stats.json", stats)


def find_model(source: Path | str) -> Path:
    """The model of a ``reconstruct`` / ``sfm`` / ``triangulate`` folder (``sparse/``), or ``source``
    itself when it is a COLMAP model folder."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"model folder {source} does not exist")
    for candidate in (source / "sparse", source):
        if any((candidate / f"images{ext}").is_file() for ext in (".bin", ".txt")):
            return candidate
    raise FileNotFoundError(f"no COLMAP model in {source} (looked for sparse/images.bin and images.bin)")


def recorded_image_dir(output_dir: Path | str, given: Path | str | None = None) -> Path:
    """The photos' folder: ``given``, else the one ``reconstruct`` recorded in ``stats.json``."""
    image_dir = given or (read_stats(output_dir) or {}).get("image_dir")
    if not image_dir:
        raise FileNotFoundError(f"{output_dir} does not record its image folder (no image_dir in "
                                "stats.json); pass --images")
    if not Path(image_dir).is_dir():
        raise FileNotFoundError(f"image folder does not exist: {image_dir}; pass --images")
    return Path(image_dir)


def read_stats(output_dir: Path | str) -> dict | None:
    """``OUT/stats.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(output_dir) / "stats.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_poses(path: Path | str, poses: Iterable[tuple[str, Iterable[float], Iterable[float]]],
                quote_names: bool = True) -> None:
    """hloc's format: ``name qw qx qy qz tx ty tz`` (cam_from_world) for (name, qvec, tvec) rows.

    ``quote_names=False`` writes names as given, as hloc does (a name with spaces is then read
    back with ``rsplit(maxsplit=7)``).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for name, qvec, tvec in poses:
            values = " ".join(f"{v:.10g}" for v in [*qvec, *tvec])
            f.write(f"{quote_name(name) if quote_names else name} {values}\n")
    os.replace(tmp, path)


def read_poses(path: Path | str) -> dict:
    """``poses.txt`` -> name -> ``pycolmap.Rigid3d`` (cam_from_world)."""
    import pycolmap

    poses = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if len(tokens) != 8:
            continue
        qw, qx, qy, qz, tx, ty, tz = (float(t) for t in tokens[1:])
        rot = pycolmap.Rotation3d(np.array([qx, qy, qz, qw]))
        poses[unquote(tokens[0])] = pycolmap.Rigid3d(rot, np.array([tx, ty, tz]))
    return poses
