"""The proxy's listeners in the network namespaces where enrolled workloads live (containers).

An enrolled process in its own network namespace is refused by the kernel
(FOREIGN_NETNS) until the proxy listens there: its connect, rewritten to the
proxy's address, would reach its own namespace's loopback. `WorkloadNamespaces`
finds those namespaces, from the processes of the enrolled cgroups (each
enrolment sync and every couple of seconds) and from the pids of the kernel's
FOREIGN_NETNS refusals (within one maintenance step, so a client's retry gets
through), opens the proxy's listeners inside each and hands them to steering,
and closes them once no enrolled process is left in the namespace.

Each namespace is charged to one enrolled cgroup with a process in it (the
deepest enrolled one, for nested enrolments), and each enrolled cgroup has at
most `max_netns_per_workload` namespaces tried: an enrolled process needs no
capability to make namespaces of its own (a user namespace owns them), and
without the bound one workload could take every slot the kernel programs have
(APPLIANCE_MAX_NETNS) and leave containers enrolled later refused. The
namespaces beyond its bound stay refused, audited once per workload
(`netns-limit`), and are tried once it has room again.

A namespace where the listeners cannot be opened (no free slot, an address
the namespace lacks) stays refused, logged and audited once, and is tried again on each
scan. The proxy's upstream connections are never made from these namespaces:
only the listening sockets are made inside, and the thread goes straight back.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

from appliance.identity import cgroups, netns
from appliance.proxy.server import ProxyServer
from appliance.steering.loader import Steering, SteeringError

log = logging.getLogger("appliance")
RESCAN_S = 2.0
_PENDING_MAX = 1024  # pids from refusals waiting for one step
_BEYOND_LISTED = 16  # namespaces named in a netns-limit event; the count is of all


@dataclass(frozen=True, slots=True)
class Listening:
    inode: int
    cookie: int
    slot: int
    pid: int  # the enrolled process it was found through
    since: float
    workload: Path  # the enrolled cgroup it is charged to


@dataclass(frozen=True, slots=True)
class Charges:
    """What `charge` decided: each tried namespace's enrolled cgroup, and the namespaces left out for want of room."""

    charged: dict[int, Path]  # namespace inode -> the enrolled cgroup directory it counts against
    beyond: dict[Path, list[int]]  # enrolled cgroup directory -> inodes of its namespaces beyond its bound


def charge(found: Mapping[int, frozenset[Path]], charged: Mapping[int, Path], limit: int) -> Charges:
    """Charge each namespace found to an enrolled cgroup with a process in it, at most `limit` per cgroup.

    `found` maps each namespace to the enrolled cgroups whose processes are in
    it; `charged` is what was charged before (listening, or tried and failed)
    and stays so while its cgroup is still there. Any other namespace, new or
    one its cgroup left, goes to the least charged of its cgroups with room
    (those charged before first), or, with none, is left out and counted
    against each of them: a namespace passed between workloads never takes a
    workload past its bound.
    """
    kept = {inode: workload for inode, workload in charged.items()
            if inode not in found or workload in found[inode]}
    counts: dict[Path, int] = {}
    for workload in kept.values():
        counts[workload] = counts.get(workload, 0) + 1
    beyond: dict[Path, list[int]] = {}
    for inode in sorted((i for i in found if i not in kept), key=lambda i: i not in charged):
        workloads = found[inode]
        ordered = sorted(workloads, key=lambda w: (counts.get(w, 0), str(w)))
        chosen = next((w for w in ordered if counts.get(w, 0) < limit), None)
        if chosen is None:
            for workload in workloads:
                beyond.setdefault(workload, []).append(inode)
            continue
        kept[inode] = chosen
        counts[chosen] = counts.get(chosen, 0) + 1
    return Charges(kept, beyond)


