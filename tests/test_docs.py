"""The documentation: the site builds without warnings, and every command it shows exists."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from omniglue_sfm.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
IN_CODE = re.compile(r"(?:^|\s)(?:\.venv/bin/)?omniglue-sfm\s+([^#\n]*)")  # a line of a code block
SHELL_SEPARATOR = re.compile(r"\s(?:&&|\|\||;)\s")
PROGRAM_WORD = re.compile(r"^\s*(?:\.venv/bin/)?omniglue-sfm\s+")
INLINE = re.compile(r"`(?:\.venv/bin/)?omniglue-sfm\s+([^`]*)`")  # `omniglue-sfm ...` in prose


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for sub-commands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def _shown_commands() -> list[tuple[str, str]]:
    """(page, command line after ``omniglue-sfm``) for every command a page shows: in code blocks,
    inline code and the README's command table (whose first column omits the program name)."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for k, part in enumerate(text.split("```")):  # odd parts are code blocks
            pattern = IN_CODE if k % 2 else INLINE
            for line in part.splitlines():
                for m in pattern.finditer(line):
                    # `omniglue-sfm a && omniglue-sfm b`: both commands
                    first, *others = SHELL_SEPARATOR.split(m.group(1))
                    found.append((page.name, first))
                    found += [(page.name, o) for c in others if (o := PROGRAM_WORD.sub("", c, 1)) != c]
        if page.name == "README.md":
            table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
            for row in re.findall(r"^\| `([^`]+)`", table, flags=re.M):
                for command in row.split("`, `"):
                    found.append((page.name, command))
    return found


def _check(words: list[str], parser: argparse.ArgumentParser) -> str | None:
    """Why ``words`` is not a command of ``parser`` (None when it is)."""
    commands = _subparsers(parser)
    if not words or words[0] in ("COMMAND", "..."):
        return None
    if words[0] not in commands:
        return f"unknown command {words[0]!r}"
    sub = commands[words[0]]
    if _subparsers(sub) and len(words) > 1:  # viz MODE
        modes = [m for m in re.split(r"\\?\|", words[1]) if m not in ("...",)]
        unknown = [m for m in modes if m not in _subparsers(sub)]
        if unknown:
            return f"{words[0]}: unknown mode(s) {unknown}"
        options = set().union(*(_options(_subparsers(sub)[m]) for m in modes))
    else:
        options = _options(sub)
    for word in words[1:]:
        flag = word.strip("[]").split("=")[0]
        if flag.startswith("--") and flag not in options:
            return f"{words[0]}: unknown option {flag!r}"
    return None


def test_every_command_shown_in_readme_and_docs_exists():
    parser = build_parser()
    shown = _shown_commands()
    assert len(shown) > 40  # the parsing finds the commands (a broken regex must not pass silently)
    problems = []
    for page, command in shown:
        try:
            words = shlex.split(command.replace("\\|", "|"))
        except ValueError:
            words = command.split()
        if (why := _check(words, parser)) is not None:
            problems.append(f"{page}: omniglue-sfm {command.strip()}: {why}")
    assert not problems, "\n".join(problems)


def test_a_wrong_command_in_the_docs_would_be_found():
    parser = build_parser()
    assert _check(["reconstruct", "a", "b", "--no-such-option"], parser)
    assert _check(["no-such-command"], parser)
    assert _check(["viz", "model", "a", "b", "--cdn"], parser)  # --cdn is html's, not model's
    assert _check(["viz", "html", "a", "b", "--cdn"], parser) is None


def test_docs_site_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is a dev dependency (pip install -e .[dev])")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file() and (tmp_path / "usage" / "index.html").is_file()
