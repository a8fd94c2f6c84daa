"""A root-only file of random bytes, created on first use: the masking secret, the audit signing key.

Created with mode 0600 (parents 0700) and O_EXCL, so two processes starting at
once end up with one file; read back with O_NOFOLLOW, and refused when it is
not a regular file, when its group or others may read or change it, or when it
does not hold exactly the expected number of bytes.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class SecretError(ValueError):
    """The secret file cannot be used; the message names the file and the fix."""


def load_or_create(path: Path, size: int, what: str, wrong_size_fix: str) -> bytes:
    """The `size` bytes in `path`, created with random bytes when the file does not exist.

    `what` names the file in errors ("the masking secret"); `wrong_size_fix`
    says what to do about a file of the wrong size.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(path, size, what, wrong_size_fix)
    except OSError as e:
        raise SecretError(f"{path}: cannot open {what}: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SecretError(f"{path}: {what} must be a regular file")
    with os.fdopen(fd, "rb") as f:
        loose = info.st_mode & 0o077
        if loose:
            raise SecretError(f"{path}: {what} has mode {stat.S_IMODE(info.st_mode):04o}, which lets "
                              f"its group or others read or change it; run 'chmod 600 {path}' (and consider "
                              f"{what} exposed if others could read it)")
        data = f.read(size + 1)
    if len(data) != size:
        raise SecretError(f"{path}: {what} holds {len(data)} bytes, not {size}; {wrong_size_fix}")
    return data


def _create(path: Path, size: int, what: str, wrong_size_fix: str) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = secrets.token_bytes(size)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_or_create(path, size, what, wrong_size_fix)
    except OSError as e:
        raise SecretError(f"{path}: cannot create {what}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data
