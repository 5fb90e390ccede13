"""Checks a search runs before any compute: its flags, the model config, the tracking store, the cluster's
resources, and (for --resume) that the experiment folder is one only its user could have written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from da2_platform.config import ExperimentConfig
from da2_platform.errors import ConfigError, Da2Error


def check_flags(resume: bool, fresh: bool) -> None:
    if resume and fresh:
        raise ConfigError("--resume and --fresh contradict each other: --resume continues the search in the "
                          "experiment folder, --fresh deletes it and starts again; give one")


def check_model(cfg: ExperimentConfig) -> None:
    """The model config names a known preset and backbone and files that exist, before Ray or data start."""
    import timm

    kwargs = cfg.model.build_kwargs(17)
    backbone = kwargs.get("backbone")
    if backbone is not None and not timm.is_model(str(backbone)):
        raise ConfigError(f"model.backbone: {backbone!r} is not a timm model")
    for key in ("pretrained_path", "init_weights"):
        value = getattr(cfg.model, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"model.{key}: {value} not found")


def check_resources(cfg: ExperimentConfig) -> None:
    """A trial that asks for more than the whole cluster has would wait forever: refuse it now."""
    import ray

    total = ray.cluster_resources()
    for key, wanted, field_name in (("GPU", cfg.search.gpus_per_trial, "gpus_per_trial"),
                                    ("CPU", cfg.search.cpus_per_trial, "cpus_per_trial")):
        have = float(total.get(key, 0.0))
        if wanted > have:
            raise ConfigError(f"search.{field_name}: a trial asks for {wanted:g} {key}(s) but the Ray cluster has "
                              f"{have:g}; lower search.{field_name} or run on a cluster that has them (an "
                              "autoscaling cluster: start its workers first)")


def check_trusted_folder(path: Path) -> None:
    """--resume loads Tune's state, which holds pickles: only from a folder that nobody but its user could
    have written. Every entry must belong to this user and be writable by nobody else; symlinks are refused."""
    uid = os.getuid()

    def refuse(entry: Path, why: str) -> None:
        raise Da2Error(f"--resume: {entry}: {why}; refusing to load a search state that someone else could have "
                       "written (Ray Tune's state holds pickles that run code when loaded). Check the folder, or "
                       "start again with --fresh")

    def check(entry: Path, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            refuse(entry, "is a symbolic link")
        if st.st_uid != uid:
            refuse(entry, f"belongs to user id {st.st_uid}, not to you ({uid})")
        if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid)):
            refuse(entry, f"is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} "
                          f"(mode {stat.S_IMODE(st.st_mode):o})")

    parent = path.parent
    pst = parent.lstat()
    if pst.st_uid not in (uid, 0) or (pst.st_mode & stat.S_IWOTH and not pst.st_mode & stat.S_ISVTX):
        refuse(parent, "can be changed by other users (they could swap the experiment folder)")
    check(path, path.lstat())
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(root, name)
            check(entry, entry.lstat())


def _private_group(gid: int) -> bool:
    """A user's own group (umask 002 systems): named after the user, no other members."""
    import grp
    import pwd

    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(os.getuid())
    except KeyError:
        return False
    return group.gr_name == user.pw_name and not [m for m in group.gr_mem if m != user.pw_name]



def check_tracking_uri(cfg: ExperimentConfig, override: str | None) -> str:
    """Reach a server now; create nothing for a SQLite store yet (that happens once the search can start)."""
    from da2_platform.tracking import check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg, override)
    if not uri.startswith("sqlite:///"):
        check_tracking(uri)
    return uri
