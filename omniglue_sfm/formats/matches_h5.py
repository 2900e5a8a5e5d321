"""``matches.h5``: collision-free pair keys, reading a pair in either order, hloc's aliases.

Layout and the hloc rules: docs/design.md, section 1 ("matches.h5", "hloc interoperability").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import h5py
import numpy as np

from .h5io import attr_text, is_ours, item_paths, list_names, read_h5


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


def recorded_sources(h5: h5py.File, name0: str, name1: str) -> tuple[str, str] | None:
    """What the features of (name0, name1) were when the pair was matched (``source_sha1_0/1``, see
    :func:`omniglue_sfm.formats.provenance.source_sha1`), in the order asked; None when the file
    does not record it (hloc's files, older ones) or holds no such pair."""
    found = locate_pair(h5, name0, name1) if is_ours(h5) else None
    if found is None:
        return None
    attrs = h5[found[0]].attrs
    if "source_sha1_0" not in attrs:
        return None
    first, second = attr_text(attrs["source_sha1_0"]), attr_text(attrs.get("source_sha1_1", ""))
    return (second, first) if found[1] else (first, second)


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
    keys = item_paths(h5, "matches")
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

