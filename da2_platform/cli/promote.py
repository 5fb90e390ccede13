"""`da2 promote VERSION`: gated move of a registry alias (default: `production`)."""

from __future__ import annotations

from pathlib import Path

import typer

from da2_platform.cli.options import Gate
from da2_platform.cli.output import console, emit_json


def promote(
    version: str = typer.Argument(..., help="The policy version to promote."),
    alias: str = typer.Option("production", "--alias", help="The alias to move."),
    gate: Gate = typer.Option("final-ap", "--gate", help="final-ap (beats the alias holder's final AP), "
                             "search-val-ap (the search's best search-val AP), or none (no comparison; recorded)."),
    min_ap: float | None = typer.Option(None, "--min-ap", help="Also require at least this AP (0-1)."),
    note: str = typer.Option("", "--note", help="Why, in words; stored with the promotion."),
    name: str | None = typer.Option(None, "--name", help="Registered model (default: the config's policy)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (for workdir/tracking)."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Override the config's workdir."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow server URI."),
    json_out: bool = typer.Option(False, "--json", help="Print the decision as JSON on stdout."),
) -> None:
    """Move the alias to VERSION only when the gate holds; refuse with the reason otherwise (exit 1)."""
    import math
    from dataclasses import asdict

    from da2_platform.cli.output import safe
    from da2_platform.config import load_config
    from da2_platform.errors import ConfigError
    from da2_platform.names import check_name
    from da2_platform.registry import check_alias
    from da2_platform.registry import promote as do_promote
    from da2_platform.tracking import check_tracking, resolve_tracking_uri

    if min_ap is not None and not (math.isfinite(min_ap) and 0.0 <= min_ap <= 1.0):
        raise ConfigError(f"--min-ap: expected an AP between 0 and 1, got {min_ap}")
    if not version.isdigit():
        raise ConfigError(f"VERSION: expected a version number such as 3, got {version!r}")
    check_alias(alias)
    if name is not None:
        check_name(name, "--name")
    cfg = load_config(config, {"workdir": str(workdir)} if workdir else None)
    uri = resolve_tracking_uri(cfg, tracking_uri)
    check_tracking(uri, read_only=True)  # an existing MLflow store (a SQLite one is read, never created)
    decision = do_promote(name or cfg.tracking.registered_policy, version, alias, gate, min_ap, note, uri)
    if json_out:
        emit_json(asdict(decision))
    elif decision.allowed:
        console.print(f"[green]promoted[/] version {decision.version} to @{safe(alias)}: {safe(decision.reason)}")
    else:
        console.print(f"[red]refused[/] version {decision.version} for @{safe(alias)}: {safe(decision.reason)}")
    if not decision.allowed:
        raise typer.Exit(code=1)
