"""Actions: what a masking rule writes in place of a value it found.

    redact        the fixed marker `[REDACTED]`
    keep_last: N  the last N characters stay, every other character becomes `*`;
                  spaces and `-` stay where they are (`**** **** **** 1111`)
    hash          `hmac:` and the hex HMAC-SHA256 of the value under the appliance's
                  secret, so equal values stay equal (joinable) and nobody without
                  the secret can test a guess
    remove        the JSON member or array element is deleted (header: the header is dropped)

`BoundAction` is an action with the secret it hashes with; it has one method
per kind of place a value is found (a detector's match, a JSON field, a
header, a whole record value), because each needs its own input and output
types. What each writes for each kind of value is tabled in docs/masking.md.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from appliance.masking.detectors import Detector
from appliance.masking.paths import REMOVE

REDACTED = "[REDACTED]"
HASH_PREFIX = "hmac:"
SEPARATORS = " -"  # what keep_last leaves in place

_REDACTED_B = REDACTED.encode()
_HASH_PREFIX_B = HASH_PREFIX.encode()
_STARS = bytes(42 if chr(c) not in SEPARATORS else c for c in range(256))  # bytes.translate: all but separators to *
_NOT_SEPARATOR = re.compile(r"[^ -]")
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


class ActionKind(StrEnum):
    REDACT = "redact"
    HASH = "hash"
    REMOVE = "remove"
    KEEP_LAST = "keep_last"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    keep: int = 0  # keep_last only

    @classmethod
    def redact(cls) -> Action:
        return cls(ActionKind.REDACT)

    @classmethod
    def hash(cls) -> Action:
        return cls(ActionKind.HASH)

    @classmethod
    def remove(cls) -> Action:
        return cls(ActionKind.REMOVE)

    @classmethod
    def keep_last(cls, n: int) -> Action:
        if n < 0:
            raise ValueError("keep_last must keep 0 or more characters")
        return cls(ActionKind.KEEP_LAST, n)

    def __str__(self) -> str:
        return f"keep_last: {self.keep}" if self.kind == ActionKind.KEEP_LAST else str(self.kind)


def keep_last_text(text: str, n: int) -> str:
    """`text` with all but its last n non-separator characters replaced by `*`; separators stay."""
    i = len(text)
    kept = 0
    while i > 0 and kept < n:
        i -= 1
        if text[i] not in SEPARATORS:
            kept += 1
    return _NOT_SEPARATOR.sub("*", text[:i]) + text[i:]


def keep_last_bytes(raw: bytes, n: int) -> bytes:
    """The same for ASCII bytes (what detectors match)."""
    i = len(raw)
    kept = 0
    while i > 0 and kept < n:
        i -= 1
        if raw[i] not in b" -":
            kept += 1
    return raw[:i].translate(_STARS) + raw[i:]


def _normalized(raw: bytes, detector: Detector) -> bytes:
    """The form a detector's match is hashed in, so `4111 1111 1111 1111` and `4111111111111111` join."""
    if detector in (Detector.CARD, Detector.SSN):
        return raw.translate(None, b" -")
    if detector == Detector.IBAN:
        return raw.replace(b" ", b"").upper()
    if detector == Detector.EMAIL:
        return raw.lower()
    return raw


@dataclass(frozen=True, slots=True)
class BoundAction:
    """An action and the secret `hash` uses (None when no rule hashes)."""

    action: Action
    secret: bytes | None = None

    def __post_init__(self) -> None:
        if self.action.kind == ActionKind.HASH and not self.secret:
            raise ValueError("the hash action needs the appliance's secret")

    def _digest(self, data: bytes) -> str:
        return HASH_PREFIX + hmac.digest(self.secret, data, "sha256").hex()  # type: ignore[arg-type]

    def match(self, raw: bytes, detector: Detector) -> bytes:
        """What replaces a detector's match (ASCII in, ASCII out: safe inside a JSON string)."""
        kind = self.action.kind
        if kind == ActionKind.REDACT:
            return _REDACTED_B
        if kind == ActionKind.KEEP_LAST:
            return keep_last_bytes(raw, self.action.keep)
        return self._digest(_normalized(raw, detector)).encode()

    def text(self, text: str) -> str:
        """What replaces a text (a JSON string or scalar's text): never REMOVE."""
        kind = self.action.kind
        if kind == ActionKind.KEEP_LAST:
            return keep_last_text(text, self.action.keep)
        if kind == ActionKind.HASH:
            return self._digest(text.encode("utf-8", "surrogatepass"))
        return REDACTED

    def field(self, value: Any) -> Any:
        """What replaces a JSON value a path selected: REMOVE, a string, or `value` itself for null."""
        kind = self.action.kind
        if kind == ActionKind.REMOVE:
            return REMOVE
        if value is None:
            return value  # nothing to hide
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (dict, list)):
            if kind == ActionKind.HASH:
                return self._digest(_CANONICAL.encode(value).encode("utf-8", "surrogatepass"))
            return REDACTED  # keep_last keeps nothing of a structure
        return self.text(json.dumps(value))  # numbers and booleans as written in JSON

    def header(self, raw: bytes | None) -> bytes | None | object:
        """What replaces a header's value: REMOVE drops the header; a null value stays null."""
        kind = self.action.kind
        if kind == ActionKind.REMOVE:
            return REMOVE
        if raw is None:
            return None
        return self.whole(raw)

    def whole(self, raw: bytes) -> bytes:
        """What replaces a whole value (`invalid: mask-whole`, a header): `remove` leaves an empty value."""
        kind = self.action.kind
        if kind == ActionKind.REDACT:
            return _REDACTED_B
        if kind == ActionKind.HASH:
            return self._digest(raw).encode()
        if kind == ActionKind.REMOVE:
            return b""
        try:
            return keep_last_text(raw.decode("utf-8"), self.action.keep).encode("utf-8")
        except UnicodeDecodeError:
            return _REDACTED_B  # keep_last keeps nothing of bytes that are not text
