"""`da2 search --method ...`: one search on Ray Tune, logged to MLflow, the cost ledger and the registry."""

from __future__ import annotations

from pathlib import Path

import typer

from da2_platform.cli.options import METHOD_HELP, METHOD_METAVAR, check_method
from da2_platform.cli.output import console, emit_json, print_table


def search(
    method: str = typer.Option(..., "--method", "-m", help=METHOD_HELP, metavar=METHOD_METAVAR,
                               callback=check_method),
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (default: embedded demo)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the search in ray_results/<name>-<method> "
                                "(only a folder that you own and nobody else can write)."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete an earlier search's ray_results/<name>-<method> "
                               "folder and start again (its ledger rows and MLflow runs stay)."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Override the config's workdir."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow server (default: SQLite in "
                                               "the workdir, or MLFLOW_TRACKING_URI)."),
    no_register: bool = typer.Option(False, "--no-register", help="Do not register the policy in MLflow."),
    one_pass: bool = typer.Option(False, "--one-pass", help="DA2 only: search for the whole training schedule "
                                  "(train.epochs epochs) and register the network it trained beside the policy "
                                  "(search.da2.one_pass)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Search an augmentation policy with one method and register the best one as a `candidate` version."""
    from da2_platform.cli.options import resume_hint
    from da2_platform.cli.output import safe
    from da2_platform.config import load_config
    from da2_platform.errors import ConfigError
    from da2_platform.files import check_output_dir
    from da2_platform.jobenv import check_shared_workdir
    from da2_platform.names import check_workdir_paths, search_folder
    from da2_platform.search.driver import SearchInterrupted, run_search
    from da2_platform.search.methods import spec_builder
    from da2_platform.search.preflight import check_flags
    from da2_platform.tracking import check_tracking, resolve_tracking_uri

    check_flags(resume, fresh)
    if one_pass and method not in ("da2", "da2:score"):
        raise ConfigError(f"--one-pass: only DA2 trains its network while it searches; --method is {method}")
    cfg = load_config(config, {"workdir": str(workdir)} if workdir else None)
    if one_pass:
        search_cfg = cfg.search.model_copy(update={"da2": cfg.search.da2.model_copy(update={"one_pass": True})})
        cfg = cfg.model_copy(update={"search": search_cfg})
    source = str(config or "<defaults>")
    check_output_dir(cfg.workdir, "workdir")
    check_workdir_paths(cfg.workdir, cfg.name, source, [search_folder(cfg.name, method)])  # before --fresh deletes
    check_tracking(resolve_tracking_uri(cfg, tracking_uri))  # a store that is none: refused before Ray starts
    check_shared_workdir(cfg.workdir, source)  # a multi-node job: every node sees it
    builder = spec_builder(method)
    console.print(f"[bold]search[/] {safe(method)} on {safe(cfg.name)} (workdir {safe(cfg.workdir)})")
    try:
        outcome = run_search(cfg, method, builder, resume=resume, tracking_uri=tracking_uri,
                             register=not no_register, fresh=fresh)
    except SearchInterrupted as e:
        raise SearchInterrupted(resume_hint(e, "search", [("--method", method), ("--config", config),
                                                          ("--workdir", workdir), ("--tracking-uri", tracking_uri),
                                                          ("--one-pass", one_pass),
                                                          ("--no-register", no_register)])) from None
    if outcome.failed_trials:
        console.print(f"[yellow]warning[/] {len(outcome.failed_trials)} trial(s) failed after "
                      f"{cfg.search.max_failures} retries each: {safe(', '.join(outcome.failed_trials))}; the policy "
                      "comes from the best completed trial")
    summary = outcome.summary()
    if json_out:
        emit_json({**summary, "policy": outcome.best_policy.to_dict()})
    else:
        print_table(f"{method} search", ["field", "value"], [[k, v] for k, v in summary.items()])
