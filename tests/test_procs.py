"""stop_session stops a process and everything it started, including what moved to a process group of its own
(as Ray's workers do), with real processes and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from da2_platform.procs import alive, session_members, stop_session

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads sessions from /proc (Linux)")

# the leader ignores SIGTERM and starts a grandchild that leaves for its own process group and ignores SIGTERM too
LEADER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]])
time.sleep(600)
"""
GRANDCHILD = """
import os, signal, sys, time
os.setpgrp()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def test_a_grandchild_in_its_own_process_group_is_stopped_with_the_session(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    proc = subprocess.Popen([sys.executable, "-c", LEADER, str(pid_file), GRANDCHILD], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        assert os.getpgid(grandchild) != proc.pid  # os.killpg(proc.pid, ...) would miss it
        assert set(session_members(proc.pid)) == {proc.pid, grandchild}

        started = time.monotonic()
        assert stop_session(proc, grace_s=1.0) == []
        assert time.monotonic() - started < 15  # SIGTERM ignored: SIGKILL after the 1 s grace
        assert not alive(grandchild) and proc.returncode is not None
        assert session_members(proc.pid) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_process_in_this_session_is_refused_not_killed():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ValueError, match="start_new_session"):
            stop_session(proc)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
