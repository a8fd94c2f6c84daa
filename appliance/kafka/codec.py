"""Request and response headers, and the few payload facts the proxy records.

Headers are read with struct (they are fixed up to the client id); payloads are
decoded with kio, and only for the APIs listed in `_TOPIC_READERS` and for the
error codes of their responses. Record batches stay bytes: their record counts
are read from the v2 batch header without decompressing anything.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import typing
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Callable

from kio.serial import entity_reader, entity_writer
from kio.serial.errors import SerialError
from kio.serial.writers import (
    write_compact_array_length, write_compact_string, write_int32, write_legacy_array_length, write_legacy_string,
    write_unsigned_varint,
)

from appliance.kafka import apis, bounds

_HEADER = struct.Struct(">hhih")
_INT32 = struct.Struct(">i")
_ERROR_CODE = struct.Struct(">h")
_BATCH_LENGTH_AT = 8
_MAGIC_AT = 16
_RECORD_COUNT_AT = 57
_BATCH_OVERHEAD = 12  # base offset and batch length precede the counted length
_BATCH_MIN_LENGTH = _RECORD_COUNT_AT + 4 - _BATCH_OVERHEAD  # a v2 header after its length field: 49 bytes


class DecodeError(ValueError):
    """A frame that does not decode as its header says, naming the api key and version."""


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body_offset: int  # into the frame, size prefix included; -1 when the version is unknown


@dataclass(frozen=True, slots=True)
class TopicPartitions:
    topic: str
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a request says that the audit (and later, policy) needs."""

    topics: tuple[TopicPartitions, ...] = ()
    group: str | None = None
    acks: int | None = None
    records: int | None = None
    record_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    error_code: int | None = None  # None: the response was not decoded
    records: int | None = None
    record_bytes: int | None = None
    # Fetch: the topic-partitions the response answers for. In a fetch session (KIP-227) an incremental
    # request names none, and the broker answers for those that have data: the response says what was read.
    topics: tuple[TopicPartitions, ...] = ()


def merged_topics(named: tuple[TopicPartitions, ...],
                  answered: tuple[TopicPartitions, ...]) -> tuple[TopicPartitions, ...]:
    """What a request named, in its order, with every topic-partition its response answered for and it did not
    name added after (the audit's topics of a Fetch in a fetch session)."""
    if not answered:
        return named
    merged: dict[str, list[int]] = {t.topic: list(t.partitions) for t in named}
    seen: dict[str, set[int]] = {topic: set(partitions) for topic, partitions in merged.items()}
    for t in answered:
        partitions, known = merged.setdefault(t.topic, []), seen.setdefault(t.topic, set())
        for p in t.partitions:
            if p not in known:
                known.add(p)
                partitions.append(p)
    if len(merged) == len(named) and all(len(merged[t.topic]) == len(t.partitions) for t in named):
        return named  # the usual answer: just what was asked for
    return tuple(TopicPartitions(topic, tuple(partitions)) for topic, partitions in merged.items())


def _read_uvarint(data: bytes, offset: int) -> tuple[int, int]:
    """The bounds module's varint reader, with the header's own error messages."""
    try:
        return bounds.read_uvarint(data, offset, len(data))
    except bounds.BoundsError:
        if offset + 5 > len(data) and all(b & 0x80 for b in data[offset:]):
            raise DecodeError("truncated tagged fields in a flexible header") from None
        raise DecodeError("unsigned varint longer than 5 bytes in a flexible header") from None


def _skip_tagged_fields(data: bytes, offset: int) -> int:
    if offset < len(data) and data[offset] == 0:  # no tagged fields: nearly every header
        return offset + 1
    count, offset = _read_uvarint(data, offset)
    for _ in range(count):
        _, offset = _read_uvarint(data, offset)
        size, offset = _read_uvarint(data, offset)
        offset += size
    if offset > len(data):
        raise DecodeError("tagged field runs past the end of the frame")
    return offset


def parse_request_header(frame: bytes) -> RequestHeader:
    """Read api key, version, correlation id and client id from a request frame."""
    if len(frame) < 4 + _HEADER.size:
        raise DecodeError(f"request frame of {len(frame) - 4} bytes is shorter than a request header")
    api_key, api_version, correlation_id, client_id_len = _HEADER.unpack_from(frame, 4)
    offset = 4 + _HEADER.size
    client_id = None
    if client_id_len >= 0:
        end = offset + client_id_len
        if end > len(frame):
            raise DecodeError(f"client id of {client_id_len} bytes runs past the end of the frame")
        client_id = frame[offset:end].decode("utf-8", "replace")
        offset = end
    if apis.can_parse(api_key, api_version):
        if apis.request_is_flexible(api_key, api_version):
            offset = _skip_tagged_fields(frame, offset)
    else:
        offset = -1
    return RequestHeader(api_key, api_version, correlation_id, client_id, offset)


