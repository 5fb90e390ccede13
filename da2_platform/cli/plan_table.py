"""The plan as people read it: its table, what each budget buys, and its assumptions (stderr). Shared by
`da2 plan` and `da2 compare`, which prints the plan before it starts."""

from __future__ import annotations

from da2_platform.cli.output import console, print_table, safe
from da2_platform.plan.bill import count


def show_plan(result) -> None:
    """The plan's table and its assumptions, for people (stderr)."""
    per_seed = " per seed" if result.seeds > 1 else ""
    print_table(f"plan{per_seed}: {result.experiment} on {result.costs.device}", result.TABLE_COLUMNS,
                result.table_rows())
    for row in result.budgets:
        bought = ", ".join(f"{m} {count(v['bought'])} {'children' if v['unit'] == 'children' else 'steps'}"
                           for m, v in row["methods"].items())
        console.print(f"at {row['multiple']:g}x DA2 ({row['device_hours']:.4g} device-h): {safe(bought)}")
    console.print("[bold]assumptions[/]")
    for line in result.assumptions:
        console.print(f"  - {safe(line)}")
