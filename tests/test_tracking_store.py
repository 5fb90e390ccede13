"""The tracking store is checked before any work (issue 28): a SQLite file that is not an MLflow store, or an empty
one for a command that only reads, is one `error:` line, exit 2, and is never written (same bytes, same mtime)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml
from cli_helpers import refused, snapshot


def not_a_database(path: Path) -> Path:
    path.write_text("these are my notes, not a database\n" * 20)
    return path


def someone_elses_database(path: Path) -> Path:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        con.execute("INSERT INTO invoices (total) VALUES (12.5)")
    con.close()
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


STORES = {"not a database": (not_a_database, "not a SQLite database"),
          "another database": (someone_elses_database, "a SQLite database of something else (tables invoices)")}


def config_for(tmp_path: Path, uri: str) -> Path:
    workdir = tmp_path / "w"
    workdir.mkdir(exist_ok=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"name": "store", "workdir": str(workdir), "tracking": {"uri": uri},
                                   "data": {"synth_train": 8, "synth_val": 4}}))
    return cfg


def commands(tmp_path: Path, uri: str) -> dict[str, list[str]]:
    cfg = config_for(tmp_path, uri)
    return {
        "promote": ["promote", "3", "--tracking-uri", uri],
        "policy show": ["policy", "show", "models:/pose-aug-policy@production", "--tracking-uri", uri],
        "search": ["search", "--method", "fixed:none", "--config", str(cfg)],  # refused before Ray starts
        "train": ["train", "--config", str(cfg), "--policy", "fixed:none"],
        "compare": ["compare", "--config", str(cfg), "--methods", "fixed:none"],
    }


@pytest.mark.parametrize("command", ["promote", "policy show", "search", "train", "compare"])
@pytest.mark.parametrize("store", list(STORES))
def test_a_sqlite_file_that_is_not_an_mlflow_store_is_refused_and_never_written(tmp_path, capsys, monkeypatch,
                                                                               command, store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make, expect = STORES[store]
    db = make(tmp_path / "notadb.db")
    args = commands(tmp_path, f"sqlite:///{db}")[command]
    before = snapshot(tmp_path)
    refused(args, capsys, f"{db}: tracking store: {expect}", tmp_path)
    assert snapshot(tmp_path) == before  # the file's bytes and mtime, and nothing new beside it
    assert not (tmp_path / "w" / "ray_results").exists() and not (tmp_path / "w" / "data").exists()


def test_promote_in_a_workdir_whose_store_is_not_a_database(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow").mkdir()
    db = not_a_database(tmp_path / "mlflow" / "mlflow.db")
    refused(["promote", "3", "--workdir", str(tmp_path)], capsys, f"{db}: tracking store: not a SQLite database",
            tmp_path)


@pytest.mark.parametrize("command", ["promote", "policy show"])
def test_an_empty_store_is_refused_by_a_command_that_only_reads(tmp_path, capsys, monkeypatch, command):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = empty_file(tmp_path / "empty.db")
    old = db.stat().st_mtime_ns - 10**9
    os.utime(db, ns=(old, old))  # an mtime a write would move
    refused(commands(tmp_path, f"sqlite:///{db}")[command], capsys,
            f"{db}: tracking store: an empty file, not an MLflow store", tmp_path)
    assert db.read_bytes() == b"" and db.stat().st_mtime_ns == old  # MLflow wrote no schema into it


def test_a_store_that_is_a_folder_or_a_fifo_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "store.db"
    folder.mkdir()
    refused(["promote", "3", "--tracking-uri", f"sqlite:///{folder}"], capsys,
            f"{folder}: tracking store: is a folder, not a regular file", tmp_path)
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    refused(["promote", "3", "--tracking-uri", f"sqlite:///{fifo}"], capsys,
            f"{fifo}: tracking store: is a named pipe (FIFO), not a regular file", tmp_path)


def test_a_real_mlflow_store_passes_the_check(tmp_path):
    import mlflow

    from da2_platform.tracking import check_sqlite_store

    db = tmp_path / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # MLflow creates its schema
    empty = empty_file(tmp_path / "empty.db")
    before = snapshot(tmp_path)
    check_sqlite_store(db, f"sqlite:///{db}", read_only=True)
    check_sqlite_store(tmp_path / "new.db", "sqlite:///new.db")  # absent: a writing command may create it
    check_sqlite_store(empty, "sqlite:///empty.db")  # empty: the same
    assert snapshot(tmp_path) == before
