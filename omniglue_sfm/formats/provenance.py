"""What an item was made from: the source records of ``features.h5`` groups and the file digest.

Each image group records ``source_size``, ``source_mtime_ns``, ``source_ctime_ns``, ``source_inode``
and ``source_sha1`` of its image
(and ``turn``, ``mask_sha1`` when used); a re-run re-extracts an image whose file changed
(docs/design.md, section 1, "Configuration attributes and resume").
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .h5io import attr_text, read_h5


def source_record(path: Path | str) -> dict:
    """Size, mtime, inode change time, inode and SHA-1 of an input file: the attributes of its
    ``features.h5`` group."""
    path = Path(path)
    st = path.stat()
    return {**_stat_record(st), "source_sha1": file_digest(path)}


def _stat_record(st: os.stat_result) -> dict:
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns),
            "source_ctime_ns": int(st.st_ctime_ns), "source_inode": int(st.st_ino)}


def file_digest(path: Path | str, algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (no whole-file copy in memory)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_changed(record: dict, path: Path | str) -> bool:
    """Whether ``path`` is no longer the file ``record`` (a group's attributes) was made from.

    No record (a file from an older version) counts as unchanged; a missing file too (it cannot be
    re-extracted anyway). Size, mtime, inode change time and inode all equal: unchanged without
    hashing. The mtime alone can be set back (``cp -p``, ``touch -r``, ``exiftool -P``, sync tools);
    the inode change time cannot: every write, and every change of the file's metadata, sets it to
    the present. Anything differing (also a copied or moved folder, a chmod): the SHA-1 decides.
    A stat costs about 40 us a file; hashing a 3 MB photo about 10 ms (benchmarks/source_check.py).
    """
    if "source_sha1" not in record:
        return False
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return False
    now = _stat_record(st)
    if now == {k: int(record.get(k, -1)) for k in now}:
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
    """What a features group was made from: the image's SHA-1 ('' when unknown), its mask's when
    masked, and its quarter-turn when not upright. A changed image, mask or turn (the same photo
    re-extracted at another turn has other keypoints) makes its pairs be matched again; upright
    unmasked images keep the bare SHA-1, so older files stay valid."""
    source = attr_text(record.get("source_sha1", ""))
    if "mask_sha1" in record:
        source += f"+mask:{attr_text(record['mask_sha1'])}"
    turn = stored_turn(record)
    return f"{source}+turn:{turn}" if turn else source

