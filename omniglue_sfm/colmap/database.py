"""A fresh COLMAP database, written under a temporary name and swapped in whole.

A run killed while COLMAP writes a database (verification writes its two-view geometries in place)
leaves SQLite's rollback journal ``database.db-journal`` beside it. SQLite treats such a *hot*
journal as belonging to whatever file now has that name and rolls it back into it on the next
open, so a stale journal beside a newly built database would write old pages into the new one.
Every side file of both names is therefore removed before the swap.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pycolmap

from ..formats import diskspace

SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def remove_side_files(db_path: Path) -> None:
    """SQLite's journal files of ``db_path`` (none are open: the caller holds the output lock)."""
    for suffix in SQLITE_SIDE_FILES:
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


@contextmanager
def fresh_database(db_path: Path, needed: int | None = None) -> Iterator[pycolmap.Database]:
    """``with fresh_database(path) as db``: a new, empty database to fill; it replaces ``db_path``
    (atomically) only when the block ends without an error. On an error the temporary file is
    removed, and a full disk is one :class:`~omniglue_sfm.formats.diskspace.DiskFullError` line
    (pycolmap itself says only "No registered database factory succeeded"); ``needed``: about the
    database's size in bytes, for that message."""
    db_path = Path(db_path)
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    remove_side_files(tmp)
    with diskspace.writing(tmp, lambda: needed or 0):
        with pycolmap.Database.open(tmp) as db:
            yield db
        remove_side_files(db_path)
        os.replace(tmp, db_path)


DATABASE_TABLES = ("cameras", "images", "keypoints", "matches", "two_view_geometries")


def check_database_path(db_path: Path) -> None:
    """Before any work: ``database.db`` is a file or does not exist yet (a folder in its place is not
    ours to delete, and no database could be written there)."""
    if db_path.exists() and not db_path.is_file():
        raise FileExistsError(f"{db_path} is a folder (or another non-file) where the COLMAP database goes; "
                              "move it away or use another output folder")


def database_ok(db_path: Path) -> bool:
    """Whether ``db_path`` is a readable COLMAP database (an SQLite file with COLMAP's tables)."""
    if not db_path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        return False
    return set(DATABASE_TABLES) <= found
