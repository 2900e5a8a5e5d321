"""Stage 3: ``features.h5`` + ``pairs.txt`` -> ``matches.h5``.

Pairs are matched in padded batches (``matchers.base.collate_pairs``), sorted by keypoint count
so a batch holds pairs of similar size (little padding). Each image's features are read once and
cached. On CUDA the matcher runs under autocast (bfloat16 where supported, else float16).
Results are stored once per unordered pair in canonical order, and the file is resumable.

Scale (docs/design.md §6): ``--shard i/n`` matches every n-th pair (from the i-th) into its own file
``<out>.shard-i-of-n.h5``; run the n shards anywhere, then ``omniglue-sfm merge OUT SHARDS...``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .config import presets, registry
from .config.options import RunOptions
from .formats import h5io, hloc, matches_h5, provenance, sharded, textfiles
from .matchers.base import collate_pairs, features_to_tensors, to_device
from .runtime import executors, locks, weights
from .runtime.devices import autocast, check_device, default_device

log = logging.getLogger(__name__)


@dataclass
class MatchSummary:
    num_pairs: int = 0  # pairs matched in this run
    num_skipped_existing: int = 0  # pairs already in the output
    seconds: float = 0.0
    mean_matches: float = 0.0  # over the pairs matched in this run


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from err
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def pairs_digest(pairs: list[tuple[str, str]]) -> str:
    """SHA-1 of a pair list (in order): the shards of one list record the same digest."""
    text = "\n".join(f"{a}\t{b}" for a, b in pairs)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def merge(sources: Sequence[Path | str], dest: Path | str, kind: str = "matches") -> Path:
    """``merge``: files of one configuration into ``dest``. Match shards (``match --shard i/n``)
    must all be there, cut from one pair list: a merged file that silently lacked a shard's pairs
    would map the scene from part of its matches. The merged file records no shard."""
    sources, dest = [Path(s) for s in sources], Path(dest)
    configs = {s: h5io.read_config(s) for s in sources}
    shards = {s: c.get("shard") for s, c in configs.items()}
    if not any(shards.values()):
        return sharded.merge_h5(sources, dest, kind)
    plain = [s.name for s, info in shards.items() if not info]
    if plain:
        raise ValueError(f"cannot merge match shards with files that are not shards: {', '.join(plain)}")
    lists = {(info["count"], info["pairs_sha1"]) for info in shards.values()}
    if len(lists) != 1:
        listed = ", ".join(f"{s.name} ({info['index']}/{info['count']})" for s, info in shards.items())
        raise ValueError(f"these shards were cut from different pair lists or shard counts: {listed}")
    count = lists.pop()[0]
    got = sorted({info["index"] for info in shards.values()})
    missing = [i for i in range(count) if i not in got]
    if missing:
        num_pairs = next(iter(shards.values()))["num_pairs"]
        raise ValueError(
            f"merge got shard(s) {', '.join(map(str, got))} of {count}; missing "
            f"{', '.join(map(str, missing))} (about {round(num_pairs * len(missing) / count)} of {num_pairs} "
            f"pairs): run `match --shard {missing[0]}/{count}` (and any other missing one), then merge all "
            f"{count} shards")
    merged = {k: v for k, v in next(iter(configs.values())).items() if k != "shard"}
    for source, config in configs.items():
        if {k: v for k, v in config.items() if k != "shard"} != merged:
            raise h5io.ConfigMismatchError(f"cannot merge files made with different configurations: {source}")
    return sharded.merge_h5(sources, dest, kind, config=merged)


def shard_path(matches_path: Path, shard: tuple[int, int]) -> Path:
    matches_path = Path(matches_path)
    i, n = shard
    return matches_path.with_name(f"{matches_path.stem}.shard-{i}-of-{n}{matches_path.suffix}")


def match_config(preset: dict, features_path: Path) -> dict:
    """What ``matches.h5`` depends on: the matcher and the features file's own configuration."""
    if "matcher" not in preset:
        raise ValueError(f"preset {preset.get('name', '?')!r} has no [matcher] section")
    # an hloc features.h5 has no configuration: it is identified by its SHA-256 (hloc.py)
    config = {"matcher": preset["matcher"], "features": hloc.features_config(features_path)}
    checkpoint = weights.fingerprint(preset["matcher"])
    if checkpoint:  # another checkpoint under the same name must not resume into old matches
        config["matcher_checkpoint_sha256"] = checkpoint
    return config


