"""RecordMasker on single records: fields, detectors, invalid JSON, binary values, headers, directions, secrets."""

import json

import pytest

from appliance.masking import (
    Action,
    Detector,
    Direction,
    Invalid,
    JsonPath,
    MaskingError,
    MaskingPolicy,
    MaskingRejected,
    MaskRule,
)
from appliance.policy.model import Pattern
from tests.masking.builders import SECRET, masker, rule

CARD = "4111 1111 1111 1111"


def value_of(m, value: bytes, headers=None):
    headers = [] if headers is None else headers
    result = m.mask(b"key", value, headers)
    return result.value, result.masked


def test_nothing_matched_gives_back_the_same_objects():
    m = masker(rule("detectors: [card, email]\nheaders: [authorization]"))
    value = b'{"order": 4111111111111112, "note": "ok"}'
    headers = [("trace", b"1")]
    result = m.mask(None, value, headers)
    assert result.value is value and result.headers is headers and result.masked == 0
    result = m.mask(None, None, [])
    assert result.value is None and result.masked == 0


def test_detectors_mask_in_place_and_keep_the_json_as_written():
    m = masker(rule("detectors: [card, email, ssn]"))
    value = b'{ "card" : "' + CARD.encode() + b'",  "who": "alice@example.com", "ssn": "078-05-1120" }'
    out, n = value_of(m, value)
    assert out == b'{ "card" : "[REDACTED]",  "who": "[REDACTED]", "ssn": "[REDACTED]" }' and n == 3


def test_detectors_on_plain_text():
    m = masker(rule("detectors: [card]\naction: {keep_last: 4}"))
    assert value_of(m, b"paid with 4111-1111-1111-1111 today") == (b"paid with ****-****-****-1111 today", 1)
    assert value_of(m, b'he said "paid with 4111111111111111') == (b'he said "paid with ************1111', 1)


def test_a_card_written_as_a_json_number_becomes_a_string():
    m = masker(rule("detectors: [card]"))
    out, n = value_of(m, b'{"pan": 4111111111111111, "qty": 2}')
    assert json.loads(out) == {"pan": "[REDACTED]", "qty": 2} and n == 1


def test_escaped_json_is_parsed_so_escapes_cannot_hide_a_match():
    m = masker(rule("detectors: [card, email]"))
    out, n = value_of(m, b'{"pan": "\\u0034111111111111111", "mail": "bob\\u0040example.com", "p": "a\\\\b"}')
    assert json.loads(out) == {"pan": "[REDACTED]", "mail": "[REDACTED]", "p": "a\\b"} and n == 2


def test_detectors_see_object_keys_too():
    m = masker(rule("detectors: [email]"))
    out, n = value_of(m, b'{"alice@example.com": {"x": "a\\"b"}}')
    assert json.loads(out) == {"[REDACTED]": {"x": 'a"b'}} and n == 1


def test_fields_with_each_action():
    value = json.dumps({"card": {"number": CARD, "cvv": "123"}, "items": [{"pan": 5555555555554444}]}).encode()
    fields = "fields: ['$.card.number', '$.items[*].pan']"
    out, n = value_of(masker(rule(fields)), value)
    assert json.loads(out) == {"card": {"number": "[REDACTED]", "cvv": "123"}, "items": [{"pan": "[REDACTED]"}]}
    assert n == 2
    out, _ = value_of(masker(rule(fields + "\naction: {keep_last: 4}")), value)
    assert json.loads(out)["card"]["number"] == "**** **** **** 1111"
    assert json.loads(out)["items"][0]["pan"] == "************4444"
    out, _ = value_of(masker(rule(fields + "\naction: hash")), value)
    assert json.loads(out)["card"]["number"].startswith("hmac:") and len(json.loads(out)["card"]["number"]) == 69
    out, _ = value_of(masker(rule(fields + "\naction: remove")), value)
    assert json.loads(out) == {"card": {"cvv": "123"}, "items": [{}]}


