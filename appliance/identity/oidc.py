"""The I/O shell for an OIDC provider: discovery, JWKS fetches, and the token verifier.

`ProviderClient` asks one provider for its configuration and keys through
the shared provider client (provider_http: http/https, TLS verified against
the system store or the configured CA file, a timeout, a size cap, no
redirects, strict JSON, errors that name the URL and the fault), and checks
what the answers say.

`TokenVerifier` puts the pure parts together for the event loop: it asks the
`JwksCache` whether to fetch, runs the fetch in a thread with
`asyncio.to_thread`, makes concurrent callers wait on one fetch rather than
start their own, validates the token with `tokens.validate`, and, when the
provider has an introspection endpoint, asks it whether a token that passed
is still active (`introspection.Introspector`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.identity.introspection import Introspector
from appliance.identity.jwks import FetchNeeded, JwksCache, JwksError, Key, KeyNotFound, KeySet, KeysUnavailable
from appliance.identity.provider_http import MAX_BYTES, ProviderError, ProviderHttp
from appliance.identity.tokens import TokenRejected, TokenRules, ValidToken, read_header, validate

__all__ = ["MAX_BYTES", "ProviderClient", "ProviderError", "TokenVerifier"]

_DISCOVERY_PATH = "/.well-known/openid-configuration"


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + _DISCOVERY_PATH


def read_discovery(http: ProviderHttp, issuer: str, endpoints: tuple[str, ...]) -> tuple[dict, dict[str, str]]:
    """The provider's discovery document, once it names `issuer`, and its http(s) URLs for `endpoints` (https
    ones when the issuer is); ProviderError naming the document and what is wrong otherwise."""
    what, url = "OpenID configuration at", discovery_url(issuer)
    config = http.get_json(url, what)
    if not isinstance(config, dict):
        raise ProviderError(what, url, "not a JSON object")
    if config.get("issuer") != issuer:
        shown = str(config.get("issuer"))[:200]
        raise ProviderError(what, url, f"issuer {shown!r} is not the configured {issuer!r} (tokens would not "
                            "match; configure the provider's exact issuer)")
    found = {}
    for key in endpoints:
        value = config.get(key)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise ProviderError(what, url, f"no http(s) {key!r}")
        if issuer.startswith("https://") and not value.startswith("https://"):
            raise ProviderError(what, url, f"{key} {value[:200]!r} is not https, as the issuer is")
        found[key] = value
    return config, found


class ProviderClient:
    """Blocking access to one provider's discovery document and JWKS; call it from a thread, never the event loop."""

    def __init__(
        self,
        issuer: str,
        jwks_uri: str | None = None,
        timeout_s: float = 5,
        max_bytes: int = MAX_BYTES,
        ca_file: Path | str | None = None,
    ) -> None:
        for name, url in (("issuer", issuer), ("jwks_uri", jwks_uri)):
            if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
                raise ValueError(f"OIDC provider {name} {url!r} must be an http:// or https:// URL")
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.timeout_s = timeout_s
        self.http = ProviderHttp(ca_file=ca_file, timeout_s=timeout_s, max_bytes=max_bytes)

    def discover(self) -> str:
        """Read the provider's configuration; check it names our issuer; return (and keep) its jwks_uri."""
        _, found = read_discovery(self.http, self.issuer, ("jwks_uri",))
        self.jwks_uri = found["jwks_uri"]
        return self.jwks_uri

    def fetch_jwks(self) -> KeySet:
        """The provider's current signing keys (discovering the JWKS URL first if it is not known)."""
        url = self.jwks_uri or self.discover()
        document = self.http.get_json(url, "JWKS at")
        try:
            return KeySet.from_jwks(document)
        except JwksError as e:
            detail = str(e).removeprefix("JWKS is ").removeprefix("JWKS ")
            raise ProviderError("JWKS at", url, detail) from None


class TokenVerifier:
    """Verifies tokens on the event loop; key fetches run in a thread, one at a time."""

    def __init__(self, rules: TokenRules, client: ProviderClient, cache: JwksCache,
                 introspector: Introspector | None = None) -> None:
        self.rules = rules
        self.client = client
        self.cache = cache
        self.introspector = introspector  # asked about every token that passes the JWT checks, when configured
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
        result = validate(token, self.cache.keyset, self.rules, now)
        if isinstance(result, ValidToken) and self.introspector is not None:
            refused = await self.introspector.check(token, result, now)
            if refused is not None:
                return refused
        return result