def check_compatible(matcher: torch.nn.Module, features_config: dict, features_path: Path) -> None:
    external = hloc.is_external(features_config)
    if external:  # their extractor is unknown: the user vouches for them (a warning, not an error)
        hloc.check_matcher_fits(matcher, features_config, features_path)
    fname = features_config.get("features", {}).get("name")
    wanted = getattr(matcher, "conf", {}).get("features")
    if wanted and fname and wanted != fname and not external:
        raise ValueError(f"matcher expects {wanted!r} features but {features_path} holds {fname!r} features")
    if "guidance" in matcher.required_inputs and "guidance" not in features_config:
        raise ValueError(f"{features_path} has no guidance features, which this matcher needs; "
                         "extract with a preset that has a [guidance] section (e.g. omniglue-guided)")
    trained = (getattr(matcher, "metadata", None) or {}).get("guidance") or {}
    used = features_config.get("guidance") or {}
    if "guidance" in matcher.required_inputs and trained.get("name") and used.get("name") != trained["name"]:
        log.warning("the matcher's checkpoint learned its guidance scales with %r guidance, but %s holds "
                    "%r guidance: a combination that was never trained or measured",
                    trained["name"], features_path, used.get("name"))


class FeatureCache:
    """Each image's features read once from ``features.h5`` (kept open) and kept as tensors."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.h5 = h5io.open_h5(self.path)
        self.items: dict[str, dict[str, torch.Tensor]] = {}
        self.sources: dict[str, str] = {}  # name -> recorded SHA-1 (asked for twice per pair)

    def __contains__(self, name: str) -> bool:
        return name in self.h5 and "keypoints" in self.h5[name]

    def __getitem__(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.items:
            group = self.h5[name]
            raw = {k: group[k][()] for k in group.keys() if isinstance(group[k], h5py.Dataset)}
            # features extracted upright reach the matcher upright (orientation.py)
            self.items[name] = features_to_tensors(raw, provenance.stored_turn(dict(group.attrs)))
        return self.items[name]

    def source_sha1(self, name: str) -> str:
        """What the image's features were made from ('' when features.h5 does not record it)."""
        if name not in self.sources:
            self.sources[name] = provenance.source_sha1(dict(self.h5[name].attrs))
        return self.sources[name]

    def num_keypoints(self, name: str) -> int:
        return int(self.h5[name]["keypoints"].shape[0])

    def close(self) -> None:
        self.h5.close()


