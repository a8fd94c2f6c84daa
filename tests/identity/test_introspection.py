"""Token introspection (RFC 7662) against a real local HTTP server in a thread; the verifier end to end with a
real JWKS provider beside it. No mock of urllib."""

from __future__ import annotations

import asyncio
import base64
import os
import urllib.parse

import pytest

import yaml

from appliance.config import ConfigError, parse_config
from appliance.identity.introspection import (INACTIVE, UNCONFIRMED, IntrospectionCache, IntrospectionError,
                                              Introspector, read_client_secret, token_key)
from appliance.identity.jwks import JwksCache
from appliance.identity.oidc import ProviderClient, TokenVerifier
from appliance.identity.provider_http import ProviderHttp
from appliance.identity.tokens import TokenRejected, TokenRules, ValidToken
from tests.identity.test_oidc import Provider
from tests.identity.test_provider_http import Server, _closed_port
from tests.identity.token_keys import AUDIENCE, claims, rsa_key

NOW = 1_800_000_000.0


def _valid(exp: float | None = NOW + 300) -> ValidToken:
    return ValidToken(subject="orders", groups=(), issuer="i", client_id="orders", jti="j", issued_at=NOW,
                      expires_at=exp, not_before=None, key_id=None, claims={})


@pytest.fixture
def idp():
    server = Server()
    server.answer = (200, {"active": True, "client_id": "orders"}, {}, 0.0)
    yield server
    server.stop()


def _introspector(idp, **kwargs) -> Introspector:
    return Introspector(ProviderHttp(timeout_s=2), idp.url("/introspect"), "appliance-upstream", "s3cr:t", **kwargs)


def check(introspector: Introspector, token: str = "tok-1", now: float = NOW, exp: float | None = NOW + 300):
    return asyncio.run(introspector.check(token, _valid(exp), now))


def test_active_true_admits_and_the_request_is_rfc_7662_with_basic_auth(idp):
    introspector = _introspector(idp)
    assert check(introspector) is None
    ((method, path, headers, body),) = idp.requests
    assert (method, path) == ("POST", "/introspect")
    assert urllib.parse.parse_qs(body.decode()) == {"token": ["tok-1"], "token_type_hint": ["access_token"]}
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"appliance-upstream:s3cr%3At").decode()


def test_active_false_refuses_naming_introspection_and_the_endpoint(idp):
    idp.answer = (200, {"active": False}, {}, 0.0)
    result = check(_introspector(idp))
    assert isinstance(result, TokenRejected) and result.kind == "inactive"
    assert result.reason == (f"{INACTIVE}: token introspection endpoint {idp.url('/introspect')} answered active: "
                             "false (a disabled client, an ended session or a revoked token)")
    assert result.reason.startswith("the identity provider says the token is no longer active (introspection): ")


@pytest.mark.parametrize("answer, shown", [({}, "no 'active' member"), ({"active": "true"}, "'active' is 'true'"),
                                           ({"active": 1}, "'active' is '1'"), ({"active": None}, "'active' is 'None'")])
def test_a_missing_or_non_boolean_active_refuses(idp, answer, shown):
    idp.answer = (200, answer, {}, 0.0)
    result = check(_introspector(idp))
    assert isinstance(result, TokenRejected) and result.kind == "inactive"
    assert result.reason.startswith(f"{INACTIVE}: token introspection endpoint {idp.url('/introspect')} gave no "
                                    f"boolean 'active' ({shown}")


def test_an_active_answer_is_cached_for_cache_s_and_a_refusal_for_a_second(idp):
    introspector = _introspector(idp, cache_s=5)
    assert check(introspector, now=NOW) is None
    assert check(introspector, now=NOW + 4.9) is None
    assert len(idp.requests) == 1  # within the window: no call
    assert check(introspector, "tok-2", now=NOW + 1) is None
    assert len(idp.requests) == 2  # per token
    idp.answer = (200, {"active": False}, {}, 0.0)
    assert check(introspector, now=NOW + 5).kind == "inactive"  # the window ended: asked again, and refused
    assert check(introspector, now=NOW + 5.9).kind == "inactive"
    assert len(idp.requests) == 3  # a retry within the refusal's second is answered from the cache
    idp.answer = (200, {"active": True}, {}, 0.0)  # the client is enabled again
    assert check(introspector, now=NOW + 6) is None
    assert len(idp.requests) == 4


def test_a_failure_is_held_for_a_second_too(idp):
    idp.answer = (503, b"", {}, 0.0)
    introspector = _introspector(idp, cache_s=5)
    assert check(introspector, now=NOW).kind == "introspection-failed"
    assert check(introspector, now=NOW + 0.5).kind == "introspection-failed"
    assert len(idp.requests) == 1
    idp.answer = (200, {"active": True}, {}, 0.0)
    assert check(introspector, now=NOW + 1) is None
    assert len(idp.requests) == 2


def test_the_cache_never_outlives_the_tokens_exp(idp):
    introspector = _introspector(idp, cache_s=60)
    assert check(introspector, now=NOW, exp=NOW + 2) is None
    assert check(introspector, now=NOW + 1.9, exp=NOW + 2) is None
    assert len(idp.requests) == 1
    assert check(introspector, now=NOW + 2, exp=NOW + 2) is None
    assert len(idp.requests) == 2  # at exp the cached answer is gone


