"""Our own progress lines while a search runs (Tune's console output is off): trials running and done, the best
search-val AP any report has shown so far and the best of the trials' last reports (the one the search's policy
is chosen by, which the line `search ... done` shows), device-hours spent against the budget, and an ETA. One line when a trial starts or ends,
and at most one every `every_s` seconds in between; lines go to stderr, so `--json` keeps stdout to one object.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from ray import tune
from rich.console import Console
from rich.markup import escape

_console: Console | None = None  # None: a console on sys.stderr as it is when a line is printed


@contextlib.contextmanager
def progress_to(console: Console) -> Iterator[None]:
    """Send search progress lines to `console` (the demo's terminal, while library output goes to a log)."""
    global _console
    saved, _console = _console, console
    try:
        yield
    finally:
        _console = saved


class SearchProgress(tune.Callback):
    def __init__(self, method: str, expected_trials: int | None, budget_device_seconds: float | None = None,
                 every_s: float = 10.0):
        self.method, self.expected, self.budget = method, expected_trials, budget_device_seconds
        self.every_s = every_s
        self.started = time.time()
        self.last = 0.0
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.spent: dict[str, float] = {}  # trial id -> device-seconds reported so far
        self.best: float | None = None  # the best search-val AP of any report so far
        self.last_ap: dict[str, float] = {}  # trial id -> the search-val AP of its last report

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self.line(force=True)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.spent[trial.trial_id] = float(result.get("device_seconds", 0.0) or 0.0)
        ap = result.get("val_ap")
        if isinstance(ap, (int, float)):
            self.last_ap[trial.trial_id] = float(ap)
            if self.best is None or ap > self.best:
                self.best = float(ap)
        self.line()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.done.add(trial.trial_id)
        self.line(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self.line(force=True)

    def text(self) -> str:
        elapsed = time.time() - self.started
        finished = len(self.done) + len(self.failed)
        of = f"/{self.expected}" if self.expected else ""
        parts = [f"{self.method}: {len(self.running)} running, {len(self.done)}{of} done"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.best is None:
            parts.append("best search-val AP so far -")
        else:
            parts.append(f"best search-val AP so far {self.best:.4f} (best last report "
                         f"{max(self.last_ap.values()):.4f})")
        spent = sum(self.spent.values())
        budget = f" of {self.budget / 3600:.4f}" if self.budget else ""
        parts.append(f"{spent / 3600:.4f}{budget} device-h")
        etas = []
        if self.expected and finished:
            etas.append(elapsed / finished * max(0, self.expected - finished))
        if self.budget and spent > 0:
            etas.append(elapsed / spent * max(0.0, self.budget - spent))
        if etas:
            parts.append(f"ETA {_duration(min(etas))}")
        return ", ".join(parts) + f" ({_duration(elapsed)} in)"

    def line(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        (_console or Console(stderr=True)).print(f"  {escape(self.text())}", highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