def schema_body_offset(frame: bytes, header: RequestHeader) -> int:
    """Where the body starts for any version kio has a schema of (the header's `body_offset` is -1 for
    versions the proxy does not parse, even when kio could read them)."""
    if header.body_offset >= 0:
        return header.body_offset
    if not apis.has_schema(header.api_key, header.api_version):
        return -1
    client_id_len = _HEADER.unpack_from(frame, 4)[3]
    offset = 4 + _HEADER.size + max(client_id_len, 0)
    return _skip_tagged_fields(frame, offset) if apis.request_is_flexible(header.api_key, header.api_version) else offset


def response_correlation_id(frame: bytes) -> int:
    if len(frame) < 8:
        raise DecodeError(f"response frame of {len(frame) - 4} bytes has no correlation id")
    return _INT32.unpack_from(frame, 4)[0]


def response_body_offset(frame: bytes, api_key: int, api_version: int) -> int:
    offset = 8
    if apis.response_header_is_flexible(api_key, api_version):
        offset = _skip_tagged_fields(frame, offset)
    return offset


# Array elements one request may have. kio builds an object per element (a hundred bytes or more
# for an element that takes a few on the wire), so a 100 MiB request of small elements would take
# gigabytes. Clients send hundreds (partitions of a Produce, offsets of a commit), rarely thousands.
MAX_REQUEST_ELEMENTS = 100_000


