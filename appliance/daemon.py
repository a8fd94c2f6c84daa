"""A long-running process the appliance starts and owns (the embedded broker, the local Keycloak):
whether it still runs, and stopping it. Each leads its own session and process group
(`start_new_session`), so a signal reaches whatever it started too."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def alive(pid: int, child: subprocess.Popen | None = None) -> bool:
    """True unless the process is gone or a zombie (reaping it if it is our `child`)."""
    if child is not None and child.pid == pid:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def send(pid: int, sig: signal.Signals) -> None:
    """Signal the process's group when it leads one, else the process; gone already is fine."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_exit(pid: int, timeout: float, child: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, child):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, timeout: float, *, what: str, error: type[Exception],
              child: subprocess.Popen | None = None) -> None:
    """SIGTERM, then SIGKILL after `timeout`; `error` (naming `what`) if it survives even that."""
    send(pid, signal.SIGTERM)
    if not wait_exit(pid, timeout, child):
        log.warning("%s pid %d ignored SIGTERM for %.0f s; killing it", what, pid, timeout)
        send(pid, signal.SIGKILL)
        if not wait_exit(pid, 10, child):
            raise error(f"{what} pid {pid} survived SIGKILL for 10 s")
