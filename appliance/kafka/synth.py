"""Building Kafka messages the proxy answers with itself: defaults, and error entries mirroring a request.

kio entities are frozen dataclasses whose field types are real classes, so a
response can be filled in from its schema: every error code set to the
refusal's, every name and index copied from the request entry it answers,
offsets and epochs -1 (Kafka's "unknown"), everything else empty.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
import uuid
from functools import cache
from typing import Any

from kio.schema.errors import ErrorCode

_UNKNOWN_IS_MINUS_ONE = ("offset", "epoch", "leader_id", "node_id", "producer_id", "coordinator", "timestamp",
                         "generation_id", "watermark")
# Request fields that carry the same thing as a response field of another name.
_ALIASES = {
    "index": ("index", "partition_index", "partition"),
    "partition_index": ("partition_index", "index", "partition"),
    "name": ("name", "topic", "resource_name"),
    "topic": ("topic", "name"),
    "group_id": ("group_id", "key"),
    "key": ("key", "group_id"),
}


@cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) for `X | None`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def element_type(tp: Any) -> Any | None:
    """For `tuple[X, ...]` (optionally `| None`), X; otherwise None."""
    tp, _ = _unwrap(tp)
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0]
    return None


def default_value(name: str, tp: Any, error: ErrorCode) -> Any:
    base, nullable = _unwrap(tp)
    if typing.get_origin(base) is tuple:
        return ()
    if nullable:
        return None
    if base is ErrorCode:
        return error
    if dataclasses.is_dataclass(base):
        return default_entity(base, error)
    if base is bool:
        return False
    if isinstance(base, type) and issubclass(base, str):
        return base("")
    if isinstance(base, type) and issubclass(base, bytes):
        return b""
    if "Timedelta" in getattr(base, "__name__", ""):  # kio's i32Timedelta / i64Timedelta
        return base(datetime.timedelta(0))
    if isinstance(base, type) and issubclass(base, datetime.timedelta):
        return base(0)
    if isinstance(base, type) and issubclass(base, datetime.datetime):
        return datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
    if base is uuid.UUID:
        return uuid.UUID(int=0)
    if isinstance(base, type) and issubclass(base, int):
        return base(-1) if any(word in name for word in _UNKNOWN_IS_MINUS_ONE) else base(0)
    if isinstance(base, type) and issubclass(base, float):
        return base(0)
    raise TypeError(f"no default for field {name!r} of type {tp!r}")


def default_entity(cls: type, error: ErrorCode, **overrides: Any) -> Any:
    """An instance of a kio entity with every field defaulted and every error code set to `error`."""
    values = {name: overrides[name] if name in overrides else default_value(name, tp, error)
              for name, tp in _fields(cls)}
    return cls(**values)


def _source_value(source: Any, name: str) -> tuple[bool, Any]:
    if isinstance(source, int) and not isinstance(source, bool) and name in _INDEX_FIELDS:
        return True, source
    if isinstance(source, str) and name in ("name", "topic", "group_id", "key", "resource_name", "transactional_id"):
        return True, source
    for candidate in _ALIASES.get(name, (name,)):
        if dataclasses.is_dataclass(source) and hasattr(source, candidate):
            return True, getattr(source, candidate)
    return False, None


def mirror(source: Any, cls: type, error: ErrorCode, message: str | None = None) -> Any:
    """A response entry of type `cls` answering request entry `source` with `error`.

    Scalars (names, indexes, resource types) are copied from fields of the same
    meaning; nested collections (partitions) are mirrored element by element;
    every error code is `error`, and an error message, where the schema has one,
    is `message`.
    """
    values: dict[str, Any] = {}
    for name, tp in _fields(cls):
        element = element_type(tp)
        found, value = _source_value(source, name)
        if element is not None and dataclasses.is_dataclass(element):
            nested = _nested_source(source, element)
            values[name] = tuple(mirror(item, element, error, message) for item in nested)
        elif name == "error_message" or name.endswith("_error_message"):
            values[name] = message
        elif found and not isinstance(value, tuple) and not dataclasses.is_dataclass(value):
            base, _ = _unwrap(tp)
            values[name] = value if value is None or isinstance(value, base) or not isinstance(base, type) else base(value)
        else:
            values[name] = default_value(name, tp, error)
    return cls(**values)


_INDEX_FIELDS = ("index", "partition_index", "partition", "partition_id")


def _nested_source(source: Any, element: type) -> tuple:
    """The collection inside a request entry that a nested response collection answers (partitions).

    Only partition-like collections are answered entry by entry; any other
    nested collection of a response (configs, assignments) stays empty.
    """
    if not dataclasses.is_dataclass(source) or not any(n in _INDEX_FIELDS for n, _ in _fields(element)):
        return ()
    for name, tp in _fields(type(source)):
        inner = element_type(tp)
        if inner is None:
            continue
        value = getattr(source, name) or ()
        if inner is int or (isinstance(inner, type) and issubclass(inner, int)) or dataclasses.is_dataclass(inner):
            return tuple(value)
    return ()
