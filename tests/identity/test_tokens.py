import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import serialization

from appliance.identity.jwks import KeySet
from appliance.identity.tokens import (
    REJECTION_KINDS, TokenRejected, TokenRules, TokenRulesError, ValidToken, peek_header, validate,
)
from tests.identity.token_keys import AUDIENCE, ISSUER, b64, claims, ec_key, ed_key, jwks, rsa_key

NOW = 1_800_000_000.0
RULES = TokenRules(issuer=ISSUER, audiences=(AUDIENCE,))


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return KeySet.from_jwks(jwks(rsa_key(), ec_key(), ed_key(), ec_key("ec-384", "P-384")))


def rejected(result, kind: str, fragment: str = "") -> str:
    assert isinstance(result, TokenRejected), result
    assert result.kind == kind, result
    assert kind in REJECTION_KINDS
    assert fragment in result.reason, result.reason
    return result.reason


@pytest.mark.parametrize("key", [rsa_key(), ec_key(), ed_key(), ec_key("ec-384", "P-384")], ids=lambda k: k.alg)
def test_valid_token_from_each_key_type(keys, key):
    result = validate(key.sign(claims(NOW)), keys, RULES, NOW)
    assert isinstance(result, ValidToken), result
    assert result.subject == "orders-service"
    assert result.groups == ("payments", "audit")
    assert (result.issuer, result.client_id, result.jti, result.key_id) == (ISSUER, "orders", "j-1", key.kid)
    assert (result.issued_at, result.expires_at, result.not_before) == (NOW, NOW + 300, None)
    assert result.claims["sub"] == "orders-service"


def test_rsa_pss_is_accepted_with_an_rsa_key(keys):
    assert isinstance(validate(rsa_key().sign(claims(NOW), alg="PS256"), keys, RULES, NOW), ValidToken)


def test_expired_and_leeway(keys):
    token = rsa_key().sign(claims(NOW, exp=NOW - 10))
    assert isinstance(validate(token, keys, RULES, NOW), ValidToken)  # within the 30 s leeway
    rejected(validate(rsa_key().sign(claims(NOW, exp=NOW - 31, iat=NOW - 600)), keys, RULES, NOW), "expired", "31 s ago")


def test_future_nbf_and_iat_beyond_leeway(keys):
    rejected(validate(rsa_key().sign(claims(NOW, nbf=NOW + 60)), keys, RULES, NOW), "not-yet-valid", "not valid before")
    rejected(validate(rsa_key().sign(claims(NOW, iat=NOW + 60)), keys, RULES, NOW), "not-yet-valid", "issued in the future")
    assert isinstance(validate(rsa_key().sign(claims(NOW, nbf=NOW + 20, iat=NOW + 20)), keys, RULES, NOW), ValidToken)


def test_wrong_audience_and_issuer(keys):
    rejected(validate(rsa_key().sign(claims(NOW, aud="account")), keys, RULES, NOW), "wrong-audience", "'account'")
    assert isinstance(validate(rsa_key().sign(claims(NOW, aud=["account", AUDIENCE])), keys, RULES, NOW), ValidToken)
    rejected(validate(rsa_key().sign(claims(NOW, iss="https://evil")), keys, RULES, NOW), "wrong-issuer", "https://evil")
    rejected(validate(rsa_key().sign(claims(NOW, aud=7)), keys, RULES, NOW), "bad-claim", "'aud'")


def test_unknown_kid_and_missing_kid(keys):
    rejected(validate(rsa_key().sign(claims(NOW), kid="rotated"), keys, RULES, NOW), "unknown-kid", "'rotated'")
    rejected(validate(rsa_key().sign(claims(NOW), kid=None), keys, RULES, NOW), "unknown-kid", "exactly one")
    only = KeySet.from_jwks(jwks(rsa_key()))
    assert isinstance(validate(rsa_key().sign(claims(NOW), kid=None), only, RULES, NOW), ValidToken)


