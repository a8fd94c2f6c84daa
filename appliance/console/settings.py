"""The console's settings: the `console:` mapping of the configuration file, parsed and checked (pure).

    console:
      enabled: true
      listen: 127.0.0.1:19443
      tls: {cert: /etc/appliance/console.pem, key: /etc/appliance/console.key}
      issuer: https://idp.example.com/realms/appliance
      client_id: appliance-console
      client_secret_file: /etc/appliance/console-client-secret
      redirect_uri: https://127.0.0.1:19443/callback
      auditor_group: kafka-auditors
      approver_group: kafka-admins

Off by default. A listen address other than loopback needs TLS: the session
cookie and the approvals it carries must never cross a network in the clear.
Files are only named here; the client secret is read (root-only) when the
console starts, so a wrong file fails `appliance console`, naming the file.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

DEFAULT_PORT = 19443
CALLBACK_PATH = "/callback"  # where the console takes the provider's answer (app.py's route)


class ConsoleSettingError(ValueError):
    """A console setting that cannot be used; the message names the key and what would be valid."""


@dataclass(frozen=True, slots=True)
class ConsoleTls:
    cert: Path
    key: Path  # root-only PEM private key


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    enabled: bool = False
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    tls: ConsoleTls | None = None
    issuer: str | None = None  # the OIDC provider's issuer URL, exactly as its tokens carry it
    client_id: str | None = None  # a confidential client with the standard (authorization-code) flow
    client_secret_file: Path | None = None  # root-only, the secret alone
    redirect_uri: str | None = None  # <console URL>/callback, as registered with the provider
    auditor_group: str = "kafka-auditors"  # may read every page
    approver_group: str = "kafka-admins"  # may also approve, deny and revoke
    groups_claim: str = "groups"  # the ID token claim listing the person's groups
    session_s: float = 3600.0  # how long a login lasts
    ca_file: Path | None = None  # PEM CAs an https issuer is verified against instead of the system store

    @property
    def base_url(self) -> str:
        """The console's URL as people's browsers reach it: the redirect URI without its /callback (so links in
        webhook messages work from off the gateway), or, without one, the listen address."""
        if self.redirect_uri is not None:
            return self.redirect_uri.removesuffix(CALLBACK_PATH)
        host, port = self.listen
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"


KEYS = tuple(f.name for f in fields(ConsoleConfig))
# Each key's default as shown and what it does: docs/console.md's settings table is generated from this
# (`python -m appliance.cli.docgen --write`), and tests/cli/test_docs.py fails when either drifts.
KEY_DOCS: dict[str, tuple[str, str]] = {
    "enabled": ("`false`", "Whether `appliance console` may serve. With `true`, the four login keys "
                "(`issuer`, `client_id`, `client_secret_file`, `redirect_uri`) must be set, and `appliance serve` "
                "links its approval webhooks to the console."),
    "listen": (f"`127.0.0.1:{DEFAULT_PORT}`", "`IP:PORT` (`[v6]:PORT`) to listen on. An address other than "
               "loopback is refused unless `tls` is set."),
    "tls": ("none", "`{cert: PEM file, key: root-only PEM key}`: serve https, and mark the session cookie "
            "`Secure`."),
    "issuer": ("none", "The OIDC provider's issuer URL, exactly as its ID tokens carry it "
               "(`/.well-known/openid-configuration` is read from it)."),
    "client_id": ("none", "The console's confidential client at the provider: standard (authorization-code) flow, "
                  "PKCE S256. ID tokens must name it in `aud` (and `azp`, if present)."),
    "client_secret_file": ("none", "A root-only file (owned by root, mode 0600, no symlink) holding that client's "
                           "secret alone, on one line; read at start: a missing or loose file stops "
                           "`appliance console`, naming it."),
    "redirect_uri": ("none", f"`<console URL>{CALLBACK_PATH}` (that path, no query), registered with the provider "
                     "as the client's redirect URI; https when `tls` is set. The console URL before "
                     f"`{CALLBACK_PATH}` is where approval webhooks link to, so give the name people's browsers "
                     "reach the gateway by."),
    "auditor_group": ("`kafka-auditors`", "The group (in the ID token's groups claim) whose people may read every "
                      "page."),
    "approver_group": ("`kafka-admins`", "The group whose people may also approve, deny and revoke. A vote still "
                       "needs one of the rule's own `approvers` groups, and never the requester's own."),
    "groups_claim": ("`groups`", "The ID token claim listing the person's groups (plain names, not paths)."),
    "session_s": ("`3600`", "How long a login lasts, 60 – 86400 s; logout ends it sooner."),
    "ca_file": ("none", "PEM CAs an https issuer is verified against instead of the system store."),
}
REQUIRED_WHEN_ENABLED = ("issuer", "client_id", "client_secret_file", "redirect_uri")


def _path(value: Any, where: str, what: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConsoleSettingError(f"{where} must be an absolute path to {what}, got {value!r}")
    return Path(value)


def _url(value: Any, where: str) -> str:
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc \
            or parts.fragment:
        raise ConsoleSettingError(f"{where} must be an http:// or https:// URL with a host (no user information, no "
                                  f"fragment), got {str(value)[:200]!r}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or not value.isprintable() or len(value) > 256:
        raise ConsoleSettingError(f"{where} must be a non-empty printable name, got {value!r}")
    return value


def parse_listen(value: Any, where: str) -> tuple[str, int]:
    """`HOST:PORT` (an IP address; `[v6]:PORT` for IPv6) as (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConsoleSettingError(f"{where} must be HOST:PORT with an IP address, e.g. 127.0.0.1:{DEFAULT_PORT}, "
                                  f"got {value!r}")
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConsoleSettingError(f"{where}: {host!r} is not an IP address; give one (127.0.0.1, [::1], 0.0.0.0)") \
            from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConsoleSettingError(f"{where}: port {port!r} must be from 1 to 65535")
    return host, int(port)


def _tls(value: Any, where: str) -> ConsoleTls:
    if not isinstance(value, dict) or set(value) != {"cert", "key"}:
        raise ConsoleSettingError(f"{where} must be a mapping of exactly cert and key (PEM files), got {value!r}")
    return ConsoleTls(_path(value["cert"], f"{where}: key 'cert'", "a PEM certificate (chain)"),
                      _path(value["key"], f"{where}: key 'key'", "a root-only PEM private key"))


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConsoleSettingError(f"{where} must be true or false, got {value!r}")
    return value


def _session_s(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 60 <= value <= 86400:
        raise ConsoleSettingError(f"{where} must be a number of seconds from 60 to 86400, got {value!r}")
    return float(value)


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "enabled": _bool, "listen": parse_listen, "tls": _tls, "issuer": _url, "client_id": _name,
    "client_secret_file": lambda v, w: _path(v, w, "a root-only file holding the client secret"),
    "redirect_uri": _url, "auditor_group": _name, "approver_group": _name, "groups_claim": _name,
    "session_s": _session_s, "ca_file": lambda v, w: _path(v, w, "a PEM file of CA certificates"),
}


def parse_console(value: Any, where: str) -> ConsoleConfig:
    """The `console:` mapping over the defaults; every error names the key."""
    if not isinstance(value, dict):
        raise ConsoleSettingError(f"{where} must be a mapping of console settings ({', '.join(KEYS)})")
    changes: dict[str, Any] = {}
    for key, item in value.items():
        inner = f"{where}: key {key!r}"
        if key not in _PARSERS:
            raise ConsoleSettingError(f"{inner} is not a console setting; valid: {', '.join(KEYS)}")
        if key == "tls" and item is None:
            changes[key] = None
            continue
        changes[key] = _PARSERS[key](item, inner)
    config = ConsoleConfig(**changes)
    host = config.listen[0]
    if config.tls is None and not ipaddress.ip_address(host).is_loopback:
        raise ConsoleSettingError(f"{where}: key 'listen' is {host}, not a loopback address, and 'tls' is not set: "
                                  "the console's session cookie would cross the network in the clear; set tls "
                                  "(cert and key) or listen on 127.0.0.1")
    if config.enabled:
        missing = [k for k in REQUIRED_WHEN_ENABLED if getattr(config, k) is None]
        if missing:
            raise ConsoleSettingError(f"{where}: enabled is true but {', '.join(map(repr, missing))} "
                                      f"{'is' if len(missing) == 1 else 'are'} not set: login needs "
                                      f"{', '.join(REQUIRED_WHEN_ENABLED)}")
    if config.auditor_group == config.approver_group:
        raise ConsoleSettingError(f"{where}: keys 'auditor_group' and 'approver_group' are both "
                                  f"{config.auditor_group!r}: give each role its own group")
    if config.redirect_uri is not None:
        parts = urllib.parse.urlsplit(config.redirect_uri)
        if parts.path != CALLBACK_PATH or parts.query:
            raise ConsoleSettingError(f"{where}: key 'redirect_uri' must be the console's URL with the path "
                                      f"{CALLBACK_PATH} and no query (where the console takes the provider's answer), "
                                      f"e.g. https://gateway.example.com:{DEFAULT_PORT}{CALLBACK_PATH}, got "
                                      f"{config.redirect_uri!r}")
    if config.tls is not None and config.redirect_uri is not None \
            and not config.redirect_uri.startswith("https://"):
        raise ConsoleSettingError(f"{where}: key 'redirect_uri' must be https, as the console serves TLS, got "
                                  f"{config.redirect_uri!r}")
    return config
