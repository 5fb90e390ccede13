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


def snapshot(root) -> dict:
    """Every path under `root` (itself included) with its kind, size, mtime and, for files up to 16 MiB, bytes:
    what "nothing written" compares."""
    from pathlib import Path

    root = Path(root)
    if not root.exists():
        return {}
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        small = path.is_file() and not path.is_symlink() and st.st_size <= 16 * 1024 * 1024
        data = path.read_bytes() if small else None  # larger ones (sparse test files): size and mtime only
        out[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def refused(args: list[str], capsys, expect: str, watch) -> str:
    """Run `da2 ARGS` in-process: exit 2, exactly one `error:` line holding `expect`, no traceback, and nothing
    under `watch` created, changed or removed. Returns the error line."""
    before = snapshot(watch)
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expect in lines[0], err[-3000:]
    assert snapshot(watch) == before
    return lines[0]
