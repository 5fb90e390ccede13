"""The cost ledger (Parquet) and the report computed from it, checked against hand-computed figures."""

from __future__ import annotations

import json
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from da2_platform.cli.main import main
from da2_platform.errors import DataError
from da2_platform.ledger import SCHEMA, CostLedger, LedgerRow, device_seconds, ledger_row
from da2_platform.report import build_report


def row(method: str, trial: str, hours: float, ap: float, end: str, status: str = "completed") -> LedgerRow:
    seconds = hours * 3600
    return LedgerRow(experiment="hand", method=method, trial_id=trial, policy_json="{}", device_kind="gpu",
                     devices_held=1.0, wall_seconds=seconds, device_seconds=seconds, status=status,
                     start_time=end, end_time=end,
                     **({"val_ap": ap} if method.startswith("final:") else {"search_val_ap": ap}))


HAND_LEDGER = [
    row("da2", "d0", 0.5, 0.60, "2026-01-01T00:30:00"),
    row("rl", "r0", 2.0, 0.50, "2026-01-01T01:00:00"),
    row("rl", "r1", 2.0, 0.58, "2026-01-01T02:00:00"),
    row("rl", "r2", 2.0, 0.62, "2026-01-01T03:00:00"),
    row("rl", "r3", 2.0, 0.40, "2026-01-01T04:00:00", status="failed"),
    row("optuna", "o0", 1.0, 0.55, "2026-01-01T01:00:00"),
    row("optuna", "o1", 0.5, 0.557, "2026-01-01T02:00:00", status="stopped"),
    row("optuna", "o2", 1.0, 0.559, "2026-01-01T03:00:00"),
    row("final:da2", "f0", 3.0, 0.70, "2026-01-02T00:00:00"),
    row("final:rl", "f1", 3.0, 0.69, "2026-01-02T00:00:00"),
]


def test_ledger_round_trip_and_device_seconds(tmp_path):
    ledger = CostLedger(tmp_path / "ledger" / "hand.parquet")
    ledger.append(HAND_LEDGER[:3])
    ledger.append(HAND_LEDGER[3:])
    rows = ledger.rows()
    assert rows == HAND_LEDGER
    table = pq.read_table(ledger.path)
    assert table.schema.equals(SCHEMA)
    assert sum(table.column("device_seconds").to_pylist()) == pytest.approx(sum(r.device_seconds for r in rows))
    assert not list(ledger.path.parent.glob(".*tmp"))  # atomic writes leave no temp files behind
    assert device_seconds(100.0, gpus=2, cpus=8) == ("gpu", 2.0, 200.0)
    assert device_seconds(100.0, gpus=0, cpus=3) == ("cpu", 3.0, 300.0)


def test_ledger_rejects_bad_rows_and_files(tmp_path):
    with pytest.raises(ValueError, match="status"):
        row("da2", "x", 1.0, 0.5, "t", status="weird")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet ledger"):
        CostLedger(bad).rows()


def test_report_matches_hand_computed_table():
    report = build_report(HAND_LEDGER, "hand")
    by = {m.method: m for m in report.methods}
    assert [m.method for m in report.methods] == ["da2", "rl", "optuna"]
    # rl: failed r3 excluded; 6 device-hours; best 0.62; near-best (>= 0.615) first reached at 6 h
    assert by["rl"].trials == 3 and by["rl"].search_device_hours == pytest.approx(6.0)
    assert by["rl"].best_search_val_ap == pytest.approx(0.62) and by["rl"].final_ap == pytest.approx(0.69)
    assert by["rl"].device_hours_to_near_best == pytest.approx(6.0)
    assert by["rl"].ratio_to_da2 == pytest.approx(12.0)
    # optuna: a stopped child still counts; best 0.559, near-best (>= 0.554) first at 1.5 h
    assert by["optuna"].search_device_hours == pytest.approx(2.5)
    assert by["optuna"].device_hours_to_near_best == pytest.approx(1.5)
    assert by["optuna"].final_ap is None and by["optuna"].ratio_to_da2 == pytest.approx(5.0)
    assert by["da2"].ratio_to_da2 == pytest.approx(1.0) and by["da2"].final_ap == pytest.approx(0.70)
    assert report.curves["rl"] == [(2.0, 0.50), (4.0, 0.58), (6.0, 0.62)]