def test_cache_s_zero_asks_every_time(idp):
    introspector = _introspector(idp, cache_s=0)
    for _ in range(3):
        assert check(introspector) is None
    assert len(idp.requests) == 3


def test_the_cache_keys_by_hash_and_is_bounded():
    cache = IntrospectionCache(max_entries=3)
    for i in range(5):
        cache.store(token_key(f"t{i}"), NOW + 10 + i, NOW)
    assert len(cache) == 3
    assert not cache.active(token_key("t0"), NOW) and cache.active(token_key("t4"), NOW)
    assert "t4" not in token_key("t4") and len(token_key("t4")) == 64


@pytest.mark.parametrize("status", [400, 401, 403, 500, 503])
def test_error_statuses_fail_closed_naming_the_endpoint_and_status(idp, status):
    idp.answer = (status, {"error": "invalid_client", "error_description": "Invalid client credentials"}, {}, 0.0)
    result = check(_introspector(idp))
    assert isinstance(result, TokenRejected) and result.kind == "introspection-failed"
    assert result.reason == (f"{UNCONFIRMED}, so it is refused: token introspection endpoint {idp.url('/introspect')}: "
                             f"HTTP {status} (invalid_client: Invalid client credentials)")


def test_not_json_and_not_an_object_fail_closed(idp):
    idp.answer = (200, b"<html>login</html>", {"Content-Type": "text/html"}, 0.0)
    result = check(_introspector(idp))
    assert result.kind == "introspection-failed"
    assert result.reason.startswith(f"{UNCONFIRMED}, so it is refused: token introspection endpoint "
                                    f"{idp.url('/introspect')}: not JSON")
    idp.answer = (200, [{"active": True}], {}, 0.0)
    result = check(_introspector(idp))
    assert result.kind == "introspection-failed" and result.reason.endswith(": the answer is not a JSON object")


def test_unreachable_and_slow_fail_closed():
    port = _closed_port()
    introspector = Introspector(ProviderHttp(timeout_s=1), f"http://127.0.0.1:{port}/i", "c", "s")
    result = check(introspector)
    assert result.kind == "introspection-failed"
    assert result.reason == (f"{UNCONFIRMED}, so it is refused: token introspection endpoint http://127.0.0.1:{port}/i: "
                             "unreachable (Connection refused)")


def test_a_slow_endpoint_is_bounded_by_the_timeout(idp):
    idp.answer = (200, {"active": True}, {}, 1.5)
    introspector = Introspector(ProviderHttp(timeout_s=0.5), idp.url("/introspect"), "c", "s")
    result = check(introspector)
    assert result.kind == "introspection-failed" and result.reason.endswith("no answer within 0.5 s")


def test_identical_requests_in_flight_share_one_call_and_distinct_ones_are_bounded(idp):
    idp.answer = (200, {"active": True}, {}, 0.3)
    introspector = _introspector(idp, max_concurrent=2)

    async def flood():
        same = [introspector.check("tok-same", _valid(), NOW) for _ in range(50)]
        return await asyncio.gather(*same)

    assert asyncio.run(flood()) == [None] * 50
    assert len(idp.requests) == 1 and introspector.requests == 1

    idp.requests.clear()
    idp.answer = (200, {"active": False}, {}, 0.3)

    async def distinct():
        loop = asyncio.get_running_loop()
        began = loop.time()
        results = await asyncio.gather(*(introspector.check(f"tok-{i}", _valid(), NOW) for i in range(4)))
        return results, loop.time() - began

    results, took = asyncio.run(distinct())
    assert all(r.kind == "inactive" for r in results)
    assert len(idp.requests) == 4
    assert took >= 0.55  # four calls of 0.3 s, two at a time: two rounds


def test_coalesced_waiters_all_get_the_refusal(idp):
    idp.answer = (200, {"active": False}, {}, 0.2)
    introspector = _introspector(idp)

    async def flood():
        return await asyncio.gather(*(introspector.check("tok-x", _valid(), NOW) for _ in range(10)))

    results = asyncio.run(flood())
    assert len(idp.requests) == 1 and all(r.kind == "inactive" for r in results)


# -- through the verifier: only tokens that pass the JWT checks are asked about -----------------------


def test_the_verifier_introspects_only_tokens_that_pass_the_jwt_checks(idp):
    provider = Provider()
    try:
        rules = TokenRules(issuer=provider.issuer, audiences=(AUDIENCE,))
        client = ProviderClient(provider.issuer, timeout_s=2)
        verifier = TokenVerifier(rules, client, JwksCache(), _introspector(idp))
        key = rsa_key()

        async def scenario():
            good = key.sign(claims(NOW, iss=provider.issuer))
            assert isinstance(await verifier.verify(good, NOW), ValidToken)
            expired = key.sign(claims(NOW - 1000, iss=provider.issuer))
            assert (await verifier.verify(expired, NOW)).kind == "expired"
            assert len(idp.requests) == 1  # the expired token was never sent to the provider
            idp.answer = (200, {"active": False}, {}, 0.0)
            other = key.sign(claims(NOW, iss=provider.issuer, jti="another"))
            refused = await verifier.verify(other, NOW)
            assert refused.kind == "inactive" and refused.reason.startswith(INACTIVE)

        asyncio.run(scenario())
    finally:
        provider.stop()


