"""The clients' teardown ends every process a client started, with a stand-in for Open WebUI under
strace: a leader that exits on SIGTERM and a child that ignores it (what strace -f leaves behind)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .client_support import group_members, run_client, start_group, stop_group

STAND_IN = r"""
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(300)  # SIGTERM ends the leader at once; the child lives on unless the group is killed
"""


def _wait_for_pid(path) -> int:
    for _ in range(100):
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the stand-in did not start its child")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_group_ends_children_that_outlive_their_leader(tmp_path):
    proc = start_group([sys.executable, "-c", STAND_IN, str(tmp_path / "child.pid")])
    child = _wait_for_pid(tmp_path / "child.pid")
    assert set(group_members(proc.pid)) == {proc.pid, child}
    started = time.monotonic()
    stop_group(proc, timeout=1.0)  # the child ignores SIGTERM: it takes the SIGKILL
    assert proc.returncode is not None and not _alive(child), "a process of the group survived"
    assert not group_members(proc.pid)
    assert time.monotonic() - started < 5


def test_terminating_the_leader_alone_would_leave_the_child(tmp_path):
    """Why the group is killed: the old teardown (terminate the process started) leaves the child."""
    proc = start_group([sys.executable, "-c", STAND_IN, str(tmp_path / "child.pid")])
    child = _wait_for_pid(tmp_path / "child.pid")
    proc.terminate()
    proc.wait(5)
    time.sleep(0.3)
    try:
        assert _alive(child)
    finally:
        os.kill(child, 9)


def test_run_client_timeout_ends_the_whole_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    try:
        run_client([sys.executable, "-c", STAND_IN, str(pidfile)], env=dict(os.environ), cwd=tmp_path,
                   timeout=2, trace=False)
    except subprocess.TimeoutExpired:
        pass
    else:
        raise AssertionError("the stand-in should have timed out")
    assert not _alive(int(pidfile.read_text()))
