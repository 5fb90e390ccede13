"""`da2 plan`: each method's device-hours and wall time before launch; runs no search."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from da2_platform.cli.output import emit_json
from da2_platform.cli.plan_table import show_plan
from da2_platform.errors import ConfigError

DEFAULT_METHODS = "da2,rl,optuna,pba,fixed"  # what `da2 compare` runs by default


def plan(
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (default: embedded demo)."),
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", help="Comma-separated: da2, da2:score, rl, optuna, "
                                "pba, fixed (every fixed policy of the config), fixed:NAME."),
    budget_device_hours: str | None = typer.Option(None, "--budget-device-hours", metavar="B",
                                                   help="Cap on each budgeted search, as `da2 compare` applies it."),
    budgets: str | None = typer.Option(None, "--budgets", metavar="M,M,...", help="Multiples of DA2's planned cost "
                                       "(e.g. 1,3,10,30): what each budget buys."),
    workers: str = typer.Option("1", "--workers", metavar="N", help="Workers the searches run on."),
    gpus_per_worker: str | None = typer.Option(None, "--gpus-per-worker", metavar="G", help="Devices per worker: "
                                               "GPUs, or CPUs where the config's trials hold no GPU (default: 1 GPU, "
                                               "or this machine's CPUs)."),
    seeds: str | None = typer.Option(None, "--seeds", help="A comparison's seeds, e.g. 0,1,2 (each runs one DA2 "
                                     "trial; seeds run one after another)."),
    scale: str | None = typer.Option(None, "--scale", help="Project to a COCO config by name, e.g. coco-r50-256x192 "
                                     "or coco-r101-384x288, from this config's measured FLOP rate."),
    tflops: str | None = typer.Option(None, "--tflops", metavar="T", help="With --scale: assume this sustained "
                                      "training rate per device (TFLOP/s) instead of the measured one."),
    source: str = typer.Option("auto", "--source", help="Unit costs from: auto (the ledger, else the cache, else "
                               "a measurement), ledger, or measure (afresh)."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Override the config's workdir."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as one JSON object on stdout."),
) -> None:
    """Project each method's search and final-training device-hours, wall time and what a budget buys."""
    from da2_platform.cli.compare import parse_budgets, parse_seeds
    from da2_platform.config import load_config
    from da2_platform.plan.planner import make_plan

    n_workers = check_positive(workers, "--workers", whole=True)
    devices = check_positive(gpus_per_worker, "--gpus-per-worker")
    budget = check_positive(budget_device_hours, "--budget-device-hours")
    rate = check_positive(tflops, "--tflops")
    if rate is not None and scale is None:
        raise ConfigError("da2 plan: --tflops: a rate is for projecting to another scale; give --scale too")
    try:  # the flags `da2 compare` shares, checked as it checks them
        multiples = parse_budgets(budgets, budget)
        seed_list = parse_seeds(seeds)
    except ConfigError as e:
        raise ConfigError(f"da2 plan: {e}") from None
    cfg = load_config(config, {"workdir": str(workdir)} if workdir else None)
    result = make_plan(cfg, methods, source, budget, multiples, n_workers, devices, seed_list, scale, rate,
                       str(config or "<defaults>"))
    if json_out:
        emit_json(result.to_dict())
        return
    show_plan(result)


def check_positive(value: str | None, option: str, whole: bool = False) -> float | int | None:
    """A flag's text -> a number > 0, or a ConfigError naming the flag."""
    if value is None:
        return None
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number <= 0:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"da2 plan: {option}: expected {kind} greater than 0; got {value!r}")
    return number
