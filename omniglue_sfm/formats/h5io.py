"""Reading the HDF5 files between stages (``features.h5``, ``global.h5``, ``matches.h5``).

Layout and conventions: docs/design.md, section 1. Every file we write records the
configuration that made it in its root attribute ``config`` (JSON); :func:`read_config` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

CONFIG_ATTR = "config"


class ConfigMismatchError(RuntimeError):
    """An output file exists but was made with another configuration."""


class DamagedFileError(OSError):
    """An HDF5 file exists but cannot be read (truncated by a full disk, a copy cut short, ...)."""


def open_h5(path: Path | str) -> h5py.File:
    """``path`` opened read-only; a damaged file raises :class:`DamagedFileError` naming it."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as err:
        if not Path(path).exists():
            raise
        if Path(path).is_file() and not h5py.is_hdf5(path):  # never was one: --overwrite would not help
            raise DamagedFileError(f"{path} is not an HDF5 file (no HDF5 signature): not a features, "
                                   "matches or global descriptors file of omniglue-sfm or hloc; check the "
                                   "path") from err
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


def is_ours(h5: h5py.File) -> bool:
    """Whether an open file was written by omniglue-sfm (it records its configuration)."""
    return CONFIG_ATTR in h5.attrs


def config_to_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def attr_text(value: object) -> str:
    """An HDF5 string attribute as str (h5py may give bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def item_paths(h5: h5py.File, kind: str) -> list[str]:
    """Keys of the complete items in an open file (groups holding the marker dataset)."""
    marker = "keypoints" if kind == "features" else _MARKERS[kind]
    found: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group) and marker in obj:
            found.append(name)

    h5.visititems(visit)
    return found


_MARKERS = {"features": "keypoints", "matches": "matches0", "global": "global_descriptor"}


def read_config(path: Path | str) -> dict:
    with read_h5(path) as h5:
        value = h5.attrs.get(CONFIG_ATTR)
    if value is None:
        raise ConfigMismatchError(f"{path} was not written by omniglue-sfm (no '{CONFIG_ATTR}' attribute, "
                                  "e.g. an hloc file): its configuration is unknown")
    return json.loads(value.decode() if isinstance(value, bytes) else value)


def list_names(path: Path | str, kind: str = "features") -> list[str]:
    with read_h5(path) as h5:
        return sorted(item_paths(h5, kind))


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