def test_fields_and_detectors_in_one_rule():
    m = masker(rule("fields: ['$.cvv']\ndetectors: [card]"))
    out, n = value_of(m, json.dumps({"cvv": "123", "note": f"card {CARD}"}).encode())
    assert json.loads(out) == {"cvv": "[REDACTED]", "note": "card [REDACTED]"} and n == 2


def test_invalid_json_reject_names_the_rule_and_the_reason():
    m = masker(rule("fields: ['$.card.number']\ninvalid: reject"))
    with pytest.raises(MaskingRejected) as caught:
        m.mask(None, b'{"card": {"number": "4111"', [])
    assert caught.value.rule == "r" and caught.value.topic == "payments"
    assert "the value is not valid JSON (unexpected end of data" in str(caught.value) or \
        "the value is not valid JSON" in str(caught.value)
    assert "$.card.number" in str(caught.value)


def test_reject_is_the_default_on_produce_and_mask_whole_on_fetch():
    produce = masker(rule("fields: ['$.card.number']", on="[produce, fetch]"))
    with pytest.raises(MaskingRejected):
        produce.mask(None, b"card 4111111111111111", [])
    fetch = masker(rule("fields: ['$.card.number']", on="[produce, fetch]"), direction="fetch")
    assert value_of(fetch, b"card 4111111111111111") == (b"[REDACTED]", 1)


def test_invalid_mask_whole_with_each_action():
    for action, expected in (("redact", b"[REDACTED]"), ("{keep_last: 4}", b"**** ****1111"), ("remove", b"")):
        m = masker(rule(f"fields: ['$.pan']\ninvalid: mask-whole\naction: {action}"))
        assert value_of(m, b"card 41111111") == (expected, 1)


def test_binary_values_are_left_or_dropped():
    binary = b"\x00\xff4111111111111111\xfe"
    assert value_of(masker(rule("detectors: [card]")), binary) == (binary, 0)
    assert value_of(masker(rule("fields: ['$.pan']")), binary) == (binary, 0)  # not JSON, but binary: left
    assert value_of(masker(rule("detectors: [card]\nbinary: drop")), binary) == (b"", 1)
    utf8 = "é 4111111111111111".encode()
    assert value_of(masker(rule("detectors: [card]\nbinary: drop")), utf8) == ("é [REDACTED]".encode(), 1)


def test_empty_values_pass():
    m = masker(rule("fields: ['$.pan']\ninvalid: reject"))
    assert value_of(m, b"") == (b"", 0)


def test_headers_by_key_case_insensitive():
    m = masker(rule("headers: [Authorization, x-api-key]\naction: {keep_last: 2}"))
    headers = [("authorization", b"Bearer abc"), ("X-API-KEY", b"k123"), ("trace", b"t"), ("authorization", None)]
    result = m.mask(b"k", b"v", headers)
    assert result.headers == [("authorization", b"****** *bc"), ("X-API-KEY", b"**23"), ("trace", b"t"),
                              ("authorization", None)]
    assert result.masked == 2 and result.value == b"v"
    removed = masker(rule("headers: [authorization]\naction: remove")).mask(None, b"v", headers)
    assert removed.headers == [("X-API-KEY", b"k123"), ("trace", b"t")] and removed.masked == 2


def test_rules_apply_in_file_order_and_by_topic_and_direction():
    yaml = (rule("detectors: [card]\naction: {keep_last: 4}", name="cards", topics="['prefix:pay']")
            + rule("detectors: [email]\naction: hash", name="mail", topics="['glob:pay*']", on="[fetch]"))
    produce = masker(yaml, topic="payments")
    fetch = masker(yaml, topic="payments", direction="fetch")
    assert masker(yaml, topic="orders") is None
    value = f"{CARD} a@example.com".encode()
    assert value_of(produce, value) == (b"**** **** **** 1111 a@example.com", 1)
    out, n = value_of(fetch, value)
    assert out.startswith(b"4111 1111 1111 1111 hmac:") and n == 1
    assert [r.name for r in fetch.rules] == ["mail"]


