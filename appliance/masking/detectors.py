"""Detectors: find payment card numbers, US SSNs, e-mail addresses, IBANs and bearer tokens/JWTs in text.

`scan(text, detectors)` takes UTF-8 bytes and returns the spans to mask,
validated (Luhn for cards, mod-97 for IBANs, the SSA's rules for SSNs) and
merged where they overlap. It works on bytes so a record value is scanned
without being decoded: every pattern here is ASCII, and in UTF-8 no byte of a
multi-byte character is ASCII, so byte offsets are character boundaries.

Speed: Python's regex engine tries a character-class pattern at every
position (about 4 ns a byte), so the hot patterns run over a translated copy
(`bytes.translate`: digits become `0`, capitals `A`, space and `-` a space,
anything else `x`) where they start with a literal and the engine skips ahead
with a fast search. Cheap `in` tests gate the rarer detectors (`@` for e-mail,
`earer` or `eyJ` for tokens). `could_match` is the even cheaper, deliberately
loose test used on a whole decompressed batch: when it is false no record in
the batch can hold a detectable value and the batch is left alone.

What each detector finds is documented in docs/masking.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Detector(StrEnum):
    CARD = "card"
    SSN = "ssn"
    EMAIL = "email"
    IBAN = "iban"
    TOKEN = "token"


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes `start:end` of the scanned text hold a value of kind `detector`."""

    start: int
    end: int
    detector: Detector


def _table(mapping: dict[bytes, bytes], default: bytes) -> bytes:
    table = bytearray(default * 256)
    for chars, to in mapping.items():
        for c in chars:
            table[c] = to[0]
    return bytes(table)


_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# For scanning one value: every digit is 0, capitals A, separators a space.
_SHAPE = _table({b"0123456789": b"0", _UPPER: b"A", b" -": b" "}, b"x")
# For finding card runs: digits and separators alike are 0, so 13 of them in a row is a literal to search for.
_RUN = _table({b"0123456789 -": b"0"}, b"x")
# For the batch pre-check: card numbers start with 2-6, so those digits are 2.
_LOOSE = _table({b"01789": b"0", b"23456": b"2", _UPPER: b"A", b" -": b" "}, b"x")