class PairMatcher:
    """A preset's matcher on one device, run on (features0, features1) pairs in padded batches.

    Serves both the match stage (pairs of one ``features.h5``) and localization (a query against
    map images, as hloc's ``features_ref``).
    """

    def __init__(self, matcher_config: dict, features_config: dict, features_path: Path,
                 device: str | torch.device | None = None, batch_size: int | None = None) -> None:
        self.device = device if isinstance(device, torch.device) else default_device(device)
        self.batch_size = batch_size or default_batch_size(self.device)
        self.matcher = registry.matcher(matcher_config).to(self.device).eval()
        check_compatible(self.matcher, features_config, features_path)

    def match_batch(
        self, pairs: Sequence[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(matches0 int32 (N0,), matching_scores0 float32 (N0,)) of every pair, in one batch."""
        data = collate_pairs(list(pairs))
        with torch.inference_mode(), autocast(self.device):
            pred = self.matcher(to_device(data, self.device))
        m0 = pred["matches0"].cpu().numpy()
        s0 = pred["matching_scores0"].float().cpu().numpy()
        out = []
        for k, (f0, f1) in enumerate(pairs):
            n0, n1 = int(f0["keypoints"].shape[0]), int(f1["keypoints"].shape[0])
            mk = m0[k, :n0].astype(np.int32)
            if mk.max(initial=-1) >= n1:
                raise RuntimeError("matcher returned an index into padding")
            out.append((mk, s0[k, :n0]))
        return out

    def match_to_references(
        self, query: dict[str, torch.Tensor], references: Sequence[dict[str, torch.Tensor]]
    ) -> list[np.ndarray]:
        """(K, 2) index pairs (query keypoint, reference keypoint) for every reference image."""
        out: list[np.ndarray] = []
        for start in range(0, len(references), self.batch_size):
            chunk = references[start:start + self.batch_size]
            for m0, _ in self.match_batch([(query, ref) for ref in chunk]):
                idx = np.flatnonzero(m0 >= 0)
                out.append(np.stack([idx, m0[idx]], axis=1).astype(np.int64))
        return out


def _order_pairs(pairs: list[tuple[str, str]], cache: FeatureCache) -> list[tuple[str, str]]:
    """Sort by (larger, smaller) keypoint count so batches need little padding."""
    def size(p: tuple[str, str]) -> tuple[int, int]:
        a, b = cache.num_keypoints(p[0]), cache.num_keypoints(p[1])
        return max(a, b), min(a, b)

    return sorted(pairs, key=size)


def _sources(cache: FeatureCache, a: str, b: str) -> dict[str, str]:
    """The features a canonical pair (a, b) is matched from, as its ``matches.h5`` attributes."""
    return {"source_sha1_0": cache.source_sha1(a), "source_sha1_1": cache.source_sha1(b)}


def _matched_old_features(store: sharded.ShardedH5, cache: FeatureCache, pair: tuple[str, str]) -> bool:
    """Whether a stored pair was matched from other features than ``features.h5`` now holds
    (an image re-extracted since); pairs without the record (older files) are kept."""
    recorded = store.item_attrs(matches_h5.pair_key(*pair))
    if "source_sha1_0" not in recorded:
        return False
    now = _sources(cache, *matches_h5.canonical_pair(*pair))
    return any(h5io.attr_text(recorded.get(k, "")) != v for k, v in now.items())


def _store_result(store: sharded.ShardedH5, cache: FeatureCache, name0: str, name1: str, m0: np.ndarray,
                  s0: np.ndarray, n1: int) -> int:
    m0c, s0c, (a, b) = matches_h5.orient_matches(name0, name1, m0, s0, n1)
    n_other = len(m0) if (a, b) != (name0, name1) else n1
    item, attrs = matches_h5.write_match_item(m0c, s0c, n_other)
    store.add(matches_h5.pair_key(a, b), item, {**attrs, **_sources(cache, a, b)})
    return int((m0 >= 0).sum())


def main(
    features_path: Path | str,
    pairs_path: Path | str,
    matches_path: Path | str,
    preset: dict | str,
    run: RunOptions | None = None,
    *,
    shard: tuple[int, int] | str | None = None,
) -> MatchSummary:
    """Match every pair of ``pairs_path`` (or one shard of them, ``"i/n"``) into ``matches_path``.

    With ``shard`` the output goes to :func:`shard_path` of ``matches_path``. ``run``: device,
    batch size, executor (where the batches are matched; default here) and overwrite.
    """
    start = time.perf_counter()
    run = run or RunOptions()
    preset = presets.resolve(preset)
    features_path = Path(features_path)
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    check_device(run.device)
    run.executor.check()
    matches_path = Path(matches_path) if shard is None else shard_path(Path(matches_path), shard)
    matches_path.parent.mkdir(parents=True, exist_ok=True)
    with locks.output_lock(matches_path):  # one run per output file
        config = match_config(preset, features_path)
        pairs = matches_h5.unique_pairs(textfiles.read_pairs(pairs_path))
        if shard is not None:
            # which part of which pair list: `merge` checks that every shard is there
            config["shard"] = {"index": shard[0], "count": shard[1], "num_pairs": len(pairs),
                               "pairs_sha1": pairs_digest(pairs)}
            pairs = pairs[shard[0]::shard[1]]
        summary = _match(features_path, Path(pairs_path), matches_path, pairs, config, run)
    summary.seconds = time.perf_counter() - start
    return summary


def _match(features_path: Path, pairs_path: Path, matches_path: Path, pairs: list[tuple[str, str]],
           config: dict, run: RunOptions) -> MatchSummary:
    store = sharded.ShardedH5(matches_path, "matches", config, overwrite=run.overwrite,
                              flush_every=run.flush_every)
    cache = FeatureCache(features_path)
    try:
        stored = [p for p in pairs if matches_h5.pair_key(*p) in store]
        redo = {p for p in stored if all(n in cache for n in p) and _matched_old_features(store, cache, p)}
        if redo:
            log.info("%d pair(s) were matched from features since re-extracted; matching them again",
                     len(redo))
        todo = [p for p in pairs if matches_h5.pair_key(*p) not in store or p in redo]
        summary = MatchSummary(num_skipped_existing=len(pairs) - len(todo))
        missing = sorted({n for p in todo for n in p if n not in cache})
        if missing:
            raise KeyError(f"{len(missing)} image(s) of {pairs_path} have no features in {features_path}: "
                           + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        with store:
            if todo:
                total = _match_all(todo, cache, store, config, run)
                summary.num_pairs = len(todo)
                summary.mean_matches = total / len(todo)
    finally:
        cache.close()
    return summary


RAY_BATCHES_PER_CHUNK = 4  # matcher batches per Ray call: small, so a lost worker loses little


def default_batch_size(device: torch.device) -> int:
    """Pairs per matcher batch when ``--batch-size`` is not given."""
    return 16 if device.type == "cuda" else 4


@dataclass(frozen=True)
class MatchWorkerSpec:
    """What a matching worker needs (picklable: it travels to Ray actors)."""

    config: dict  # match_config()
    features_path: Path  # named in messages only: features reach workers as chunk inputs
    device: str | None
    batch_size: int

    def build(self, remote: bool) -> MatchWorker:
        return MatchWorker(self)


class MatchWorker:
    """The matcher loaded once; matches a chunk of batches, each exactly as the local path batches it."""

    def __init__(self, spec: MatchWorkerSpec) -> None:
        self.matcher = PairMatcher(spec.config["matcher"], spec.config["features"], spec.features_path,
                                   spec.device, spec.batch_size)

    def __call__(self, batches: list[list[tuple[str, str]]],
                 features: Mapping[str, dict[str, torch.Tensor]]) -> list[list[tuple[np.ndarray, ...]]]:
        return [self.matcher.match_batch([(features[a], features[b]) for a, b in batch]) for batch in batches]


def _match_all(todo: list[tuple[str, str]], cache: FeatureCache, store: sharded.ShardedH5, config: dict,
               run: RunOptions) -> int:
    ordered = _order_pairs(todo, cache)
    # pairs with an empty image need no model: store "no match" directly
    empty = [p for p in ordered if cache.num_keypoints(p[0]) == 0 or cache.num_keypoints(p[1]) == 0]
    empty_set = set(empty)
    work = [p for p in ordered if p not in empty_set]
    total = 0
    for a, b in empty:
        n0, n1 = cache.num_keypoints(a), cache.num_keypoints(b)
        _store_result(store, cache, a, b, np.full(n0, -1, np.int32), np.zeros(n0, np.float32), n1)
    if not work:
        return 0
    with executors.start(run.executor) as ex:
        size = run.batch_size or default_batch_size(ex.worker_device(run.device))
        # the same batches on every executor (results may depend on a batch's padding); Ray calls
        # carry a few whole batches each
        batches = executors.chunked(work, size)
        per_chunk = RAY_BATCHES_PER_CHUNK if ex.is_ray else 1
        chunks = executors.chunked(batches, per_chunk)
        spec = MatchWorkerSpec(config, cache.path, run.device, size)

        def inputs_of(chunk: list[list[tuple[str, str]]]) -> dict[str, dict[str, torch.Tensor]]:
            return {n: cache[n] for batch in chunk for pair in batch for n in pair}

        with tqdm(total=len(work), desc="match", unit="pair", dynamic_ncols=True) as bar:
            for chunk, results in ex.map(spec, chunks, inputs_of):
                for batch, batch_results in zip(chunk, results, strict=True):
                    for (a, b), (m0, s0) in zip(batch, batch_results, strict=True):
                        total += _store_result(store, cache, a, b, m0, s0, cache.num_keypoints(b))
                    bar.update(len(batch))
    return total
