"""Token shapes a hostile or odd provider client might present, beyond tests/identity/test_tokens.py."""

import pytest

from appliance.identity.jwks import KeySet
from appliance.identity.tokens import TokenRejected, TokenRules, ValidToken, validate
from tests.identity.token_keys import AUDIENCE, ISSUER, claims, jwks, rsa_key

NOW = 1_800_000_000.0
# As the integration appliance is configured: the workload is named by azp, so `sub` is not the identity claim.
BY_AZP = TokenRules(issuer=ISSUER, audiences=(AUDIENCE,), subject_claim="azp", require=("exp", "iat", "azp"))


@pytest.mark.parametrize("sub, fragment", [
    (123, "'sub' must be a non-empty string, got int"),
    (["orders", "admin"], "'sub' must be a non-empty string, got list"),
    ("", "'sub' must be a non-empty string"),
    ("orders\x00admin", "'sub' contains control characters"),
    ("s" * 5000, "'sub' is longer than 256 characters"),
])
def test_sub_is_checked_as_strictly_as_the_identity_claim_when_another_claim_names_the_workload(sub, fragment):
    # `sub` is still read (the audit's subject, revocation by subject, --accept patterns): a list, a number
    # or a control character there must refuse the token, not be replaced by the identity or logged raw.
    token = rsa_key().sign(claims(NOW, sub=None) | {"sub": sub})
    result = validate(token, KeySet.from_jwks(jwks(rsa_key())), BY_AZP, NOW)
    assert isinstance(result, TokenRejected) and result.kind == "bad-claim", result
    assert fragment in result.reason


def test_a_token_without_sub_is_fine_when_another_claim_names_the_workload():
    token = rsa_key().sign(claims(NOW, sub=None))
    result = validate(token, KeySet.from_jwks(jwks(rsa_key())), BY_AZP, NOW)
    assert isinstance(result, ValidToken) and result.subject == "orders"


def _signed(payload: bytes) -> str:
    """A token whose payload segment is exactly these bytes, validly signed."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from tests.identity.token_keys import b64
    key = rsa_key()
    signing_input = f"{b64({'alg': 'RS256', 'kid': key.kid})}.{b64(payload)}"
    return signing_input + "." + b64(key.private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-be"])
def test_claims_in_another_unicode_encoding_than_utf8_are_refused(encoding):
    # json.loads reads UTF-16/32 bytes too: the same signed bytes would mean one thing here and another to a
    # parser that follows RFC 7519 (UTF-8 only).
    import json
    token = _signed(json.dumps(claims(NOW)).encode(encoding))
    result = validate(token, KeySet.from_jwks(jwks(rsa_key())), BY_AZP, NOW)
    assert isinstance(result, TokenRejected) and result.kind == "malformed", result
    # (UTF-16-BE without a BOM is valid UTF-8 of NULs and letters, which is then not JSON.)
    assert result.reason in ("token payload is not UTF-8 JSON (byte 0)", "token payload is not JSON"), result.reason


def test_an_audience_list_too_long_says_so():
    token = rsa_key().sign(claims(NOW, aud=["other"] * 299 + [AUDIENCE]))
    result = validate(token, KeySet.from_jwks(jwks(rsa_key())), BY_AZP, NOW)
    assert isinstance(result, TokenRejected) and result.kind == "bad-claim"
    assert result.reason == "token claim 'aud' has 300 entries, more than the 256 allowed"
