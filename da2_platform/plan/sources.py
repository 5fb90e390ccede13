"""Where a plan's unit costs come from: the experiment's ledger, the cache, or a measurement."""

from __future__ import annotations

from da2_platform.config import ExperimentConfig
from da2_platform.errors import ConfigError
from da2_platform.plan import measure  # called through the module: tests replace measure_costs
from da2_platform.plan.costs import ESTIMATORS, UnitCosts, read_cached, write_cached
from da2_platform.plan.ledger_costs import costs_from_ledger

SOURCES = ("auto", "ledger", "measure")


def unit_costs(cfg: ExperimentConfig, estimators: set[str], source: str = "auto") -> UnitCosts:
    """`auto`: the experiment's ledger when it holds what the plan needs, else the cache, else a measurement;
    `ledger`: the ledger or a named error; `measure`: a fresh measurement (it replaces the cache)."""
    if source not in SOURCES:
        raise ConfigError(f"da2 plan: --source: expected one of {', '.join(SOURCES)}; got {source!r}")
    if source in ("auto", "ledger"):
        costs, why = costs_from_ledger(cfg, estimators)
        if costs is not None:
            return costs
        if source == "ledger":
            raise ConfigError(f"da2 plan: --source: ledger: {why}")
        cached = read_cached(cfg, estimators)
        if cached is not None:
            return cached
    costs = measure.measure_costs(cfg, set(ESTIMATORS) | estimators)  # both: a plan shows what each would cost
    write_cached(cfg, costs)
    return costs
