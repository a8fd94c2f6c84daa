"""The provider shell against a real local HTTP server (a thread serving discovery and a JWKS)."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance.identity.jwks import JwksCache
from appliance.identity.oidc import ProviderClient, ProviderError, TokenVerifier
from appliance.identity.tokens import TokenRejected, TokenRules, ValidToken
from tests.identity.test_provider_http import Server, _closed_port
from tests.identity.tls_certs import TestCa
from tests.identity.token_keys import AUDIENCE, claims, ec_key, jwks, rsa_key


class Provider:
    """A minimal OIDC provider: what it serves can be changed while it runs."""

    def __init__(self) -> None:
        self.jwks: dict | bytes = jwks(rsa_key())
        self.status = 200
        self.requests: list[str] = []
        self.issuer_override: str | None = None
        self.delay_s = 0.0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                provider.requests.append(self.path)
                if provider.delay_s:
                    threading.Event().wait(provider.delay_s)
                if self.path == "/realms/kafka/.well-known/openid-configuration":
                    body = json.dumps({"issuer": provider.issuer_override or provider.issuer,
                                       "jwks_uri": provider.url + "/realms/kafka/certs"}).encode()
                elif self.path == "/realms/kafka/certs":
                    body = provider.jwks if isinstance(provider.jwks, bytes) else json.dumps(provider.jwks).encode()
                elif self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", provider.url + "/realms/kafka/certs")
                    self.end_headers()
                    return
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(provider.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer = self.url + "/realms/kafka"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def jwks_fetches(self) -> int:
        return self.requests.count("/realms/kafka/certs")

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.stop()


def test_discovery_then_jwks(provider):
    client = ProviderClient(provider.issuer)
    keys = client.fetch_jwks()
    assert keys.kids == ("rsa-1",)
    assert client.jwks_uri == provider.url + "/realms/kafka/certs"
    assert provider.requests == ["/realms/kafka/.well-known/openid-configuration", "/realms/kafka/certs"]


def test_discovery_issuer_must_match(provider):
    provider.issuer_override = "https://elsewhere/realms/kafka"
    with pytest.raises(ProviderError, match="issuer 'https://elsewhere/realms/kafka' is not the configured"):
        ProviderClient(provider.issuer).discover()


def test_discovery_refuses_a_jwks_uri_weaker_than_the_issuer(tmp_path):
    """An https issuer (a real TLS server, its certificate from a CA made here) naming an http JWKS."""
    ca = TestCa.make("oidc test CA")
    ca.write_cert(tmp_path / "ca.pem")
    server = Server((ca.issue_server(tmp_path / "s.pem", tmp_path / "s.key")))
    issuer = server.url("/realms/kafka")
    server.answer = (200, {"issuer": issuer, "jwks_uri": "http://127.0.0.1:9/realms/kafka/certs"}, {}, 0)
    try:
        with pytest.raises(ProviderError, match="jwks_uri 'http://127.0.0.1:9/realms/kafka/certs' is not https"):
            ProviderClient(issuer, ca_file=tmp_path / "ca.pem").discover()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "setup, fragment",
    [
        (lambda p: setattr(p, "status", 503), "JWKS at http://.*/certs: HTTP 503"),
        (lambda p: setattr(p, "jwks", b"<html>"), "JWKS at http://.*/certs: not JSON \\(line 1 column 1"),
        (lambda p: setattr(p, "jwks", b" " * (1024 * 1024 + 10)), "JWKS at http://.*/certs: the answer is 1048586 bytes, more than the 1 MiB"),
        (lambda p: setattr(p, "jwks", {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "JWKS at .*: key 0: kty 'oct'"),
    ],
)
def test_fetch_errors_name_the_url_and_the_fault(provider, setup, fragment):
    setup(provider)
    with pytest.raises(ProviderError, match=fragment):
        ProviderClient(provider.issuer, jwks_uri=provider.url + "/realms/kafka/certs").fetch_jwks()


def test_redirects_are_refused(provider):
    with pytest.raises(ProviderError, match="redirected \\(HTTP 302\\)"):
        ProviderClient(provider.issuer, jwks_uri=provider.url + "/moved").fetch_jwks()


def test_unreachable_and_slow(provider):
    with pytest.raises(ProviderError, match="unreachable"):
        ProviderClient(f"http://127.0.0.1:{_closed_port()}/realms/kafka").fetch_jwks()
    provider.delay_s = 0.5
    with pytest.raises(ProviderError, match="no answer within 0.2 s"):
        ProviderClient(provider.issuer, timeout_s=0.2).discover()


def _verifier(provider, **cache_settings):
    rules = TokenRules(issuer=provider.issuer, audiences=(AUDIENCE,))
    return TokenVerifier(rules, ProviderClient(provider.issuer, timeout_s=2), JwksCache(**cache_settings))


def _token(provider, key, now, **extra):
    return key.sign(claims(now, iss=provider.issuer, **extra))


def test_verify_rotation_refetches_once(provider):
    verifier = _verifier(provider, min_refetch_interval_s=10)
    now = 1_800_000_000.0

    async def scenario():
        assert isinstance(await verifier.verify(_token(provider, rsa_key(), now), now), ValidToken)
        assert provider.jwks_fetches() == 1
        assert isinstance(await verifier.verify(_token(provider, rsa_key(), now), now + 1), ValidToken)
        assert provider.jwks_fetches() == 1  # cached
        provider.jwks = jwks(rsa_key(), ec_key())  # the provider rotates in a new key
        later = now + 20
        assert isinstance(await verifier.verify(_token(provider, ec_key(), later), later), ValidToken)
        assert provider.jwks_fetches() == 2
        forged = rsa_key().sign(claims(later, iss=provider.issuer), kid="made-up")
        result = await verifier.verify(forged, later + 1)
        assert isinstance(result, TokenRejected) and result.kind == "unknown-kid"
        assert provider.jwks_fetches() == 2  # within the refetch interval: no fetch for a random kid

    asyncio.run(scenario())


def test_concurrent_verifies_share_one_fetch(provider):
    provider.delay_s = 0.2
    verifier = _verifier(provider)
    now = 1_800_000_000.0

    async def scenario():
        token = _token(provider, rsa_key(), now)
        results = await asyncio.gather(*(verifier.verify(token, now) for _ in range(20)))
        assert all(isinstance(r, ValidToken) for r in results)

    asyncio.run(scenario())
    assert provider.jwks_fetches() == 1 and verifier.fetches == 1


def test_provider_down_cached_keys_then_fail_closed(provider):
    verifier = _verifier(provider, max_age_s=300, keys_valid_for_s=3600, backoff_max_s=60)
    now = 1_800_000_000.0

    async def scenario():
        assert isinstance(await verifier.verify(_token(provider, rsa_key(), now), now), ValidToken)
        provider.status = 503
        t = now + 400  # refresh due: it runs behind the token, which the cached key validates at once
        assert isinstance(await verifier.verify(_token(provider, rsa_key(), t), t), ValidToken)
        await verifier.settled()
        assert provider.jwks_fetches() == 2 and "HTTP 503" in verifier.cache.last_error
        assert isinstance(await verifier.verify(_token(provider, rsa_key(), t + 1), t + 1), ValidToken)
        provider.stop()
        t = now + 3601  # past keys_valid_for after the last success: nothing validates
        result = await verifier.verify(_token(provider, rsa_key(), t), t)
        assert isinstance(result, TokenRejected) and result.kind == "keys-unavailable"
        assert "unreachable" in result.reason and "3600 s" in result.reason

    asyncio.run(scenario())


def test_a_slow_provider_does_not_delay_a_token_whose_key_is_trusted(provider):
    verifier = _verifier(provider, max_age_s=300)
    now = 1_800_000_000.0

    async def scenario():
        assert isinstance(await verifier.verify(_token(provider, rsa_key(), now), now), ValidToken)
        provider.delay_s = 0.5
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert isinstance(await verifier.verify(_token(provider, rsa_key(), now + 301), now + 301), ValidToken)
        assert loop.time() - started < 0.25
        await verifier.settled()
        assert provider.jwks_fetches() == 2 and verifier.cache.fetched_at == now + 301

    asyncio.run(scenario())


def test_unreachable_provider_at_start():
    issuer = f"http://127.0.0.1:{_closed_port()}/realms/kafka"
    verifier = TokenVerifier(TokenRules(issuer=issuer, audiences=(AUDIENCE,)), ProviderClient(issuer, timeout_s=1), JwksCache())
    now = 1_800_000_000.0

    async def scenario():
        result = await verifier.verify(rsa_key().sign(claims(now, iss=issuer)), now)
        assert isinstance(result, TokenRejected) and result.kind == "keys-unavailable"
        assert "no signing keys have been fetched" in result.reason and "unreachable" in result.reason
        # Within the backoff, no new attempt is made.
        await verifier.verify(rsa_key().sign(claims(now, iss=issuer)), now + 0.5)
        assert verifier.fetches == 1

    asyncio.run(scenario())


def test_garbage_tokens_never_cause_fetches(provider):
    verifier = _verifier(provider)

    async def scenario():
        hs256 = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"
        long_kid = rsa_key().sign(claims(0), kid="k" * 5000)
        for token in ("x", "a.b.c", "e30.e30.e30", hs256, long_kid):
            assert isinstance(await verifier.verify(token, 0), TokenRejected)

    asyncio.run(scenario())
    assert provider.jwks_fetches() == 0
