"""Shared CLI output: rich for people, plain JSON on stdout for machines (`--json`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(stderr=True)  # progress and tables go to stderr so that stdout stays clean for --json

# While a command runs, `main` points sys.stdout at stderr (libraries such as Ray Tune print banners) and keeps
# the real stdout here for the one JSON object of `--json`.
json_stream = None


def emit_json(obj: Any) -> None:
    stream = json_stream or sys.stdout
    stream.write(json.dumps(obj, indent=2, default=str) + "\n")
    stream.flush()


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    Console().print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)
