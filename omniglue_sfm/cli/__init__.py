"""``omniglue-sfm`` command line: one subcommand per stage. The only place that parses arguments.

:mod:`.pipeline` (the stages), :mod:`.maps` (what uses a model) and :mod:`.reports` (evaluation,
comparison, training) each register their subcommands with ``add_commands(subparsers)``; each sets
``func`` (called with the parsed ``argparse.Namespace``; returns an exit code). :mod:`.args` holds
the arguments several commands share and turns them into the library's option dataclasses.

Error policy, the same for every command: a user error (a missing or unreadable input, a bad
option, missing weights, an output made with another configuration, a scene that does not
reconstruct) prints one line ``error: ...`` on stderr, no traceback (``-v`` logs it), and exits
with 1, or 2 when the scene did not reconstruct. Usage errors (an unknown option, a bad value) exit
1 too, not argparse's 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from ..colmap.mapper import ReconstructionError
from ..formats.diskspace import is_disk_full
from ..formats.h5io import ConfigMismatchError
from ..formats.images import ImageReadError
from ..localize import LocalizationError
from ..runtime.weights import WeightsNotFoundError
from ..viz.render import RenderError
from . import maps, pipeline, reports, weights

log = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """argparse with the error policy: a usage error (unknown option, bad value) is bad input, so
    it exits 1 with its ``error: ...`` line (argparse itself would exit 2, the code of a scene that
    did not reconstruct). Sub-command parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="omniglue-sfm",
        description="Photos -> COLMAP model with OmniGlue, LightGlue, SuperGlue or SIFT matching.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (pipeline, maps, reports, weights):
        commands.add_commands(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the input or the options are wrong", not "the code is wrong"."""
    return (ReconstructionError, LocalizationError, WeightsNotFoundError, ConfigMismatchError, ImageReadError,
            RenderError, OSError, KeyError, ValueError)


def exit_code(err: BaseException) -> int:
    return 2 if isinstance(err, ReconstructionError) else 1


def one_line(message: str) -> str:
    """An error message on one line (h5py's and COLMAP's run over several)."""
    return " ".join(message.split())


def error_message(err: BaseException) -> str:
    # str(KeyError("x")) is "'x'": print the message itself
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


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
    except user_errors() as err:
        log.debug("%s failed", args.command, exc_info=True)
        print(f"error: {error_message(err)}", file=sys.stderr)
        return exit_code(err)
    except Exception as err:  # a full disk met by a writer that does not say so itself (h5py, pycolmap)
        if not is_disk_full(err):
            raise
        log.debug("%s failed", args.command, exc_info=True)
        print(f"error: no space left on device ({one_line(str(err))}); free some space and run the same "
              "command again: finished work is kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
