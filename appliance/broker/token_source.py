"""The I/O shell that keeps the appliance's own OAuth access token fresh: fetch, cache, refresh in the background.

    source = TokenSource(OAuthBearerCredentials(endpoint, "appliance-upstream", secret))
    source.start()                      # on the running event loop: fetches at once, then at 80% of each lifetime
    await source.first_token(5)         # optional: wait (bounded) for the first answer
    source.current(time.time())         # BearerToken or TokenUnavailable: never waits for the provider
    await source.stop()

`TokenEndpointClient.fetch` is the only code here that opens a connection: one
blocking urllib POST (client_credentials grant, RFC 6749 section 4.4, the
client authenticated with HTTP Basic, section 2.3.1), with a timeout, a bounded
read, no redirects, and errors that name the endpoint and the HTTP status. It
runs in a thread (`asyncio.to_thread`), one fetch at a time. When to fetch, and
which token new connections get meanwhile, is decided by the pure
`RefreshSchedule` (oauth_token.py). The client secret is in no log line or
error; the token neither.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from appliance.broker.credentials import OAuthBearerCredentials
from appliance.broker.oauth_token import (
    BearerToken,
    RefreshSchedule,
    TokenResponseError,
    TokenUnavailable,
    error_response_text,
    parse_token_response,
)

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 256 * 1024
TIMEOUT_S = 5.0  # each connect and read
TOTAL_TIMEOUTS = 3  # the whole fetch, in TIMEOUT_S: the source stops waiting after this


class TokenFetchError(RuntimeError):
    """The token endpoint could not be asked, or refused: names the endpoint and the HTTP status or fault."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        # Following one would re-send the client's credentials to wherever it points.
        raise TokenFetchError(f"token endpoint {req.full_url}: redirected (HTTP {code}); configure the final URL")


def _read_bounded(response, limit: int, what: str, deadline: float | None = None) -> bytes:
    """At most `limit` bytes of the body, and all of it by `deadline` (monotonic): the socket timeout alone
    bounds each read, so a provider sending a byte every few seconds would otherwise hold the fetch for ever."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TokenFetchError(f"{what}: the answer is {declared} bytes, more than the {limit} bytes the appliance reads")
    chunks, size = [], 0
    while size <= limit:
        if deadline is not None and time.monotonic() > deadline:
            raise TokenFetchError(f"{what}: the answer did not arrive whole in time")
        chunk = response.read1(min(64 * 1024, limit + 1 - size)) if hasattr(response, "read1") else \
            response.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise TokenFetchError(f"{what}: the answer is more than the {limit} bytes the appliance reads")
    return b"".join(chunks)


class TokenEndpointClient:
    """Blocking client_credentials requests to one token endpoint; call it from a thread, never the event loop."""

    def __init__(self, credentials: OAuthBearerCredentials, *, timeout_s: float = TIMEOUT_S,
                 max_bytes: int = MAX_RESPONSE_BYTES, ssl_context: ssl.SSLContext | None = None) -> None:
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._opener = urllib.request.build_opener(
            _NoRedirects(), urllib.request.HTTPSHandler(context=ssl_context or ssl.create_default_context()))

    def _request(self) -> urllib.request.Request:
        creds = self.credentials
        form = {"grant_type": "client_credentials"}
        if creds.scope is not None:
            form["scope"] = creds.scope
        # RFC 6749 2.3.1: id and secret are form-encoded before they are joined and base64-encoded.
        basic = ":".join(urllib.parse.quote(v, safe="") for v in (creds.client_id, creds.client_secret))
        return urllib.request.Request(
            creds.token_endpoint, data=urllib.parse.urlencode(form).encode(), method="POST",
            headers={"Authorization": "Basic " + base64.b64encode(basic.encode()).decode(),
                     "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                     "User-Agent": "appliance"})

    def fetch(self, now: float | None = None) -> BearerToken:
        """A new access token for the appliance's client; raises TokenFetchError naming what went wrong."""
        endpoint = self.credentials.token_endpoint
        what = f"token endpoint {endpoint}"
        deadline = time.monotonic() + TOTAL_TIMEOUTS * self.timeout_s
        try:
            with self._opener.open(self._request(), timeout=self.timeout_s) as response:
                body = _read_bounded(response, self.max_bytes, what, deadline)
        except TokenFetchError:
            raise
        except urllib.error.HTTPError as e:
            try:
                detail = error_response_text(_read_bounded(e, self.max_bytes, what))
            except (TokenFetchError, OSError, http.client.HTTPException):
                detail = ""
            finally:
                e.close()
            hint = " (the provider refused the appliance's client id or secret)" if e.code == 401 else ""
            raise TokenFetchError(f"{what} answered HTTP {e.code}{': ' + detail if detail else ''}{hint}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TokenFetchError(f"{what}: no answer within {self.timeout_s:g} s") from None
            reason = e.reason if isinstance(e.reason, str) else (getattr(e.reason, "strerror", None) or str(e.reason))
            raise TokenFetchError(f"{what}: unreachable ({reason})") from None
        except TimeoutError:
            raise TokenFetchError(f"{what}: no answer within {self.timeout_s:g} s") from None
        except (OSError, ValueError, http.client.HTTPException) as e:  # reset mid-body, bad status line, short body
            raise TokenFetchError(f"{what}: {type(e).__name__}: {str(e)[:120]}") from None
        try:
            return parse_token_response(body, endpoint, time.time() if now is None else now)
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
