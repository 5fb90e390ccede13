"""Names that become paths: one rule, checked in one place before anything is read, written or deleted.

An experiment's `name` becomes `<workdir>/ledger/<name>.parquet`, `reports/<name>.json`,
`ray_results/<name>-<method>/` (which `--fresh` deletes) and `ray_results/train-<name>/`; `da2 report NAME` reads
and writes the same files; registered model names are registry keys that MLflow turns into folders on download.
Every such name is 1-128 characters of letters, digits, `.`, `_` and `-`, starts with a letter or a digit and
holds no `..`: no path separator, no parent step, no space or control character. A path built from a name must
also resolve inside its parent folder, so a symbolic link planted there cannot lead out of the work directory.

A file name *inside* a data set (COCO's `file_name`) may name a subfolder, but never an absolute path or a `..`
step: `file_inside` keeps every image inside `--images`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from da2_platform.errors import ConfigError, DataError

MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RULE = "a name becomes a file or folder name: letters, digits, '.', '_' and '-', starting with a letter or digit"


def name_problem(value: object) -> str | None:
    """Why `value` cannot be a name that becomes a path, or None when it can."""
    if not isinstance(value, str) or not value:
        return f"{value!r} is empty or not text; {RULE}"
    shown = repr(value) if len(value) <= 60 else repr(value[:60]) + "..."
    if "/" in value or "\\" in value:
        return f"{shown} holds a path separator; {RULE}"
    if ".." in value:
        return f"{shown} holds '..'; {RULE}"
    if len(value) > MAX_NAME_LENGTH:
        return f"{shown} is {len(value)} characters long, more than {MAX_NAME_LENGTH}"
    if not _NAME.fullmatch(value):
        return f"{shown} holds a character outside the rule or does not start with a letter or digit; {RULE}"
    return None


def check_name(value: object, source: str, field: str = "name") -> str:
    """`value`, or ConfigError "<source>: <field>: <reason>" (exit 2) when it cannot become a path."""
    problem = name_problem(value)
    if problem is not None:
        raise ConfigError(f"{source}: {field}: {problem}")
    return str(value)


def path_inside(parent: Path, leaf: str, source: str, field: str = "name") -> Path:
    """`parent / leaf` once `leaf` passes the name rule and the path resolves inside `parent`."""
    check_name(leaf, source, field)
    path = Path(parent) / leaf
    if not _resolves_inside(path, Path(parent)):
        raise ConfigError(f"{source}: {field}: {path} leads outside {parent} (a symbolic link); refusing to read, "
                          "write or delete there")
    return path


def check_workdir_paths(workdir: Path, name: str, source: str, folders: Iterable[str] = ()) -> None:
    """Every path the experiment `name` gives in `workdir` (ledger, reports, and `ray_results/<folder>` for each
    of `folders`, e.g. "<name>-da2") stays inside it."""
    workdir = Path(workdir)
    check_name(name, source)  # the name itself first: the message shows what the user wrote
    path_inside(workdir / "ledger", f"{name}.parquet", source)
    path_inside(workdir / "reports", f"{name}.json", source)
    path_inside(workdir / "reports", f"{name}.png", source)
    for folder in folders:
        path_inside(workdir / "ray_results", folder, source)


def search_folder(name: str, method: str) -> str:
    """The Tune folder name of a search of `method` in experiment `name` (as the search driver names it)."""
    return f"{name}-{method.replace(':', '-')}"


def file_inside(folder: Path, relative: object, where: str, folder_option: str = "--images") -> Path:
    """`folder / relative` for a file name read from a data file (COCO's `file_name`): a relative path without
    `..` steps, so it stays inside `folder` whatever the JSON says; else DataError naming `where`. Symbolic
    links inside the folder are followed: whoever made the folder placed them, the JSON cannot."""
    text = str(relative)
    parts = PurePosixPath(text).parts
    if not text or "\x00" in text or PurePosixPath(text).is_absolute() or ".." in parts:
        raise DataError(f"{where}: file_name: {text[:120]!r} leads outside {folder_option} {folder}; a file name "
                        "must be a path inside the image folder (no leading '/', no '..')")
    return Path(folder) / text


def _resolves_inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True
