"""Unit costs read off the ledger of earlier runs of the same config: no measurement.

The ledger of experiment `<name>` (and `<name>-seed<s>`, a comparison over seeds) in the config's workdir holds
each trial's device-seconds and steps. Per kind of trial, device-seconds over steps is the cost of a step with
that kind's setup and evaluations spread in: children (RL, Optuna, PBA, fixed policies), final trainings, and DA2
per estimator. Rows of another device kind or size, failed rows and rows without steps are left out.
"""

from __future__ import annotations

from pathlib import Path

from da2_platform.config import ExperimentConfig
from da2_platform.ledger import CostLedger, LedgerRow
from da2_platform.plan.costs import UnitCosts, held_per_trial
from da2_platform.plan.work import DA2_METHODS, da2_estimator

CHILD_METHODS = ("rl", "optuna", "pba")


def ledgers_of(cfg: ExperimentConfig) -> list[CostLedger]:
    folder = Path(cfg.workdir) / "ledger"
    names = [cfg.name] + sorted(p.name.removesuffix(".parquet") for p in folder.glob(f"{cfg.name}-seed*.parquet"))
    return [ledger for ledger in (CostLedger.for_experiment(cfg.workdir, n) for n in names) if ledger.exists()]


def _per_step(rows: list[LedgerRow]) -> float | None:
    steps = sum(r.steps for r in rows)
    return sum(r.device_seconds for r in rows) / steps if steps else None


def costs_from_ledger(cfg: ExperimentConfig, estimators: set[str]) -> tuple[UnitCosts | None, str]:
    """(costs, "") when the ledger holds a plain step's cost and every estimator's, else (None, what is missing)."""
    ledgers = ledgers_of(cfg)
    if not ledgers:
        return None, f"no ledger of experiment {cfg.name!r} under {Path(cfg.workdir) / 'ledger'}"
    kind, held = held_per_trial(cfg)
    rows = [r for ledger in ledgers for r in ledger.rows()
            if r.status != "failed" and r.steps > 0 and r.device_seconds > 0 and r.device_kind == kind
            and abs(r.devices_held - held) < 1e-9]
    children = [r for r in rows if r.method in CHILD_METHODS or r.method.startswith("fixed:")]
    finals = [r for r in rows if r.method.startswith("final:")]
    train_step, final_step = _per_step(children), _per_step(finals)
    if train_step is None and final_step is None:
        return None, f"{ledgers[0].path}: no child or final training of {kind} trials holding {held:g} device(s)"
    da2_step = {}
    for estimator in estimators:
        found = [r for r in rows if r.method in DA2_METHODS and da2_estimator(r.method) == estimator]
        if not found:
            return None, f"{ledgers[0].path}: no DA2 trial with the {estimator} estimator"
        da2_step[estimator] = _per_step(found)
    paths = ", ".join(str(ledger.path) for ledger in ledgers)
    return UnitCosts(device=f"{kind} (as the ledger recorded it)", devices_held=held, source=f"ledger {paths}",
                     train_step=train_step if train_step is not None else final_step, da2_step=da2_step,
                     final_step=final_step, amortized=True,
                     notes=[(f"read from {len(children)} child, {len(finals)} final and "
                            f"{sum(r.method in DA2_METHODS for r in rows)} DA2 trial(s): device-seconds per step, "
                            "each trial's setup and evaluations spread over its steps")]), ""
