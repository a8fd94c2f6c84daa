"""Rewriting v2 record batches record by record, with every Kafka codec, header and CRC kept right.

`rewrite_records` takes the `records` bytes of one Produce or Fetch partition
(a run of record batches) and a `RecordMasker`, and returns new bytes in which
each record value and header the masker changed is replaced. What it keeps:

- a run where nothing is masked is returned as the same object, never re-encoded;
- a batch where nothing is masked is copied byte for byte, and in a rewritten
  batch every record the masker left alone is copied byte for byte;
- the batch header as it was (base offset, partition leader epoch, magic,
  attributes with codec, timestamp type, transactional and control bits,
  last offset delta, base and max timestamp, producer id and epoch, base
  sequence, record count); only the length and the CRC32C are new;
- per record: attributes, timestamp delta, offset delta and key as the bytes
  they were; headers too unless a header rule changed them;
- the codec: the records are recompressed with the batch's own codec, even
  when that makes them larger (kafka-python's builder would fall back to no
  compression; that would change the attributes a producer's idempotence and
  the broker's checks see, so its builder is not used);
- control batches, batches of magic 0 and 1, and a trailing partial batch (a
  Fetch response may end with one) are copied untouched.

Records are read here rather than with kafka-python's `DefaultRecordBatch`,
whose iterator resolves timestamps (for LOG_APPEND_TIME batches it returns the
batch's max timestamp for every record) and drops record attributes, so what
it yields cannot be written back as it was. kafka-python supplies the header
layout, the varint encoder and the codecs (gzip, xerial-framed snappy, lz4
frames without block linking, zstd); `crc32c` computes the checksum. Decompression is `appliance.masking.decompress`, which stops at a
cap (`MAX_BATCH_BYTES`, 16 MiB by default) instead of expanding a hostile batch whole.

Before a batch is parsed, its decompressed bytes go to `masker.could_match`,
a cheap look (a few C-speed scans) that lets batches with nothing to mask
through without touching a record. A batch whose CRC does not match is refused
(MaskingRejected) rather than rewritten, which would launder the corruption.
"""

from __future__ import annotations

import struct

from crc32c import crc32c
from kafka import codec as kafka_codec
from kafka.record.default_records import DefaultRecordBase
from kafka.record.util import encode_varint

from appliance.masking.decompress import DECODE as _DECOMPRESS, MAX_BATCH_BYTES, TooLarge
from appliance.masking.rules import MaskingRejected, RecordMasker

HEADER = DefaultRecordBase.HEADER_STRUCT  # 61 bytes, base offset .. record count
HEADER_SIZE = HEADER.size
CRC_OFFSET = DefaultRecordBase.CRC_OFFSET  # 17
ATTRIBUTES_OFFSET = DefaultRecordBase.ATTRIBUTES_OFFSET  # 21: the CRC covers from here to the end
MAGIC_OFFSET = 16
LENGTH_OFFSET = 8
LOG_OVERHEAD = 12  # base offset and length: not counted in the length
CODEC_MASK = DefaultRecordBase.CODEC_MASK
CONTROL_MASK = DefaultRecordBase.CONTROL_MASK
GZIP_LEVEL = 6  # zlib's default, as Kafka's Java client uses; the level is not recorded in a batch

_LENGTH = struct.Struct(">i")
_CRC = struct.Struct(">I")

CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_ENCODE = {1: lambda data: kafka_codec.gzip_encode(data, compresslevel=GZIP_LEVEL),
           2: kafka_codec.snappy_encode, 3: kafka_codec.lz4_encode, 4: kafka_codec.zstd_encode}


class _Corrupt(Exception):
    pass


def rewrite_records(records: bytes, masker: RecordMasker, *, secret: bytes | None = None,
                    partition: int | None = None, max_batch_bytes: int = MAX_BATCH_BYTES) -> tuple[bytes, int]:
    """(the records with masked values, how many values were masked); `records` itself when none were.

    `secret`, when given, rebinds the masker to it (a masker built without one
    cannot hash). `partition` only names the partition in a MaskingRejected.
    A compressed batch is decompressed up to `max_batch_bytes` and no further:
    one that holds more is refused (MaskingRejected), never expanded whole.
    """
    if secret is not None:
        masker = masker.with_secret(secret)
    original = records
    if type(records) is not bytes:
        records = bytes(records)
    n = len(records)
    pos = 0
    pieces: list[bytes] | None = None
    copied = 0
    total = 0
    while n - pos > MAGIC_OFFSET:
        length = _LENGTH.unpack_from(records, pos + LENGTH_OFFSET)[0]
        end = pos + LOG_OVERHEAD + length
        if length < 0 or end > n:
            break  # a partial batch at the end of a fetch: kept as is
        if (records[pos + MAGIC_OFFSET] == 2 and end - pos >= HEADER_SIZE
                and not records[pos + ATTRIBUTES_OFFSET + 1] & CONTROL_MASK):
            rewritten = _rewrite_batch(records, pos, end, masker, partition, max_batch_bytes)
            if rewritten is not None:
                batch, masked = rewritten
                if pieces is None:
                    pieces = []
                pieces.append(records[copied:pos])
                pieces.append(batch)
                copied = end
                total += masked
        pos = end
    if pieces is None:
        return original, 0
    pieces.append(records[copied:])
    return b"".join(pieces), total


