"""Checking a Kafka message's lengths against the bytes present, before kio decodes it.

kio's native reader trusts the lengths it reads: an array count of 2^32 in a
24-byte frame makes it reserve room for that many elements, and the process
aborts when the allocation fails. Strings and bytes longer than the buffer
already raise, but every count has to be seen before kio sees it. So each
message is first walked here, field by field in kio's own order (its
dataclass fields, their `kafka_type` and `tag` metadata, `__flexible__`),
and refused when any array count, string or bytes length, or tagged field
size claims more than the bytes that remain. An array of N elements needs at
least N times the smallest encoding of one element.

The walk also refuses what kio would read differently from Kafka, so that a
message that passes is read by kio exactly as it was walked: null for a
field that is not nullable, a tagged field whose value does not fill its
declared size, and a tag the schema does not know (kio raises KeyError).

A plan is built once per entity class. Runs of fixed-size fields are one
step; an array of fixed-size elements is one multiplication; `records` and
other bytes fields are one length check. Nothing here allocates in
proportion to a length read from the wire.
"""

from __future__ import annotations

import dataclasses
import struct
from functools import cache
from typing import Any

from kio.serial._introspect import (
    EntityField, EntityTupleField, PrimitiveField, PrimitiveTupleField, classify_field, get_field_tag, is_optional,
)

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")

_FIXED = {
    "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "float64": 8, "bool": 1, "error_code": 2, "timedelta_i32": 4, "timedelta_i64": 8, "datetime_i64": 8,
    "uuid": 16,
}
_BYTES_TYPES = ("bytes", "records")

# Step kinds of a plan.
_SKIP = 0  # a run of fixed-size fields: (kind, size)
_STRING = 1  # (kind, name, nullable, legacy width: 2 for strings, 4 for bytes)
_ENTITY = 2  # (kind, name, plan, nullable)
_ARRAY = 3  # (kind, name, nullable, element step, element minimum size, element fixed size or None)


