"""Whether this machine lets a process use real-time scheduling: what tests of ``request_realtime`` compare with."""
import subprocess
import sys


def may_realtime(priority: int) -> bool:
    """Whether a fresh process may move a thread to ``SCHED_RR`` at ``priority`` (tried in a child, so nothing here
    changes)."""
    code = f"import os; os.sched_setscheduler(0, os.SCHED_RR, os.sched_param({priority}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
