"""A full disk: told as one line that names the disk and the space needed, never a traceback.

A writer that knows what it was writing (a shard, a merged file, the COLMAP database) removes its
temporary file and raises :class:`DiskFullError` with the size it needed; anything else that
fails for want of space (h5py's ``RuntimeError``, pycolmap's "No registered database factory
succeeded", an ``OSError`` with ``ENOSPC``) is recognised by :func:`is_disk_full` and told the
same way by the command line (:func:`disk_full`).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MB = 1e6
LOW_SPACE = 1 << 20  # bytes: a write that fails with less free than this failed for want of space


class DiskFullError(OSError):
    """No space left on the disk holding an output (the message names it and the space needed)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _free(path: Path) -> tuple[int, int] | None:
    try:
        usage = shutil.disk_usage(mount_point(path))
    except OSError:
        return None
    return usage.free, usage.total


def is_disk_full(err: BaseException, path: Path | str | None = None) -> bool:
    """Whether ``err`` is a write that failed for want of space: ``ENOSPC`` (also inside an h5py
    message), or (with ``path``) a plain ``RuntimeError`` / ``OSError`` while the disk holding
    ``path`` has under 1 MiB free (pycolmap's database says only "No registered database factory
    succeeded")."""
    for e in (err, err.__cause__, err.__context__):
        if e is None:
            continue
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "errno = 28" in text or "[Errno 28]" in text:
            return True
    if path is not None and type(err) in (RuntimeError, OSError):  # pycolmap: "No registered database ..."
        free = _free(Path(path))
        return free is not None and free[0] < LOW_SPACE
    return False


def disk_full(path: Path | str, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write of ``path`` (about ``needed`` bytes) that found no space."""
    path = Path(path)
    mount = mount_point(path.parent)
    free = _free(path.parent)
    need = (f"writing {path.name} needs about {needed / MB:.1f} MB" if needed
            else f"{path.name} could not be written")
    have = f"{free[0] / MB:.1f} MB of {free[1] / MB:.1f} MB are free" if free else "its free space is unknown"
    return DiskFullError(f"no space left on device {mount} (the disk of {path.parent}): {need}, and {have}; "
                         "free some space (or write the output to another disk) and run the same command "
                         "again: finished work is kept")


@contextmanager
def writing(tmp: Path, needed: Callable[[], int]) -> Iterator[None]:
    """A temporary file (or folder) is written in the block: on any failure it is removed, so nothing
    half-written is left, and a failure for want of space becomes one :class:`DiskFullError` line
    naming the disk and about how much the file needed (``needed()`` bytes)."""
    try:
        yield
    except BaseException as err:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            remove_quietly(tmp)
        if isinstance(err, Exception) and not isinstance(err, DiskFullError) \
                and is_disk_full(err, tmp.parent):
            raise disk_full(tmp, needed()) from err
        raise


def remove_quietly(path: Path) -> None:
    """Remove a temporary file left by a failed write (never raises)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