def decode_entity(cls: type, frame: bytes, offset: int, what: str, max_elements: int | None = None) -> Any:
    """`cls` read by kio from `frame` at `offset`, after every length in it is checked against the bytes
    present (kio's native reader would try to allocate whatever a count claims). Any fault is a
    DecodeError that begins with `what` ("Fetch v12 response") and names the field."""
    try:
        bounds.check(cls, frame, offset, max_elements)
        entity, _ = entity_reader(cls)(frame, offset)
    except bounds.BoundsError as e:
        raise DecodeError(f"{what} does not decode: {e}") from None
    except (SerialError, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as e:
        raise DecodeError(f"{what} does not decode: {type(e).__name__}: {e}") from None
    return entity


def decode_request(frame: bytes, header: RequestHeader) -> Any:
    cls = apis.request_class(header.api_key, header.api_version)
    return decode_entity(cls, frame, header.body_offset,
                         f"{apis.api_name(header.api_key)} v{header.api_version} request", MAX_REQUEST_ELEMENTS)


def decode_response(frame: bytes, api_key: int, api_version: int) -> Any:
    cls = apis.response_class(api_key, api_version)
    return decode_entity(cls, frame, response_body_offset(frame, api_key, api_version),
                         f"{apis.api_name(api_key)} v{api_version} response")


def count_records(records: bytes | None, start: int = 0, end: int | None = None) -> int:
    """Records in a run of v2 record batches (`records[start:end]`), from each batch header; a trailing
    partial batch is ignored."""
    if not records:
        return 0
    total = 0
    offset = start
    end = len(records) if end is None else end
    while offset + _RECORD_COUNT_AT + 4 <= end:
        (length,) = _INT32.unpack_from(records, offset + _BATCH_LENGTH_AT)
        if length < _BATCH_MIN_LENGTH:
            break  # not a batch: the broker answers it CORRUPT_MESSAGE; counting must not loop on it
        if records[offset + _MAGIC_AT] == 2:
            total += _INT32.unpack_from(records, offset + _RECORD_COUNT_AT)[0]
        offset += _BATCH_OVERHEAD + length
    return total


# ---- facts per API ------------------------------------------------------------

def _parts(items, name: str, partitions: Callable[[Any], tuple[int, ...]]) -> tuple[TopicPartitions, ...]:
    return tuple(TopicPartitions(str(getattr(t, name)), partitions(t)) for t in items or ())


def _produce(req) -> RequestFacts:
    records = nbytes = 0
    for topic in req.topic_data:
        for p in topic.partition_data:
            records += count_records(p.records)
            nbytes += len(p.records or b"")
    topics = _parts(req.topic_data, "name", lambda t: tuple(p.index for p in t.partition_data))
    return RequestFacts(topics=topics, acks=int(req.acks), records=records, record_bytes=nbytes)


def _fetch(req) -> RequestFacts:
    return RequestFacts(topics=_parts(req.topics, "topic", lambda t: tuple(p.partition for p in t.partitions)))


def _list_offsets(req) -> RequestFacts:
    return RequestFacts(topics=_parts(req.topics, "name", lambda t: tuple(p.partition_index for p in t.partitions)))


def _metadata(req) -> RequestFacts:
    return RequestFacts(topics=tuple(TopicPartitions(str(t.name), ()) for t in req.topics or () if t.name is not None))


def _offset_commit(req) -> RequestFacts:
    topics = _parts(req.topics, "name", lambda t: tuple(p.partition_index for p in t.partitions))
    return RequestFacts(topics=topics, group=str(req.group_id))


def _offset_fetch(req) -> RequestFacts:
    if hasattr(req, "groups"):
        groups = list(req.groups)
        topics = tuple(
            TopicPartitions(str(t.name), tuple(t.partition_indexes)) for g in groups for t in g.topics or ()
        )
        return RequestFacts(topics=topics, group=",".join(str(g.group_id) for g in groups) or None)
    topics = tuple(TopicPartitions(str(t.name), tuple(t.partition_indexes)) for t in req.topics or ())
    return RequestFacts(topics=topics, group=str(req.group_id))


def _create_topics(req) -> RequestFacts:
    return RequestFacts(topics=tuple(TopicPartitions(str(t.name), ()) for t in req.topics))


def _delete_topics(req) -> RequestFacts:
    if hasattr(req, "topic_names"):
        return RequestFacts(topics=tuple(TopicPartitions(str(n), ()) for n in req.topic_names))
    names = (t.name if t.name is not None else f"id:{t.topic_id}" for t in req.topics)
    return RequestFacts(topics=tuple(TopicPartitions(str(n), ()) for n in names))


_TOPIC_READERS: dict[int, Callable[[Any], RequestFacts]] = {
    apis.PRODUCE: _produce,
    apis.FETCH: _fetch,
    apis.LIST_OFFSETS: _list_offsets,
    apis.METADATA: _metadata,
    apis.OFFSET_COMMIT: _offset_commit,
    apis.OFFSET_FETCH: _offset_fetch,
    apis.CREATE_TOPICS: _create_topics,
    apis.DELETE_TOPICS: _delete_topics,
}


def facts_of(api_key: int, request: Any) -> RequestFacts:
    """What the audit records of an already decoded request."""
    reader = _TOPIC_READERS.get(api_key)
    return RequestFacts() if reader is None or request is None else reader(request)


@cache
def _error_plan(cls: type) -> tuple[tuple[str, str], ...]:
    """Per response class, the fields worth visiting: ("error", name) for error codes,
    ("one", name) for a nested entity, ("many", name) for a collection of them."""
    from kio.schema.errors import ErrorCode

    from appliance.kafka.synth import element_type

    plan = []
    for name, tp in typing.get_type_hints(cls).items():
        if name.startswith("__"):
            continue
        element = element_type(tp)
        if tp is ErrorCode:
            plan.append(("error", name))
        elif element is not None and dataclasses.is_dataclass(element):
            plan.append(("many", name))
        elif dataclasses.is_dataclass(tp):
            plan.append(("one", name))
    return tuple(plan)


def _first_error(entity: Any) -> int:
    """The first non-zero error code anywhere in a decoded response, depth first."""
    for kind, name in _error_plan(type(entity)):
        value = getattr(entity, name)
        if kind == "error":
            if value:
                return int(value)
        elif kind == "many":
            for item in value or ():
                code = _first_error(item)
                if code:
                    return code
        elif value is not None:
            code = _first_error(value)
            if code:
                return code
    return 0


def response_facts(frame: bytes, api_key: int, api_version: int) -> ResponseFacts:
    """The broker's error code (and, for Fetch, records and bytes) for the audit."""
    if not apis.can_parse(api_key, api_version):
        return ResponseFacts()
    entity = decode_response(frame, api_key, api_version)
    if api_key == apis.FETCH:
        records = nbytes = 0
        answered = []
        for topic in entity.responses:
            for p in topic.partitions:
                records += count_records(p.records)
                nbytes += len(p.records or b"")
            answered.append(TopicPartitions(str(topic.topic), tuple(int(p.partition_index) for p in topic.partitions)))
        return ResponseFacts(_first_error(entity), records, nbytes, tuple(answered))
    return ResponseFacts(_first_error(entity))


# ---- Produce without a decode ---------------------------------------------------
# A producer sends request after request with the same bytes before its records:
# the same transactional id, acks, timeout, topic and partition. Once one request
# of a shape has been decoded by kio, the next with the same bytes up to its
# records needs no decode: only the records' length and batch headers are read.
# The broker's answer to it is recognised the same way, by the bytes it must
# start with, for its one error code.

_PRODUCE_TAIL = b"\0\0\0"  # empty tagged fields of the partition, the topic and the request (v9+)


def _encoded(*fields: tuple[Callable, Any]) -> bytes:
    """Fields written one after another by kio's primitive writers."""
    out = io.BytesIO()
    for write, value in fields:
        write(out, value)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class ProduceShape:
    """A single-partition Produce request's bytes between its header and its records' length."""

    api_version: int
    prefix: bytes
    facts: RequestFacts  # topic, partition and acks; records are counted per request


def produce_shape(frame: bytes, header: RequestHeader, request: Any) -> ProduceShape | None:
    """The shape of a decoded Produce request, or None when it is not one worth recognising
    (several topics or partitions, no records, tagged fields)."""
    if len(request.topic_data) != 1 or len(request.topic_data[0].partition_data) != 1:
        return None
    records = request.topic_data[0].partition_data[0].records
    if not records:
        return None
    flexible = apis.request_is_flexible(apis.PRODUCE, header.api_version)
    tail = _PRODUCE_TAIL if flexible else b""
    records_end = len(frame) - len(tail)
    records_start = records_end - len(records)
    length = _encoded((write_unsigned_varint, len(records) + 1) if flexible else (write_int32, len(records)))
    prefix_end = records_start - len(length)
    if (prefix_end < header.body_offset or frame[records_end:] != tail
            or frame[prefix_end:records_start] != length or frame[records_start:records_end] != records):
        return None
    facts = dataclasses.replace(_produce(request), records=None, record_bytes=None)
    return ProduceShape(header.api_version, bytes(frame[header.body_offset:prefix_end]), facts)


def match_produce(frame: bytes, header: RequestHeader, shape: ProduceShape) -> RequestFacts | None:
    """The facts of a Produce request of `shape`, read without a decode; None when it is not of it."""
    if header.api_version != shape.api_version or not frame.startswith(shape.prefix, header.body_offset):
        return None
    at = header.body_offset + len(shape.prefix)
    if apis.request_is_flexible(apis.PRODUCE, header.api_version):
        try:
            length, at = _read_uvarint(frame, at)
        except DecodeError:
            return None  # decoded in full, which names the fault
        length -= 1
        if not frame.endswith(_PRODUCE_TAIL):
            return None
        end = len(frame) - len(_PRODUCE_TAIL)
    else:
        if at + 4 > len(frame):
            return None
        (length,) = _INT32.unpack_from(frame, at)
        at += 4
        end = len(frame)
    if length <= 0 or at + length != end:
        return None
    facts = shape.facts
    return RequestFacts(facts.topics, facts.group, facts.acks, count_records(frame, at, end), length)


def shape_records(frame: bytes, header: RequestHeader, facts: RequestFacts) -> bytes:
    """The records of a Produce request `match_produce` matched (its facts): they end the frame, before the
    tagged fields of a flexible version."""
    end = len(frame) - (len(_PRODUCE_TAIL) if apis.request_is_flexible(apis.PRODUCE, header.api_version) else 0)
    return frame[end - facts.record_bytes:end]


@lru_cache(maxsize=1024)  # bounded: a workload chooses the topic and partition numbers
def _produce_response_start(api_version: int, topic: str, partition: int) -> bytes:
    """What the body of a Produce response for one topic and one partition starts with, up to its error code."""
    if apis.response_header_is_flexible(apis.PRODUCE, api_version):
        return _encoded((write_compact_array_length, 1), (write_compact_string, topic),
                        (write_compact_array_length, 1), (write_int32, partition))
    return _encoded((write_legacy_array_length, 1), (write_legacy_string, topic),
                    (write_legacy_array_length, 1), (write_int32, partition))


def produce_response_error(frame: bytes, api_version: int, facts: RequestFacts) -> int | None:
    """The error code of the answer to a single-partition Produce, read in place; None when the answer
    is not of that form (then it is decoded)."""
    if len(facts.topics) != 1 or len(facts.topics[0].partitions) != 1:
        return None
    topic = facts.topics[0]
    start = _produce_response_start(api_version, topic.topic, topic.partitions[0])
    at = response_body_offset(frame, apis.PRODUCE, api_version)
    if not frame.startswith(start, at) or at + len(start) + 2 > len(frame):
        return None
    return _ERROR_CODE.unpack_from(frame, at + len(start))[0]


# ---- messages the proxy writes itself ------------------------------------------

def _frame_with(header_bytes: bytes, entity: Any) -> bytes:
    """A frame: size, the given header bytes, then the entity encoded by kio."""
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    out.write(header_bytes)
    entity_writer(type(entity))(out, entity)
    data = out.getbuffer()
    _INT32.pack_into(data, 0, len(data) - 4)
    return out.getvalue()


def encode_response(header: RequestHeader, entity: Any) -> bytes:
    """`entity` framed as the response to `header`'s request (response header v0, or v1 when flexible)."""
    flexible = apis.response_header_is_flexible(header.api_key, header.api_version)
    return _frame_with(_INT32.pack(header.correlation_id) + (b"\0" if flexible else b""), entity)


def build_response(header: RequestHeader, **fields_: Any) -> bytes:
    """A response to `header`'s request, of the same version, with the given fields."""
    return encode_response(header, apis.response_class(header.api_key, header.api_version)(**fields_))


def unsupported_version_response(frame: bytes, header: RequestHeader, entries: tuple[str, str] | None) -> bytes:
    """UNSUPPORTED_VERSION for a request of a version the proxy did not offer, in that version's response.

    `entries` (request collection, response collection) names the per-resource entries a client looks
    for (a Produce's topics): each gets an entry carrying the error, so the refusal is not an empty
    answer with no error. Every error code in the response is UNSUPPORTED_VERSION.
    """
    from kio.schema.errors import ErrorCode

    from appliance.kafka.synth import default_entity, element_type, mirror

    error = ErrorCode.unsupported_version
    cls = apis.response_class(header.api_key, header.api_version)
    fields_: dict[str, Any] = {}
    if entries is not None:
        request_field, response_field = entries
        request_cls = apis.request_class(header.api_key, header.api_version)
        hints = typing.get_type_hints(cls)
        if request_field in request_cls.__dataclass_fields__ and response_field in hints:
            request = decode_entity(request_cls, frame, schema_body_offset(frame, header),
                                    f"{apis.api_name(header.api_key)} v{header.api_version} request",
                                    MAX_REQUEST_ELEMENTS)
            element = element_type(hints[response_field])
            items = getattr(request, request_field) or ()
            fields_[response_field] = tuple(mirror(item, element, error, "version not offered by the appliance")
                                            for item in items)
    return encode_response(header, default_entity(cls, error, **fields_))


def replace_request_body(frame: bytes, header: RequestHeader, request: Any) -> bytes:
    """The request frame with its body re-encoded from `request`; the header bytes are kept as sent."""
    return _frame_with(frame[4:header.body_offset], request)


def replace_response_body(frame: bytes, api_key: int, api_version: int, entity: Any) -> bytes:
    """The response frame with its body re-encoded from `entity`; the header bytes are kept as sent."""
    return _frame_with(frame[4:response_body_offset(frame, api_key, api_version)], entity)


def cap_api_versions(frame: bytes, api_version: int, offered: Callable[[int], "apis.VersionRange | None"] = apis.parseable) -> bytes:
    """Narrow each API's range in an ApiVersions response to what the proxy can parse.

    APIs the proxy does not offer (cannot parse, or has no permission for) are
    removed, so a client never picks a version whose requests would have to be
    refused. An error response (for
    example UNSUPPORTED_VERSION, which the broker sends as v0) passes unchanged.
    """
    try:
        entity = decode_response(frame, apis.API_VERSIONS, api_version)
    except DecodeError:
        if api_version == 0:
            raise
        entity = decode_response(frame, apis.API_VERSIONS, 0)
        api_version = 0
    if int(getattr(entity.error_code, "value", entity.error_code)) != 0:
        return frame
    kept = []
    for entry in entity.api_keys:
        known = offered(int(entry.api_key))
        if known is None:
            continue
        low, high = max(int(entry.min_version), known.min), min(int(entry.max_version), known.max)
        if low <= high:
            kept.append(dataclasses.replace(entry, min_version=type(entry.min_version)(low), max_version=type(entry.max_version)(high)))
    return replace_response_body(frame, apis.API_VERSIONS, api_version, dataclasses.replace(entity, api_keys=tuple(kept)))
