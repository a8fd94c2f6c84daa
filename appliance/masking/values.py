"""Masking one record value for one rule: binary, JSON fields, detectors, and values that are not what the rule expects.

The order, for a value that is not null or empty:

1. Not UTF-8: binary. `binary: drop` empties it, `leave` passes it untouched.
2. The rule names fields: the value must be JSON. If it is not, `invalid`
   decides (reject, or mask the whole value). The selected fields get the
   action; then the rule's detectors scan every string (keys too) and every
   integer of the document, and the document is written back compactly.
3. Detectors only: a value without a backslash is scanned as bytes, JSON or
   not. When every match lies inside double quotes, the matches are replaced
   in place: a replacement is plain ASCII without quotes or backslashes, so a
   JSON document stays valid and keeps its formatting. Otherwise (a backslash,
   whose escapes could hide a match, or a match outside quotes such as a card
   number written as a JSON number) the value is parsed and scanned string by
   string; a value that does not parse is plain text and is masked in place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from appliance.masking.actions import BoundAction
from appliance.masking.detectors import Detector, Span, scan
from appliance.masking.paths import JsonPath

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_COMPACT_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_STDLIB = object()  # a document orjson refused (NaN, integers past 64 bits, lone surrogates) and json read
_CARD_ONLY = frozenset({Detector.CARD})


class InvalidValue(ValueError):
    """A value a rule with `invalid: reject` cannot mask; the message says why."""


@dataclass(frozen=True, slots=True)
class ValueMasking:
    """One rule's value masking, with its action bound to the secret and its `invalid` choice for one direction."""

    rule: str
    action: BoundAction
    paths: tuple[JsonPath, ...] = ()
    detectors: frozenset[Detector] = frozenset()
    reject_invalid: bool = True
    drop_binary: bool = False

    def mask(self, value: bytes) -> tuple[bytes, int]:
        """(the masked value, how many values were masked); `value` itself when nothing was."""
        if not value:
            return value, 0
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return (b"", 1) if self.drop_binary else (value, 0)
        if self.paths:
            return self._mask_fields(value)
        if self.detectors:
            return self._mask_text(value)
        return value, 0

    def _mask_fields(self, value: bytes) -> tuple[bytes, int]:
        try:
            doc, reader = _load(value)
        except RecursionError:
            return self._too_deep(value)
        except ValueError as e:
            if self.reject_invalid:
                where = f" ({e.msg} at character {e.pos})" if isinstance(e, json.JSONDecodeError) else ""
                raise InvalidValue(f"the value is not valid JSON{where}, and the rule names fields "
                                   f"{', '.join(map(str, self.paths))}") from None
            return self.action.whole(value), 1
        count = 0
        try:
            for path in self.paths:
                doc, n = path.apply(doc, self.action.field)
                count += n
            if self.detectors:
                doc, n = _detect_in(doc, self.detectors, self.action)
                count += n
        except RecursionError:
            return self._too_deep(value)
        return (_dump(doc, reader), count) if count else (value, 0)

    def _mask_text(self, value: bytes) -> tuple[bytes, int]:
        if b"\\" in value:
            # An escape can hide a match from a scan of the bytes ("\u0040" is "@", "\/" splits a token).
            return self._mask_parsed(value, None)
        spans = scan(value, self.detectors)
        if not spans:
            return value, 0
        if _all_quoted(value, spans):
            return _splice(value, spans, self.action), len(spans)
        return self._mask_parsed(value, spans)  # e.g. a card number written as a JSON number

    def _mask_parsed(self, value: bytes, spans: list[Span] | None) -> tuple[bytes, int]:
        """Scan a JSON value string by string; a value that is not JSON is plain text, scanned as it is."""
        try:
            doc, reader = _load(value)
            doc, n = _detect_in(doc, self.detectors, self.action)
        except RecursionError:
            return self._too_deep(value)
        except ValueError:
            if spans is None:
                spans = scan(value, self.detectors)
            return (_splice(value, spans, self.action), len(spans)) if spans else (value, 0)
        return (_dump(doc, reader), n) if n else (value, 0)

    def _too_deep(self, value: bytes) -> tuple[bytes, int]:
        """JSON nested deeper than Python can walk: it cannot be inspected, so it is treated as invalid."""
        if self.reject_invalid:
            raise InvalidValue("the value is JSON nested too deeply to inspect (about 900 levels or more)")
        return self.action.whole(value), 1


def _all_quoted(value: bytes, spans: list[Span]) -> bool:
    """Whether each span lies inside a double-quoted string (valid only when the text has no backslash)."""
    quotes = 0
    at = 0
    for span in spans:
        quotes += value.count(b'"', at, span.start)
        at = span.start
        if not quotes & 1:
            return False
    return True


def _splice(text: bytes, spans: list[Span], action: BoundAction) -> bytes:
    parts = []
    at = 0
    for span in spans:
        parts.append(text[at:span.start])
        parts.append(action.match(text[span.start:span.end], span.detector))
        at = span.end
    parts.append(text[at:])
    return b"".join(parts)


def _detect_in(node: Any, detectors: frozenset[Detector], action: BoundAction) -> tuple[Any, int]:
    """Scan a parsed JSON document: strings (object keys too) and, for cards, integers. Lists change in place."""
    if isinstance(node, str):
        raw = node.encode("utf-8", "surrogatepass")
        spans = scan(raw, detectors)
        if not spans:
            return node, 0
        return _splice(raw, spans, action).decode("utf-8", "surrogatepass"), len(spans)
    if isinstance(node, dict):
        count = 0
        items = []
        for key, item in node.items():
            key, n = _detect_in(key, detectors, action)
            item, m = _detect_in(item, detectors, action)
            count += n + m
            items.append((key, item))
        return (dict(items) if count else node), count
    if isinstance(node, list):
        count = 0
        for i, item in enumerate(node):
            new, n = _detect_in(item, detectors, action)
            if n:
                node[i] = new
                count += n
        return node, count
    if type(node) is int and Detector.CARD in detectors:
        raw = str(node).encode()
        spans = scan(raw, _CARD_ONLY)
        if spans:
            return _splice(raw, spans, action).decode(), len(spans)  # the number becomes a string
    return node, 0


def _load(value: bytes) -> tuple[Any, object]:
    """(the document, which reader read it): orjson (fast, strict), else the standard library's json."""
    try:
        return orjson.loads(value), orjson
    except orjson.JSONDecodeError:
        return json.loads(value), _STDLIB


def _dump(doc: Any, reader: object) -> bytes:
    """Compact JSON. A document json read may hold NaN, which orjson would write as null, so json writes it."""
    if reader is orjson:
        try:
            return orjson.dumps(doc)
        except TypeError:
            pass
    try:
        return _COMPACT.encode(doc).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: keep it escaped
        return _COMPACT_ASCII.encode(doc).encode("ascii")
