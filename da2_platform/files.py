"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import stat
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


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
UTF8_BOM = b"\xef\xbb\xbf"


def check_input_file(path: str | os.PathLike, what: str = "file", error: type[Exception] | None = None
                     ) -> os.stat_result:
    """The stat of an input file, or `error` (DataError by default) saying why it cannot be one: "<what> not
    found: <path>", or "<path>: is a named pipe (FIFO), not a regular file" (never opened: a FIFO would block)."""
    from da2_platform.errors import DataError

    error = error or DataError
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {_kind_problem(st)}; give the {what} itself")
    return st


def file_problem(path: str | os.PathLike) -> str | None:
    """None for a regular file, else why it is none: "not found", "is a named pipe (FIFO), not a regular file"..."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return None if stat.S_ISREG(st.st_mode) else _kind_problem(st)


def _kind_problem(st: os.stat_result) -> str:
    kind = next((name for is_kind, name in _NOT_REGULAR if is_kind(st.st_mode)), "something else")
    return f"is {kind}, not a regular file"


def read_input(path: str | os.PathLike, what: str, max_bytes: int, error: type[Exception] | None = None) -> str:
    """The text of an input file, checked before it is read: a regular file (see `check_input_file`) of at most
    `max_bytes` (stat first, and never more than that is read), UTF-8 with an optional byte order mark (ignored:
    one rule for JSON, YAML and policies)."""
    from da2_platform.errors import DataError
    from da2_platform.limits import human_bytes

    error = error or DataError
    st = check_input_file(path, what, error)
    if st.st_size > max_bytes:
        raise error(f"{path}: {st.st_size} bytes is over the {human_bytes(max_bytes)} limit on {what}s "
                    "(docs/security.md)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # swapped for a FIFO since the stat: no blocking open
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise error(f"{path}: is not a regular file; give the {what} itself")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since the stat
        raise error(f"{path}: over the {human_bytes(max_bytes)} limit on {what}s (docs/security.md)")
    try:
        return data.removeprefix(UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int | None = None) -> Any:
    """Load JSON (bounded by `max_bytes`, default limits.MAX_JSON_BYTES); a missing file or a syntax error names
    the file, line and column."""
    from da2_platform.errors import DataError
    from da2_platform.limits import MAX_JSON_BYTES

    text = read_input(path, what, MAX_JSON_BYTES if max_bytes is None else max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
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
