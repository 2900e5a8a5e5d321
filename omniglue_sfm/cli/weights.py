"""``omniglue-sfm weights``: list the checkpoints we know; ``omniglue-sfm weights fetch NAME...``:
download, check and unpack them into the cache folder (see :mod:`omniglue_sfm.runtime.weights_fetch`)."""

from __future__ import annotations

import argparse

from ..runtime import weights, weights_fetch


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights", help="list known checkpoints (where we look, URL, licence, found); fetch NAME...",
        description=__doc__ + "\n\nExamples:\n  omniglue-sfm weights\n"
                    "  omniglue-sfm weights fetch og_export sp_v6 dinov2_vitb14\n"
                    "  omniglue-sfm weights fetch og_export --from ~/Downloads/og_export.zip",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=["list", "fetch"], default="list",
                   help="list (the default) or fetch")
    p.add_argument("names", nargs="*", metavar="NAME", help="checkpoints to fetch (names as listed)")
    p.add_argument("--from", dest="source", default=None, metavar="PATH_OR_URL",
                   help="fetch from this file or URL instead of the official one (one NAME only)")
    p.add_argument("--force", action="store_true", help="fetch again even if it is already there")
    p.set_defaults(func=_run_weights)


def _run_weights(args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.names or args.source:
            raise ValueError("`weights` lists everything; to download, use `weights fetch NAME...`")
        print_listing(weights_fetch.listing())
        return 0
    if not args.names:
        fetchable = ", ".join(n for n, s in weights.KNOWN.items() if s.url)
        raise ValueError(f"name the checkpoints to fetch: {fetchable}")
    if args.source and len(args.names) != 1:
        raise ValueError("--from gives the file of one checkpoint: name exactly one")
    unknown = [n for n in args.names if n not in weights.KNOWN]
    if unknown:
        raise ValueError(f"unknown checkpoint(s) {', '.join(unknown)}; known: {', '.join(weights.KNOWN)}")
    for name in args.names:
        done = weights_fetch.fetch(name, args.source, args.force)
        if done.already_there:
            print(f"{name}: already in {done.path} (--force fetches it again)")
        else:
            print(f"{name}: {done.size / 1e6:.1f} MB from {done.source}, sha256 {done.sha256}, checked -> "
                  f"{done.path}")
    return 0


def print_listing(entries: list[weights_fetch.Entry]) -> None:
    print(f"checkpoints (cache folder: {weights.cache_dir()}; set $OMNIGLUE_SFM_CACHE to move it)\n")
    for e in entries:
        state = f"found: {e.found}" if e.found else "NOT FOUND"
        print(f"{e.name:22s} {e.filename}  [{state}]")
        print(f"  looks in : {'; '.join(e.looks_in)}")
        print(f"  official : {e.url or '-'}")
        print(f"  licence  : {e.licence or '-'}")
        if e.problem:
            print(f"  problem  : {e.problem}")
    print("\nfetch: omniglue-sfm weights fetch NAME...  (released OmniGlue: og_export sp_v6 dinov2_vitb14)")