def test_a_key_from_another_provider_with_a_known_kid_is_a_bad_signature(keys):
    impostor = rsa_key("impostor")
    token = impostor.sign(claims(NOW), kid=rsa_key().kid)
    rejected(validate(token, keys, RULES, NOW), "bad-signature", "kid 'rsa-1'")


def test_alg_none(keys):
    token = f"{b64({'alg': 'none', 'kid': 'rsa-1'})}.{b64(claims(NOW))}."
    rejected(validate(token, keys, RULES, NOW), "malformed", "signature is empty")
    token = f"{b64({'alg': 'none', 'kid': 'rsa-1'})}.{b64(claims(NOW))}.{b64(b'x')}"
    rejected(validate(token, keys, RULES, NOW), "alg-not-allowed", "unsigned")


def test_hmac_signed_with_the_rsa_public_key_is_refused(keys):
    pem = rsa_key().private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'rsa-1', 'typ': 'JWT'})}.{b64(claims(NOW))}"
    signature = b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    rejected(validate(f"{signing_input}.{signature}", keys, RULES, NOW), "alg-not-allowed", "HMAC is never accepted")


def test_allowed_alg_that_does_not_match_the_key(keys):
    # ES256 is allowed, but the kid names the RSA key.
    token = ec_key().sign(claims(NOW), kid="rsa-1")
    rejected(validate(token, keys, RULES, NOW), "alg-not-allowed", "does not match the RSA 2048 key")
    token = ec_key("ec-384", "P-384").sign(claims(NOW), alg="ES384", kid="ec-1")
    rejected(validate(token, keys, RULES, NOW), "alg-not-allowed", "EC P-256")


def test_alg_outside_the_allow_list(keys):
    rules = TokenRules(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("ES256",))
    rejected(validate(rsa_key().sign(claims(NOW)), keys, rules, NOW), "alg-not-allowed", "allowed: ES256")


def test_oversized_token(keys):
    token = rsa_key().sign(claims(NOW, padding="x" * 20000))
    reason = rejected(validate(token, keys, RULES, NOW), "oversized", "more than the 16384 allowed")
    assert "x" * 50 not in reason


@pytest.mark.parametrize(
    "token, kind, fragment",
    [
        ("", "malformed", "1 dot-separated parts"),
        ("abc", "malformed", "1 dot-separated parts"),
        ("a.b.c.d.e", "malformed", "JWE"),
        ("a.b", "malformed", "2 dot-separated parts"),
        ("a!b.c.d", "malformed", "header is empty or not base64url"),
        ("a.b+c.d", "malformed", "payload is empty or not base64url"),
        ("a.bc.d", "malformed", "header is not valid base64url"),
        (f"{b64(b'not json')}.e30.c2ln", "malformed", "header is not JSON"),
        (f"{b64(b'[1]')}.e30.c2ln", "malformed", "header must be a JSON object"),
        (b64(b'{"alg":"RS256","alg":"none"}') + ".e30.c2ln", "malformed", "appears twice"),
        (f"{b64({'kid': 'rsa-1'})}.e30.c2ln", "malformed", "no 'alg'"),
        (f"{b64({'alg': 'RS256', 'kid': 5})}.e30.c2ln", "bad-header", "'kid'"),
        (f"{b64({'alg': 'RS256', 'kid': 'rsa-1', 'jku': 'https://evil/jwks'})}.e30.c2ln", "bad-header", "'jku'"),
        (f"{b64({'alg': 'RS256', 'kid': 'rsa-1', 'crit': ['exp']})}.e30.c2ln", "bad-header", "crit"),
        (f"{b64({'alg': 'RS256', 'kid': 'rsa-1', 'typ': 'logout+jwt'})}.e30.c2ln", "bad-header", "not an access token"),
        (f"{b64({'alg': 'RS256', 'kid': 'rsa-1'})}.e30.c2ln", "bad-signature", ""),
    ],
)
def test_malformed_tokens(keys, token, kind, fragment):
    rejected(validate(token, keys, RULES, NOW), kind, fragment)


