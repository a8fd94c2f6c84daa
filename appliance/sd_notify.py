"""Telling systemd how `appliance serve` is doing: READY=1, WATCHDOG=1, STOPPING=1 (sd_notify(3)).

The protocol is one datagram of `KEY=VALUE` lines sent to the AF_UNIX socket
named in $NOTIFY_SOCKET (a path, or `@name` for the abstract namespace).
Written here rather than taken from a library: Debian's python3-systemd binds
libsystemd in C for this one sendto(), and PyPI's `sdnotify` is unmaintained
since 2017; the message and the watchdog interval are pure functions below,
tested without a socket, and `Notifier` is the thin shell that sends.

With no $NOTIFY_SOCKET (serve started by hand, by the tests, by
`serve --supervise`) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("appliance.sd_notify")


def message(*, ready: bool = False, stopping: bool = False, watchdog: bool = False, status: str | None = None,
            mainpid: int | None = None) -> bytes:
    """The datagram for these assignments, in the order sd_notify(3) lists them."""
    lines = []
    if ready:
        lines.append("READY=1")
    if stopping:
        lines.append("STOPPING=1")
    if watchdog:
        lines.append("WATCHDOG=1")
    if mainpid is not None:
        lines.append(f"MAINPID={mainpid}")
    if status is not None:
        # One line: a newline would start another assignment.
        lines.append("STATUS=" + " ".join(status.split()))
    if not lines:
        raise ValueError("an sd_notify message needs at least one assignment")
    return ("\n".join(lines) + "\n").encode()


def socket_address(env: Mapping[str, str]) -> str | bytes | None:
    """Where to send: a filesystem path, an abstract name (leading NUL), or None when systemd asked for nothing."""
    name = env.get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    return None  # vsock and other forms: not for a local service


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC, as systemd.service(5) advises; None if it is off.

    $WATCHDOG_PID, when set, names the process systemd expects the pings from;
    a child that inherited the variables (a process serve starts) must not ping.
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages; silent when $NOTIFY_SOCKET is unset. A send that fails is logged, never raised:
    systemd's own timeout is what acts on a missing READY or ping."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = socket_address(env)
        self.watchdog_s = watchdog_interval_s(env, os.getpid())

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **assignments) -> None:
        if self.address is None:
            return
        data = message(**assignments)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as e:
            log.warning("sd_notify %r to %s failed: %s", data, os.environ.get("NOTIFY_SOCKET"), e)
