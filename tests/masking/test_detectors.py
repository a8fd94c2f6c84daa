"""Each detector: what it finds, what it validates away, and the batch-level pre-check never missing a match."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.masking.detectors import Detector, could_match, iban_valid, is_card_number, luhn_valid, scan

ALL = frozenset(Detector)


def found(text: str, detectors=ALL) -> list[tuple[str, str]]:
    raw = text.encode()
    return [(raw[s.start:s.end].decode(), str(s.detector)) for s in scan(raw, detectors)]


@pytest.mark.parametrize("text, expected", [
    ("4111111111111111", "4111111111111111"),
    ('{"pan":"4111 1111 1111 1111"}', "4111 1111 1111 1111"),
    ("amex 3782-822463-10005.", "3782-822463-10005"),
    ("mc 5555555555554444, visa 4012888888881881", "5555555555554444"),
    ("2221000000000009 is a 2-series mastercard", "2221000000000009"),
])
def test_cards_are_found(text, expected):
    assert (expected, "card") in found(text)


@pytest.mark.parametrize("text", [
    "4111111111111112",                      # Luhn fails: an order id of the same length
    "order 4111 1111 1111 1112",
    "1700000000000",                         # a millisecond timestamp
    "7000000000000009",                      # Luhn-valid, but no card network starts with 7
    "411111111111",                          # 12 digits
    "41111111111111111111",                  # 20 digits in one group
    "deadbeef4111111111111111cafe",          # inside a hex string
    "0.4111111111111111",                    # a decimal fraction
    "hmac:4111111111111111",                 # inside a hash masking wrote
    "4111 1111  1111 1111",                  # a double space splits the run: 8 and 8 digits
])
def test_things_that_are_not_cards(text):
    assert [f for f in found(text) if f[1] == "card"] == []


def test_a_card_inside_a_longer_run_masks_the_whole_run():
    assert found("2024-01-15 4111 1111 1111 1111") == [("2024-01-15 4111 1111 1111 1111", "card")]


def test_luhn_and_card_number():
    assert luhn_valid(b"79927398713") and not luhn_valid(b"79927398710")
    assert is_card_number(b"4111111111111111") and not is_card_number(b"1111111111111117")


@pytest.mark.parametrize("text, expected", [
    ("ssn 078-05-1120.", ["078-05-1120"]),
    ("123 45 6789", ["123 45 6789"]),
    ("000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000", []),  # never issued
    ("123-45 6789", []),                      # mixed separators
    ("1123-45-6789 123-45-67890 1-123-45-6789", []),  # part of longer numbers
    ("4111 078-05-1120", ["078-05-1120"]),
    ("123456789", []),                        # undashed nine digits are not taken for an SSN
])
def test_ssn(text, expected):
    assert [f[0] for f in found(text, {Detector.SSN})] == expected


@pytest.mark.parametrize("text, expected", [
    ("mail Alice.B+tag@Example.co.uk, please", ["Alice.B+tag@Example.co.uk"]),
    ('{"email":"bob@example.com"}', ["bob@example.com"]),
    ("@example.com", []),
    ("alice@localhost", []),                  # no top-level domain
    ("a@b.c", []),                            # one-letter TLD
    ("x@y.com@z.org", ["x@y.com@z.org"]),     # two overlapping addresses: one span
])
def test_email(text, expected):
    assert [f[0] for f in found(text, {Detector.EMAIL})] == expected


@pytest.mark.parametrize("text, expected", [
    ("pay to DE89 3704 0044 0532 0130 00 EUR", ["DE89 3704 0044 0532 0130 00"]),
    ("GB82WEST12345698765432", ["GB82WEST12345698765432"]),
    ("NL91ABNA0417164300.", ["NL91ABNA0417164300"]),
    ("DE89 3704 0044 0532 0130 01", []),      # mod-97 fails
    ("XXDE89370400440532013000", []),         # inside a word
    ("de89370400440532013000", []),           # lower case is not read as an IBAN
])
def test_iban(text, expected):
    assert [f[0] for f in found(text, {Detector.IBAN})] == expected
    assert iban_valid(b"GB82WEST12345698765432") and not iban_valid(b"GB82WEST12345698765433")


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


@pytest.mark.parametrize("text, expected", [
    ("Authorization: Bearer abcdefghijklmnop0123456789", ["abcdefghijklmnop0123456789"]),
    ("bearer   AbC123._~+/-xyzxyzxyzxyz==", ["AbC123._~+/-xyzxyzxyzxyz=="]),
    (f'{{"token":"{JWT}"}}', [JWT]),
    (f"Bearer {JWT}", [JWT]),                 # both detectors: one merged span
    ("the bearer of bad news", []),
    ("Bearer short", []),
])
def test_tokens(text, expected):
    assert [f[0] for f in found(text, {Detector.TOKEN})] == expected


def test_overlapping_spans_merge_and_come_sorted():
    text = "b@example.com 4111111111111111 and 078-05-1120 a@example.com"
    assert [f[1] for f in found(text)] == ["email", "card", "ssn", "email"]


def test_non_ascii_text_keeps_byte_offsets_right():
    raw = "çé € 4111111111111111 ü".encode()
    (span,) = scan(raw, ALL)
    assert raw[span.start:span.end] == b"4111111111111111"


DETECTABLE = st.sampled_from(["4111 1111 1111 1111", "078-05-1120", "x.y@example.org", "DE89370400440532013000",
                              "Bearer abcdefghijklmnopqrstu", JWT, "5555555555554444"])
FRAMING = st.binary(max_size=30)


@settings(max_examples=300, deadline=None)
@given(before=FRAMING, after=FRAMING, value=DETECTABLE, pad=st.text(alphabet=" ,:{}[]\"", max_size=10))
def test_property_could_match_is_never_false_when_a_value_has_a_match(before, after, value, pad):
    """Framing bytes around a value (varints, other records) cannot hide a match from the batch pre-check."""
    raw = f"{pad}{value}{pad}".encode()
    assert scan(raw, ALL)
    assert could_match(before + raw + after, ALL)


def test_could_match_is_false_for_ordinary_records():
    data = b'{"order":"ord-1","ts":1700000000000,"qty":3,"note":"leave at door","id":123456789012}' * 20
    assert not could_match(data, ALL)
    assert could_match(data + b"\\u0040", ALL)  # escapes could hide anything