class WorkloadNamespaces:
    def __init__(self, server: ProxyServer, steering: Steering, event: Callable[..., None], *,
                 per_workload: int) -> None:
        self.server = server
        self.steering = steering
        self.event = event  # (kind, message, detail=...) into the audit
        self.per_workload = per_workload  # max_netns_per_workload
        self.own = netns.own_inode()
        self.listening: dict[int, Listening] = {}  # by namespace inode
        self._failed: dict[int, str] = {}  # inode -> the reason already reported
        self._charged: dict[int, Path] = {}  # inode -> enrolled cgroup, for every namespace listened in or tried
        self._beyond: dict[Path, int] = {}  # enrolled cgroup -> namespaces beyond its bound, as last audited
        self.left_out: dict[Path, int] = {}  # enrolled cgroup -> namespaces beyond its bound at the last scan
        self._pending: dict[int, None] = {}  # pids the kernel refused FOREIGN_NETNS since the last step
        self._scanned_at = float("-inf")
        self.rescan = True

    def refused(self, pid: int) -> None:
        """The kernel refused an enrolled connect of `pid` for its namespace: look at it in the next step."""
        if len(self._pending) < _PENDING_MAX:
            self._pending[pid] = None

    async def step(self, enrolled: Iterable[Path], now: float) -> None:
        """Open listeners where enrolled workloads are and the proxy is not; close them where none is left."""
        enrolled = list(enrolled)
        found: dict[int, tuple[int, frozenset[Path]]] = {}  # inode -> (a pid in it, enrolled cgroups with processes in it)
        rescanned = self.rescan or now - self._scanned_at >= RESCAN_S
        if rescanned:
            self.rescan, self._scanned_at = False, now
            found = _namespaces_by_workload(enrolled, self.own)
            for inode in [i for i in self.listening if i not in found]:
                self.close(inode, "no enrolled process is in it any more")
            self._failed = {i: r for i, r in self._failed.items() if i in found}
            self._charged = {i: w for i, w in self._charged.items() if i in found}
        pending, self._pending = self._pending, {}
        for inode, (pid, workloads) in _namespaces_of_pending(pending, enrolled, self.own).items():
            if not rescanned and inode in self._charged:  # between scans, what was charged stays so
                workloads |= {self._charged[inode]}
            known = found.get(inode)
            found[inode] = (known[0], known[1] | workloads) if known else (pid, workloads)
        if not found:
            if rescanned:  # nothing beyond any bound: the next time beyond is reported afresh
                self.left_out, self._beyond = {}, {}
            return
        charges = charge({inode: workloads for inode, (_, workloads) in found.items()}, self._charged,
                         self.per_workload)
        self._charged = charges.charged
        self._report_beyond(charges.beyond, rescanned)
        if rescanned:
            self.left_out = {w: len(inodes) for w, inodes in charges.beyond.items()}
        for inode, (pid, _) in found.items():
            workload = charges.charged.get(inode)
            if workload is None:
                if inode in self.listening:  # its workload left it, and the ones still in it have no room
                    self.close(inode, "the enrolled workloads left in it are at their max_netns_per_workload")
                continue
            if inode in self.listening:
                if self.listening[inode].workload != workload:
                    self.listening[inode] = replace(self.listening[inode], workload=workload)
            else:
                await self._open(inode, pid, workload)

    def _report_beyond(self, beyond: dict[Path, list[int]], rescanned: bool) -> None:
        """Audit a workload's namespaces beyond its bound: the first time, then only when twice as many are left out.

        A workload making namespaces one by one thus costs a handful of events, not one each.
        """
        for workload, inodes in beyond.items():
            if len(inodes) < 2 * self._beyond.get(workload, 0) or not inodes:
                continue
            self._beyond[workload] = len(inodes)
            path = cgroups.normalize(str(workload))
            message = (f"enrolled cgroup {path} has processes in {len(inodes)} network namespace(s) beyond its "
                       f"max_netns_per_workload ({self.per_workload}): the proxy does not listen there, so its "
                       "connects from those stay refused until it leaves a namespace the proxy listens in")
            log.warning("%s", message)
            self.event("netns-limit", message, detail={
                "cgroup_path": path, "limit": self.per_workload, "beyond": len(inodes),
                "netns": [f"net:[{i}]" for i in sorted(inodes)[:_BEYOND_LISTED]]})
        if rescanned:  # a workload back within its bound is reported afresh when it next goes beyond it
            self._beyond = {w: n for w, n in self._beyond.items() if w in beyond}

    async def _open(self, inode: int, pid: int, workload: Path) -> None:
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
        self.listening[inode] = Listening(inode, cookie, slot, pid, time.time(), workload)
        log.info("listening in %s: its enrolled workloads are steered to the proxy", where)
        self.event("netns-listen", f"proxy listening in {where}; enrolled workloads there are steered to it",
                   pid=pid, detail={"netns": f"net:[{inode}]", "netns_cookie": cookie, "slot": slot,
                                       "cgroup_path": cgroups.normalize(str(workload))})

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
        self._charged.pop(inode, None)
        try:
            self.steering.forget_netns(gone.cookie)
        finally:  # a listener the kernel may still steer to is better closed than kept: SYNs are then refused
            self.server.stop_listening_in_netns(inode, gone.cookie)
        log.info("stopped listening in network namespace net:[%d]: %s", inode, reason)
        self.event("netns-close", f"proxy stopped listening in network namespace net:[{inode}]: {reason}",
                   detail={"netns": f"net:[{inode}]", "netns_cookie": gone.cookie})

    def status(self) -> list[dict]:
        return [{"netns": f"net:[{n.inode}]", "netns_cookie": n.cookie, "slot": n.slot, "found_via_pid": n.pid,
                 "since": n.since, "cgroup_path": cgroups.normalize(str(n.workload))}
                for n in self.listening.values()]

    def beyond_status(self) -> dict[str, int]:
        """Enrolled cgroup path -> its namespaces the proxy does not listen in for max_netns_per_workload."""
        return {cgroups.normalize(str(w)): n for w, n in self.left_out.items()}