def _rewrite_batch(records: bytes, pos: int, end: int, masker: RecordMasker,
                   partition: int | None, max_batch_bytes: int) -> tuple[bytes, int] | None:
    header = HEADER.unpack_from(records, pos)
    base_offset, attributes, count = header[0], header[5], header[12]
    codec = attributes & CODEC_MASK

    def refuse(reason: str, offset_delta: int | None = None) -> MaskingRejected:
        return MaskingRejected(reason, topic=masker.topic, partition=partition, base_offset=base_offset,
                               offset_delta=offset_delta)

    body = records[pos + HEADER_SIZE:end]
    if codec:
        decode = _DECOMPRESS.get(codec)
        if decode is None:
            raise refuse(f"the batch's attributes name compression codec {codec}, which Kafka does not define")
        try:
            data = decode(body, max_batch_bytes)
        except TooLarge:
            raise refuse(f"its {CODEC_NAMES[codec]} data decompresses to more than {max_batch_bytes} bytes, the "
                         f"appliance's cap on a batch it reads for masking") from None
        except Exception as e:  # each codec library raises its own errors
            if _crc_ok(records, pos, end, header):
                raise refuse(f"its {CODEC_NAMES[codec]} data does not decompress: {e}") from None
            raise refuse("the batch's CRC32C does not match its bytes; refusing to rewrite (and so hide) "
                         "a corrupt batch") from None
    else:
        data = body
    if not masker.could_match(data):
        return None
    if not _crc_ok(records, pos, end, header):
        raise refuse("the batch's CRC32C does not match its bytes; refusing to rewrite (and so hide) a corrupt batch")
    try:
        out, masked = _rewrite_data(data, count, masker)
    except MaskingRejected as e:
        raise e.located(partition=partition, base_offset=base_offset, offset_delta=e.offset_delta) from None
    except (_Corrupt, IndexError) as e:
        raise refuse(f"its records are malformed ({e or 'a length runs past the end'})") from None
    if not masked:
        return None
    if codec:
        out = _ENCODE[codec](bytes(out))
    batch = bytearray(HEADER_SIZE + len(out))
    batch[:HEADER_SIZE] = records[pos:pos + HEADER_SIZE]
    batch[HEADER_SIZE:] = out
    _LENGTH.pack_into(batch, LENGTH_OFFSET, len(batch) - LOG_OVERHEAD)
    _CRC.pack_into(batch, CRC_OFFSET, crc32c(memoryview(batch)[ATTRIBUTES_OFFSET:]))
    return bytes(batch), masked


def _crc_ok(records: bytes, pos: int, end: int, header: tuple) -> bool:
    return crc32c(memoryview(records)[pos + ATTRIBUTES_OFFSET:end]) == header[4]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at `pos`: (value, position after it). One byte is the common case."""
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    result = b & 0x7F
    shift = 7
    while True:
        pos += 1
        b = buf[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos + 1
        shift += 7
        if shift > 63:
            raise _Corrupt("a varint longer than 10 bytes")


def _rewrite_data(data: bytes, count: int, masker: RecordMasker) -> tuple[bytearray, int]:
    """The records section with masked records re-encoded and the others copied; (bytes, values masked)."""
    out = bytearray()
    copied = 0  # data[copied:pos] is still to be copied as it is
    total = 0
    pos = 0
    wants_headers = masker.wants_headers
    mask = masker.mask
    no_headers: list = []
    for _ in range(count):
        length, body = _varint(data, pos)
        end = body + length
        if length < 0 or end > len(data):
            raise _Corrupt(f"a record's length {length} runs past the end of the batch")
        p = body + 1  # attributes: one byte, unused by Kafka so far
        _, p = _varint(data, p)  # timestamp delta
        offset_delta, p = _varint(data, p)
        key_len, p = _varint(data, p)
        key = None
        if key_len >= 0:
            key = data[p:p + key_len]
            p += key_len
        value_at = p
        value_len, p = _varint(data, p)
        value = None
        if value_len >= 0:
            value = data[p:p + value_len]
            p += value_len
        headers_at = p
        headers = _read_headers(data, p, end) if wants_headers else no_headers
        try:
            result = mask(key, value, headers)
        except MaskingRejected as e:
            raise e.located(partition=None, base_offset=None, offset_delta=offset_delta) from None
        if result.masked:
            record = bytearray(data[body:value_at])  # attributes, timestamp delta, offset delta, key
            new_value = result.value
            if new_value is None:
                record.append(1)  # varint -1
            else:
                encode_varint(len(new_value), record.append)
                record += new_value
            if result.headers is headers:
                record += data[headers_at:end]
            else:
                _write_headers(record, result.headers)
            out += data[copied:pos]
            encode_varint(len(record), out.append)
            out += record
            copied = end
            total += result.masked
        pos = end
    if pos != len(data):
        raise _Corrupt(f"{len(data) - pos} bytes follow the batch's {count} records")
    if total:
        out += data[copied:]
    return out, total


def _read_headers(data: bytes, p: int, end: int) -> list[tuple[str, bytes | None]]:
    n, p = _varint(data, p)
    headers = []
    for _ in range(n):
        key_len, p = _varint(data, p)
        if key_len < 0:
            raise _Corrupt("a header key of negative length")
        try:
            key = data[p:p + key_len].decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt("a header key that is not UTF-8") from None
        p += key_len
        value_len, p = _varint(data, p)
        value = None
        if value_len >= 0:
            value = data[p:p + value_len]
            p += value_len
        headers.append((key, value))
    if p != end:
        raise _Corrupt("a record's fields do not add up to its length")
    return headers


def _write_headers(out: bytearray, headers: list[tuple[str, bytes | None]]) -> None:
    encode_varint(len(headers), out.append)
    for key, value in headers:
        raw = key.encode("utf-8")
        encode_varint(len(raw), out.append)
        out += raw
        if value is None:
            out.append(1)
        else:
            encode_varint(len(value), out.append)
            out += value
