"""The I/O shell for an OIDC provider: discovery, JWKS fetches, and the token verifier.

`ProviderClient` is the only code here that opens a connection: blocking
urllib GETs with a timeout and a bounded read, and errors that name the URL
and what went wrong. Redirects are refused (the configured URL must be the
real one, and a redirect could downgrade https to http).

`TokenVerifier` puts the pure parts together for the event loop: it asks the
`JwksCache` whether to fetch, runs the fetch in a thread with
`asyncio.to_thread`, makes concurrent callers wait on one fetch rather than
start their own, and validates the token with `tokens.validate`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from appliance.identity.jwks import FetchNeeded, JwksCache, JwksError, Key, KeyNotFound, KeySet, KeysUnavailable
from appliance.identity.tokens import TokenRejected, TokenRules, ValidToken, read_header, validate

MAX_BYTES = 1 << 20
_DISCOVERY_PATH = "/.well-known/openid-configuration"


class ProviderError(RuntimeError):
    """The provider could not be asked or gave an unusable answer, naming the URL and the fault."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ProviderError(f"{req.full_url}: redirected (HTTP {code}) to {newurl}; configure the final URL")


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


class ProviderClient:
    """Blocking HTTP(S) access to one provider; call it from a thread, never the event loop."""

    def __init__(
        self,
        issuer: str,
        jwks_uri: str | None = None,
        timeout_s: float = 5,
        max_bytes: int = MAX_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        for name, url in (("issuer", issuer), ("jwks_uri", jwks_uri)):
            if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
                raise ValueError(f"OIDC provider {name} {url!r} must be an http:// or https:// URL")
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._opener = urllib.request.build_opener(
            _NoRedirects(), urllib.request.HTTPSHandler(context=ssl_context or ssl.create_default_context())
        )

    def _get(self, url: str, what: str) -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "appliance"})
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ProviderError(f"{what} at {url}: larger than {_size_text(self.max_bytes)} ({declared} bytes)")
                body = response.read(self.max_bytes + 1)
        except ProviderError:
            raise
        except urllib.error.HTTPError as e:
            raise ProviderError(f"{what} at {url}: HTTP {e.code}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ProviderError(f"{what} at {url}: no answer within {self.timeout_s:g} s") from None
            reason = e.reason if isinstance(e.reason, str) else (getattr(e.reason, "strerror", None) or str(e.reason))
            raise ProviderError(f"{what} at {url}: unreachable ({reason})") from None
        except TimeoutError:
            raise ProviderError(f"{what} at {url}: no answer within {self.timeout_s:g} s") from None
        except (OSError, ValueError, http.client.HTTPException) as e:  # reset mid-body, bad status line, short body
            raise ProviderError(f"{what} at {url}: {type(e).__name__}: {str(e)[:120]}") from None
        if len(body) > self.max_bytes:
            raise ProviderError(f"{what} at {url}: larger than {_size_text(self.max_bytes)}")
        return body

    def _json(self, url: str, what: str) -> Any:
        body = self._get(url, what)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ProviderError(f"{what} at {url}: not JSON") from None

    def discover(self) -> str:
        """Read the provider's configuration; check it names our issuer; return (and keep) its jwks_uri."""
        url = self.issuer.rstrip("/") + _DISCOVERY_PATH
        config = self._json(url, "OpenID configuration")
        if not isinstance(config, dict):
            raise ProviderError(f"OpenID configuration at {url}: not a JSON object")
        if config.get("issuer") != self.issuer:
            raise ProviderError(
                f"OpenID configuration at {url}: issuer {str(config.get('issuer'))[:200]!r} is not the configured "
                f"{self.issuer!r} (tokens would not match; configure the provider's exact issuer)"
            )
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ProviderError(f"OpenID configuration at {url}: no http(s) 'jwks_uri'")
        if self.issuer.startswith("https://") and not jwks_uri.startswith("https://"):
            raise ProviderError(f"OpenID configuration at {url}: jwks_uri {jwks_uri[:200]!r} is not https, as the issuer is")
        self.jwks_uri = jwks_uri
        return jwks_uri

    def fetch_jwks(self) -> KeySet:
        """The provider's current signing keys (discovering the JWKS URL first if it is not known)."""
        url = self.jwks_uri or self.discover()
        body = self._get(url, "JWKS")
        try:
            return KeySet.from_jwks(body, max_bytes=self.max_bytes)
        except JwksError as e:
            detail = str(e).removeprefix("JWKS is ").removeprefix("JWKS ")
            raise ProviderError(f"JWKS at {url}: {detail}") from None


class TokenVerifier:
    """Verifies tokens on the event loop; key fetches run in a thread, one at a time."""

    def __init__(self, rules: TokenRules, client: ProviderClient, cache: JwksCache) -> None:
        self.rules = rules
        self.client = client
        self.cache = cache
        self._fetch: asyncio.Future | None = None  # the one fetch under way
        self.fetches = 0  # attempts started, for status and tests

    def _start_fetch(self, now: float) -> asyncio.Future:
        if self._fetch is None:
            self._fetch = asyncio.ensure_future(self._run_fetch(now))
        return self._fetch

    async def refresh(self, now: float) -> None:
        """Fetch the keys now, or wait for the fetch already under way."""
        await asyncio.shield(self._start_fetch(now))

    async def settled(self) -> None:
        """Wait for a fetch under way, if any (for shutdown and tests)."""
        if self._fetch is not None:
            await asyncio.shield(self._fetch)

    async def _run_fetch(self, now: float) -> None:
        self.fetches += 1
        try:
            keyset = await asyncio.to_thread(self.client.fetch_jwks)
        except ProviderError as e:
            self.cache.failed(str(e), now)
        except Exception as e:  # a fault in the fetch must be a failed fetch, never an escaped exception
            self.cache.failed(f"JWKS fetch failed: {type(e).__name__}: {str(e)[:120]}", now)
        else:
            self.cache.fetched(keyset, now)
        finally:
            self._fetch = None

    async def verify(self, token: str, now: float) -> ValidToken | TokenRejected:
        header = read_header(token, self.rules)
        if isinstance(header, TokenRejected):  # a token that cannot pass anyway must not make us fetch keys
            return header
        kid = header.kid
        found = self.cache.lookup(kid, now)
        if self.cache.due(now):
            if isinstance(found, Key):
                # The key is trusted already: refresh behind this token, not in front of it, so that a slow
                # or unreachable provider costs no login any latency while its keys are still trusted.
                self._start_fetch(now)
            else:
                await self.refresh(now)
                found = self.cache.lookup(kid, now)
        if isinstance(found, FetchNeeded):
            await self.refresh(now)
            found = self.cache.lookup(kid, now)
        if isinstance(found, (KeysUnavailable, FetchNeeded)):
            return TokenRejected(f"cannot verify tokens: {found.reason}", "keys-unavailable")
        if isinstance(found, KeyNotFound):
            return TokenRejected(found.reason, "unknown-kid")
        assert isinstance(found, Key) and self.cache.keyset is not None
        return validate(token, self.cache.keyset, self.rules, now)