def test_report_command_writes_table_and_plot(tmp_path, capsys):
    CostLedger.for_experiment(tmp_path, "hand").append(HAND_LEDGER)
    assert main(["report", "hand", "--workdir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["method"] for m in out["methods"]] == ["da2", "rl", "optuna"]
    png = tmp_path / "reports" / "hand.png"
    assert out["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "reports" / "hand.json").read_text())["experiment"] == "hand"
    assert main(["report", "nothing", "--workdir", str(tmp_path)]) == 2
    assert "no ledger for experiment 'nothing'" in capsys.readouterr().err


def _append_many(path: str, writer: int, count: int) -> None:
    ledger = CostLedger(path)
    for i in range(count):
        ledger.append([row("rl", f"w{writer}-t{i}", 0.01, 0.5, "2026-01-01T00:00:00")],
                      part=f"{writer:020d}-search{writer}" if writer % 2 else None)


def test_concurrent_appends_from_several_processes_keep_every_row(tmp_path):
    """Two kinds of writers at once: searches rewriting their own part, and one-off appends (new parts)."""
    import multiprocessing

    path = tmp_path / "ledger" / "hand.parquet"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = CostLedger(path).rows()
    assert len(rows) == 60 and len({r.trial_id for r in rows}) == 60


def test_append_is_idempotent_by_trial_and_a_rerun_replaces_a_failed_row(tmp_path):
    ledger = CostLedger.for_experiment(tmp_path, "hand")
    first = row("rl", "t0", 1.0, 0.4, "2026-01-01T00:00:00", status="failed")
    assert ledger.append([first], part="0-search") == [first]
    assert ledger.append([first], part="0-search") == []  # a resume records nothing twice
    assert ledger.append([row("rl", "t0", 1.0, 0.5, "2026-01-01T00:00:00")]) == []  # nor does another writer
    done = row("rl", "t0", 2.0, 0.6, "2026-01-01T01:00:00")
    assert ledger.append([done], part="0-search") == [done]  # the failed trial, resumed to its end
    assert ledger.rows() == [done]


def test_a_one_file_ledger_of_an_earlier_version_is_read_and_adopted(tmp_path):
    path = tmp_path / "ledger" / "hand.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([asdict(r) for r in HAND_LEDGER[:2]], schema=SCHEMA), path)
    ledger = CostLedger(path)
    assert ledger.rows() == HAND_LEDGER[:2]
    ledger.append(HAND_LEDGER[2:4])
    assert path.is_dir() and ledger.rows() == HAND_LEDGER[:4]


def _schema_1_table(rows: list[LedgerRow]) -> pa.Table:
    """The rows as the ledger wrote them before search-val AP and val AP were two columns: one `val_ap`."""
    old = []
    for r in rows:
        d = asdict(r)
        ap = d.pop("search_val_ap")
        d["val_ap"] = d["val_ap"] if ap is None else ap
        old.append(d)
    return pa.Table.from_pylist(old)


def test_search_val_ap_and_val_ap_are_two_columns_and_a_row_holds_its_own():
    assert "search_val_ap" in SCHEMA.names and "val_ap" in SCHEMA.names
    search, final = HAND_LEDGER[0], HAND_LEDGER[-1]
    assert search.search_val_ap == 0.60 and search.val_ap is None
    assert final.val_ap == 0.69 and final.search_val_ap is None
    with pytest.raises(ValueError, match="search trial's row holds search_val_ap"):
        LedgerRow(**{**asdict(search), "val_ap": 0.6})
    with pytest.raises(ValueError, match="final training's row holds val_ap"):
        LedgerRow(**{**asdict(final), "search_val_ap": 0.6, "val_ap": None})
    record = {"trial_id": "t", "metrics": {"val_ap": 0.3, "complete": True}, "config": {}, "error": None}
    assert ledger_row("e", "rl", record).search_val_ap == 0.3 and ledger_row("e", "rl", record).val_ap is None
    assert ledger_row("e", "final:rl", record).val_ap == 0.3
    assert ledger_row("e", "final:rl", record).search_val_ap is None


def test_a_schema_1_ledger_is_migrated_on_read_and_appends_keep_both(tmp_path):
    path = tmp_path / "ledger" / "hand.parquet"
    path.mkdir(parents=True)
    pq.write_table(_schema_1_table(HAND_LEDGER[:-2]), path / f"{1:020d}-old.parquet")
    pq.write_table(_schema_1_table(HAND_LEDGER[-2:]), path / f"{2:020d}-old.parquet")
    ledger = CostLedger(path)
    assert ledger.rows() == HAND_LEDGER  # search rows' AP moved to search_val_ap, final rows' kept as val_ap
    extra = row("pba", "p0", 1.0, 0.5, "2026-01-03T00:00:00")
    ledger.append([extra], part=f"{3:020d}-pba")
    assert ledger.rows() == [*HAND_LEDGER, extra]
    assert build_report(ledger.rows(), "hand").to_dict() == build_report([*HAND_LEDGER, extra], "hand").to_dict()


def test_a_ledger_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "ledger" / "hand.parquet"
    path.mkdir(parents=True)
    table = pa.Table.from_pylist([asdict(HAND_LEDGER[0])], schema=SCHEMA)
    pq.write_table(table.replace_schema_metadata({b"da2.ledger_schema": b"3"}), path / "0-new.parquet")
    with pytest.raises(DataError, match="ledger schema 3 is newer than this da2 reads"):
        CostLedger(path).rows()
