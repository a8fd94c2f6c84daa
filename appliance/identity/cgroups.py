"""The cgroup v2 hierarchy: where it is mounted, cgroup ids, creating cgroups and moving processes.

A cgroup's v2 id, as `bpf_get_current_cgroup_id()` reports it, is the inode
number of its directory. Paths are kept relative to the v2 root (`/` is the
root itself), because the mount point differs between hosts (hybrid mode mounts
it at /sys/fs/cgroup/unified).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


class CgroupError(RuntimeError):
    """A cgroup that cannot be found, created or entered, naming it and why."""


@cache
def cgroup2_root() -> Path:
    """The cgroup v2 mount point, read from /proc/mounts (never hard-coded)."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return Path(parts[1].replace("\\040", " "))
    raise CgroupError("no cgroup v2 hierarchy is mounted (no 'cgroup2' line in /proc/mounts)")


@dataclass(frozen=True, slots=True)
class Cgroup:
    """A cgroup v2 directory: its path relative to the v2 root and its id (inode)."""

    path: str
    id: int

    @property
    def directory(self) -> Path:
        return cgroup2_root() / self.path.lstrip("/")


def normalize(path: str) -> str:
    """`/sys/fs/cgroup/unified/a/b`, `a/b` and `/a/b` all become `/a/b`."""
    root = str(cgroup2_root())
    path = str(path)
    if path == root or path.startswith(root + "/"):
        path = path[len(root):]
    return "/" + path.strip("/")


def resolve(name: str) -> Cgroup:
    """Find an existing cgroup by path (absolute, relative to the v2 root) or systemd unit name.

    A unit name such as `orders.service` is looked for anywhere below the root,
    where systemd places it (`/system.slice/orders.service`).
    """
    candidate = cgroup2_root() / normalize(name).lstrip("/")
    if candidate.is_dir():
        return Cgroup(normalize(str(candidate)), candidate.stat().st_ino)
    if "/" not in name.strip("/") and "." in name:
        for found in cgroup2_root().rglob(name):
            if found.is_dir():
                return Cgroup(normalize(str(found)), found.stat().st_ino)
    raise CgroupError(
        f"cgroup {name!r} does not exist under {cgroup2_root()} "
        "(give a path under the cgroup v2 root, an absolute path, or a systemd unit name)"
    )


def ensure(path: str) -> Cgroup:
    """Create the cgroup (and its parents) if missing and return it."""
    directory = cgroup2_root() / normalize(path).lstrip("/")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CgroupError(f"cannot create cgroup {directory}: {e.strerror}") from None
    return Cgroup(normalize(str(directory)), directory.stat().st_ino)


def remove(cgroup: Cgroup) -> None:
    """Remove an empty cgroup; a cgroup that still holds processes is left alone."""
    try:
        cgroup.directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CgroupError(f"cannot remove cgroup {cgroup.directory}: {e.strerror}") from None


def move_process(pid: int, cgroup: Cgroup) -> None:
    """Move a process (all its threads) into a cgroup."""
    try:
        (cgroup.directory / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as e:
        raise CgroupError(f"cannot move pid {pid} into cgroup {cgroup.path}: {e.strerror}") from None


def of_process(pid: int) -> str:
    """The v2 cgroup path of a live process, from /proc/PID/cgroup (`0::/path`)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError as e:
        raise CgroupError(f"cannot read the cgroup of pid {pid}: {e.strerror}") from None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    raise CgroupError(f"pid {pid} has no cgroup v2 entry in /proc/{pid}/cgroup")


def path_of_id(cgroup_id: int, hint: str | None = None) -> str | None:
    """The path of the cgroup whose directory inode is `cgroup_id`, or None if it is gone.

    `hint` (a path believed to be it, e.g. from the process) is checked first so
    the common case costs one stat instead of a walk of the hierarchy.
    """
    root = cgroup2_root()
    if hint is not None:
        try:
            if (root / hint.lstrip("/")).stat().st_ino == cgroup_id:
                return normalize(hint)
        except OSError:
            pass
    if root.stat().st_ino == cgroup_id:
        return "/"
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            try:
                if os.stat(full).st_ino == cgroup_id:
                    return normalize(full)
            except OSError:
                continue
    return None
