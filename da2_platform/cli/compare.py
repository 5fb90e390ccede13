"""`da2 compare` (all methods under one budget, then final trainings) and `da2 report` (table + plot)."""

from __future__ import annotations

from pathlib import Path

import typer

from da2_platform.cli.output import console, emit_json, print_table


def compare(
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (default: embedded demo)."),
    methods: str = typer.Option("da2,rl,optuna,pba,fixed", "--methods",
                                help="Comma-separated: da2, da2:score, rl, optuna, pba, fixed (all fixed policies), "
                                "fixed:NAME."),
    budget_device_hours: float | None = typer.Option(None, "--budget-device-hours",
                                                        help="One budget for every search (DA2 and the fixed "
                                                        "policies too), in device-hours."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Override the config's workdir."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow server URI."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2: every method runs "
                                     "once per seed (default: the config's seed); the report gives means and "
                                     "spreads."),
    budgets: str | None = typer.Option(None, "--budgets", help="Comma-separated multiples of the costlier DA2 "
                                       "method's search cost, e.g. 1,3,10,30: DA2 runs first, every other method "
                                       "under the largest budget, and each method's anytime policy at each budget "
                                       "is trained and scored (final AP at equal budgets)."),
    fresh: bool = typer.Option(False, "--fresh", help="Replace earlier searches' Tune folders of these names."),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted searches of these names."),
) -> None:
    """Run the methods side by side (per seed), train a fresh model with each best policy, and write the report."""
    from da2_platform.cli.options import resume_hint
    from da2_platform.compare import expand_methods, run_compare_seeds
    from da2_platform.config import load_config
    from da2_platform.files import check_output_dir
    from da2_platform.jobenv import check_shared_workdir
    from da2_platform.names import check_workdir_paths, search_folder
    from da2_platform.search.driver import SearchInterrupted
    from da2_platform.tracking import check_tracking, resolve_tracking_uri

    cfg = load_config(config, {"workdir": str(workdir)} if workdir else None)
    source = str(config or "<defaults>")
    check_output_dir(cfg.workdir, "workdir")  # the same clear error as `da2 search` for a bad work dir
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    chosen_seeds = parse_seeds(seeds)
    multiples = parse_budgets(budgets, budget_device_hours)
    if multiples and not {"da2", "da2:score"} & set(chosen):
        from da2_platform.errors import ConfigError

        raise ConfigError("--budgets: the budgets are multiples of DA2's search cost; --methods needs da2 or "
                          "da2:score (or give --budget-device-hours)")
    names = [cfg.name] + [f"{cfg.name}-seed{s}" for s in chosen_seeds or []]
    for name in names:  # every path a seed's searches and final trainings will use, before any is touched
        check_workdir_paths(cfg.workdir, name, source, [search_folder(name, m) for m in expand_methods(chosen, cfg)]
                            + [f"{name}-final"])
    check_tracking(resolve_tracking_uri(cfg, tracking_uri))
    check_shared_workdir(cfg.workdir, source)  # a multi-node job: every node sees it
    planned = plan_first(cfg, methods, chosen_seeds, budget_device_hours, source, multiples)
    try:
        result = run_compare_seeds(cfg, chosen, chosen_seeds, budget_device_hours, tracking_uri,
                                   progress=lambda msg: console.print(f"[bold cyan]compare[/] {msg}"),
                                   fresh=fresh, resume=resume, budgets=multiples, planned=planned)
    except SearchInterrupted as e:
        raise SearchInterrupted(resume_hint(e, "compare", [
            ("--config", config), ("--methods", methods), ("--budget-device-hours", budget_device_hours),
            ("--budgets", budgets),
            ("--workdir", workdir), ("--tracking-uri", tracking_uri), ("--seeds", seeds)])) from None
    rep = result.report
    if json_out:
        emit_json({**rep.to_dict(), "table": str(result.report_json), "plot": str(result.report_png),
                   "mlflow_run_id": result.mlflow_run_id})
        return
    if result.yardstick:
        ys = result.yardstick
        methods_seen = list(ys["budgets"][0]["methods"]) if ys["budgets"] else []
        rows = [[m, *[_ap(b["methods"][m]) for b in ys["budgets"]], ys["to_target"]["methods"].get(m, {}).get("text")]
                for m in methods_seen]
        print_table(f"{cfg.name}: final AP at equal budgets (mean +- std over seeds); device-hours to "
                    f"{ys['to_target']['target_ap']}", ["method", *[f"{b['multiple']:g}x ({b['device_hours']:.3g} h)"
                                                              for b in ys["budgets"]], "to target"], rows)
    else:
        print_table(f"{cfg.name}: cost and AP per method over seeds {', '.join(map(str, rep.seeds))}",
                    rep.TABLE_COLUMNS, rep.table_rows())
    console.print(f"report: {result.report_json}\nplot:   {result.report_png}\nMLflow run: {result.mlflow_run_id}")


