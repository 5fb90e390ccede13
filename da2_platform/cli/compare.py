"""`da2 compare` (all methods under one budget, then final trainings) and `da2 report` (table + plot)."""

from __future__ import annotations

from pathlib import Path

import typer

from da2_platform.cli.output import console, emit_json, print_table


def compare(
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (default: embedded demo)."),
    methods: str = typer.Option("da2,rl,optuna,pba,fixed", "--methods",
                                help="Comma-separated: da2, rl, optuna, pba, fixed (all fixed policies), fixed:NAME."),
    budget_device_hours: float | None = typer.Option(None, "--budget-device-hours",
                                                        help="Cap on each black-box search's device-hours."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Override the config's workdir."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow server URI."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Run the methods side by side, train a fresh model with each best policy, and write the report."""
    from da2_platform.compare import run_compare
    from da2_platform.config import load_config
    from da2_platform.jobenv import check_shared_workdir

    cfg = load_config(config, {"workdir": str(workdir)} if workdir else None)
    check_shared_workdir(cfg.workdir, str(config or "<defaults>"))  # a multi-node job: every node sees it
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    run_compare(cfg, chosen, budget_device_hours, tracking_uri,
                progress=lambda msg: console.print(f"[bold cyan]compare[/] {msg}"))
    _show_report(cfg.workdir, cfg.name, json_out, log_to_mlflow=True, cfg=cfg, tracking_uri=tracking_uri)


def report(
    experiment: str = typer.Argument(..., help="Experiment name (the config's `name`)."),
    workdir: Path = typer.Option(Path("work/demo"), "--workdir", help="The experiment's workdir."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """The cost/AP table and the best-AP-vs-device-hours plot from an experiment's ledger."""
    _show_report(workdir, experiment, json_out)


def _show_report(workdir: Path, experiment: str, json_out: bool, log_to_mlflow: bool = False, cfg=None,
                 tracking_uri: str | None = None) -> None:
    from da2_platform.report import Report, write_report

    rep, json_path, png_path = write_report(workdir, experiment)
    if log_to_mlflow and cfg is not None:
        import mlflow

        from da2_platform.tracking import setup_tracking

        experiment_id = setup_tracking(cfg, tracking_uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name="compare-report"):
            mlflow.set_tags({"da2.kind": "report", "da2.experiment": experiment})
            mlflow.log_artifact(str(json_path), "report")
            mlflow.log_artifact(str(png_path), "report")
    if json_out:
        emit_json({**rep.to_dict(), "table": str(json_path), "plot": str(png_path)})
        return
    print_table(f"{experiment}: cost and AP per method", Report.TABLE_COLUMNS, rep.table_rows())
    console.print(f"report: {json_path}\nplot:   {png_path}")