# -- the secret file and the configuration ----------------------------------------------------------


def test_the_secret_file_is_root_only(tmp_path):
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    os.chmod(path, 0o600)
    uid = os.getuid()
    assert read_client_secret(path, owner_uid=uid) == "s3cret"
    os.chmod(path, 0o640)
    with pytest.raises(IntrospectionError, match=r"has mode 0640, which lets group or others read the client secret"):
        read_client_secret(path, owner_uid=uid)
    os.chmod(path, 0o600)
    with pytest.raises(IntrospectionError, match=f"is owned by uid {uid}"):
        read_client_secret(path, owner_uid=uid + 1)
    with pytest.raises(IntrospectionError, match="does not exist"):
        read_client_secret(tmp_path / "missing", owner_uid=uid)
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(IntrospectionError, match="a symlink is refused"):
        read_client_secret(tmp_path / "link", owner_uid=uid)
    path.write_text("two\nlines\n")
    with pytest.raises(IntrospectionError, match="on one line"):
        read_client_secret(path, owner_uid=uid)


def _config(provider_extra: str) -> dict:
    return yaml.safe_load("identity:\n  providers:\n    - issuer: https://idp/realms/r\n      audiences: [kafka]\n"
                          + "".join(f"      {line}\n" for line in provider_extra.splitlines()))


def test_the_configuration_takes_the_three_settings_together():
    config = parse_config(_config("introspection_endpoint: https://idp/realms/r/protocol/openid-connect/token/"
                                      "introspect\nintrospection_client_id: appliance-upstream\n"
                                      "introspection_client_secret_file: /etc/appliance/introspection-secret\n"
                                      "introspection_cache_s: 2"))
    (provider,) = config.identity.providers
    assert provider.introspection_endpoint.endswith("/token/introspect")
    assert provider.introspection_client_id == "appliance-upstream"
    assert str(provider.introspection_client_secret_file) == "/etc/appliance/introspection-secret"
    assert provider.introspection_cache_s == 2.0
    off = parse_config(_config("")).identity.providers[0]
    assert off.introspection_endpoint is None and off.introspection_cache_s == 5.0


@pytest.mark.parametrize("extra, message", [
    ("introspection_endpoint: https://idp/i", "introspection needs introspection_endpoint, introspection_client_id, "
                                              "introspection_client_secret_file together; 'introspection_client_id', "
                                              "'introspection_client_secret_file' are missing"),
    ("introspection_endpoint: ftp://idp/i\nintrospection_client_id: c\nintrospection_client_secret_file: /s",
     "key 'introspection_endpoint' must be an http:// or https:// URL with a host, got 'ftp://idp/i'"),
    ("introspection_endpoint: http://idp/i\nintrospection_client_id: c\nintrospection_client_secret_file: /s",
     "key 'introspection_endpoint' must be https, as the issuer is"),
    ("introspection_endpoint: https://u:p@idp/i\nintrospection_client_id: c\nintrospection_client_secret_file: /s",
     "must not carry user information"),
    ("introspection_endpoint: https://idp/i\nintrospection_client_id: c\nintrospection_client_secret_file: s",
     "key 'introspection_client_secret_file' must be an absolute path"),
    ("introspection_endpoint: https://idp/i\nintrospection_client_id: ''\nintrospection_client_secret_file: /s",
     "key 'introspection_client_id' must be the client id"),
    ("introspection_cache_s: 5", "key 'introspection_cache_s' is set but introspection is not configured"),
    ("introspection_endpoint: https://idp/i\nintrospection_client_id: c\nintrospection_client_secret_file: /s\n"
     "introspection_cache_s: 301", "key 'introspection_cache_s' must be a number of seconds from 0 to 300"),
])
def test_bad_introspection_settings_are_refused_naming_the_key(extra, message):
    with pytest.raises(ConfigError) as e:
        parse_config(_config(extra))
    assert message in str(e.value)


def test_providers_read_the_secret_at_start_and_refuse_a_loose_file(tmp_path):
    from appliance.config import TokenProviderConfig
    from appliance.identity.providers import TokenProviders

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    provider = TokenProviderConfig(issuer="https://idp/realms/r", audiences=("kafka",),
                                   introspection_endpoint="https://idp/i", introspection_client_id="c",
                                   introspection_client_secret_file=secret)
    with pytest.raises(IntrospectionError, match=r"has mode 0644"):
        TokenProviders((provider,), owner_uid=os.getuid())
    os.chmod(secret, 0o600)
    verifier = TokenProviders((provider,), owner_uid=os.getuid())._verifiers["https://idp/realms/r"]
    assert verifier.introspector.endpoint == "https://idp/i" and verifier.introspector.cache_s == 5.0
    assert "s3cret" not in repr(verifier.introspector)
