"""`end_with_parent`: a child ends when its parent is killed with SIGKILL, by the kernel's
parent-death signal (Linux) and by the portable watchdog thread. Budget: about 3 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.wait import wait_until

# The parent starts the child and waits; the child arranges to end with it, then reports how
# and its PID, and sleeps. On SIGTERM the child writes "graceful" first: the signal ran its handler.
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
    time.sleep(120)
    """
)
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from iceberg_lake.process import end_with_parent
    out = Path(sys.argv[1])
    def graceful(signum, frame):
        out.write_text(out.read_text() + " graceful")
        sys.exit(0)
    signal.signal(signal.SIGTERM, graceful)
    how = end_with_parent(os.getppid(), signal.SIGTERM, watchdog=sys.argv[2] == "watchdog")
    out.write_text(f"{how} {os.getpid()}")
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["pdeathsig", "watchdog"])
def test_child_ends_gracefully_when_its_parent_is_killed(tmp_path: Path, how: str) -> None:
    out = tmp_path / "child.txt"
    out.write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(out), how], env=env, start_new_session=True
    )
    child = 0
    try:
        wait_until(lambda: out.read_text().startswith(how), 20, "the child's report", alive=parent)
        child = int(out.read_text().split()[1])
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        wait_until(lambda: not _alive(child), 10, "the orphaned child to end")
        assert out.read_text().endswith(" graceful")  # its SIGTERM handler ran
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_parent_already_gone_signals_at_once(tmp_path: Path) -> None:
    # The PID given is not this process's parent (as if the parent died and it was re-parented).
    code = "import os, signal; from iceberg_lake.process import end_with_parent; "
    code += "end_with_parent(os.getppid() + 1_000_000, signal.SIGTERM); import time; time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=30, check=False)
    assert proc.returncode == -signal.SIGTERM
