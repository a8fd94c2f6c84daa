"""The proxy's listeners in the network namespaces where enrolled workloads live (containers).

An enrolled process in its own network namespace is refused by the kernel
(FOREIGN_NETNS) until the proxy listens there: its connect, rewritten to the
proxy's address, would reach its own namespace's loopback. `WorkloadNamespaces`
finds those namespaces, from the processes of the enrolled cgroups (each
enrolment sync and every couple of seconds) and from the pids of the kernel's
FOREIGN_NETNS refusals (within one maintenance step, so a client's retry gets
through), opens the proxy's listeners inside each and hands them to steering,
and closes them once no enrolled process is left in the namespace.

A namespace where the listeners cannot be opened (no loopback address, no
free slot) stays refused, logged and audited once, and is tried again on each
scan. The proxy's upstream connections are never made from these namespaces:
only the listening sockets are made inside, and the thread goes straight back.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from appliance.identity import netns
from appliance.proxy.server import ProxyServer
from appliance.steering.loader import Steering, SteeringError

log = logging.getLogger("appliance")
RESCAN_S = 2.0
_PENDING_MAX = 1024  # pids from refusals waiting for one step


@dataclass(frozen=True, slots=True)
class Listening:
    inode: int
    cookie: int
    slot: int
    pid: int  # the enrolled process it was found through
    since: float


class WorkloadNamespaces:
    def __init__(self, server: ProxyServer, steering: Steering, event: Callable[..., None]) -> None:
        self.server = server
        self.steering = steering
        self.event = event  # (kind, message, detail=...) into the audit
        self.own = netns.own_inode()
        self.listening: dict[int, Listening] = {}  # by namespace inode
        self._failed: dict[int, str] = {}  # inode -> the reason already reported
        self._pending: dict[int, None] = {}  # pids the kernel refused FOREIGN_NETNS since the last step
        self._scanned_at = float("-inf")
        self.rescan = True

    def refused(self, pid: int) -> None:
        """The kernel refused an enrolled connect of `pid` for its namespace: look at it in the next step."""
        if len(self._pending) < _PENDING_MAX:
            self._pending[pid] = None

    async def step(self, enrolled: Iterable[Path], now: float) -> None:
        """Open listeners where enrolled workloads are and the proxy is not; close them where none is left."""
        found: dict[int, int] = {}
        if self.rescan or now - self._scanned_at >= RESCAN_S:
            self.rescan, self._scanned_at = False, now
            found = netns.namespaces_of(netns.pids_below(enrolled), self.own)
            for inode in [i for i in self.listening if i not in found]:
                self.close(inode, "no enrolled process is in it any more")
            self._failed = {i: r for i, r in self._failed.items() if i in found}
        pending, self._pending = self._pending, {}
        for inode, pid in netns.namespaces_of(pending, self.own).items():
            found.setdefault(inode, pid)
        for inode, pid in found.items():
            if inode not in self.listening:
                await self._open(inode, pid)

    async def _open(self, inode: int, pid: int) -> None:
        where = f"network namespace net:[{inode}] (of pid {pid})"
        try:
            cookie, sockets = await self.server.listen_in_netns(pid, inode)
        except OSError as e:
            self._failed_to(inode, where, f"cannot listen there: {e.strerror or e}")
            return
        try:
            fd = netns.fd_of(sockets[0])
            try:
                slot = self.steering.listen_in_netns(cookie, fd, sockets)
            finally:
                os.close(fd)
        except (OSError, SteeringError) as e:
            self.server.stop_listening_in_netns(inode, cookie)
            self._failed_to(inode, where, str(e))
            return
        self._failed.pop(inode, None)
        self.listening[inode] = Listening(inode, cookie, slot, pid, time.time())
        log.info("listening in %s: its enrolled workloads are steered to the proxy", where)
        self.event("netns-listen", f"proxy listening in {where}; enrolled workloads there are steered to it",
                   pid=pid, detail={"netns": f"net:[{inode}]", "netns_cookie": cookie, "slot": slot})

    def _failed_to(self, inode: int, where: str, reason: str) -> None:
        if self._failed.get(inode) == reason:
            return
        self._failed[inode] = reason
        message = f"enrolled workloads in {where} stay refused: {reason}"
        log.warning("%s", message)
        self.event("error", message, detail={"netns": f"net:[{inode}]"})

    def close(self, inode: int, reason: str) -> None:
        """Stop steering connects in that namespace (refused again), then close the listeners there."""
        gone = self.listening.pop(inode)
        try:
            self.steering.forget_netns(gone.cookie)
        finally:  # a listener the kernel may still steer to is better closed than kept: SYNs are then refused
            self.server.stop_listening_in_netns(inode, gone.cookie)
        log.info("stopped listening in network namespace net:[%d]: %s", inode, reason)
        self.event("netns-close", f"proxy stopped listening in network namespace net:[{inode}]: {reason}",
                   detail={"netns": f"net:[{inode}]", "netns_cookie": gone.cookie})

    def status(self) -> list[dict]:
        return [{"netns": f"net:[{n.inode}]", "netns_cookie": n.cookie, "slot": n.slot, "found_via_pid": n.pid,
                 "since": n.since} for n in self.listening.values()]
