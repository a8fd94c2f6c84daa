"""The clients' secrets and the admin password: generated once into the state directory, mode 0600, and kept.

Kept across restarts so a workload configured with its secret keeps working;
never in git and never in a realm table. A client added to the realm later gets
its secret on the next start; a secret removed from the file is made anew.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Iterable

from appliance.idp.errors import IdpError

_SECRET_BYTES = 32


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the first byte (no window in which it is readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_secrets(path: Path) -> dict[str, str]:
    """The client secrets in `path` ({} if it does not exist); IdpError naming the file if it is not usable."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise IdpError(f"cannot read the client secrets in {path}: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise IdpError(f"{path} is not JSON ({e}); delete it to generate new client secrets") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()):
        raise IdpError(f"{path} must be a JSON object of client id to non-empty secret; delete it to generate new ones")
    return data


def ensure_secrets(path: Path, client_ids: Iterable[str]) -> dict[str, str]:
    """Every client's secret, generating (and saving) the missing ones; existing secrets are never changed."""
    stored = load_secrets(path)
    wanted = list(client_ids)
    missing = [c for c in wanted if c not in stored]
    if missing:
        stored.update({c: secrets.token_urlsafe(_SECRET_BYTES) for c in missing})
        write_private(path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
    elif path.exists() and path.stat().st_mode & 0o077:
        path.chmod(0o600)  # someone loosened it; secrets stay root-only
    return {c: stored[c] for c in wanted}


def ensure_admin_password(path: Path) -> str:
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(_SECRET_BYTES)
        write_private(path, password + "\n")
    return password