class BoundsError(ValueError):
    """A length, count or size that the bytes present cannot hold; `path` names the field."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.segments: list[str] = [path] if path else []

    @property
    def path(self) -> str:
        return "".join(self.segments).lstrip(".")

    def __str__(self) -> str:
        return f"{self.path or '(message)'}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """How to walk one entity class: its fields in order, then its tagged fields when flexible."""

    name: str
    flexible: bool
    steps: tuple
    tagged: dict  # tag -> (field name, step)
    minimum: int  # the fewest bytes an encoding of the entity can take
    fixed: int | None  # the size of every encoding, when all are the same size


def _field_step(field: dataclasses.Field, flexible: bool, tagged: bool) -> tuple[tuple, int, int | None]:
    """(step, minimum size, fixed size or None) of one field."""
    kind = classify_field(field)
    nullable = tagged or is_optional(field)
    kafka_type = field.metadata.get("kafka_type")
    if isinstance(kind, PrimitiveField):
        return _primitive_step(field.name, kafka_type, flexible, nullable)
    if isinstance(kind, EntityField):
        plan = plan_for(kind.type_)
        nullable = nullable and not tagged  # a tagged struct carries no null marker
        if nullable:  # KIP-893: an int8 marker, -1 for null
            return (_ENTITY, field.name, plan, True), 1, None
        return (_ENTITY, field.name, plan, False), plan.minimum, plan.fixed
    if isinstance(kind, PrimitiveTupleField):
        element, minimum, fixed = _primitive_step(field.name, kafka_type, flexible, False)
    elif isinstance(kind, EntityTupleField):
        plan = plan_for(kind.type_)
        element, minimum, fixed = (_ENTITY, field.name, plan, False), plan.minimum, plan.fixed
    else:  # pragma: no cover - kio has no other field classes
        raise TypeError(f"field {field.name!r}: unknown kio field class {kind!r}")
    return (_ARRAY, field.name, nullable, element, max(minimum, 1), fixed), 1 if flexible else 4, None


def _primitive_step(name: str, kafka_type: str | None, flexible: bool, nullable: bool) -> tuple[tuple, int, int | None]:
    if kafka_type in _FIXED:
        size = _FIXED[kafka_type]
        return (_SKIP, size), size, size
    if kafka_type == "string" or kafka_type in _BYTES_TYPES:
        width = 2 if kafka_type == "string" else 4
        return (_STRING, name, nullable, width), 1 if flexible else width, None
    raise TypeError(f"field {name!r}: kafka_type {kafka_type!r} has no known encoding")


@cache
def plan_for(cls: type) -> Plan:
    flexible = bool(getattr(cls, "__flexible__", False))
    steps: list[tuple] = []
    tagged: dict[int, tuple[str, tuple]] = {}
    minimum = 0
    fixed: int | None = 0
    for field in dataclasses.fields(cls):
        tag = get_field_tag(field)
        if tag is not None:
            step, _, _ = _field_step(field, flexible, True)
            tagged[int(tag)] = (field.name, step)
            continue
        step, low, size = _field_step(field, flexible, False)
        minimum += low
        fixed = None if fixed is None or size is None else fixed + size
        if step[0] == _SKIP and steps and steps[-1][0] == _SKIP:
            steps[-1] = (_SKIP, steps[-1][1] + step[1])  # one step for a run of fixed-size fields
        else:
            steps.append(step)
    if flexible:
        minimum += 1  # the tagged-field count
        fixed = None
    return Plan(cls.__name__, flexible, tuple(steps), tagged, minimum, fixed)


def read_uvarint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """An unsigned varint of at most 5 bytes at `pos`, not reading past `end`: (value, the position after it)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise BoundsError("unsigned varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 35:
            raise BoundsError("unsigned varint is longer than 5 bytes")


def _walk_string(step: tuple, buf: bytes, pos: int, end: int, flexible: bool) -> int:
    _, name, nullable, width = step
    if flexible:
        length, pos = read_uvarint(buf, pos, end)
        length -= 1
    else:
        if pos + width > end:
            raise BoundsError(f"{width}-byte length runs past the end", "." + name)
        length = (_INT16 if width == 2 else _INT32).unpack_from(buf, pos)[0]
        pos += width
    if length < 0:
        if length == -1 and nullable:
            return pos
        raise BoundsError(f"length {length} is not allowed here (the field is not nullable)", "." + name)
    if length > end - pos:
        raise BoundsError(f"length {length} exceeds the {end - pos} bytes that remain", "." + name)
    return pos + length


def _walk_array(step: tuple, buf: bytes, pos: int, end: int, flexible: bool, budget: list) -> int:
    _, name, nullable = step[:3]
    if flexible:
        count, pos = read_uvarint(buf, pos, end)
        count -= 1
    else:
        if pos + 4 > end:
            raise BoundsError("4-byte array count runs past the end", "." + name)
        count = _INT32.unpack_from(buf, pos)[0]
        pos += 4
    if count < 0:
        if count == -1 and nullable:
            return pos
        raise BoundsError(f"array count {count} is not allowed here (the field is not nullable)", "." + name)
    return _walk_elements(step, count, buf, pos, end, flexible, budget)


def _walk_step(step: tuple, buf: bytes, pos: int, end: int, flexible: bool, budget: list) -> int:
    kind = step[0]
    if kind == _SKIP:
        pos += step[1]
        if pos > end:
            raise BoundsError(f"fixed-size fields need {pos - end} bytes more than remain")
        return pos
    if kind == _STRING:
        return _walk_string(step, buf, pos, end, flexible)
    if kind == _ARRAY:
        return _walk_array(step, buf, pos, end, flexible, budget)
    _, name, plan, nullable = step
    if nullable:
        if pos >= end:
            raise BoundsError("null marker runs past the end", "." + name)
        pos += 1
        if buf[pos - 1] == 0xFF:  # kio reads -1 as null and anything else as present
            return pos
    try:
        return _walk(plan, buf, pos, end, budget)
    except BoundsError as e:
        e.segments.insert(0, "." + name)
        raise


def _walk(plan: Plan, buf: bytes, pos: int, end: int, budget: list) -> int:
    # The hot path: fixed runs, strings and one-byte compact lengths inline; the rest in helpers.
    flexible = plan.flexible
    for step in plan.steps:
        kind = step[0]
        if kind == _SKIP:
            pos += step[1]
            if pos > end:
                raise BoundsError(f"fixed-size fields need {pos - end} bytes more than remain")
            continue
        if kind == _ENTITY:
            pos = _walk_step(step, buf, pos, end, flexible, budget)
            continue
        if flexible and pos < end and buf[pos] < 0x80:
            n = buf[pos] - 1
            pos += 1
        elif flexible:
            n, pos = read_uvarint(buf, pos, end)
            n -= 1
        else:
            width = step[3] if kind == _STRING else 4
            if pos + width > end:
                what = f"{width}-byte length" if kind == _STRING else "4-byte array count"
                raise BoundsError(f"{what} runs past the end", "." + step[1])
            n = (_INT16 if width == 2 else _INT32).unpack_from(buf, pos)[0]
            pos += width
        if n < 0:
            if n == -1 and step[2]:
                continue
            what = "length" if kind == _STRING else "array count"
            raise BoundsError(f"{what} {n} is not allowed here (the field is not nullable)", "." + step[1])
        if kind == _STRING:
            if n > end - pos:
                raise BoundsError(f"length {n} exceeds the {end - pos} bytes that remain", "." + step[1])
            pos += n
            continue
        pos = _walk_elements(step, n, buf, pos, end, flexible, budget)
    if not flexible:
        return pos
    if pos < end and buf[pos] == 0:  # no tagged fields: the common case
        return pos + 1
    return _walk_tagged(plan, buf, pos, end, budget)


def _walk_elements(step: tuple, count: int, buf: bytes, pos: int, end: int, flexible: bool, budget: list) -> int:
    _, name, _, element, minimum, fixed = step
    if count * minimum > end - pos:
        raise BoundsError(f"array of {count} elements needs at least {count * minimum} bytes, "
                          f"{end - pos} remain", "." + name)
    budget[0] -= count
    if budget[0] < 0:
        raise BoundsError(f"array of {count} elements takes the message past the {budget[1]} array elements "
                          "one message may have", "." + name)
    if fixed is not None:
        return pos + count * fixed
    i = 0
    try:
        if element[0] == _ENTITY:
            plan = element[2]
            for i in range(count):
                pos = _walk(plan, buf, pos, end, budget)
        else:
            for i in range(count):
                pos = _walk_string(element, buf, pos, end, flexible)
    except BoundsError as e:
        e.segments.insert(0, f".{name}[{i}]")
        raise
    return pos


def _walk_tagged(plan: Plan, buf: bytes, pos: int, end: int, budget: list) -> int:
    count, pos = read_uvarint(buf, pos, end)
    if count > end - pos:  # each tagged field takes at least 2 bytes
        raise BoundsError(f"{count} tagged fields cannot fit in the {end - pos} bytes that remain")
    for _ in range(count):
        tag, pos = read_uvarint(buf, pos, end)
        size, pos = read_uvarint(buf, pos, end)
        if size > end - pos:
            raise BoundsError(f"tagged field {tag} of {size} bytes exceeds the {end - pos} bytes that remain")
        known = plan.tagged.get(tag)
        if known is None:
            raise BoundsError(f"tagged field {tag} is not one {plan.name} has")
        name, step = known
        try:
            stop = _walk_step(step, buf, pos, pos + size, True, budget)
        except BoundsError as e:
            if step[0] == _SKIP:  # other steps name their field themselves
                e.segments.insert(0, "." + name)
            raise
        if stop != pos + size:
            raise BoundsError(f"tagged field {tag} declares {size} bytes but its value takes {stop - pos}",
                              "." + name)
        pos = stop
    return pos


def check(cls: type, buf: bytes, offset: int, max_elements: int | None = None) -> int:
    """Walk an encoding of `cls` at `offset`; the offset just after it, or BoundsError naming the field.

    `max_elements` bounds the array elements of the whole message: kio makes a Python object of each,
    ten or more times the bytes the smallest element takes on the wire.
    """
    limit = (1 << 62) if max_elements is None else max_elements
    return _walk(plan_for(cls), buf, offset, len(buf), [limit, limit])


def read(cls: type, buf: bytes, offset: int, max_elements: int | None = None) -> Any:
    """`cls` decoded by kio at `offset` after the bounds check; BoundsError or kio's own errors otherwise."""
    from kio.serial import entity_reader

    check(cls, buf, offset, max_elements)
    return entity_reader(cls)(buf, offset)[0]
