"""Shared CLI output: rich for people, plain JSON on stdout for machines (`--json`)."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape

# ANSI escape sequences (CSI, OSC, two-byte), every other C0/C1 control character but tab and newline, and the
# bidirectional controls (marks, embeddings, overrides, isolates) that make a name read as something it is not
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
                      "|[\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")


def plain(value: Any) -> str:
    """`value` as text that cannot move the cursor, recolour or retitle the terminal."""
    return _CONTROL.sub("", str(value))


def safe(value: Any) -> str:
    """A name, path or message from outside (a config, a file, the registry) for a rich markup string."""
    return escape(plain(value))


class SafeConsole(Console):
    """A rich console that never prints control sequences and never crashes on a stray `[/...]`: markup that
    does not parse is shown as the text it is (names from outside should still go through `safe`)."""

    def render_str(self, text: str, *args: Any, **kwargs: Any):
        text = plain(text)
        try:
            return super().render_str(text, *args, **kwargs)
        except MarkupError:
            return super().render_str(escape(text), *args, **kwargs)


console = SafeConsole(stderr=True)  # progress and tables go to stderr so that stdout stays clean for --json

# While a command runs, `main` points sys.stdout at stderr (libraries such as Ray Tune print banners) and keeps
# the real stdout here for the one JSON object of `--json`.
json_stream = None


def emit_json(obj: Any) -> None:
    stream = json_stream or sys.stdout
    stream.write(json.dumps(obj, indent=2, default=str) + "\n")
    stream.flush()


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=safe(title))
    for col in columns:
        table.add_column(safe(col))
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    SafeConsole().print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else safe(v)