def test_bad_json_payload_with_a_valid_signature(keys):
    import jwt as pyjwt

    token = pyjwt.api_jws.PyJWS().encode(b"{not json", rsa_key().private, algorithm="RS256", headers={"kid": "rsa-1"})
    rejected(validate(token, keys, RULES, NOW), "malformed", "payload is not JSON")
    token = pyjwt.api_jws.PyJWS().encode(b"[1,2]", rsa_key().private, algorithm="RS256", headers={"kid": "rsa-1"})
    rejected(validate(token, keys, RULES, NOW), "malformed", "payload must be a JSON object")


def test_missing_and_bad_claims(keys):
    rejected(validate(rsa_key().sign(claims(NOW, sub=None)), keys, RULES, NOW), "missing-claim", "'sub'")
    rejected(validate(rsa_key().sign(claims(NOW, exp=None)), keys, RULES, NOW), "missing-claim", "'exp'")
    rejected(validate(rsa_key().sign(claims(NOW, iat=None)), keys, RULES, NOW), "missing-claim", "'iat'")
    rejected(validate(rsa_key().sign(claims(NOW, iss=None)), keys, RULES, NOW), "missing-claim", "'iss'")
    rejected(validate(rsa_key().sign(claims(NOW, aud=None)), keys, RULES, NOW), "missing-claim", "'aud'")
    rejected(validate(rsa_key().sign(claims(NOW, sub=42)), keys, RULES, NOW), "bad-claim", "'sub' must be a non-empty string")
    rejected(validate(rsa_key().sign(claims(NOW, sub="a" * 300)), keys, RULES, NOW), "bad-claim", "longer than 256")
    rejected(validate(rsa_key().sign(claims(NOW, sub="a\nb")), keys, RULES, NOW), "bad-claim", "control characters")
    rejected(validate(rsa_key().sign(claims(NOW, exp="soon")), keys, RULES, NOW), "bad-claim", "'exp' must be a number")
    rejected(validate(rsa_key().sign(claims(NOW, exp=True)), keys, RULES, NOW), "bad-claim", "'exp' must be a number")
    rejected(validate(rsa_key().sign(claims(NOW, exp=10**400)), keys, RULES, NOW), "bad-claim", "'exp' must be a number")
    rejected(validate(rsa_key().sign(claims(NOW, nbf=float("nan"))), keys, RULES, NOW), "bad-claim", "'nbf' must be a number")
    rejected(validate(rsa_key().sign(claims(NOW, azp=["x"])), keys, RULES, NOW), "bad-claim", "'azp'")


def test_groups_shapes(keys):
    def groups(value, rules=RULES):
        return validate(rsa_key().sign(claims(NOW, groups=value)), keys, rules, NOW)

    assert groups("/team").groups == ("team",)
    assert groups(["/a/b", "c", "/c"]).groups == ("a/b", "c")
    assert groups(None).groups == ()
    rejected(groups({"a": 1}), "bad-claim", "'groups' must be a list of strings or a string, got dict")
    rejected(groups(["ok", 3]), "bad-claim", "entry 1 must be a string, got int")
    rejected(groups(["/"]), "bad-claim", "entry 0")
    rejected(groups(["x" * 300]), "bad-claim", "entry 0")
    rejected(groups([f"g{i}" for i in range(300)]), "bad-claim", "more than the 256 allowed")
    entra = TokenRules(issuer=ISSUER, audiences=(AUDIENCE,), groups_claim="roles")
    token = rsa_key().sign(claims(NOW, roles=["Kafka.Produce"]))
    assert validate(token, keys, entra, NOW).groups == ("Kafka.Produce",)


