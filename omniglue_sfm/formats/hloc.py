"""hloc interoperability: hloc's ``features.h5``, ``matches.h5`` and pairs files as inputs, and
hloc's localization results format as an output (docs/design.md §1, "hloc interoperability").

What is read as is (the layouts agree): ``features.h5`` (one group per image name, nested by
``/``; ``keypoints`` (N, 2) with the top-left pixel centre at (0, 0), ``descriptors`` (D, N),
``scores``, ``image_size`` (W, H); float16 is read as float32) and pairs files (``name0 name1``
a line). hloc's ``matches.h5`` is found through hloc's own key lookup (:func:`io.locate_pair`).

What we trust: an hloc file records no configuration. Its features are *external, configuration
unknown*: they are identified by the SHA-256 of the file (:func:`features_config`), which the
matches made from them record, so a changed file never resumes into old matches; our extraction
never writes into such a file (``ShardedH5`` refuses it). hloc's matches are trusted to refer to
the ``features.h5`` given with them (hloc records nothing else); every index is checked against
the keypoint counts before it reaches COLMAP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py

from . import h5io, matches_h5, provenance

log = logging.getLogger(__name__)

EXTERNAL = "external"  # the extractor name of features made outside omniglue-sfm
# descriptor dimension of the features each matcher input type expects
FEATURE_DIMS = {"aliked": 128, "disk": 128, "superpoint": 256}


def features_config(path: Path | str) -> dict:
    """The configuration of a ``features.h5``: its own (ours), or for a file without one (hloc's)
    ``{"features": {"name": "external", "format": "hloc", "sha256": ..., "descriptor_dim": D}}``
    after checking its layout."""
    path = Path(path)
    with h5io.read_h5(path) as h5:
        if h5io.is_ours(h5):
            return h5io.read_config(path)
        dim = check_layout(h5, path)
    return {"features": {"name": EXTERNAL, "format": "hloc", "sha256": provenance.file_digest(path, "sha256"),
                         "descriptor_dim": dim}}


def check_layout(h5: h5py.File, where: Path) -> int:
    """Check that every image of an external ``features.h5`` has hloc's layout (shapes only, no data
    read); returns the descriptor dimension."""
    names = h5io.list_names(where)
    if not names:
        raise ValueError(f"{where} holds no image group with a 'keypoints' dataset: not a features file")
    dims = set()
    for name in names:
        group = h5[name]
        missing = [k for k in ("keypoints", "descriptors", "image_size") if k not in group]
        if missing:
            raise ValueError(f"{where}: image {name!r} has no {', '.join(missing)}; hloc's layout needs "
                             "keypoints (N, 2), descriptors (D, N) and image_size (W, H)")
        kp, desc = group["keypoints"].shape, group["descriptors"].shape
        if len(kp) != 2 or kp[1] != 2 or len(desc) != 2 or desc[1] != kp[0]:
            hint = " (transposed? hloc stores them (D, N))" if len(desc) == 2 and desc[0] == kp[0] else ""
            raise ValueError(f"{where}: image {name!r} has keypoints {kp} and descriptors {desc}; expected "
                             f"(N, 2) and (D, N){hint}")
        dims.add(int(desc[0]))
    if len(dims) > 1:
        raise ValueError(f"{where} mixes descriptor dimensions {sorted(dims)}")
    return dims.pop()


def is_external(features_config: dict) -> bool:
    return (features_config.get("features") or {}).get("name") == EXTERNAL


def check_matcher_fits(matcher: object, features_config: dict, features_path: Path) -> None:
    """External features: their extractor is unknown, so only the descriptor size can be checked."""
    conf = getattr(matcher, "conf", {}) or {}
    model_conf = getattr(getattr(matcher, "model", None), "conf", {}) or {}
    wanted = FEATURE_DIMS.get(conf.get("features")) or model_conf.get("input_dim") or (
        model_conf.get("descriptor_dim"))
    have = features_config["features"].get("descriptor_dim")
    if wanted and have and int(wanted) != int(have):
        raise ValueError(f"{features_path} holds {have}-d descriptors; the matcher expects {wanted}-d ones")
    if conf.get("features") or model_conf:  # a learned matcher: trained on one kind of features
        log.warning("%s was not written by omniglue-sfm: which extractor made its features is unknown, "
                    "so the matcher cannot check that they are the %s features it was trained on",
                    features_path, conf.get("features") or "kind of")


def check_matches_fit(features_path: Path, matches_path: Path) -> dict:
    """Refuse matches made from other features than ``features_path``'s; returns what the inputs
    are, for ``stats.json``.

    Our matches record the configuration of their features (or the SHA-256 of an external
    file): it must be ``features_path``'s. Matches without a configuration (hloc's) record
    nothing: they are trusted, and their indices are checked pair by pair while read.
    """
    with h5io.read_h5(matches_path) as h5:
        ours = h5io.is_ours(h5)
    if not ours:
        log.info("%s has no configuration (hloc's?): trusting that it was matched from %s",
                 matches_path, features_path)
        return {"matches": "external (no configuration)", "features": _describe(features_path)}
    recorded = h5io.read_config(matches_path).get("features")
    if recorded is None:  # matches written by something that does not record its features
        return {"matches": "omniglue-sfm", "features": _describe(features_path)}
    actual = features_config(features_path)
    if recorded != actual:
        raise h5io.ConfigMismatchError(
            f"{matches_path} was matched from other features than {features_path}:\n  matched from: "
            f"{h5io.config_to_json(recorded)}\n  features.h5:   {h5io.config_to_json(actual)}\n"
            "Give the features.h5 the matches were made from, or re-run `match`.")
    return {"matches": "omniglue-sfm", "features": actual["features"] if is_external(actual)
            else "omniglue-sfm"}


def _describe(features_path: Path) -> object:
    config = features_config(features_path)
    return config["features"] if is_external(config) else "omniglue-sfm"


def stored_pairs(matches_path: Path, names: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair stored in a matches file, as image names (ours: decoded from the key; hloc's:
    its ``/`` -> ``-`` keys matched against ``names``, an error when two names encode alike)."""
    with h5io.read_h5(matches_path) as h5:
        ours = h5io.is_ours(h5)
    if ours:
        return list(matches_h5.iter_match_keys(matches_path))
    encoded: dict[str, str] = {}
    for name in names:
        other = encoded.setdefault(name.replace("/", "-"), name)
        if other != name:
            raise ValueError(f"{matches_path} uses hloc's pair keys, which cannot tell {other!r} from "
                             f"{name!r}; pass --pairs to name the pairs")
    pairs, unknown = [], []
    for key in h5io.list_names(matches_path, "matches"):
        pair = _decode(key, encoded)
        if pair is None:
            unknown.append(key)
        else:
            pairs.append(pair)
    if unknown:
        log.warning("%d pair(s) of %s are not between the images of features.h5 (first: %r); ignored",
                    len(unknown), matches_path, unknown[0])
    return pairs


def _decode(key: str, encoded: dict[str, str]) -> tuple[str, str] | None:
    if "/" in key:
        a, _, b = key.partition("/")
        return (encoded[a], encoded[b]) if a in encoded and b in encoded else None
    # the old '_' separator: the split whose both sides are known names
    splits = [(key[:i], key[i + 1:]) for i, c in enumerate(key) if c == "_"]
    found = [(encoded[a], encoded[b]) for a, b in splits if a in encoded and b in encoded]
    return found[0] if len(found) == 1 else None
