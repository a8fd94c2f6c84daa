"""JSON from an identity provider or a token, decoded strictly (pure).

    loads(body)    # any JSON value; JsonError naming the fault

A document with one member twice in one object (`{"alg": "RS256", "alg":
"none"}`) has two readings: Python's json keeps the last, other parsers the
first. Whatever a provider or a token says must mean one thing to the
appliance and to everything else that reads it, so such a document is refused
(RFC 8259 section 4 says names SHOULD be unique; RFC 7515 section 5.2 requires
it of JOSE headers). Nesting so deep that the parser recurses out of stack is
refused as well.

Used by the HTTP client for providers (provider_http), the JWKS parser and the
token parser, so that all three refuse the same documents with the same words.
"""

from __future__ import annotations

import json
from typing import Any


class JsonError(ValueError):
    """Not JSON the appliance accepts; the message says what is wrong (and where, for a syntax error)."""


class DuplicateMember(JsonError):
    """One object names a member twice."""


class TooDeep(JsonError):
    """Nested deeper than the parser recurses."""


class NotUtf8(JsonError):
    """Bytes that are not UTF-8. Python's json would also read UTF-16 and UTF-32, a second reading of the
    same bytes that other parsers do not share (RFC 8259 section 8.1: UTF-8 between systems)."""

    def __init__(self, where: str) -> None:
        super().__init__(f"not JSON the appliance reads: not UTF-8 ({where})")
        self.where = where


def _shown(name: str, limit: int = 32) -> str:
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for name, value in pairs:
        if name in out:
            raise DuplicateMember(f"member {_shown(name)} appears twice in one object")
        out[name] = value
    return out


def loads(body: bytes | bytearray | str) -> Any:
    """The JSON value of `body` (UTF-8 when bytes); JsonError if it is not JSON or is ambiguous."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8", "strict")
        except UnicodeDecodeError as e:
            raise NotUtf8(f"byte {e.start}") from None
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates)
    except DuplicateMember:
        raise
    except RecursionError:
        raise TooDeep("not JSON the appliance reads: nested too deeply") from None
    except json.JSONDecodeError as e:
        raise JsonError(f"not JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        raise JsonError(f"not JSON ({type(e).__name__}: {str(e)[:80]})") from None
