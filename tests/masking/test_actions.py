"""Actions: redact, keep_last (separators kept), hash (keyed, prefixed, joinable), remove."""

import hmac

import pytest

from appliance.masking.actions import Action, BoundAction, keep_last_bytes, keep_last_text
from appliance.masking.detectors import Detector
from appliance.masking.paths import REMOVE

KEY = b"k" * 32


def test_keep_last_keeps_separators_in_place():
    assert keep_last_text("4111 1111 1111 1111", 4) == "**** **** **** 1111"
    assert keep_last_text("3782-822463-10005", 5) == "****-******-10005"
    assert keep_last_text("alice@example.com", 4) == "*************.com"
    assert keep_last_text("abc", 10) == "abc"
    assert keep_last_text("abc", 0) == "***"
    assert keep_last_bytes(b"4111 1111 1111 1111", 4) == b"**** **** **** 1111"
    assert keep_last_bytes(b"4111-1111", 6) == b"**11-1111"


def test_hash_is_hmac_sha256_hex_prefixed_and_joins_across_formats():
    bound = BoundAction(Action.hash(), KEY)
    expected = "hmac:" + hmac.new(KEY, b"4111111111111111", "sha256").hexdigest()
    assert bound.match(b"4111 1111 1111 1111", Detector.CARD).decode() == expected
    assert bound.match(b"4111-1111-1111-1111", Detector.CARD).decode() == expected
    assert bound.field("4111111111111111") == expected
    assert bound.field(4111111111111111) == expected  # a number hashes as written in JSON
    assert bound.match(b"Alice@Example.COM", Detector.EMAIL) == bound.match(b"alice@example.com", Detector.EMAIL)
    assert bound.match(b"DE89 3704 0044 0532 0130 00", Detector.IBAN) == \
        bound.match(b"DE89370400440532013000", Detector.IBAN)
    other = BoundAction(Action.hash(), b"o" * 32)
    assert other.field("4111111111111111") != expected
    with pytest.raises(ValueError, match="secret"):
        BoundAction(Action.hash(), None)


def test_field_values_of_every_type():
    redact = BoundAction(Action.redact())
    assert redact.field("x") == "[REDACTED]" and redact.field(12) == "[REDACTED]"
    assert redact.field({"a": 1}) == "[REDACTED]" and redact.field(None) is None
    keep = BoundAction(Action.keep_last(2))
    assert keep.field(123456) == "****56" and keep.field(True) == "**ue" and keep.field([1, 2]) == "[REDACTED]"
    hashed = BoundAction(Action.hash(), KEY)
    assert hashed.field({"b": 1, "a": 2}) == hashed.field({"a": 2, "b": 1})  # canonical JSON
    assert BoundAction(Action.remove()).field("x") is REMOVE
    assert BoundAction(Action.remove()).field(None) is REMOVE


def test_whole_values_and_headers():
    assert BoundAction(Action.redact()).whole(b"{bad") == b"[REDACTED]"
    assert BoundAction(Action.keep_last(3)).whole(b"{not json") == b"**** *son"
    assert BoundAction(Action.remove()).whole(b"{bad") == b""
    assert BoundAction(Action.keep_last(3)).whole(b"\xff\xfe") == b"[REDACTED]"
    assert BoundAction(Action.hash(), KEY).whole(b"x").startswith(b"hmac:")
    assert BoundAction(Action.remove()).header(b"v") is REMOVE
    assert BoundAction(Action.redact()).header(None) is None
    assert str(Action.keep_last(4)) == "keep_last: 4" and str(Action.redact()) == "redact"
