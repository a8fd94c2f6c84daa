"""Token introspection (RFC 7662): asking the provider whether a token that passed the JWT checks is still active.

A JWT stays valid to its signature until its `exp`, whatever happens at the
provider meanwhile. Keycloak answers `{"active": false}` at its introspection
endpoint for a token of a client that has since been disabled (or whose
session was revoked), so a provider configured with `introspection_endpoint`
has every token that passed the JWT checks asked about there, at the initial
authentication and at every re-authentication (KIP-368). What it costs is one
HTTP round trip per token and cache window.

- **Answer**: `active: true` admits the token; `active: false` refuses it,
  and so does an answer without a boolean `active` (RFC 7662 2.2 makes it
  required). Any failure to ask (unreachable, timeout, TLS, an HTTP error,
  not JSON, not an object) refuses it too, naming the endpoint and the
  fault: fail closed.
- **Cache**: an `active: true` answer is kept per token (its SHA-256, never
  the token) for `cache_s`, and never past the token's `exp`. A refusal is
  kept for `REFUSAL_HOLD_S` (or `cache_s` if shorter): a client retrying a
  dead token in a loop (librdkafka: about 20 times a second) costs the
  provider one call a second, and a re-enabled client is admitted within a
  second. At most `MAX_CACHED` answers are held; past that the oldest go first.
- **Load**: identical requests in flight share one call (a reconnect storm
  with one token is one call); at most `MAX_CONCURRENT` calls run at once
  per provider, the rest wait their turn (each call bounded by the HTTP
  client's timeout and deadline).

The client authenticates with HTTP Basic (client_secret_basic), its secret
read from a root-only file (`read_client_secret`) when the service starts.
`IntrospectionCache` is pure (time is an argument); `Introspector` is the
shell that runs the blocking HTTP call in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

from appliance.identity import strict_json
from appliance.identity.private_file import read_private_file
from appliance.identity.provider_http import ProviderError, ProviderHttp
from appliance.identity.tokens import TokenRejected, ValidToken

MAX_CACHED = 10_000
MAX_CONCURRENT = 4
REFUSAL_HOLD_S = 1.0
MAX_SECRET_BYTES = 4096
WHAT = "token introspection endpoint"
INACTIVE = "the identity provider says the token is no longer active (introspection)"
UNCONFIRMED = "the appliance could not confirm with the identity provider that the token is active (introspection)"


class IntrospectionError(ValueError):
    """An introspection setting that cannot be used (the secret file), naming the file and why."""


def read_client_secret(path: Path | str, *, owner_uid: int = 0) -> str:
    """The client secret in `path`: a regular file owned by `owner_uid` (root), mode 0600 or stricter, one line."""
    data = read_private_file(Path(path), owner_uid=owner_uid, max_bytes=MAX_SECRET_BYTES,
                             name="introspection client secret file", readable="the client secret",
                             error=IntrospectionError)
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise IntrospectionError(f"{path}: is not UTF-8 text") from None
    if not secret or any(c in secret for c in "\r\n") or not secret.isprintable():
        raise IntrospectionError(f"{path}: must hold the client secret alone, on one line of printable characters")
    return secret


def token_key(token: str) -> str:
    """What the cache and the in-flight table know a token by: its SHA-256, so that no token is kept."""
    return hashlib.sha256(token.encode()).hexdigest()


_MISS = object()


class IntrospectionCache:
    """Answers per token key until a time (sans-io): None for `active: true`, else the refusal."""

    def __init__(self, max_entries: int = MAX_CACHED) -> None:
        self.max_entries = max_entries
        self._until: OrderedDict[str, tuple[float, TokenRejected | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def lookup(self, key: str, now: float):
        """The kept answer (None: active; a TokenRejected), or `_MISS`."""
        held = self._until.get(key)
        if held is None:
            return _MISS
        if now >= held[0]:
            del self._until[key]
            return _MISS
        return held[1]

    def active(self, key: str, now: float) -> bool:
        return self.lookup(key, now) is None

    def store(self, key: str, until: float, now: float, answer: TokenRejected | None = None) -> None:
        if until <= now:
            return
        self._until.pop(key, None)
        self._until[key] = (until, answer)
        if len(self._until) > self.max_entries:
            for old in [k for k, (u, _) in self._until.items() if u <= now]:
                del self._until[old]
            while len(self._until) > self.max_entries:
                self._until.popitem(last=False)


def judge(answer: Any, endpoint: str) -> TokenRejected | None:
    """None for an answer saying `active: true`; otherwise the refusal, naming the endpoint and what it said."""
    if not isinstance(answer, dict):
        return TokenRejected(f"{UNCONFIRMED}: {WHAT} {endpoint}: the answer is not a JSON object",
                             "introspection-failed")
    active = answer.get("active")
    if active is True:
        return None
    if active is False:
        return TokenRejected(f"{INACTIVE}: {WHAT} {endpoint} answered active: false (a disabled client, an ended "
                             "session or a revoked token)", "inactive")
    shown = "no 'active' member" if "active" not in answer else f"'active' is {str(active)[:40]!r}, not a boolean"
    return TokenRejected(f"{INACTIVE}: {WHAT} {endpoint} gave no boolean 'active' ({shown}); RFC 7662 requires one, "
                         "so the token is refused", "inactive")


def _failure(error: ProviderError) -> TokenRejected:
    detail = str(error)
    if error.kind == "status" and error.body:
        # Keycloak says why (e.g. invalid_client for a wrong secret); quote the OAuth error, never the request.
        try:
            body = strict_json.loads(error.body)
        except Exception:  # noqa: BLE001 - an unreadable error body adds nothing
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            described = body.get("error_description")
            extra = f": {described[:160]}" if isinstance(described, str) else ""
            detail += f" ({body['error'][:60]}{extra})"
    return TokenRejected(f"{UNCONFIRMED}, so it is refused: {detail}", "introspection-failed")


class Introspector:
    """Asks one provider's introspection endpoint about tokens, on the event loop; the HTTP call runs in a thread."""

    def __init__(self, http: ProviderHttp, endpoint: str, client_id: str, client_secret: str, *,
                 cache_s: float = 5.0, max_concurrent: int = MAX_CONCURRENT,
                 cache: IntrospectionCache | None = None) -> None:
        self.http = http
        self.endpoint = endpoint
        self.client_id = client_id
        self._secret = client_secret
        self.cache_s = cache_s
        self.cache = cache or IntrospectionCache()
        self._calls = asyncio.Semaphore(max_concurrent)
        self._in_flight: dict[str, asyncio.Future] = {}
        self.requests = 0  # HTTP calls made, for status and tests

    def __repr__(self) -> str:
        return f"Introspector({self.endpoint!r}, client {self.client_id!r})"

    async def check(self, token: str, valid: ValidToken, now: float) -> TokenRejected | None:
        """None when the provider says (or said within the cache window) the token is active; else the refusal."""
        key = token_key(token)
        held = self.cache.lookup(key, now)
        if held is not _MISS:
            return held
        future = self._in_flight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._ask(key, token, valid, now))
            self._in_flight[key] = future
        return await asyncio.shield(future)

    async def _ask(self, key: str, token: str, valid: ValidToken, now: float) -> TokenRejected | None:
        try:
            async with self._calls:
                self.requests += 1
                answer = await asyncio.to_thread(
                    self.http.post_form_json, self.endpoint, {"token": token, "token_type_hint": "access_token"},
                    WHAT, basic=(self.client_id, self._secret))
        except ProviderError as e:
            refused = _failure(e)
        except Exception as e:  # noqa: BLE001 - any fault in asking is a refusal, never an escaped exception
            refused = TokenRejected(f"{UNCONFIRMED}, so it is refused: {WHAT} {self.endpoint}: "
                                    f"{type(e).__name__}: {str(e)[:120]}", "introspection-failed")
        else:
            refused = judge(answer, self.endpoint)
        finally:
            self._in_flight.pop(key, None)
        until = now + (self.cache_s if refused is None else min(self.cache_s, REFUSAL_HOLD_S))
        if valid.expires_at is not None:
            until = min(until, valid.expires_at)
        self.cache.store(key, until, now, refused)
        return refused
