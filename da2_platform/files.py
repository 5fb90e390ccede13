"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only set it, which races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore at once
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`.

    The file gets the mode a plain `open(path, "w")` would give (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON; a missing file or a syntax error names the file, line and column."""
    from da2_platform.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be an annotations, policy or results file") from None


_PSEUDO_FS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(folder: Path, what: str, path: Path) -> None:
    from da2_platform.errors import Da2Error

    if not folder.is_dir():
        raise Da2Error(f"{what} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Da2Error(f"{what} {path}: {folder} is not writable")


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse, before any compute, an output path the result could not be written to."""
    from da2_platform.errors import Da2Error

    path = Path(path).expanduser().absolute()
    if any(path == p or p in path.parents for p in _PSEUDO_FS):
        raise Da2Error(f"{what} {path}: not a place for output files (a kernel or device file system)")
    if path.is_dir():
        raise Da2Error(f"{what} {path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise Da2Error(f"{what} {path}: is not writable")
    _writable_dir(_nearest_existing(path.parent), what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "workdir") -> Path:
    """Refuse, before any compute, a folder that is a file, or that cannot be created or written."""
    from da2_platform.errors import Da2Error

    path = Path(path).expanduser().absolute()
    if any(path == p or p in path.parents for p in _PSEUDO_FS):
        raise Da2Error(f"{what} {path}: not a place for output files (a kernel or device file system)")
    if path.exists() and not path.is_dir():
        raise Da2Error(f"{what} {path}: is a file, not a folder")
    _writable_dir(_nearest_existing(path), what, path)
    return path
