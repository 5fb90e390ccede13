"""The cost ledger: one Parquet dataset (a folder of part files) per experiment, one row per trial of any method.

Device-seconds count what a trial held: GPUs x wall time, or CPUs x wall time on a CPU-only cluster, so DA2,
RL, Optuna, PBA and the fixed baselines compare on one axis. Only drivers write. Each search writes its own part
file (replaced atomically as its trials end) and every other append writes a new part, so two drivers appending
to one experiment at once never overwrite each other's rows. A row is keyed by (method, trial id): appending a
trial that is already there adds nothing, so a resumed search never counts a trial twice.

Two APs, two columns: `search_val_ap` is a search trial's AP on search-val (what the search optimised, its last
report), `val_ap` a final training's AP on val (which no search sees). A row holds one of them, the other is null.
Ledgers written before the split (schema 1: one `val_ap` column holding either) are read as schema 2: the AP of a
`final:` row stays `val_ap`, any other row's moves to `search_val_ap`; a ledger from a newer schema is refused.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from da2_platform.errors import DataError
from da2_platform.files import write_bytes_atomic

STATUSES = ("completed", "stopped", "failed")
SCHEMA_VERSION = 2  # 2: search_val_ap and val_ap apart; 1: one val_ap column for both
SCHEMA_KEY = b"da2.ledger_schema"


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
    status: str
    start_time: str  # ISO 8601, UTC
    end_time: str
    search_val_ap: float | None = None  # search rows: the trial's AP on search-val (its last report)
    val_ap: float | None = None  # final:<method> rows: the final training's AP on val
    steps: int = 0
    config_json: str = "{}"
    search_run_id: str = ""  # MLflow run of the search this trial belongs to
    extra_json: str = field(default="{}")

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"ledger row status {self.status!r} is not one of {STATUSES}")
        if self.device_seconds < 0 or self.wall_seconds < 0:
            raise ValueError("ledger row: negative seconds")
        final = self.method.startswith("final:")
        if final and (self.val_ap is None or self.search_val_ap is not None):
            raise ValueError(f"ledger row {self.method}: a final training's row holds val_ap, not search_val_ap")
        if not final and (self.search_val_ap is None or self.val_ap is not None):
            raise ValueError(f"ledger row {self.method}: a search trial's row holds search_val_ap, not val_ap")


_ARROW_TYPES = {"str": pa.string(), "float": pa.float64(), "float | None": pa.float64(), "int": pa.int64()}
SCHEMA = pa.schema([(f.name, _ARROW_TYPES[f.type if isinstance(f.type, str) else f.type.__name__])
                    for f in fields(LedgerRow)], metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()})


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def device_seconds(wall_seconds: float, gpus: float, cpus: float) -> tuple[str, float, float]:
    """(device kind, devices held, device-seconds) of a trial that held `gpus` GPUs and `cpus` CPUs."""
    if gpus > 0:
        return "gpu", float(gpus), wall_seconds * gpus
    return "cpu", float(cpus), wall_seconds * cpus


def ledger_row(experiment: str, method: str, r: dict, base_augment: list[dict] | None = None) -> LedgerRow:
    """The row of a trial record {"trial_id", "metrics" (its last report), "config", "error"}. The trial reports
    its AP on its eval split as `val_ap`: search-val for a search's trials, val for `final:<method>` trainings.
    `base_augment` (the experiment's `train.base_augment`, applied before the trial's policy) goes into the row's
    `config_json`, so the row says what the batches saw."""
    m = r["metrics"]
    ap = float(m.get("val_ap", 0.0))
    aps = {"val_ap": ap} if method.startswith("final:") else {"search_val_ap": ap}
    status = "failed" if r["error"] else ("completed" if m.get("complete") else "stopped")
    start = m.get("trial_start")
    start_iso = datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds") if start else ""
    end = m.get("trial_end") or (start + float(m.get("wall_seconds", 0.0)) if start else None)  # last report
    end_iso = datetime.fromtimestamp(end, UTC).isoformat(timespec="milliseconds") if end else utc_now()
    config = {k: v for k, v in r["config"].items() if k != "policy_json"}
    if base_augment is not None:
        config["base_augment"] = base_augment
    return LedgerRow(
        experiment=experiment, method=method, trial_id=str(r["trial_id"]), policy_json=m.get("policy_json", ""),
        device_kind=m.get("device_kind", "cpu"), devices_held=float(m.get("devices_held", 0.0)),
        wall_seconds=float(m.get("wall_seconds", 0.0)), device_seconds=float(m.get("device_seconds", 0.0)),
        status=status, start_time=start_iso, end_time=end_iso,
        steps=int(m.get("step", 0)), config_json=json.dumps(config, sort_keys=True, default=str), **aps,
    )


_PART_LOCKS: dict[Path, threading.Lock] = {}  # one writer per part file within a process (da2 compare's threads)
_LOCKS_LOCK = threading.Lock()


def _part_lock(path: Path) -> threading.Lock:
    with _LOCKS_LOCK:
        return _PART_LOCKS.setdefault(path.resolve(), threading.Lock())


class CostLedger:
    """Append-only table of trials for one experiment: `<workdir>/ledger/<experiment>.parquet/` holds its parts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_experiment(cls, workdir: Path, experiment: str) -> CostLedger:
        return cls(Path(workdir) / "ledger" / f"{experiment}.parquet")

    def exists(self) -> bool:
        return bool(self.parts())

    def parts(self) -> list[Path]:
        """The part files in write order (their names start with a nanosecond timestamp); a ledger written by an
        earlier version is one plain file and its own only part."""
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))

    def read(self) -> pa.Table:
        tables = [_read_part(p) for p in self.parts()]
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def rows(self) -> list[LedgerRow]:
        return [LedgerRow(**r) for r in self.read().to_pylist()]

    def keys(self) -> set[tuple[str, str]]:
        table = self.read()
        return set(zip(table.column("method").to_pylist(), table.column("trial_id").to_pylist()))

    def append(self, rows: list[LedgerRow], part: str | None = None) -> list[LedgerRow]:
        """Add the rows whose (method, trial id) the ledger lacks; return those added.

        `part` names the writer's own part file (one per search), rewritten with each append; without it the
        rows go to a new part file. In its own part a writer may replace a `failed` row: a failed trial that a
        resume ran again to its end."""
        if not rows:
            return []
        self._adopt_legacy_file()
        target = self.path / f"{part}.parquet" if part else None
        with _part_lock(target or self.path):
            seen = self.keys()
            own = _read_part(target) if target is not None and target.is_file() else None
            if own is not None:
                rerun = {(r.method, r.trial_id) for r in rows if r.status != "failed"}
                keys = list(zip(own.column("method").to_pylist(), own.column("trial_id").to_pylist()))
                drop = [k in rerun and s == "failed" for k, s in zip(keys, own.column("status").to_pylist())]
                if any(drop):
                    own = own.filter(pa.array([not d for d in drop]))
                    seen -= {k for k, d in zip(keys, drop) if d}
            fresh = []
            for r in rows:
                if (r.method, r.trial_id) not in seen:
                    seen.add((r.method, r.trial_id))
                    fresh.append(r)
            if not fresh:
                return []
            new = pa.Table.from_pylist([asdict(r) for r in fresh], schema=SCHEMA)
            if target is None:
                target = self.path / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            elif own is not None:
                new = pa.concat_tables([own, new])
            buf = io.BytesIO()
            pq.write_table(new, buf)
            write_bytes_atomic(target, buf.getvalue())
        return fresh

    def _adopt_legacy_file(self) -> None:
        """Turn a one-file ledger of an earlier version into the first part of a ledger folder."""
        if not self.path.is_file():
            return
        with _part_lock(self.path):
            if not self.path.is_file():
                return
            data = self.path.read_bytes()
            _read_part(self.path)  # refuse to adopt a file that is not a ledger
            moved = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.legacy")
            self.path.rename(moved)
            write_bytes_atomic(self.path / f"{0:020d}-legacy.parquet", data)
            moved.unlink()