_THIRTEEN = b"0" * 13  # on _RUN: 13 digits and separators in a row, where a card number could be
_CARD_RUN = re.compile(rb"[0-9](?:[ -]?[0-9]){12,}")  # 13+ digits, single separators between
_CARD_LOOSE = re.compile(rb"2(?: ?[02]){12,}")
_SSN_SHAPE = b"000 00 0000"
_IBAN_SHAPE = re.compile(rb"AA00(?: ?[A0]){11,32}")
_IBAN_LOOSE = re.compile(rb"AA[02][02](?: ?[A02]){11}")
_EMAIL_DOMAIN = re.compile(rb"@([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                           rb"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63})(?![A-Za-z0-9-])")
_EMAIL_LOOSE = re.compile(rb"@[A-Za-z0-9-]+\.[A-Za-z0-9]")  # record framing bytes may be '@'
_EMAIL_LOCAL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+/=?^_`{|}~-")
_BEARER = re.compile(rb"(?i)bearer[ \t]+([A-Za-z0-9._~+/-]{16,}=*)")
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_JWT_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_HMAC_TAIL = re.compile(rb"hmac:[0-9a-f]*\Z")

_DIGITS = b"0123456789"
_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_CARD_BEFORE = _ALNUM | {46}  # a letter, digit or '.' before the digits
_CARD_FIRST = frozenset(b"23456")  # Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro
_LUHN_DOUBLE = _table({b"0": b"0", b"1": b"2", b"2": b"4", b"3": b"6", b"4": b"8", b"5": b"1", b"6": b"3",
                       b"7": b"5", b"8": b"7", b"9": b"9"}, b"0")  # a digit to the digit sum of its double

# IBAN lengths by country (ISO 13616 registry). A country not listed is checked by mod-97 alone.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def luhn_valid(digits: bytes) -> bool:
    """The Luhn checksum of ASCII digits (the last one is the check digit)."""
    kept = digits[-1::-2]
    doubled = digits[-2::-2]
    return (sum(kept) + sum(doubled.translate(_LUHN_DOUBLE)) - 48 * len(digits)) % 10 == 0


def is_card_number(digits: bytes) -> bool:
    """13-19 digits, starting with 2-6 (the major networks' ranges), Luhn-valid."""
    return 13 <= len(digits) <= 19 and digits[0] in _CARD_FIRST and luhn_valid(digits)


def iban_valid(compact: bytes) -> bool:
    """ISO 13616 mod-97: move the first four characters to the end, letters to 10..35, remainder 1."""
    text = (compact[4:] + compact[:4]).decode("ascii")
    return int("".join(str(int(c, 36)) for c in text)) % 97 == 1


def _card_spans(text: bytes, out: list[Span]) -> None:
    runs = text.translate(_RUN)
    i = runs.find(_THIRTEEN)
    while i >= 0:
        j = runs.find(b"x", i)
        if j < 0:
            j = len(runs)
        region = text[i:j]
        core = region.strip(b" -")
        if b"  " in core or b"--" in core or b" -" in core or b"- " in core:
            runs_in = [(m.start(), m.group()) for m in _CARD_RUN.finditer(text, i, j)]
        else:  # the common case: one run of digits with single separators, no regex needed
            runs_in = [(i + len(region) - len(region.lstrip(b" -")), core)]
        for start, run in runs_in:
            _card_run(text, start, run, out)
        i = runs.find(_THIRTEEN, j)


def _card_run(text: bytes, start: int, run: bytes, out: list[Span]) -> None:
    digits = run.translate(None, b" -")
    if len(digits) == len(run):  # one group of digits: it is a card number or not
        if not is_card_number(digits):
            return
    elif len(digits) < 13 or not (is_card_number(digits) or _has_card_window(run)):
        return
    end = start + len(run)
    if start and text[start - 1] in _CARD_BEFORE or end < len(text) and _run_continues(text, end):
        return  # part of a word, a hex string or a decimal fraction: not a card
    if start >= 5 and _HMAC_TAIL.search(text, max(0, start - 69), start):
        return  # digits inside a hash this masking wrote: not a card
    out.append(Span(start, end, Detector.CARD))


def _run_continues(text: bytes, end: int) -> bool:
    c = text[end]
    return c in _ALNUM or c == 46 and end + 1 < len(text) and text[end + 1] in _DIGITS  # a letter, or ".5"


def _has_card_window(run: bytes) -> bool:
    """Whether consecutive digit groups of a longer run (`2024-01-15 4111 1111 ...`) form a card number.

    The whole run is then masked: a wrong window must never leave part of a card in the clear.
    """
    groups = re.split(rb"[ -]", run)
    if len(groups) < 2:
        return False
    for i in range(len(groups)):
        digits = b""
        for group in groups[i:]:
            digits += group
            if len(digits) > 19:
                break
            if len(digits) >= 13 and is_card_number(digits):
                return True
    return False


def _ssn_spans(text: bytes, shape: bytes, out: list[Span]) -> None:
    i = shape.find(_SSN_SHAPE)
    n = len(text)
    while i >= 0:
        end = i + 11
        sep = text[i + 3]
        ok = (text[i + 6] == sep
              and (i == 0 or not _digit_or_grouped(text, i - 1, -1, sep))
              and (end == n or not _digit_or_grouped(text, end, 1, sep)))
        if ok:
            area, group, serial = text[i:i + 3], text[i + 4:i + 6], text[i + 7:end]
            ok = area not in (b"000", b"666") and area[0] != 57 and group != b"00" and serial != b"0000"
        if ok:
            out.append(Span(i, end, Detector.SSN))
        i = shape.find(_SSN_SHAPE, i + 1)


def _digit_or_grouped(text: bytes, i: int, step: int, sep: int) -> bool:
    """Whether text[i] is a digit, or the SSN's own separator with a digit beyond (part of a longer number)."""
    c = text[i]
    if c in _DIGITS:
        return True
    j = i + step
    return c == sep and 0 <= j < len(text) and text[j] in _DIGITS


def _iban_spans(text: bytes, shape: bytes, out: list[Span]) -> None:
    m = _IBAN_SHAPE.search(shape)
    while m:
        start = m.start()
        end = _iban_end(text, start, text[start:m.end()])
        if end:
            out.append(Span(start, end, Detector.IBAN))
        m = _IBAN_SHAPE.search(shape, end or start + 1)  # a failed candidate may hide a real one inside it


def _iban_end(text: bytes, start: int, candidate: bytes) -> int:
    """Where the IBAN starting at `start` ends, or 0 when the candidate is not one."""
    if start and text[start - 1] in _ALNUM:
        return 0
    length = IBAN_LENGTHS.get(candidate[:2].decode("ascii"))
    compact = candidate.replace(b" ", b"")
    if length is None:
        length = len(compact) if 15 <= len(compact) <= 34 else 0
    if not length or len(compact) < length or not iban_valid(compact[:length]):
        return 0
    end = start  # just after the length-th character that is not a space
    seen = 0
    while seen < length:
        if text[end] != 32:
            seen += 1
        end += 1
    if end < len(text) and text[end] in _ALNUM:
        return 0
    return end


def _email_spans(text: bytes, out: list[Span]) -> None:
    at = text.find(b"@")
    while at >= 0:
        m = _EMAIL_DOMAIN.match(text, at) if at else None
        if m:
            start = at
            while start > 0 and at - start < 64 and text[start - 1] in _EMAIL_LOCAL:
                start -= 1
            while start < at and text[start] == 46:  # a local part does not start with '.'
                start += 1
            if start < at:
                out.append(Span(start, m.end(), Detector.EMAIL))
        at = text.find(b"@", at + 1)


def _token_spans(text: bytes, out: list[Span]) -> None:
    if b"earer" in text or b"EARER" in text:
        lower = text.lower()
        at = lower.find(b"bearer")
        while at >= 0:
            m = _BEARER.match(text, at) if at == 0 or text[at - 1] not in _ALNUM else None
            if m:
                out.append(Span(m.start(1), m.end(1), Detector.TOKEN))  # the scheme word stays readable
            at = lower.find(b"bearer", at + 6)
    at = text.find(b"eyJ")
    while at >= 0:
        m = _JWT.match(text, at) if at == 0 or text[at - 1] not in _JWT_CHARS else None
        if m:
            out.append(Span(at, m.end(), Detector.TOKEN))
            at = text.find(b"eyJ", m.end())
        else:
            at = text.find(b"eyJ", at + 3)


def scan(text: bytes, detectors: frozenset[Detector]) -> list[Span]:
    """The validated spans of `text` (UTF-8 bytes) that the given detectors find, sorted, overlaps merged."""
    out: list[Span] = []
    if Detector.CARD in detectors:
        _card_spans(text, out)
    if Detector.SSN in detectors or Detector.IBAN in detectors:
        shape = text.translate(_SHAPE)
        if Detector.SSN in detectors:
            _ssn_spans(text, shape, out)
        if Detector.IBAN in detectors:
            _iban_spans(text, shape, out)
    if Detector.EMAIL in detectors and b"@" in text:
        _email_spans(text, out)
    if Detector.TOKEN in detectors:
        _token_spans(text, out)
    if len(out) < 2:
        return out
    out.sort(key=lambda s: s.start)
    merged = [out[0]]
    for span in out[1:]:
        last = merged[-1]
        if span.start < last.end:
            if span.end > last.end:
                merged[-1] = Span(last.start, span.end, last.detector)
        else:
            merged.append(span)
    return merged


def could_match(data: bytes, detectors: frozenset[Detector]) -> bool:
    """A loose, fast test: False only when no value inside `data` can hold anything the detectors find.

    Used on a whole decompressed batch, where the record framing sits between
    values. Each test is a substring test that stays true when more bytes
    surround the value, so framing cannot hide a match. JSON escapes can hide
    characters (`\\u0040` is `@`), so any `\\u` makes it true.
    """
    if b"\\u" in data:
        return True
    if Detector.EMAIL in detectors and b"@" in data and _EMAIL_LOOSE.search(data):
        return True
    if Detector.TOKEN in detectors and (b"earer" in data or b"EARER" in data or b"eyJ" in data):
        return True
    if Detector.CARD in detectors or Detector.IBAN in detectors:
        loose = data.translate(_LOOSE)
        if Detector.CARD in detectors and _CARD_LOOSE.search(loose):
            return True
        if Detector.IBAN in detectors and _IBAN_LOOSE.search(loose):
            return True
    if Detector.SSN in detectors and _SSN_SHAPE in data.translate(_SHAPE):
        return True
    return False
