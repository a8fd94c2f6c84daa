"""A workload's command line as the audit keeps it: its secrets replaced by `***`.

Clients are often started with their credentials on the command line
(`kcat -X sasl.password=…`, `--client-secret …`, `user:secret@host`, a
bearer token). The audit, `appliance status` and the log show who connected
by its command line, so those values must not reach them: anyone who may read
the audit would otherwise read the workload's credentials. Pure; argv comes
in as the kernel split it (`/proc/PID/cmdline`), so arguments keep their
boundaries.

What is a secret:
- the value of an option whose name says so (`--password`, `--client-secret`,
  `--sasl-password`, `--token`, `--api-key`, …), as `--name=value` or as the
  argument after `--name`;
- the value of a `key=value` property whose key says so
  (`sasl.password=…`, `sasl.oauthbearer.client.secret=…`,
  `sasl.jaas.config=…`, `ssl.key.password=…`), wherever it is in an argument;
- the password of `user:password@host`, with or without a scheme in front;
- anything shaped like a JWT (three base64url parts, the first two starting
  `eyJ`).
"""

from __future__ import annotations

import re

MASK = "***"
# Words in an option or property name that make its value a secret.
_SECRET_WORDS = ("password", "passwd", "secret", "token", "apikey", "api-key", "api_key", "jaas", "credential",
                 "private-key", "private_key", "passphrase")
_OPTION = re.compile(r"^(--?[A-Za-z0-9][A-Za-z0-9._-]*)(=(.*))?$", re.S)
_PROPERTY = re.compile(r"(^|[\s,;=])([A-Za-z0-9][A-Za-z0-9._-]*)=(\S*)")  # a secret's value: up to a space
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s:/@]+):([^\s@]+)@(?=[^\s@])")
_USERINFO = re.compile(r"(^|\s)([^\s:/@]+):(?!//)([^\s@]+)@(?=[^\s@])")
# A JAAS configuration holds its secrets anywhere in its text: everything after its "=" goes.
_JAAS = re.compile(r"([A-Za-z0-9._-]*jaas[A-Za-z0-9._-]*)=.+", re.I | re.S)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def _names_secret(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in _SECRET_WORDS)


def _redact_text(text: str) -> str:
    text = _JAAS.sub(lambda m: f"{m[1]}={MASK}", text)
    text = _JWT.sub(MASK, text)
    text = _PROPERTY.sub(lambda m: f"{m[1]}{m[2]}={MASK}" if _names_secret(m[2]) and m[3] else m[0], text)
    text = _URL_USERINFO.sub(lambda m: f"{m[1]}{m[2]}:{MASK}@", text)
    return _USERINFO.sub(lambda m: f"{m[1]}{m[2]}:{MASK}@" if m[3] != MASK else m[0], text)


def redacted(argv: list[str]) -> str:
    """The command line, arguments joined by spaces, with every secret (module docstring) as `***`."""
    out = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        option = _OPTION.match(arg)
        if option is not None and _names_secret(option[1]):
            if option[2] is None:
                hide_next = True
                out.append(arg)
            else:
                out.append(f"{option[1]}={MASK}")
            continue
        out.append(_redact_text(arg))
    return " ".join(out)
