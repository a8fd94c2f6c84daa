"""Building record excerpts from the batches the proxy held for them, in the audit writer's thread.

`build(source, direction)` reads the first `plan.records` records of one
partition's batches (appliance.masking.excerpts.take held them) and returns
one `ExcerptRow` per record: topic, partition, offset (fetch; a produced
record's offset is the broker's to assign, so only its delta is known),
timestamp, key, headers and value, each masked by the audit's masker and only
then cut to `value_bytes`, with the full lengths. What the audit could not
read ends the partition's excerpts with one row whose `note` says why:

- a batch whose CRC32C does not match its bytes (nothing of it is trusted);
- a length, count or varint that runs past the bytes present, a varint
  longer than 10 bytes, a codec Kafka does not define, data that does not
  decompress: "its records are malformed (…)";
- records past the first DECOMPRESS_LIMIT bytes of a compressed batch;
- a produced batch that runs past the end of the request, or a fetched
  partition whose first batch does (a later one cut short is the broker's
  size limit, and ends the excerpts silently).

Every fault is caught here and becomes such a note: a hostile batch costs its
own excerpts, never the operation's row, the writer or the session. The work
is bounded: at most `plan.records` records per source, at most
DECOMPRESS_LIMIT bytes decompressed per batch, MASK_LIMIT bytes masked per
value. Control batches and magic 0/1 batches hold no excerpts.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from crc32c import crc32c

from appliance.masking.batches import _Corrupt, _varint
from appliance.masking.decompress import decompress_prefix
from appliance.masking.excerpts import DECOMPRESS_LIMIT, MASK_LIMIT, ExcerptSource
from appliance.masking.paths import REMOVE

_HEADER = struct.Struct(">qiibIhiqqqhii")  # base offset .. record count: 61 bytes
_HEADER_SIZE = _HEADER.size
_CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_LOG_APPEND_TIME = 0x08
_CONTROL = 0x20


@dataclass(frozen=True, slots=True)
class ExcerptRow:
    """One record as the audit keeps it (`record_excerpts`, after its operation_id, session_id and direction);
    or, with only `note` (and topic, partition), why the partition's excerpts end."""

    topic: str
    partition: int
    offset: int | None = None
    offset_delta: int | None = None
    timestamp: int | None = None
    key: str | None = None
    key_length: int | None = None  # -1: a null key
    headers: str | None = None  # JSON [[key, value or null], ...]
    value: str | None = None
    value_length: int | None = None  # -1: a null value (a tombstone)
    masked: int | None = None  # values the audit's masking changed in this record
    rule: str | None = None  # the recording rule that asked for it
    note: str | None = None


class _Stop(Exception):
    """The excerpts of this source end here; the message says why."""


def _text(raw: bytes, limit: int) -> str:
    """The first `limit` bytes as text; bytes that are not UTF-8 (or a character cut at the end) as \\xNN."""
    return raw[:limit].decode("utf-8", "backslashreplace")


def _utf8(raw: bytes) -> bool:
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build(source: ExcerptSource, direction: str) -> list[ExcerptRow]:
    """The excerpt rows of one source; never raises for anything in its bytes."""
    plan = source.plan
    if source.note is not None:
        return [ExcerptRow(source.topic, source.partition, rule=plan.rule, note=source.note)]
    rows: list[ExcerptRow] = []
    try:
        _read(source, direction, rows)
    except _Stop as e:
        rows.append(ExcerptRow(source.topic, source.partition, rule=plan.rule, note=str(e)))
    except Exception as e:  # noqa: BLE001 - whatever a hostile batch does, it costs its excerpts only
        rows.append(ExcerptRow(source.topic, source.partition, rule=plan.rule,
                               note=f"not excerpted: its records could not be read ({type(e).__name__}: {e})"))
    return rows


def _read(source: ExcerptSource, direction: str, rows: list[ExcerptRow]) -> None:
    records, plan = source.records, source.plan
    n, pos = len(records), 0
    while len(rows) < source.limit and n - pos > 16:
        (length,) = struct.unpack_from(">i", records, pos + 8)
        end = pos + 12 + length
        if length < _HEADER_SIZE - 12 or end > n:
            if direction == "fetch" and pos > 0:
                return  # a fetch response may end with a partial batch (the broker's size limit)
            raise _Stop(f"not excerpted: the batch at byte {pos} declares {length} bytes, but "
                        f"{n - pos - 12} follow it")
        magic = records[pos + 16]
        if magic != 2:
            pos = end  # magic 0 and 1 message sets are not read for excerpts
            continue
        (base_offset, _, _, _, crc, attributes, _, base_ts, max_ts, _, _, _, count) = _HEADER.unpack_from(records, pos)
        where = f"the batch at base offset {base_offset}" if direction == "fetch" else f"the batch at byte {pos}"
        if attributes & _CONTROL:
            pos = end
            continue
        if crc32c(memoryview(records)[pos + 21:end]) != crc:
            raise _Stop(f"not excerpted: {where}: its CRC32C does not match its bytes")
        codec = attributes & 0x07
        body = records[pos + _HEADER_SIZE:end]
        complete = True
        if codec:
            if codec not in _CODECS:
                raise _Stop(f"not excerpted: {where} names compression codec {codec}, which Kafka does not define")
            try:
                body, complete = decompress_prefix(codec, body, DECOMPRESS_LIMIT)
            except Exception as e:  # noqa: BLE001 - each codec library raises its own errors
                raise _Stop(f"not excerpted: {where}: its {_CODECS[codec]} data does not decompress ({e})") from None
        _records(body, complete, count, base_offset, base_ts, max_ts, attributes, source, direction, where, rows)
        pos = end


