import json

import pytest

from appliance.identity.jwks import FetchNeeded, JwksCache, JwksError, Key, KeyNotFound, KeySet, KeysUnavailable
from tests.identity.token_keys import ec_key, ed_key, jwks, rsa_key


def test_each_key_type_and_what_it_verifies():
    keys = KeySet.from_jwks(json.dumps(jwks(rsa_key(), ec_key(), ec_key("ec-384", "P-384"), ed_key())).encode())
    assert [k.kid for k in keys.keys] == ["rsa-1", "ec-1", "ec-384", "ed-1"]
    assert keys.find("rsa-1").algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert keys.find("ec-1").algorithms == {"ES256"} and keys.find("ec-384").algorithms == {"ES384"}
    assert keys.find("ed-1").algorithms == {"EdDSA"}
    assert keys.find(None) is None and keys.find("nope") is None
    assert keys.ignored == ()


def test_jwk_alg_narrows_the_key():
    keys = KeySet.from_jwks({"keys": [rsa_key().jwk(alg="PS256")]})
    assert keys.find("rsa-1").algorithms == {"PS256"}
    with pytest.raises(JwksError, match="alg 'ES256' cannot be used with a RSA"):
        KeySet.from_jwks({"keys": [rsa_key().jwk(alg="ES256")]})


def test_keys_for_other_uses_are_skipped_and_reported():
    body = {"keys": [rsa_key().jwk(), rsa_key("enc").jwk(use="enc", alg="RSA-OAEP"),
                     ec_key("ops").jwk(key_ops=["encrypt"]), ec_key("wrap").jwk(use=None, alg="ECDH-ES")]}
    body["keys"][3].pop("use")
    keys = KeySet.from_jwks(body)
    assert keys.kids == ("rsa-1",)
    assert keys.find(None).kid == "rsa-1"  # the one signing key
    assert len(keys.ignored) == 3
    assert "use 'enc' is not 'sig'" in keys.ignored[0]
    assert "key_ops" in keys.ignored[1] and "ECDH-ES" in keys.ignored[2]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "kty 'oct' is a symmetric secret"),
        ({"keys": [{**rsa_key().jwk(), "d": "AAAA"}]}, "private key material (d)"),
        ({"keys": [rsa_key().jwk(alg="HS256")]}, "HMAC"),
        ({"keys": [rsa_key().jwk(), rsa_key().jwk()]}, "kid 'rsa-1' is used by more than one"),
        ({"keys": [rsa_key("small", 1024).jwk()]}, "1024 bits is weaker than the 2048"),
        ({"keys": [{**ec_key().jwk(), "crv": "secp256k1"}]}, "curve 'secp256k1' is not supported"),
        ({"keys": [{"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "x"}]}, "OKP curve 'X25519'"),
        ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "bad"}]}, "not a valid EC public key"),
        ({"keys": [{"kty": "RSA", "kid": "r"}]}, "not a valid RSA public key"),
        ({"keys": [{"kty": "DSA", "kid": "d"}]}, "kty 'DSA' is not supported"),
        ({"keys": [{**rsa_key().jwk(), "kid": 7}]}, "'kid' must be a string"),
        ({"keys": ["x"]}, "key 0: must be a JSON object"),
        ({"keys": {}}, "no 'keys' list"),
        ([], "must be a JSON object"),
        (b"{", "not JSON"),
        (b'{"keys": [], "keys": []}', "appears twice"),
        (b" " * 300_000, "more than the 262144 allowed"),
        ({"keys": [{"kty": "EC", "crv": "P-256"}] * 65}, "65 keys"),
    ],
)
def test_dangerous_or_broken_documents_are_refused(body, fragment):
    with pytest.raises(JwksError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        KeySet.from_jwks(body)


# --- the cache -----------------------------------------------------------------------------------

ONE = KeySet.from_jwks(jwks(rsa_key()))
ROTATED = KeySet.from_jwks(jwks(rsa_key(), ec_key()))


def test_first_lookup_asks_for_a_fetch_then_uses_the_keys():
    cache = JwksCache()
    assert cache.due(0)
    assert isinstance(cache.lookup("rsa-1", 0), FetchNeeded)
    cache.fetched(ONE, 0)
    assert isinstance(cache.lookup("rsa-1", 1), Key)
    assert isinstance(cache.lookup(None, 1), Key)  # one key: a token without kid may use it
    assert not cache.due(299) and cache.due(300)


def test_unknown_kid_refetches_at_most_once_per_interval():
    cache = JwksCache(min_refetch_interval_s=10)
    cache.fetched(ONE, 0)
    assert isinstance(cache.lookup("ec-1", 5), KeyNotFound)  # just fetched: no refetch yet
    assert isinstance(cache.lookup("ec-1", 10), FetchNeeded)
    cache.fetched(ROTATED, 10)
    assert cache.lookup("ec-1", 10).kid == "ec-1"
    result = cache.lookup("random", 11)
    assert isinstance(result, KeyNotFound) and "'random' is not one of" in result.reason and "'ec-1'" in result.reason
    result = cache.lookup(None, 11)
    assert isinstance(result, KeyNotFound) and "exactly one" in result.reason


def test_unknown_kid_after_a_failed_refetch_names_the_error():
    cache = JwksCache(min_refetch_interval_s=10)
    cache.fetched(ONE, 0)
    assert isinstance(cache.lookup("ec-1", 10), FetchNeeded)
    cache.failed("JWKS at http://idp/jwks: HTTP 503", 10)
    result = cache.lookup("ec-1", 10.5)
    assert isinstance(result, KeyNotFound) and "the last refetch failed: JWKS at http://idp/jwks: HTTP 503" in result.reason
    assert isinstance(cache.lookup("rsa-1", 10.5), Key)


def test_failures_back_off_exponentially():
    cache = JwksCache(backoff_initial_s=1, backoff_max_s=8)
    attempts = []
    now = 0.0
    while now < 40:
        if cache.due(now):
            attempts.append(now)
            cache.failed("JWKS at http://idp/jwks: unreachable", now)
        now += 0.5
    assert attempts == [0, 1, 3, 7, 15, 23, 31, 39]
    result = cache.lookup("rsa-1", 39.5)
    assert isinstance(result, KeysUnavailable)
    assert "no signing keys have been fetched" in result.reason and "unreachable" in result.reason


def test_provider_down_uses_cached_keys_then_fails_closed():
    cache = JwksCache(max_age_s=300, keys_valid_for_s=3600, backoff_max_s=60)
    cache.fetched(ONE, 0)
    assert cache.due(300)
    cache.failed("JWKS at http://idp/jwks: HTTP 503", 300)
    assert isinstance(cache.lookup("rsa-1", 301), Key)  # stale but still trusted
    assert isinstance(cache.lookup("rsa-1", 3600), Key)
    cache.failed("JWKS at http://idp/jwks: HTTP 503", 3600)
    result = cache.lookup("rsa-1", 3601)
    assert isinstance(result, KeysUnavailable)
    assert "longer than the 3600 s" in result.reason and "HTTP 503" in result.reason
    assert isinstance(cache.lookup("rsa-1", 3700), FetchNeeded)  # backoff over: try again
    cache.fetched(ONE, 3700)
    assert isinstance(cache.lookup("rsa-1", 3701), Key) and cache.failures == 0 and cache.last_error is None


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="max_age_s"):
        JwksCache(max_age_s=-1)
    with pytest.raises(ValueError, match="keys_valid_for_s"):
        JwksCache(max_age_s=600, keys_valid_for_s=60)
