"""Network namespaces of workloads: which ones enrolled processes live in, and entering one for a moment.

A namespace is known here by the inode of /proc/PID/ns/net (what `ls -l`
and `lsns` show as net:[INODE]) and, once the proxy holds a socket in it,
by its cookie (SO_NETNS_COOKIE, what bpf_get_netns_cookie gives the kernel
programs). Both are unique while the namespace lives, and a socket the
proxy holds keeps it alive.

`entered` runs a block on the calling thread inside another namespace
(setns(2); Python 3.11 has no os.setns) and always returns it to the one it
came from. Sockets made inside stay in that namespace after the return.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Collection, Iterable, Iterator

log = logging.getLogger("appliance.netns")
CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71  # asm-generic/socket.h (5.14+); Python 3.11's socket module lacks the name
SIOCGSKNS = 0x894C  # linux/sockios.h: a socket's network namespace as a file descriptor
_OWN = "/proc/thread-self/ns/net"
# Exit status when this thread cannot go back to its own namespace: serving on
# from a workload's namespace would send upstream connects from there.
EXIT_STRANDED = 70
_libc = ctypes.CDLL(None, use_errno=True)


def cookie_of(sock: socket.socket) -> int:
    """The network namespace cookie of a socket."""
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def fd_of(sock) -> int:
    """A new file descriptor of the network namespace a socket lives in (SIOCGSKNS); the caller closes it."""
    return fcntl.ioctl(sock.fileno(), SIOCGSKNS)


def own_inode() -> int:
    """The inode of this thread's network namespace."""
    return os.stat(_OWN).st_ino


def inode_of(pid: int) -> int | None:
    """The inode of a process's network namespace, or None if it is gone or hidden."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_below(directories: Iterable[Path], *, skip: Collection[Path] = ()) -> Iterator[int]:
    """Every process in each cgroup directory and its descendants (cgroup.procs), but those in `skip` and below."""
    for top in directories:
        for dirpath, subdirs, files in os.walk(top):
            if skip:
                subdirs[:] = [d for d in subdirs if Path(dirpath, d) not in skip]
            if "cgroup.procs" not in files:
                continue
            try:
                text = Path(dirpath, "cgroup.procs").read_text()
            except OSError:  # removed meanwhile
                continue
            yield from (int(line) for line in text.split())


def namespaces_of(pids: Iterable[int], skip: int) -> dict[int, int]:
    """Namespace inode -> one pid in it, for the given processes, leaving out namespace `skip`."""
    found: dict[int, int] = {}
    for pid in pids:
        inode = inode_of(pid)
        if inode is not None and inode != skip:
            found.setdefault(inode, pid)
    return found


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {what}: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns_file: str, inode: int) -> Iterator[None]:
    """Run the block on this thread in the network namespace `inode`, opened as `ns_file` (/proc/PID/ns/net).

    Raises OSError (the block does not run) if the file is gone or is no
    longer that namespace (the process gone, its pid reused). If this thread cannot return
    to its own namespace, the process exits with EXIT_STRANDED: the kernel
    programs stay attached and refuse what they steer until the next start.
    """
    home = os.open(_OWN, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(ns_file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(target).st_ino != inode:
                raise OSError(f"{ns_file} is no longer network namespace net:[{inode}]")
            _setns(target, f"net:[{inode}] ({ns_file})")
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(home, "the appliance's own network namespace")
            except OSError as e:
                log.critical("cannot return to the appliance's network namespace (%s); exiting", e)
                os._exit(EXIT_STRANDED)
    finally:
        os.close(home)