def test_for_topic_is_cached_and_none_when_nothing_applies():
    policy = MaskingPolicy((MaskRule("r", (Pattern.prefix("pay"),), frozenset({Direction.PRODUCE}),
                                     detectors=frozenset({Detector.CARD})),))
    assert policy.for_topic("payments", "produce") is policy.for_topic("payments", Direction.PRODUCE)
    assert policy.for_topic("payments", "fetch") is None and policy.for_topic("orders", "produce") is None
    assert not MaskingPolicy() and policy
    with pytest.raises(ValueError):
        policy.for_topic("payments", "consume")


def test_hash_needs_a_secret():
    policy = MaskingPolicy((MaskRule("h", (Pattern.any(),), frozenset({Direction.FETCH}), headers=frozenset({"a"}),
                                     action=Action.hash()),))
    with pytest.raises(MaskingError, match="masking rule 'h' hashes values but the masking policy has no secret"):
        policy.for_topic("t", "fetch")
    assert policy.with_secret(SECRET).for_topic("t", "fetch") is not None


def test_rule_checks_in_code():
    topics = (Pattern.any(),)
    on = frozenset({Direction.PRODUCE})
    with pytest.raises(ValueError, match="finds nothing"):
        MaskRule("r", topics, on)
    with pytest.raises(ValueError, match="remove deletes JSON fields"):
        MaskRule("r", topics, on, detectors=frozenset({Detector.CARD}), action=Action.remove())
    with pytest.raises(ValueError, match="cannot delete the whole value"):
        MaskRule("r", topics, on, fields=(JsonPath.parse("$"),), action=Action.remove())
    with pytest.raises(ValueError, match="a fetched record cannot be refused"):
        MaskRule("r", topics, frozenset({Direction.FETCH}), headers=frozenset({"a"}), invalid=Invalid.REJECT)
    assert MaskRule("r", topics, frozenset({Direction.FETCH}), headers=frozenset({"a"})).invalid == Invalid.MASK_WHOLE
    with pytest.raises(ValueError, match="must be unique"):
        rule_ = MaskRule("r", topics, on, headers=frozenset({"a"}))
        MaskingPolicy((rule_, rule_))


def test_nan_and_big_numbers_survive_a_rewrite():
    m = masker(rule("fields: ['$.pan']"))
    out, n = value_of(m, b'{"pan": "x", "big": 123456789012345678901234567890, "f": NaN}')
    assert out == b'{"pan":"[REDACTED]","big":123456789012345678901234567890,"f":NaN}' and n == 1


def test_json_nested_too_deeply_to_walk_is_invalid_not_passed():
    deep = b"[" * 995 + b'"\\u0034111111111111111"' + b"]" * 995  # an escaped card Python cannot walk down to
    with pytest.raises(MaskingRejected, match="nested too deeply"):
        masker(rule("detectors: [card]")).mask(None, deep, [])
    fetch = masker(rule("detectors: [card]", on="[fetch]"), direction="fetch")
    assert value_of(fetch, deep) == (b"[REDACTED]", 1)


def test_a_command_line_is_scanned_by_every_rules_detectors_whatever_topics_they_cover():
    from appliance.policy.parser import parse_policy

    yaml_text = "version: 1\nmasking:\n" + rule("detectors: [card]\naction: {keep_last: 4}", name="cards") + \
        rule("detectors: [email]\naction: hash", name="mail", topics="[other]", on="[fetch]") + \
        rule('fields: ["$.pan"]', name="fields-only")
    masking = parse_policy(yaml_text, source="test.yaml").masking.with_secret(SECRET)
    command = "kcat -P -t payments -k 4111111111111111 -H who=jane@example.com"
    masked = masking.mask_text(command)
    assert "4111111111111111" not in masked and masked.count("1111") == 1
    assert "jane@example.com" not in masked and "hmac:" in masked
    assert masked.startswith("kcat -P -t payments -k ")
    assert masking.mask_text("python producer.py --topic payments") == "python producer.py --topic payments"
    assert MaskingPolicy().mask_text(command) == command  # no rule: unchanged
