"""The text files: ``pairs.txt`` (``name0 name1`` a line) and ``poses.txt`` (hloc's format).

Conventions (escaping of names): docs/design.md, section 1.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

log = logging.getLogger(__name__)


def write_pairs(path: Path | str, pairs: Iterable[tuple[str, str]]) -> None:
    """Atomic; a file that already holds exactly these pairs is left alone (not even its mtime).

    Names that must be percent-encoded (whitespace, ``%``, a leading ``#``) are read back by us but
    not by hloc, whose ``parse_retrieval`` splits each line on whitespace and looks names up as
    written: such names are reported once per file, with a warning."""
    path = Path(path)
    pairs = list(pairs)
    text = "".join(f"{quote_name(a)} {quote_name(b)}\n" for a, b in pairs)
    encoded = sorted({n for pair in pairs for n in pair if quote_name(n) != n})
    if encoded:
        log.warning("%s: %d image name(s) hold whitespace, '%%' or a leading '#' and are written "
                    "percent-encoded (e.g. %r as %r); omniglue-sfm reads them back, hloc cannot (its pairs "
                    "files split on whitespace): rename those images to use this file with hloc",
                    path, len(encoded), encoded[0], quote_name(encoded[0]))
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

