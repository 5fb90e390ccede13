"""Stopping a process and everything it started, Ray included.

A `da2` process started with `start_new_session=True` leads its own session and process group. Its local Ray's
GCS, raylet and agents share that group, but Ray (2.60) starts each worker in a process group of its own, so
`os.killpg` on the leader's group misses the workers: they outlive it until they notice their raylet is gone.
They stay in the leader's session, so the session is what `stop_session` stops."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

PROC = Path("/proc")


def session_members(sid: int) -> list[int]:
    """The live (not zombie) processes in session `sid`, this process excepted (Linux: read from /proc)."""
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == sid and alive(pid):
                members.append(pid)
        except OSError:  # gone since the listing
            continue
    return members


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie (a zombie has exited: it only waits for its parent to read its status)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # the state field follows the command name in parentheses


def _signal(sid: int, sig: int) -> list[int]:
    """Send `sig` to every live member of session `sid`; return them."""
    members = session_members(sid)
    for pid in members:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return members


def stop_session(proc: subprocess.Popen, grace_s: float = 10.0, kill_wait_s: float = 30.0) -> list[int]:
    """SIGTERM every process in `proc`'s session (it must have been started with `start_new_session=True`), give
    them `grace_s` to exit, then SIGKILL what is left until none is alive or `kill_wait_s` has passed. With
    `grace_s` 0 it sends SIGKILL alone.

    Returns the pids still alive at the end: empty unless a process ignores SIGKILL (stuck in the kernel). Without
    /proc (not Linux) it falls back to the leader's process group, which misses Ray's workers."""
    if not PROC.is_dir():
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        return []
    sid = proc.pid
    if proc.poll() is None and os.getsid(sid) != sid:
        raise ValueError(f"process {sid} does not lead a session of its own: start it with start_new_session=True")
    if grace_s > 0:
        _signal(sid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while grace_s > 0 and session_members(sid) and time.monotonic() < deadline:
        proc.poll()  # reap our own child, so that it does not stay a zombie
        time.sleep(0.1)
    deadline = time.monotonic() + kill_wait_s
    while _signal(sid, signal.SIGKILL) and time.monotonic() < deadline:  # again each round: a raylet may fork
        proc.poll()
        time.sleep(0.1)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return session_members(sid)
