"""A small JSON state file the CLI writes and `serve` polls (enrolments, revocations): one writer at a
time under a lock file, replaced atomically and root-only, and a stamp that changes when it does."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def replace_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def stamp(path: Path) -> int:
    """The file's mtime in ns (0 when absent), for cheap polling."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
