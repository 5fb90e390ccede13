"""Choice options (--decoder, --gate, --shift, --rescore) are typer choices: --help lists them, a bad value exits 2
naming the option; --method (fixed:NAME forms) is checked by a callback that lists its choices in --help."""

from __future__ import annotations

import re

import pytest

from da2_platform.cli.main import main


def _text(stream: str) -> str:
    """Rich's boxes and wrapping removed, so a phrase can be matched whatever the terminal width."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", stream))


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


@pytest.mark.parametrize(
    "command, listed",
    [
        (["predict"], "<standard|dark>"),
        (["promote"], "<final-ap|search-val-ap|none>"),
        (["data", "synth"], "<none|wide>"),
        (["evaluate"], "<bbox_keypoint>"),
        (["search"], "[da2|rl|optuna|pba|fixed:NAME]"),
    ],
)
def test_help_lists_the_choices(command, listed, capsys):
    assert main([*command, "--help"]) == 0
    assert listed in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, option, choices",
    [
        (["predict", "--checkpoint", "c.pt", "--annotations", "a.json", "--images", "i", "--out", "o.json",
          "--decoder", "magic"], "--decoder", "'standard', 'dark'"),
        (["promote", "3", "--gate", "magic"], "--gate", "'final-ap', 'search-val-ap', 'none'"),
        (["data", "synth", "--out", "never", "--shift", "magic"], "--shift", "'none', 'wide'"),
    ],
)
def test_a_bad_choice_exits_2_naming_the_option_and_its_choices(args, option, choices, capsys, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = _text(capsys.readouterr().err)
    assert f"Invalid value for '{option}'" in err and f"'magic' is not one of {choices}" in err
    assert list(tmp_path.iterdir()) == []  # refused while parsing: nothing written


@pytest.mark.parametrize(
    "method, line",
    [
        ("magic", "error: --method: unknown method 'magic'; use one of da2, da2:score, rl, optuna, pba, fixed:NAME"),
        ("fixed:magic", "error: fixed policy: unknown name 'magic'; known: none, standard-pose, randaugment"),
    ],
)
def test_a_bad_method_is_one_error_line(method, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--method", method, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
