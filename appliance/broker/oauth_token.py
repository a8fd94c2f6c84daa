"""The appliance's own OAuth access token towards brokers: the token, the endpoint's answer, when to refresh (pure).

No sockets, threads or clocks: `now` comes in as an argument, so the timing is
tested without sleeping. token_source.py is the shell that fetches.

    schedule = RefreshSchedule()
    schedule.due(now)                       # fetch now?  (first at once)
    schedule.fetched(token, now)            # next refresh at 80% of its lifetime
    schedule.failed("HTTP 503 ...", now)    # retry after 1, 2, 4 ... 60 s
    schedule.current(now)                   # BearerToken, or TokenUnavailable(reason)

A failed refresh keeps the token held while it is still valid, so sessions
never wait for the provider, and never learn of a refresh that failed while a
good token remains; once it has run out, `current` names the last failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from appliance.identity import strict_json

# RFC 6750 section 2.1, b64token: what a bearer token may consist of. Anything else
# (a 0x01, a space, a comma) would break the OAUTHBEARER message it goes into.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_CHARS = 64 * 1024
# Refresh at this fraction of a token's lifetime (obtained to expiry).
REFRESH_AT = 0.8
# A token is not handed to a new connection this close to its expiry: the
# broker must still find it valid when it checks, a round trip later.
EXPIRY_MARGIN_S = 5.0
# Backoff after a failed fetch: 1, 2, 4 ... seconds, at most 60.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
# However short a token's lifetime, the endpoint is not asked more often than this.
MIN_REFRESH_INTERVAL_S = 1.0


class TokenResponseError(ValueError):
    """A token endpoint's answer that holds no usable token; the message names the endpoint and the fault."""


@dataclass(frozen=True, slots=True)
class BearerToken:
    """An access token and its lifetime (absolute epoch seconds). The token stays out of repr()."""

    value: str = field(repr=False)
    obtained_at: float
    expires_at: float

    def valid_at(self, now: float, margin: float = EXPIRY_MARGIN_S) -> bool:
        return now < self.expires_at - margin


@dataclass(frozen=True, slots=True)
class TokenUnavailable:
    """No token that may be used now, and why (the provider's error, or that none was fetched yet)."""

    reason: str


def parse_token_response(body: bytes | Any, endpoint: str, now: float) -> BearerToken:
    """The access token from a successful (HTTP 200) client_credentials answer (RFC 6749 section 5.1): its
    bytes, or its JSON as the provider client (identity/provider_http.py) decoded it."""
    what = f"token endpoint {endpoint}"
    if isinstance(body, (bytes, bytearray)):
        try:
            body = strict_json.loads(bytes(body))
        except strict_json.JsonError as e:
            raise TokenResponseError(f"{what}: the answer is {e}") from None
    data = body
    if not isinstance(data, dict):
        raise TokenResponseError(f"{what}: the answer is not a JSON object")
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenResponseError(f"{what}: the answer has no 'access_token'")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenResponseError(f"{what}: the access token is {len(token)} characters, more than {MAX_TOKEN_CHARS}")
    if not _B64TOKEN.fullmatch(token):
        raise TokenResponseError(f"{what}: the access token has characters a bearer token may not (RFC 6750 2.1)")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenResponseError(f"{what}: token_type is {str(token_type)[:40]!r}, not 'Bearer'")
    expires_in = data.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():  # some providers send it as a string
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or not 0 < expires_in <= 7 * 86400:
        raise TokenResponseError(
            f"{what}: expires_in is {str(expires_in)[:40]!r}; the appliance needs the token's lifetime "
            "(positive seconds, at most a week) to refresh it in time")
    return BearerToken(token, now, now + float(expires_in))


def error_response_text(body: bytes) -> str:
    """A token endpoint's error answer (RFC 6749 section 5.2) as a short line: `error: description`."""
    try:
        data = strict_json.loads(body)
    except strict_json.JsonError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        text = data["error"]
        description = data.get("error_description")
        if isinstance(description, str) and description:
            text += f" ({description})"
        return _printable(text, 200)
    return ""


def _printable(text: str, limit: int) -> str:
    """Hostile text made safe for one log line: printable ASCII only, cut to `limit`."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


@dataclass(slots=True)
class RefreshSchedule:
    """When to fetch the next token, and which token (if any) new connections get now."""

    refresh_at: float = REFRESH_AT
    backoff_first_s: float = BACKOFF_FIRST_S
    backoff_max_s: float = BACKOFF_MAX_S
    margin_s: float = EXPIRY_MARGIN_S
    token: BearerToken | None = None
    last_error: str | None = None
    failures: int = 0  # consecutive failed fetches
    next_fetch_at: float = float("-inf")  # the first fetch is due at once

    def due(self, now: float) -> bool:
        return now >= self.next_fetch_at

    def fetched(self, token: BearerToken, now: float) -> None:
        self.token = token
        self.failures = 0
        self.last_error = None
        lifetime = max(0.0, token.expires_at - token.obtained_at)
        self.next_fetch_at = max(token.obtained_at + self.refresh_at * lifetime, now + MIN_REFRESH_INTERVAL_S)

    def failed(self, reason: str, now: float) -> None:
        self.failures += 1
        self.last_error = reason
        delay = min(self.backoff_first_s * 2 ** (self.failures - 1), self.backoff_max_s)
        at = now + delay
        token = self.token
        if token is not None and token.valid_at(now, self.margin_s):
            # Retry once more before the held token runs out, even if the backoff would wait longer.
            last_chance = token.expires_at - self.margin_s - self.backoff_first_s
            if at > last_chance:
                at = max(now + self.backoff_first_s, last_chance)
        self.next_fetch_at = at

    def current(self, now: float) -> BearerToken | TokenUnavailable:
        token = self.token
        if token is not None and token.valid_at(now, self.margin_s):
            return token
        if token is not None:
            expired = f"the appliance's token ran out at epoch {token.expires_at:.0f}"
            if self.last_error:
                return TokenUnavailable(f"{expired} and refreshing it failed: {self.last_error}")
            return TokenUnavailable(f"{expired} and no new one has been fetched yet")
        if self.last_error:
            return TokenUnavailable(self.last_error)
        return TokenUnavailable("the appliance has not obtained its first token from the provider yet")

    def wait_s(self, now: float) -> float:
        """Seconds until the next fetch is due (0 if it is due)."""
        return max(0.0, self.next_fetch_at - now)
