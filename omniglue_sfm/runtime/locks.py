"""One run per output: exclusive locks on output folders and files, and write checks done before any work."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..formats.outputs import LOCK_NAME  # image scans skip a folder that holds it

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