def part_name(method: str, search_id: str) -> str:
    """The part file of one search: sorts after the parts written before the search started."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in method)
    return f"{time.time_ns():020d}-{safe}-{search_id}"


def _read_part(path: Path) -> pa.Table:
    try:  # one read of the bytes: a writer may replace the part between two opens of its path
        table = pq.read_table(pa.BufferReader(path.read_bytes()))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet ledger ({e})") from None
    version = int((table.schema.metadata or {}).get(SCHEMA_KEY, b"2" if "search_val_ap" in table.column_names
                                                                  else b"1"))
    if version > SCHEMA_VERSION:
        raise DataError(f"{path}: ledger schema {version} is newer than this da2 reads ({SCHEMA_VERSION}); "
                        "upgrade da2-platform")
    if version == 1:
        table = _migrate_from_schema_1(table)
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: ledger lacks columns {missing}")
    return table.select(SCHEMA.names).cast(SCHEMA)


def _migrate_from_schema_1(table: pa.Table) -> pa.Table:
    """Schema 1's one `val_ap` column -> `val_ap` for final rows, `search_val_ap` for every other row."""
    if "val_ap" not in table.column_names or "method" not in table.column_names:
        return table  # the missing columns are named by the caller
    final = [str(m).startswith("final:") for m in table.column("method").to_pylist()]
    aps = table.column("val_ap").to_pylist()
    table = table.drop_columns(["val_ap"])
    table = table.append_column("search_val_ap", pa.array([None if f else a for f, a in zip(final, aps)],
                                                         pa.float64()))
    return table.append_column("val_ap", pa.array([a if f else None for f, a in zip(final, aps)], pa.float64()))
