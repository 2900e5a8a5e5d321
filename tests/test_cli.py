"""The one error policy of ``cli.py``: every command fails on a user error with one ``error:`` line,
no traceback, and exit code 1 (2: the scene did not reconstruct)."""

from __future__ import annotations

import argparse

import pytest

from omniglue_sfm import cli

# one user error per command: (argv with {tmp} for a fresh empty folder, words the message must hold)
USER_ERRORS = {
    "extract": (["extract", "{tmp}", "{tmp}/features.h5", "--preset", "sift"], "COLMAP's own SIFT"),
    "pairs": (["pairs", "{tmp}", "{tmp}/pairs.txt", "--mode", "retrieval"], "global descriptors"),
    "match": (["match", "{tmp}/missing.h5", "{tmp}/pairs.txt", "{tmp}/matches.h5"], "missing.h5"),
    "merge": (["merge", "{tmp}/out.h5", "{tmp}/missing.h5"], "missing.h5"),
    "sfm": (["sfm", "{tmp}/missing", "{tmp}/f.h5", "{tmp}/m.h5", "{tmp}/out"], "does not exist"),
    "reconstruct": (["reconstruct", "{tmp}", "{tmp}/out", "--preset", "sift"], "no images"),
    "evaluate": (["evaluate", "{tmp}", "--gt", "{tmp}/missing"], "missing"),
    "evaluate-pairs": (["evaluate-pairs", "{tmp}/missing", "--gt", "{tmp}"], "does not exist"),
    "localize": (["localize", "{tmp}", "{tmp}", "{tmp}/out"], "COLMAP model"),
    "viz": (["viz", "model", "{tmp}/missing", "{tmp}/render.png"], "missing"),
    "compare": (["compare", "{tmp}/missing", "{tmp}/out"], "does not exist"),
    "evaluate-localization": (["evaluate-localization", "{tmp}", "--gt", "{tmp}/missing"], "missing"),
    "train": (["train", "{tmp}/missing.toml"], "missing.toml"),
    "finetune": (["finetune", "{tmp}/missing", "--out", "{tmp}/out.pt"], "missing"),
}


def _commands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_every_command_has_a_user_error_test():
    assert sorted(USER_ERRORS) == _commands()


@pytest.mark.parametrize("command", sorted(USER_ERRORS))
def test_user_error_is_one_line_without_traceback(command, tmp_path, capsys):
    argv, words = USER_ERRORS[command]
    code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert words in lines[0]


def test_a_scene_that_does_not_reconstruct_exits_2(capsys):
    from omniglue_sfm.mapping import ReconstructionError

    assert cli.exit_code(ReconstructionError("x")) == 2
    assert cli.exit_code(ValueError("x")) == 1
    assert cli.error_message(KeyError("no features for 'a.jpg'")) == "no features for 'a.jpg'"


def test_a_bug_keeps_its_traceback(monkeypatch):
    from omniglue_sfm import evaluate

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["evaluate", ".", "--gt", "."])