def test_other_subject_claim(keys):
    rules = TokenRules(issuer=ISSUER, audiences=(AUDIENCE,), subject_claim="preferred_username", require=("exp",))
    token = rsa_key().sign(claims(NOW, preferred_username="service-account-orders"))
    assert validate(token, keys, rules, NOW).subject == "service-account-orders"
    rejected(validate(rsa_key().sign(claims(NOW)), keys, rules, NOW), "missing-claim", "'preferred_username'")


def test_validate_is_total(keys):
    for token in (None, 5, b"a.b.c", "é.é.é", "." * 3):
        assert isinstance(validate(token, keys, RULES, NOW), TokenRejected)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"algorithms": ("HS256",)}, "HMAC algorithm 'HS256' can never be allowed"),
        ({"algorithms": ("RS256", "hs512")}, "HMAC algorithm 'hs512'"),
        ({"algorithms": ("none",)}, "'none'"),
        ({"algorithms": ("RS1",)}, "not supported"),
        ({"algorithms": ()}, "non-empty"),
        ({"audiences": ()}, "audiences"),
        ({"audiences": "kafka"}, "audiences"),
        ({"issuer": ""}, "issuer"),
        ({"leeway_s": -1}, "leeway_s"),
        ({"max_token_bytes": 10}, "max_token_bytes"),
    ],
)
def test_rules_refuse_dangerous_settings(kwargs, fragment):
    base = {"issuer": ISSUER, "audiences": (AUDIENCE,)}
    with pytest.raises(TokenRulesError, match=fragment):
        TokenRules(**{**base, **kwargs})


def test_peek_header():
    assert peek_header(rsa_key().sign(claims(NOW)))["kid"] == "rsa-1"
    with pytest.raises(ValueError, match="dot-separated"):
        peek_header("nope")
    with pytest.raises(ValueError, match="more than the 16384 allowed"):
        peek_header("a" * 20000)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALID = rsa_key().sign(claims(NOW))
_ALL_KEYS = KeySet.from_jwks(jwks(rsa_key(), ec_key(), ed_key()))


@given(st.text(alphabet="ABCabc019-_.=+/ {}\"", max_size=400))
@settings(max_examples=300, deadline=None)
def test_random_text_is_always_refused_never_raises(token):
    assert isinstance(validate(token, _ALL_KEYS, RULES, NOW), TokenRejected)


@given(position=st.integers(min_value=0, max_value=len(_VALID) - 1), replacement=st.sampled_from("AZaz09-_."))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_changed_character_is_refused(position, replacement):
    token = _VALID[:position] + replacement + _VALID[position + 1:]
    result = validate(token, _ALL_KEYS, RULES, NOW)
    # A change in a last base64 character's unused bits can leave the bytes the same (then either answer is right).
    if token != _VALID and _decoded(token) != _decoded(_VALID):
        assert isinstance(result, TokenRejected), (position, replacement)


def _decoded(token: str):
    import base64

    try:
        return [base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in token.split(".")]
    except Exception:
        return None


def test_the_documented_rejection_kinds_are_the_codes():
    import re
    from pathlib import Path

    from appliance.identity.tokens import REJECTION_KINDS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "workload-authentication.md").read_text()
    documented = tuple(re.findall(r"^\| `([a-z-]+)` \|", doc, re.MULTILINE))
    assert documented == REJECTION_KINDS, "docs/workload-authentication.md's table of kinds is stale"


def test_read_header_checks_everything_that_needs_no_key():
    from appliance.identity.tokens import HeaderFacts, read_header

    assert read_header(rsa_key().sign(claims(NOW)), RULES) == HeaderFacts("RS256", "rsa-1")
    assert read_header(rsa_key().sign(claims(NOW), kid=None), RULES) == HeaderFacts("RS256", None)
    assert read_header("x" * 20000, RULES).kind == "oversized"
    assert read_header(f"{b64({'alg': 'HS256'})}.e30.c2ln", RULES).kind == "alg-not-allowed"
    assert read_header(rsa_key().sign(claims(NOW), kid="k" * 300), RULES).kind == "bad-header"
    assert read_header(None, RULES).kind == "malformed"