def _namespaces_by_workload(enrolled: list[Path], own: int) -> dict[int, tuple[int, frozenset[Path]]]:
    """Each namespace but `own` that enrolled processes are in: one pid in it and the enrolled cgroups they are in.

    A process is counted in the deepest enrolled cgroup above it alone, so a
    workload enrolled below another is charged for its own namespaces.
    """
    nested = set(enrolled)
    found: dict[int, tuple[int, set[Path]]] = {}
    for workload in nested:
        # `nested` as it is: a walk from `workload` never meets `workload` itself as a subdirectory, and a
        # copy without it for each workload made a scan quadratic in the enrolled cgroups.
        for inode, pid in netns.namespaces_of(netns.pids_below([workload], skip=nested), own).items():
            found.setdefault(inode, (pid, set()))[1].add(workload)
    return {inode: (pid, frozenset(workloads)) for inode, (pid, workloads) in found.items()}


def _namespaces_of_pending(pids: Iterable[int], enrolled: list[Path],
                           own: int) -> dict[int, tuple[int, frozenset[Path]]]:
    """The namespaces of processes the kernel refused, each with the enrolled cgroup its process is in."""
    found: dict[int, tuple[int, frozenset[Path]]] = {}
    root = cgroups.cgroup2_root()
    known = set(enrolled)
    for pid in pids:
        try:
            where = root / cgroups.of_process(pid).lstrip("/")
        except cgroups.CgroupError:
            continue  # gone
        # The deepest enrolled cgroup at or above it: a walk up its own path (a few set lookups), not a scan
        # of every enrolled cgroup for each pid, which let a workload's refusals stall the event loop.
        workload = next((d for d in (where, *where.parents) if d in known), None)
        inode = netns.inode_of(pid)
        if workload is None or inode is None or inode == own:
            continue  # moved out of its enrolled cgroup, or gone, since the kernel refused it
        known = found.get(inode)
        found[inode] = (known[0], known[1] | {workload}) if known else (pid, frozenset({workload}))
    return found
