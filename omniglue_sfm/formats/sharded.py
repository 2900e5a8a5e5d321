"""The resumable, crash-safe HDF5 writer of every stage (:class:`ShardedH5`) and shard merging.

Results are buffered and flushed as small shard files (``<file>.parts/shard-*.h5``), each
written to a temporary name and renamed, which is atomic on POSIX: ``kill -9`` can only lose the
unflushed buffer, never corrupt what was written. ``finalize()`` merges the shards into the final
file, again through a temporary file and a rename. A re-run reads the final file plus the
surviving shards and skips the keys they hold; a file made with another configuration raises
:class:`~omniglue_sfm.formats.h5io.ConfigMismatchError` (docs/design.md, section 1).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from .diskspace import writing
from .h5io import CONFIG_ATTR, ConfigMismatchError, config_to_json, item_paths, read_h5
from .matches_h5 import write_hloc_aliases

log = logging.getLogger(__name__)


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
                keys = item_paths(h5, self.kind)
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
        size = sum(np.asarray(v).nbytes for _, item, _ in self._buffer for v in item.values())
        with writing(tmp, lambda: size):
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
        sources = ([self.path] if self.path.exists() else []) + shards
        with writing(tmp, lambda: _total_size(sources)):
            with h5py.File(tmp, "w") as out:
                out.attrs[CONFIG_ATTR] = self.config_json
                for src_path in sources:
                    with read_h5(src_path) as src:
                        _copy_items(src, out, item_paths(src, self.kind))
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


def _total_size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def merge_h5(sources: list[Path], dest: Path, kind: str, config: dict | None = None) -> Path:
    """Merge finished files (e.g. match shards from several machines) with equal configs, or (with
    ``config``, which the merged file records) files the caller checked belong together."""
    if config is None:
        configs = set()
        for src in sources:
            with read_h5(src) as h5:
                configs.add(h5.attrs.get(CONFIG_ATTR))
        if None in configs:
            raise ConfigMismatchError(f"cannot merge files without a configuration (not written by "
                                      f"omniglue-sfm, e.g. hloc's): {sources}")
        if len(configs) != 1:
            raise ConfigMismatchError(f"cannot merge files made with different configurations: {sources}")
        config = json.loads(configs.pop())
    store = ShardedH5(dest, kind, config)
    tmp = dest.with_name(dest.name + ".merge.tmp")
    inputs = ([dest] if dest.exists() else []) + list(sources)
    with writing(tmp, lambda: _total_size(inputs)):
        with h5py.File(tmp, "w") as out:
            out.attrs[CONFIG_ATTR] = store.config_json
            for src_path in inputs:
                with read_h5(src_path) as src:
                    _copy_items(src, out, item_paths(src, kind))
            _finish(out, kind, dest)
        os.replace(tmp, dest)
    return dest

