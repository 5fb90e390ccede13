"""The cost ledger: one Parquet file per experiment, one row per trial of any method.

Device-seconds count what a trial held: GPUs x wall time, or CPUs x wall time on a CPU-only cluster, so DA2,
RL, Optuna, PBA and the fixed baselines compare on one axis. Only the driver writes (trials report through
Ray Tune), and every write replaces the file atomically.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from da2_platform.errors import DataError
from da2_platform.files import write_bytes_atomic

STATUSES = ("completed", "stopped", "failed")


@dataclass
class LedgerRow:
    experiment: str
    method: str  # da2 | rl | optuna | pba | fixed:<name> | final:<method>
    trial_id: str
    policy_json: str
    device_kind: str  # "gpu" or "cpu"
    devices_held: float
    wall_seconds: float
    device_seconds: float
    val_ap: float  # search-val AP (search trials) or val AP (final trainings)
    status: str
    start_time: str  # ISO 8601, UTC
    end_time: str
    steps: int = 0
    config_json: str = "{}"
    search_run_id: str = ""  # MLflow run of the search this trial belongs to
    extra_json: str = field(default="{}")

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"ledger row status {self.status!r} is not one of {STATUSES}")
        if self.device_seconds < 0 or self.wall_seconds < 0:
            raise ValueError("ledger row: negative seconds")


SCHEMA = pa.schema([
    (f.name, {"str": pa.string(), "float": pa.float64(), "int": pa.int64()}[f.type if isinstance(f.type, str)
                                                                             else f.type.__name__])
    for f in fields(LedgerRow)
])


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def device_seconds(wall_seconds: float, gpus: float, cpus: float) -> tuple[str, float, float]:
    """(device kind, devices held, device-seconds) of a trial that held `gpus` GPUs and `cpus` CPUs."""
    if gpus > 0:
        return "gpu", float(gpus), wall_seconds * gpus
    return "cpu", float(cpus), wall_seconds * cpus


class CostLedger:
    """Append-only table of trials for one experiment."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_experiment(cls, workdir: Path, experiment: str) -> CostLedger:
        return cls(Path(workdir) / "ledger" / f"{experiment}.parquet")

    def read(self) -> pa.Table:
        if not self.path.is_file():
            return SCHEMA.empty_table()
        try:
            table = pq.read_table(self.path)
        except Exception as e:
            raise DataError(f"{self.path}: not a readable Parquet ledger ({e})") from None
        missing = [n for n in SCHEMA.names if n not in table.column_names]
        if missing:
            raise DataError(f"{self.path}: ledger lacks columns {missing}")
        return table.select(SCHEMA.names).cast(SCHEMA)

    def rows(self) -> list[LedgerRow]:
        return [LedgerRow(**r) for r in self.read().to_pylist()]

    def append(self, rows: list[LedgerRow]) -> None:
        if not rows:
            return
        new = pa.Table.from_pylist([asdict(r) for r in rows], schema=SCHEMA)
        table = pa.concat_tables([self.read(), new])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        write_bytes_atomic(self.path, buf.getvalue())

    def has_trial(self, method: str, trial_id: str) -> bool:
        return any(r.method == method and r.trial_id == trial_id for r in self.rows())


def row_config(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)
