"""`appliance serve --supervise`: keep one serving child running, restarted at once when it dies.

The supervisor is a plain process that loads nothing: no BPF, no broker
credentials, no policy. It starts `appliance serve` as a child and waits.

- A child that dies (a signal, a non-zero exit) is restarted: the first
  time at once, then, while restarts keep failing within `STABLE_S` of
  starting, after 0.5 s, 1 s, 2 s, ... up to `MAX_BACKOFF_S`. A child that
  stayed up `STABLE_S` resets the backoff.
- A child that exits 0 stopped cleanly (someone sent it SIGTERM): the
  supervisor exits too, like systemd's Restart=on-failure.
- SIGTERM or SIGINT to the supervisor is passed to the child, and the
  supervisor exits with the child's status; SIGHUP is passed on (policy
  reload) and nothing else happens.

No gap in fail closed while the child is down: its cgroup programs and its
pinned sk_lookup link stay in the kernel, and with its listening sockets
gone every enrolled connect is refused with ECONNREFUSED. The next child
takes the stale set over (see appliance.steering.loader).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time

log = logging.getLogger("appliance.supervisor")
STABLE_S = 10.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


def backoff_s(quick_failures: int) -> float:
    """The wait before restart number `quick_failures` in a row of children that died young."""
    if quick_failures <= 1:
        return 0.0
    return min(FIRST_BACKOFF_S * 2 ** (quick_failures - 2), MAX_BACKOFF_S)


def supervise(argv: list[str]) -> int:
    """Run argv, restarting it on failure, until it exits 0 or we are told to stop; its last status."""
    child: subprocess.Popen | None = None
    stopping = False

    def forward(signum, _frame) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        quick_failures = 0
        while True:
            started = time.monotonic()
            child = subprocess.Popen(argv)
            log.info("supervisor: serving child started (pid %d)", child.pid)
            rc = child.wait()
            if stopping or rc == 0:
                log.info("supervisor: serving child (pid %d) exited %d; stopping", child.pid, rc)
                return rc
            lived = time.monotonic() - started
            quick_failures = quick_failures + 1 if lived < STABLE_S else 1
            wait = backoff_s(quick_failures)
            how = f"signal {-rc}" if rc < 0 else f"status {rc}"
            log.error("supervisor: serving child (pid %d) died with %s after %.1f s; restarting in %.1f s",
                      child.pid, how, lived, wait)
            deadline = time.monotonic() + wait
            while not stopping and time.monotonic() < deadline:
                time.sleep(min(0.1, deadline - time.monotonic()))
            if stopping:
                return rc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
