"""A fresh COLMAP database, written under a temporary name and swapped in whole.

A run killed while COLMAP writes a database (verification writes its two-view geometries in place)
leaves SQLite's rollback journal ``database.db-journal`` beside it. SQLite treats such a *hot*
journal as belonging to whatever file now has that name and rolls it back into it on the next
open, so a stale journal beside a newly built database would write old pages into the new one.
Every side file of both names is therefore removed before the swap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pycolmap

SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def remove_side_files(db_path: Path) -> None:
    """SQLite's journal files of ``db_path`` (none are open: the caller holds the output lock)."""
    for suffix in SQLITE_SIDE_FILES:
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


@contextmanager
def fresh_database(db_path: Path) -> Iterator[pycolmap.Database]:
    """``with fresh_database(path) as db``: a new, empty database to fill; it replaces ``db_path``
    (atomically) only when the block ends without an error."""
    db_path = Path(db_path)
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    remove_side_files(tmp)
    with pycolmap.Database.open(tmp) as db:
        yield db
    remove_side_files(db_path)
    os.replace(tmp, db_path)
