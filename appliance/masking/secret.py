"""The appliance's masking secret: 32 random bytes in a file only its owner can read.

`hash` masks a value as HMAC-SHA256 under this secret, so equal values stay
joinable while nobody without the secret can confirm a guessed card number
by hashing it. Losing the file means new hashes no longer match old ones;
leaking it means guesses can be confirmed: keep it with the appliance's other
state and back it up like a key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

SECRET_SIZE = 32


class SecretError(ValueError):
    """The secret file cannot be used; the message names the file and the fix."""


def load_or_create_secret(path: Path) -> bytes:
    """The secret in `path`, created (mode 0600, parents 0700) with 32 random bytes when the file does not exist.

    A file that its group or others may read or write, that is not a regular
    file, or that does not hold exactly 32 bytes is refused.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(path)
    except OSError as e:
        raise SecretError(f"{path}: cannot open the masking secret: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SecretError(f"{path}: the masking secret must be a regular file")
    with os.fdopen(fd, "rb") as f:
        loose = info.st_mode & 0o077
        if loose:
            raise SecretError(f"{path}: the masking secret has mode {stat.S_IMODE(info.st_mode):04o}, which lets "
                              f"its group or others read or change it; run 'chmod 600 {path}' (and consider the "
                              f"secret exposed if others could read it)")
        data = f.read(SECRET_SIZE + 1)
    if len(data) != SECRET_SIZE:
        raise SecretError(f"{path}: the masking secret holds {len(data)} bytes, not {SECRET_SIZE}; restore it from "
                          f"a backup, or delete it to start a new one (earlier hashes then no longer match)")
    return data


def _create(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = secrets.token_bytes(SECRET_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_or_create_secret(path)
    except OSError as e:
        raise SecretError(f"{path}: cannot create the masking secret: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data
