"""Stopping searches that share one Ray session: a device-seconds budget per search and one stop switch.

`da2 compare` runs every method's Tuner at once in its own driver thread. Tune only catches Ctrl+C in the
main thread, so the main thread flips `SearchControl.stop` and each Tuner sees it through its `Stopper`.
The budget is counted in the ledger's own unit: the device-seconds the search's trials report.
"""

from __future__ import annotations

import threading
import uuid

from ray import tune

_CONTROLS: dict[str, SearchControl] = {}  # by key: Tune pickles its stopper with the experiment state


class SearchControl:
    """Shared by the searches of one `da2 compare`."""

    def __init__(self) -> None:
        self.key = uuid.uuid4().hex
        self.stop = threading.Event()
        _CONTROLS[self.key] = self

    def stopper(self, budget_device_seconds: float | None = None) -> BudgetStopper:
        return BudgetStopper(self.key, budget_device_seconds)

    def close(self) -> None:
        _CONTROLS.pop(self.key, None)


class BudgetStopper(tune.Stopper):
    """Ends one search when its trials together have used `budget` device-seconds, or when told to stop.

    It also ends each trial at its `complete` report. A trial ends there anyway; stopping it there keeps PBT from
    exploiting at the last report, which would leave the exploiting trial with the other trial's last result.
    """

    def __init__(self, control_key: str | None, budget: float | None):
        self.control_key = control_key
        self.budget = budget
        self.spent: dict[str, float] = {}  # trial id -> device-seconds reported so far
        self.budget_reached = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.spent[trial_id] = float(result.get("device_seconds", 0.0))
        if self.budget is not None and sum(self.spent.values()) >= self.budget:
            self.budget_reached = True
        return bool(result.get("complete"))

    def stop_all(self) -> bool:
        return self.budget_reached or self.interrupted

    @property
    def interrupted(self) -> bool:
        control = _CONTROLS.get(self.control_key or "")
        return control is not None and control.stop.is_set()