def _records(data: bytes, complete: bool, count: int, base_offset: int, base_ts: int, max_ts: int,
             attributes: int, source: ExcerptSource, direction: str, where: str, rows: list[ExcerptRow]) -> None:
    pos = 0
    for _ in range(max(0, count)):
        if len(rows) >= source.limit:
            return
        try:
            length, body = _varint(data, pos)
            end = body + length
            if length < 0 or end > len(data):
                raise IndexError
            p = body + 1  # attributes
            ts_delta, p = _varint(data, p)
            offset_delta, p = _varint(data, p)
            key, p = _field(data, p, end, "a key")
            value, p = _field(data, p, end, "a value")
            headers = _headers(data, p, end)
        except (IndexError, ValueError, _Corrupt) as e:
            if not complete:
                raise _Stop(f"excerpts end: the audit reads at most the first {DECOMPRESS_LIMIT:,} bytes of a "
                            f"compressed batch, and {where} holds more") from None
            why = "a length runs past the end of the batch" if isinstance(e, IndexError) else str(e)
            raise _Stop(f"not excerpted: {where}: its records are malformed ({why})") from None
        pos = end
        timestamp = max_ts if attributes & _LOG_APPEND_TIME else base_ts + ts_delta
        rows.append(_excerpt(source, direction, base_offset, offset_delta, timestamp, key, value, headers))


def _field(data: bytes, p: int, end: int, what: str) -> tuple[bytes | None, int]:
    """A varint length and that many bytes (None for -1), within the record that ends at `end`."""
    length, p = _varint(data, p)
    if length < 0:
        return None, p
    if p + length > end:
        raise ValueError(f"{what} of {length} bytes runs past its record")
    return data[p:p + length], p + length


def _headers(data: bytes, p: int, end: int) -> list[tuple[str, bytes | None]]:
    n, p = _varint(data, p)
    if n < 0 or n > end - p:
        raise ValueError(f"a header count of {n}")
    out = []
    for _ in range(n):
        key, p = _field(data, p, end, "a header key")
        value, p = _field(data, p, end, "a header value")
        out.append(("" if key is None else key.decode("utf-8", "backslashreplace"), value))
    if p != end:
        raise ValueError("a record's fields do not add up to its length")
    return out


def _excerpt(source: ExcerptSource, direction: str, base_offset: int, offset_delta: int, timestamp: int,
             key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> ExcerptRow:
    plan = source.plan
    masker, limit = plan.masker, plan.value_bytes
    notes: list[str] = []
    masked = 0

    def masked_bytes(raw: bytes, what: str, mask) -> str | None:
        nonlocal masked
        if masker is None or not raw:
            return _text(raw, limit)
        if len(raw) > MASK_LIMIT:
            notes.append(f"{what} not stored: {len(raw):,} bytes, more than the {MASK_LIMIT:,} the audit masks")
            return None
        if not _utf8(raw):
            notes.append(f"{what} not stored: binary, and masking rules cover the topic")
            return None
        out, n = mask(raw)
        masked += n
        return _text(out, limit)

    stored_key = None if key is None else masked_bytes(key, "key", masker.mask_key if masker else None)
    stored_value = None if value is None else masked_bytes(value, "value", masker.mask_value if masker else None)
    stored_headers = []
    for name, raw in headers:
        removed = False
        if masker is not None and raw is not None:
            for names, action in masker.headers:
                if name.lower() in names:
                    new = action.header(raw)
                    masked += 1
                    if new is REMOVE:
                        removed = True
                        break
                    raw = new
        if removed:
            continue
        if raw is None:
            stored_headers.append([name, None])
            continue
        scan = masker.mask_header_scan if masker is not None else None
        stored_headers.append([name, masked_bytes(raw, f"header {name!r}", scan)])
    return ExcerptRow(
        topic=source.topic, partition=source.partition,
        offset=base_offset + offset_delta if direction == "fetch" else None, offset_delta=offset_delta,
        timestamp=timestamp, key=stored_key, key_length=-1 if key is None else len(key),
        headers=json.dumps(stored_headers, ensure_ascii=False) if stored_headers else None,
        value=stored_value, value_length=-1 if value is None else len(value), masked=masked or None,
        rule=plan.rule, note="; ".join(notes) or None)
