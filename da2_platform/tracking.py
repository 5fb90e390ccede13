"""MLflow tracking: where runs go, checked before any compute is spent.

Default: an embedded SQLite store and an artifact folder under <workdir>/mlflow (explicit paths, never the
current directory by accident). A cluster points every process at a tracking server with `--tracking-uri` or
MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from da2_platform.config import ExperimentConfig
from da2_platform.errors import TrackingError

MLFLOW_LOCK = threading.RLock()  # one MLflow writer at a time in this process (SQLite stores lock the file)


def resolve_tracking_uri(cfg: ExperimentConfig, override: str | None = None) -> str:
    uri = override or os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    if uri:
        return uri
    db = (cfg.workdir / "mlflow" / "mlflow.db").resolve()
    return f"sqlite:///{db}"


def artifact_root(cfg: ExperimentConfig) -> str:
    return (cfg.workdir / "mlflow" / "artifacts").resolve().as_uri()


def check_tracking(uri: str, timeout: float = 5.0, read_only: bool = False) -> None:
    """Fail fast, with the URI in the message, when the tracking store cannot be reached or is not a store.

    Writes nothing: a SQLite store is only read (see `check_sqlite_store`); `read_only` is for commands that
    need an existing store (promote, models:/ references)."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or fix "
                                "--tracking-uri / MLFLOW_TRACKING_URI") from None
    elif uri.startswith("sqlite:///"):
        check_sqlite_store(Path(uri.removeprefix("sqlite:///")), uri, read_only)
    elif uri.startswith(("file:", "/")) or "://" not in uri:
        raise TrackingError(f"tracking URI {uri!r}: MLflow 3's model registry needs a database or a server "
                            "(use sqlite:///path/mlflow.db or http://host:port)")


def mlflow_client(uri: str):
    """A client of the tracking store and registry at `uri` (no global MLflow state is changed)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}  # what every MLflow SQLite store has


def check_sqlite_store(db: Path, uri: str, read_only: bool = False) -> None:
    """The file behind a sqlite:/// URI is an MLflow store, or absent / empty and the command may create one.

    Read without writing a byte (the header, then the table names through a read-only connection): a file that is
    not a SQLite database, a database of something else, or (for `read_only`) an empty or absent store is a
    TrackingError naming the file, so MLflow never writes its schema into it."""
    import sqlite3

    from da2_platform.files import file_problem

    def refuse(why: str) -> TrackingError:
        return TrackingError(f"{db}: tracking store: {why} (tracking URI {uri})")

    nothing_here = ("nothing was searched or registered with this store (give --workdir, --config or "
                    "--tracking-uri)")
    problem = file_problem(db)
    if problem == "not found":
        if read_only:
            raise TrackingError(f"no MLflow store at {uri}: {nothing_here}")
        return
    if problem is not None:
        raise refuse(problem)
    with open(db, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if not header:
        if read_only:
            raise refuse(f"an empty file, not an MLflow store; {nothing_here}")
        return
    if header != SQLITE_HEADER:
        raise refuse("not a SQLite database; refusing to write an MLflow store into it")
    try:
        with contextlib.closing(sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=10)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise refuse(f"not a readable SQLite database ({e})") from None
    if not tables:
        if read_only:
            raise refuse(f"an empty SQLite database, not an MLflow store; {nothing_here}")
        return
    if not MLFLOW_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise refuse(f"a SQLite database of something else (tables {shown}), not an MLflow store; refusing to "
                     "write into it")


def point_mlflow_at(uri: str) -> None:
    """Make `uri` this process's MLflow store without overwriting the user's MLFLOW_TRACKING_URI (mlflow's
    setter exports it for subprocesses, which would make one command's store the next command's default)."""
    import mlflow

    user_value = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if user_value is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_value


def setup_tracking(cfg: ExperimentConfig, override: str | None = None) -> str:
    """Point mlflow at the store, create the experiment with an explicit artifact location; return its id."""
    uri = resolve_tracking_uri(cfg, override)
    check_tracking(uri)
    point_mlflow_at(uri)
    name = cfg.tracking.experiment or cfg.name
    with _store_lock(uri):
        return _get_or_create_experiment(cfg, uri, name)


@contextlib.contextmanager
def _store_lock(uri: str):
    """Two drivers that open a new SQLite store at once would both create its tables and run its migrations and
    break it: the first to come creates the store and the experiment, the other waits (a lock file beside it)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _get_or_create_experiment(cfg: ExperimentConfig, uri: str, name: str) -> str:
    import mlflow

    for attempt in range(3):
        try:
            existing = mlflow.get_experiment_by_name(name)
            if existing is not None:
                return existing.experiment_id
            location = artifact_root(cfg) if uri.startswith("sqlite:") else None
            # the UI then opens the experiment as model training (runs, charts), not as a GenAI app (traces)
            return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except TrackingError:
            raise
        except Exception as e:  # noqa: BLE001 -- a store or server can fail in many ways; all are reported
            # another driver creating the same store or experiment at the same moment: look again
            raced = _experiment_id(name)
            if raced is not None:
                return raced
            if attempt == 2:
                raise TrackingError(f"MLflow at {uri} refused the experiment {name!r}: {e}") from None
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def _experiment_id(name: str) -> str | None:
    import mlflow

    try:
        existing = mlflow.get_experiment_by_name(name)
    except Exception:  # noqa: BLE001 -- the caller reports the first error
        return None
    return None if existing is None else existing.experiment_id
