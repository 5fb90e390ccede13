"""What a search is made of and what it returns, the same for every method.

A method hands the driver a `SearchSpec` (its trainable and how the Tuner searches and schedules; the builders
are in `da2_platform.search.methods`); `run_search` hands back a `SearchOutcome`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from da2_platform.ledger import LedgerRow
from search_spaces.policy import Policy


@dataclass
class SearchSpec:
    """What a method contributes: the trainable and how the Tuner searches and schedules."""

    method: str
    trainable: Callable
    param_space: dict
    tune_config: dict  # kwargs of ray.tune.TuneConfig (search_alg, scheduler, num_samples, ...)
    search_params: dict  # logged as MLflow params
    artifacts: Callable[[list[dict]], dict[str, bytes]] | None = None  # extra files from the trials' results
    # per running trial; None keeps all (PBT exploits older checkpoints). Two, not one: Tune deletes the older
    # checkpoint when it registers a new one, before it saves its experiment state, so a driver killed in
    # between (test_faults) left a saved state naming a deleted checkpoint and the trial could not restore
    keep_checkpoints: int | None = 2
    expected_trials: int = 1  # trials a finished search has
    allow_partial: bool = False  # early stopping (ASHA) or a time budget may leave trials incomplete
    # a search whose trials train the model itself (one-pass DA2): the checkpoint file, in the one training
    # format, whose network the driver registers beside the policy (the best trial's checkpoints are kept till then)
    model_file: str | None = None


@dataclass
class SearchOutcome:
    method: str
    experiment: str
    run_id: str
    best_policy: Policy
    best_search_val_ap: float  # the best trial's search-val AP (its last report)
    device_seconds: float  # all trials of the search together
    wall_seconds: float
    trials: list[LedgerRow] = field(default_factory=list)
    registered_version: str | None = None
    failed_trials: list[str] = field(default_factory=list)  # trial ids that failed after every retry
    retried_trials: dict[str, int] = field(default_factory=dict)  # trial id -> retries
    # one-pass DA2: the best trial's own network, scored on val, and its registered version (None otherwise)
    one_pass_val_ap: float | None = None
    model_version: str | None = None

    def to_record(self) -> dict:
        return {**self.summary(), "policy_json": self.best_policy.to_json(), "wall_seconds": self.wall_seconds}

    @classmethod
    def from_record(cls, record: dict) -> SearchOutcome:
        best = record["best_search_val_ap"] if "best_search_val_ap" in record else record["best_val_ap"]  # older
        return cls(record["method"], record["experiment"], record["mlflow_run_id"],
                   Policy.from_json(record["policy_json"]), best, record["device_seconds"],
                   record["wall_seconds"], [], record["registered_version"], list(record.get("failed_trials", [])),
                   dict(record.get("retried_trials", {})), record.get("one_pass_val_ap"), record.get("model_version"))

    def summary(self) -> dict:
        return {"method": self.method, "experiment": self.experiment, "mlflow_run_id": self.run_id,
                "best_search_val_ap": self.best_search_val_ap, "device_seconds": self.device_seconds,
                "device_hours": self.device_seconds / 3600, "wall_seconds": self.wall_seconds,
                "trials": len(self.trials), "registered_version": self.registered_version,
                "failed_trials": self.failed_trials, "retried_trials": self.retried_trials,
                "one_pass_val_ap": self.one_pass_val_ap, "model_version": self.model_version}
