"""Random but valid kio entities of any class, for property tests and the fuzz harness.

Values follow each field's `kafka_type`; arrays get a few elements, nullable
fields are sometimes null, tagged fields are sometimes set. A seeded
`random.Random` drives it, so a failing input can be replayed from its seed.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import random
import uuid
from typing import Any

from kio.schema.errors import ErrorCode
from kio.serial import entity_writer
from kio.serial._introspect import (
    EntityField, EntityTupleField, PrimitiveField, PrimitiveTupleField, classify_field, get_field_tag, is_optional,
)

_ERRORS = tuple(ErrorCode)
_INTS = {"int8": 7, "int16": 15, "int32": 31, "int64": 63, "uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}


def _primitive(kafka_type: str, rnd: random.Random) -> Any:
    if kafka_type in _INTS:
        bits = _INTS[kafka_type]
        if kafka_type.startswith("u"):
            return rnd.choice((0, 1, (1 << bits) - 1, rnd.randrange(1 << bits)))
        return rnd.choice((0, -1, 1, (1 << bits) - 1, -(1 << bits), rnd.randrange(-(1 << bits), 1 << bits)))
    if kafka_type == "bool":
        return rnd.random() < 0.5
    if kafka_type == "error_code":
        return rnd.choice(_ERRORS)
    if kafka_type == "float64":
        return rnd.uniform(-1e6, 1e6)
    if kafka_type == "uuid":
        return uuid.UUID(int=rnd.getrandbits(128))
    if kafka_type == "timedelta_i32":
        return datetime.timedelta(milliseconds=rnd.randrange(0, 1 << 31))
    if kafka_type == "timedelta_i64":
        return datetime.timedelta(milliseconds=rnd.randrange(0, 1 << 40))
    if kafka_type == "datetime_i64":
        return datetime.datetime.fromtimestamp(rnd.randrange(0, 1 << 31), datetime.timezone.utc)
    if kafka_type == "string":
        return "".join(rnd.choice("abcdefghij-._é") for _ in range(rnd.randrange(0, 12)))
    if kafka_type in ("bytes", "records"):
        return rnd.randbytes(rnd.choice((0, 1, 5, 40)))
    raise TypeError(f"no random value for kafka_type {kafka_type!r}")


def random_entity(cls: type, rnd: random.Random, depth: int = 0, width: int = 3) -> Any:
    values = {}
    for field in dataclasses.fields(cls):
        tagged = get_field_tag(field) is not None
        if tagged and rnd.random() < 0.5 and field.default is not dataclasses.MISSING:
            continue  # left at its default: not written
        kind = classify_field(field)
        nullable = is_optional(field) and not tagged
        if nullable and rnd.random() < 0.2:
            values[field.name] = None
            continue
        count = rnd.randrange(0, width + 1) if depth < 4 else 0
        kafka_type = field.metadata.get("kafka_type")
        match kind:
            case PrimitiveField():
                values[field.name] = _primitive(kafka_type, rnd)
            case PrimitiveTupleField():
                values[field.name] = tuple(_primitive(kafka_type, rnd) for _ in range(count))
            case EntityField(inner):
                values[field.name] = random_entity(inner, rnd, depth + 1, width)
            case EntityTupleField(inner):
                values[field.name] = tuple(random_entity(inner, rnd, depth + 1, width) for _ in range(count))
    return cls(**values)


def encode(entity: Any) -> bytes:
    out = io.BytesIO()
    entity_writer(type(entity))(out, entity)
    return out.getvalue()
