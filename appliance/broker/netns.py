"""Running a function inside a named network namespace (`ip netns add NAME`), without a subprocess.

setns(2) moves only the calling thread, so the function runs on a short-lived
thread of its own and the caller's thread never changes namespace. A socket
keeps the namespace it was created in, so a socket made there can be used
from any thread afterwards.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_RUN_NETNS = Path("/run/netns")


def exists(name: str) -> bool:
    return (_RUN_NETNS / name).exists()


def run_in(name: str | None, fn: Callable[[], T]) -> T:
    """`fn()` run inside network namespace `name` (or right here when `name` is None); its exception is re-raised."""
    if name is None:
        return fn()
    outcome: list[tuple[bool, object]] = []

    def inside() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(_RUN_NETNS / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"cannot enter network namespace {name!r}: {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome.append((True, fn()))
        except BaseException as e:  # handed back to the caller's thread
            outcome.append((False, e))

    thread = threading.Thread(target=inside, name=f"netns-{name}")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]
