"""The I/O shell that keeps the appliance's own OAuth access token fresh: fetch, cache, refresh in the background.

    source = TokenSource(OAuthBearerCredentials(endpoint, "appliance-upstream", secret))
    source.start()                      # on the running event loop: fetches at once, then at 80% of each lifetime
    await source.first_token(5)         # optional: wait (bounded) for the first answer
    source.current(time.time())         # BearerToken or TokenUnavailable: never waits for the provider
    await source.stop()

`TokenEndpointClient.fetch` asks the token endpoint through the shared client
for providers (appliance/identity/provider_http.py: the client_credentials
grant, RFC 6749 section 4.4, the client authenticated with HTTP Basic,
section 2.3.1; TLS verified against the system store or the credentials'
`ca_file`; a timeout, a deadline and a bounded read; no redirects; errors that
name the endpoint and the HTTP status or fault). It runs in a thread
(`asyncio.to_thread`), one fetch at a time. When to fetch, and which token new
connections get meanwhile, is decided by the pure `RefreshSchedule`
(oauth_token.py). The client secret is in no log line or error; the token
neither.
"""

from __future__ import annotations

import asyncio
import logging
import time

from appliance.broker.credentials import OAuthBearerCredentials
from appliance.broker.oauth_token import (
    BearerToken,
    RefreshSchedule,
    TokenResponseError,
    TokenUnavailable,
    error_response_text,
    parse_token_response,
)
from appliance.identity.provider_http import ProviderError, ProviderHttp

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 256 * 1024
TIMEOUT_S = 5.0  # each connect and read
TOTAL_TIMEOUTS = 3  # the whole fetch, in TIMEOUT_S: the source stops waiting after this


class TokenFetchError(RuntimeError):
    """The token endpoint could not be asked, or refused: names the endpoint and the HTTP status or fault."""


class TokenEndpointClient:
    """Blocking client_credentials requests to one token endpoint; call it from a thread, never the event loop."""

    def __init__(self, credentials: OAuthBearerCredentials, *, timeout_s: float = TIMEOUT_S,
                 max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.http = ProviderHttp(ca_file=credentials.ca_file, timeout_s=timeout_s, max_bytes=max_bytes,
                                 deadline_s=TOTAL_TIMEOUTS * timeout_s)

    def fetch(self, now: float | None = None) -> BearerToken:
        """A new access token for the appliance's client; raises TokenFetchError naming what went wrong."""
        creds = self.credentials
        try:
            answer = self.http.client_credentials(creds.token_endpoint, creds.client_id, creds.client_secret,
                                                  scope=creds.scope)
        except ProviderError as e:
            if e.status is None:
                raise TokenFetchError(str(e)) from None
            detail = error_response_text(e.body)
            hint = " (the provider refused the appliance's client id or secret)" if e.status == 401 else ""
            raise TokenFetchError(f"{e}{': ' + detail if detail else ''}{hint}") from None
        try:
            return parse_token_response(answer, creds.token_endpoint, time.time() if now is None else now)
        except TokenResponseError as e:
            raise TokenFetchError(str(e)) from None


class TokenSource:
    """The appliance's current upstream token, refreshed in the background on the event loop it started on."""

    mechanism = "OAUTHBEARER"

    def __init__(self, credentials: OAuthBearerCredentials, *, client: TokenEndpointClient | None = None,
                 schedule: RefreshSchedule | None = None, clock=time.time) -> None:
        self.credentials = credentials
        self.client = client or TokenEndpointClient(credentials)
        self.schedule = schedule or RefreshSchedule()
        self.clock = clock
        self.fetches = 0  # attempts, for status and tests
        self._task: asyncio.Task | None = None
        self._thread: asyncio.Future | None = None  # the fetch running in a thread, if any
        self._answered = asyncio.Event()  # the first fetch has succeeded or failed
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"<TokenSource {self.credentials.client_id} at {self.credentials.token_endpoint}>"

    def current(self, now: float) -> BearerToken | TokenUnavailable:
        """The token a new broker connection authenticates with now; never waits."""
        return self.schedule.current(now)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="upstream-token-refresh")

    async def first_token(self, timeout_s: float) -> BearerToken | TokenUnavailable:
        """Wait (at most `timeout_s`) for the first fetch's outcome, then say what new connections would get."""
        try:
            await asyncio.wait_for(self._answered.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        return self.current(self.clock())

    def refresh_now(self) -> None:
        """Make the next fetch due at once (a broker refused the token, an operator asked)."""
        self.schedule.next_fetch_at = float("-inf")
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            wait = self.schedule.wait_s(self.clock())
            if wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            await self.fetch_once()

    async def fetch_once(self) -> None:
        """One fetch, in a thread, and its outcome given to the schedule.

        The source waits at most TOTAL_TIMEOUTS socket timeouts (a provider can drip its response headers);
        a thread still stuck in an abandoned request is not joined by a second one: the attempt fails.
        """
        self.fetches += 1
        total = TOTAL_TIMEOUTS * self.client.timeout_s
        try:
            if self._thread is not None and not self._thread.done():
                raise TokenFetchError(f"token endpoint {self.credentials.token_endpoint}: the previous request "
                                      "has still not finished")
            self._thread = asyncio.ensure_future(asyncio.to_thread(self.client.fetch))
            token = await asyncio.wait_for(asyncio.shield(self._thread), total)
        except asyncio.TimeoutError:
            self._failed(f"token endpoint {self.credentials.token_endpoint}: no complete answer within {total:g} s")
        except TokenFetchError as e:
            self._failed(str(e))
        except Exception as e:  # noqa: BLE001 - any fault is a failed fetch, retried with backoff, never an escape
            self._failed(f"token fetch from {self.credentials.token_endpoint} failed: {type(e).__name__}")
        else:
            self.schedule.fetched(token, self.clock())
            log.info("upstream OAUTHBEARER token for %s obtained; valid %.0f s, next refresh in %.0f s",
                     self.credentials.client_id, token.expires_at - token.obtained_at,
                     self.schedule.wait_s(self.clock()))
        self._answered.set()

    def _failed(self, reason: str) -> None:
        now = self.clock()
        self.schedule.failed(reason, now)
        held = self.schedule.token is not None and self.schedule.token.valid_at(now)
        log.warning("upstream OAUTHBEARER token for %s not obtained: %s; %s; retrying in %.0f s",
                    self.credentials.client_id, reason,
                    "the current token stays in use meanwhile" if held else "new broker connections fail meanwhile",
                    self.schedule.wait_s(now))

    def status(self, now: float) -> dict:
        """For `appliance status`: whose token, until when, and the last failure (never the token itself)."""
        schedule = self.schedule
        token = schedule.token
        return {
            "mechanism": self.mechanism, "client_id": self.credentials.client_id,
            "token_endpoint": self.credentials.token_endpoint,
            "token_valid": token is not None and token.valid_at(now),
            "token_expires_at": None if token is None else token.expires_at,
            "next_refresh_in_s": round(schedule.wait_s(now), 1), "consecutive_failures": schedule.failures,
            "last_error": schedule.last_error, "fetches": self.fetches,
        }
