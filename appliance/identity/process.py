"""The process behind a connection, read from /proc with a guard against pid reuse.

The kernel recorded the pid at connect(); by the time the proxy reads /proc
that pid may have exited and been reused. The guard: the process must still be
in the cgroup the kernel recorded and must have started no later than the
connection was accepted. Otherwise only what the kernel recorded is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.identity import cgroups
from appliance.identity.command_line import redacted

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    command: str  # command line (its secrets as ***) if the pid is verified, else the kernel's comm
    cgroup_path: str | None
    verified: bool


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


_BOOT = _boot_time()


def _start_time(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return _BOOT + int(fields[19]) / _CLOCK_TICKS


def describe(pid: int, cgroup_id: int, comm: str, accepted_at: float) -> ProcessInfo:
    try:
        path = cgroups.of_process(pid)
        same_cgroup = cgroups.path_of_id(cgroup_id, hint=path) == path
        started_before = _start_time(pid) <= accepted_at + 1.0  # /proc start times have tick resolution
        if same_cgroup and started_before:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            command = redacted([a.decode("utf-8", "replace") for a in argv]).strip()
            return ProcessInfo(pid, command or comm, path, True)
    except (OSError, cgroups.CgroupError, ValueError):
        pass
    return ProcessInfo(pid, comm, cgroups.path_of_id(cgroup_id), False)
