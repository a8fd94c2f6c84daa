"""Reading a root-only secrets file without trusting its path: no symlink, a regular file, the right owner,
no group or other access, bounded in size (pure but for the one open and read).

The checks are made on the file opened (`fstat` of the descriptor), not on whatever the path names a moment
later. Each failure names the file and says how to fix it."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_private_file(path: Path, *, owner_uid: int, max_bytes: int, name: str, readable: str,
                      error: type[Exception]) -> bytes:
    """The bytes of `path`, or `error` naming the fault. `name` says what the file is ("static credentials
    file"), `readable` what group or others could read through a loose mode ("its secrets")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: the {name} does not exist") from None
    except OSError as e:
        raise error(f"{path}: cannot open the {name} ({e.strerror}; a symlink is refused)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: is not a regular file")
        if info.st_uid != owner_uid:
            raise error(f"{path}: is owned by uid {info.st_uid}; it holds secrets and must be owned by "
                        f"{'root' if owner_uid == 0 else f'uid {owner_uid}'} (chown root {path}; chmod 600 {path})")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise error(f"{path}: has mode {mode:04o}, which lets group or others read {readable}; "
                        f"run chmod 600 {path}")
        if info.st_size > max_bytes:
            raise error(f"{path}: is {info.st_size} bytes, more than the {max_bytes} allowed")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{path}: is more than the {max_bytes} bytes allowed")
    return data
