"""What a search returns at a budget: RL's top-5 rule, the spend of concurrent trials, censored time-to-target."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from da2_platform.search.anytime import anytime_policy, returned_policy, spend_at, time_at_spend, to_target
from search_spaces.policy import OpSetting, Policy


@dataclass
class Row:
    trial_id: str
    start: float
    end: float
    ap: float
    status: str = "completed"
    held: float = 1.0

    @property
    def start_time(self) -> str:
        return datetime.fromtimestamp(1_000_000 + self.start, UTC).isoformat(timespec="milliseconds")

    @property
    def end_time(self) -> str:
        return datetime.fromtimestamp(1_000_000 + self.end, UTC).isoformat(timespec="milliseconds")

    @property
    def device_seconds(self) -> float:
        return self.held * (self.end - self.start)

    @property
    def wall_seconds(self) -> float:
        return self.end - self.start

    @property
    def search_val_ap(self) -> float:
        return self.ap

    @property
    def policy_json(self) -> str:
        op = OpSetting("Rotate", 0.1 * (int(self.trial_id) % 10), 0.5)
        return Policy.uniform([(op, OpSetting("Contrast", 0.5, 0.5))] * 5, name=f"t{self.trial_id}").to_json()


def test_rl_returns_its_top_five_childrens_25_sub_policies():
    rows = [Row(str(i), i, i + 1, ap=i / 10) for i in range(8)]
    policy = returned_policy("rl", rows)
    assert len(policy.sub_policies) == 25 and sum(s.weight for s in policy.sub_policies) == pytest.approx(1)
    assert policy.metadata["children"] == ["7", "6", "5", "4", "3"]
    assert returned_policy("optuna", rows).name == "t7"  # the others: the best trial


def test_stopped_trials_count_only_when_none_completed():
    rows = [Row("1", 0, 1, ap=0.9, status="stopped"), Row("2", 0, 2, ap=0.1)]
    assert returned_policy("optuna", rows).name == "t2"
    assert returned_policy("optuna", rows[:1]).name == "t1"
    assert returned_policy("optuna", [Row("3", 0, 1, ap=0.5, status="failed")]) is None


def test_spend_counts_concurrent_trials_as_they_ran():
    rows = [Row("1", 0, 10, ap=0.1), Row("2", 0, 20, ap=0.2, held=2.0)]
    assert spend_at(rows, 5) == pytest.approx(5 + 10)
    assert spend_at(rows, 15) == pytest.approx(10 + 30)
    assert time_at_spend(rows, 40) == pytest.approx(15, abs=1e-3)
    assert time_at_spend(rows, 51) is None  # the search spent 50 in all


def test_the_anytime_policy_uses_only_trials_ended_by_the_budget():
    rows = [Row("1", 0, 10, ap=0.1), Row("2", 10, 20, ap=0.3), Row("3", 20, 30, ap=0.2)]
    policy, used = anytime_policy("optuna", rows, budget=12)
    assert policy.name == "t1" and used == ["1"]
    policy, used = anytime_policy("optuna", rows, budget=25)
    assert policy.name == "t2" and used == ["1", "2"]
    policy, used = anytime_policy("optuna", rows, budget=1000)  # finished under the budget: its final policy
    assert policy.name == "t2" and used == ["1", "2", "3"]
    assert anytime_policy("da2", [Row("9", 0, 100, ap=0.5)], budget=50)[0] is None  # DA2 before it finished


@dataclass
class Unstarted(Row):
    """A trial the search's stopper ended before its first report: the ledger has no start time for it."""

    @property
    def start_time(self) -> str:
        return ""


def test_a_trial_stopped_before_it_started_spent_nothing_and_returns_nothing():
    rows = [Row("1", 0, 10, ap=0.1), Row("2", 10, 20, ap=0.3), Unstarted("3", 20, 20, ap=0.0)]
    assert spend_at(rows, 30) == pytest.approx(20)
    policy, used = anytime_policy("rl", rows, budget=15)
    assert used == ["1"] and policy is not None
    policy, used = anytime_policy("optuna", rows, budget=100)
    assert policy.name == "t2" and used == ["1", "2"]


def test_time_to_target_is_censored_when_never_reached():
    assert to_target([(0.1, 0.05), (0.3, 0.12), (1.0, 0.2)], target=0.1).device_hours == 0.3
    censored = to_target([(0.1, 0.05), (0.3, 0.06), (1.0, None)], target=0.1)
    assert censored.censored and censored.device_hours is None and censored.text() == "> 1"
