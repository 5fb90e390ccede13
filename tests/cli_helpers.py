"""Helpers the test files share (a module, not a test file: pytest collects nothing here)."""

from __future__ import annotations

import json

from da2_platform.cli.main import main


def run_json(args: list[str], capsys) -> dict:
    """Run `da2 ARGS` in-process; it must exit 0, and its stdout is one JSON object."""
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-4000:]
    return json.loads(captured.out)
