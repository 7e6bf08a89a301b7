"""Worker pools end with their run: a killed parent, or Ctrl-C, leaves no worker training."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from opdplus.pools import spawn_pool

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie lingers until its new parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(pids, timeout_s=15.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def test_a_normal_exit_waits_for_the_work():
    with spawn_pool(2, maxtasksperchild=2) as pool:
        assert pool.map(abs, [-3, 4, -5]) == [3, 4, 5]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_an_exception_in_the_block_terminates_the_workers():
    with pytest.raises(KeyboardInterrupt):
        with spawn_pool(1) as pool:
            pid = pool.apply(os.getpid)
            pool.apply_async(time.sleep, (60,))  # a long run in progress
            t0 = time.monotonic()
            raise KeyboardInterrupt
    assert _wait_gone([pid]) == []
    assert time.monotonic() - t0 < 15  # did not wait for the 60 s run


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed():
    script = textwrap.dedent("""
        import os, sys, time
        from opdplus.pools import spawn_pool
        if __name__ == "__main__":
            with spawn_pool(2) as pool:
                pids = {pool.apply(os.getpid) for _ in range(6)}
                busy = [pool.apply_async(time.sleep, (60,)) for _ in range(2)]
                print(" ".join(map(str, sorted(pids))), flush=True)
                time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert pids and all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)  # no cleanup can run in the parent
        parent.wait(timeout=10)
        assert _wait_gone(pids) == [], "workers outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
