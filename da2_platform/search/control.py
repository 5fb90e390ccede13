"""Stopping searches that share one Ray session: a device-seconds budget per search and one stop switch.

`da2 compare` runs every method's Tuner at once in its own driver thread. Tune only catches Ctrl+C in the
main thread, so the main thread flips `SearchControl.stop` and each Tuner sees it through its `Stopper`.
The budget is counted in the ledger's own unit: the device-seconds the search's trials use, charged whole
(from the trial's start, set-up included). Every step a trial charges its spend to the search's
`BudgetAccount` (a named Ray actor), and the first step that finds the account spent ends the trial with a last
report, so a search stops within one step of its budget (and the evaluation before that step, or the set-up of a
trial that started just before the budget ran out), not at its next report, and a trial stopped before its first
report is charged what it used.
"""

from __future__ import annotations

import threading
import uuid

import ray
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
        self.account = None  # the search's BudgetAccount actor, opened by `open` when there is a budget

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.spent[trial_id] = float(result.get("device_seconds", 0.0))
        if self.budget is not None and sum(self.spent.values()) >= self.budget:
            self.budget_reached = True
        return bool(result.get("complete") or result.get("budget_stop"))

    def stop_all(self) -> bool:
        if getattr(self, "account", None) is not None and not self.budget_reached:
            self.budget_reached = bool(ray.get(self.account.exhausted.remote()))
        return self.budget_reached or self.interrupted

    def open(self, experiment: str, spent: float = 0.0) -> None:
        """Open the in-trial account of a budgeted search (its trials stop within one step of the budget)."""
        if self.budget is not None and self.account is None:
            self.account = open_account(experiment, self.budget, spent)

    def close(self) -> None:
        if self.account is not None:
            ray.kill(self.account)
            self.account = None

    def __getstate__(self) -> dict:  # Tune pickles its stopper with the experiment state: not the actor
        return {**self.__dict__, "account": None}

    @property
    def interrupted(self) -> bool:
        control = _CONTROLS.get(self.control_key or "")
        return control is not None and control.stop.is_set()


ACCOUNT_PREFIX = "da2-budget:"


@ray.remote(num_cpus=0)
class BudgetAccount:
    """The device-seconds of one search's trials, against its budget (a named actor per Tune experiment)."""

    def __init__(self, budget: float, spent: float = 0.0) -> None:
        self.budget = float(budget)
        self.before = float(spent)  # spent by an earlier run of a resumed search
        self.spent: dict[str, float] = {}

    def charge(self, trial_id: str, device_seconds: float) -> bool:
        """Record a trial's spend so far; True while the search is within its budget."""
        self.spent[trial_id] = max(self.spent.get(trial_id, 0.0), float(device_seconds))
        return self.total() < self.budget

    def total(self) -> float:
        return self.before + sum(self.spent.values())

    def exhausted(self) -> bool:
        return self.total() >= self.budget


def open_account(experiment: str, budget: float, spent: float = 0.0):
    """The budget account of the Tune experiment `experiment` (its trials find it by that name)."""
    return BudgetAccount.options(name=ACCOUNT_PREFIX + experiment, get_if_exists=False).remote(budget, spent)


class TrialBudget:
    """A trial's side of its search's budget: `charge(device_seconds)` after every step; False means stop now."""

    def __init__(self, account, trial_id: str) -> None:
        self.account, self.trial_id = account, trial_id
        self.exhausted = False

    @classmethod
    def for_this_trial(cls) -> TrialBudget | None:
        """The account of the running Tune trial's experiment, or None when its search has no budget."""
        try:
            context = tune.get_context()
            experiment, trial_id = context.get_experiment_name(), context.get_trial_id()
        except Exception:  # noqa: BLE001 -- not inside a Tune trial (tests and benchmarks drive trainables)
            return None
        if not experiment or not trial_id:
            return None
        try:
            return cls(ray.get_actor(ACCOUNT_PREFIX + experiment), trial_id)
        except ValueError:  # no account: the search has no budget
            return None

    def charge(self, device_seconds: float) -> bool:
        if not self.exhausted:
            self.exhausted = not ray.get(self.account.charge.remote(self.trial_id, device_seconds))
        return not self.exhausted
