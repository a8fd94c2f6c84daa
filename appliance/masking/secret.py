"""The appliance's masking secret: 32 random bytes in a file only its owner can read.

`hash` masks a value as HMAC-SHA256 under this secret, so equal values stay
joinable while nobody without the secret can confirm a guessed card number
by hashing it. Losing the file means new hashes no longer match old ones;
leaking it means guesses can be confirmed: keep it with the appliance's other
state and back it up like a key.
"""

from __future__ import annotations

from pathlib import Path

from appliance.secret_file import SecretError, load_or_create

SECRET_SIZE = 32
__all__ = ["SECRET_SIZE", "SecretError", "load_or_create_secret"]


def load_or_create_secret(path: Path) -> bytes:
    """The secret in `path`, created (mode 0600, parents 0700) with 32 random bytes when the file does not exist.

    A file that its group or others may read or write, that is not a regular
    file, or that does not hold exactly 32 bytes is refused.
    """
    return load_or_create(path, SECRET_SIZE, "the masking secret",
                          "restore it from a backup, or delete it to start a new one (earlier hashes then no "
                          "longer match)")
