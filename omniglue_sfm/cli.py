"""``omniglue-sfm`` command line: one subcommand per stage.

Each stage module exposes ``add_cli(subparsers)`` which registers its subcommand and sets
``func`` (called with the parsed ``argparse.Namespace``; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module (in omniglue_sfm) -> subcommands it registers, in help order
STAGE_MODULES = [
    "extract",
    "pairs",
    "match",
    "sfm",
    "reconstruct",
    "evaluate",
    "evaluate_pairs",
    "localize",
    "viz",
    "compare",
    "evaluate_localization",
    "training.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniglue-sfm",
        description="Photos -> COLMAP model with OmniGlue, LightGlue, SuperGlue or SIFT matching.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(f"omniglue_sfm.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"omniglue_sfm.{name}":  # stage not built yet
                continue
            raise
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