def plan_first(cfg, methods: str, seeds: list[int] | None, budget_device_hours: float | None,
               label: str, budgets: list[float] | None = None) -> dict[str, float] | None:
    """`da2 plan` of the comparison, printed before it starts (it asks nothing): the planned search device-hours
    per method for the report, or None when no plan could be made (said, and the comparison goes on)."""
    from da2_platform.cli.output import safe
    from da2_platform.cli.plan_table import show_plan
    from da2_platform.plan.planner import make_plan

    try:
        plan = make_plan(cfg, methods, budget_device_hours=budget_device_hours, budgets=budgets, seeds=seeds,
                         config_label=label)
    except Exception as e:  # noqa: BLE001 -- a plan is advice: a comparison does not fail for want of one
        console.print(f"[yellow]plan[/] none: {safe(e)}")
        return None
    show_plan(plan)
    return plan.search_device_hours()


def _ap(entry: dict) -> str:
    mean, std = entry["final_ap_mean"], entry["final_ap_std"]
    return "-" if mean is None else f"{mean:.4f} +- {std or 0:.4f}"


def parse_budgets(text: str | None, device_hours: float | None) -> list[float] | None:
    """'1,3,10' -> [1.0, 3.0, 10.0] (multiples of DA2's search cost)."""
    import math

    from da2_platform.errors import ConfigError

    if text is None:
        return None
    if device_hours is not None:
        raise ConfigError("--budgets and --budget-device-hours: give one (multiples of DA2's cost, or one "
                          "absolute budget)")
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"--budgets: expected comma-separated positive multiples such as 1,3,10,30; "
                          f"got {text!r}")
    return sorted(set(values))


def parse_seeds(text: str | None) -> list[int] | None:
    """'0,1,2' -> [0, 1, 2]."""
    from da2_platform.errors import ConfigError

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--seeds: expected comma-separated whole numbers such as 0,1,2; got {text!r}")
    return [int(p) for p in parts]


def report(
    experiment: str = typer.Argument(..., help="Experiment name (the config's `name`)."),
    workdir: Path = typer.Option(Path("work/demo"), "--workdir", help="The experiment's workdir."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """The cost/AP table and the best-AP-vs-device-hours plot from an experiment's ledger."""
    from da2_platform.names import check_workdir_paths

    check_workdir_paths(workdir, experiment, "EXPERIMENT")  # the name becomes ledger/ and reports/ file names
    _show_report(workdir, experiment, json_out)


def _show_report(workdir: Path, experiment: str, json_out: bool) -> None:
    from da2_platform.report import Report, write_report

    rep, json_path, png_path = write_report(workdir, experiment)
    if json_out:
        emit_json({**rep.to_dict(), "table": str(json_path), "plot": str(png_path)})
        return
    print_table(f"{experiment}: cost and AP per method", Report.TABLE_COLUMNS, rep.table_rows())
    console.print(f"report: {json_path}\nplot:   {png_path}")
