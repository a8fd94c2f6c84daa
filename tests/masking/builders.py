"""Real v2 record batches for masking tests, built and read with kafka-python, plus an independent raw reader."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from crc32c import crc32c
from kafka import codec as kafka_codec
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.util import decode_varint

from appliance.policy.parser import parse_policy

HEADER = DefaultRecordBatch.HEADER_STRUCT
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
SECRET = b"s" * 32


@dataclass
class Rec:
    value: bytes | None
    key: bytes | None = b"k"
    headers: tuple = ()
    timestamp_delta: int = 0
    offset_delta: int | None = None


def build_batch(records: list[Rec], *, codec: int = 0, base_offset: int = 0, leader_epoch: int = 0,
                producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
                transactional: bool = False, log_append_time: bool = False, control: bool = False,
                first_timestamp: int = 1_700_000_000_000, max_timestamp: int | None = None,
                last_offset_delta: int | None = None) -> bytes:
    """A batch kafka-python builds, with the header fields its builder cannot set patched in and the CRC redone."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=transactional,
                                        producer_id=producer_id, producer_epoch=producer_epoch,
                                        base_sequence=base_sequence, batch_size=1 << 24)
    for i, r in enumerate(records):
        offset = i if r.offset_delta is None else r.offset_delta
        assert builder.append(offset, timestamp=first_timestamp + r.timestamp_delta, key=r.key, value=r.value,
                              headers=list(r.headers)) is not None
    data = bytearray(builder.build())
    fields = list(HEADER.unpack_from(data))
    fields[0] = base_offset
    fields[2] = leader_epoch
    attributes = fields[5]
    if log_append_time:
        attributes |= 0x08
    if control:
        attributes |= 0x20
    fields[5] = attributes
    if max_timestamp is not None:
        fields[8] = max_timestamp
    if last_offset_delta is not None:
        fields[6] = last_offset_delta
    HEADER.pack_into(data, 0, *fields)
    struct.pack_into(">I", data, 17, crc32c(memoryview(data)[21:]))
    return bytes(data)


def batches_in(records: bytes) -> list[DefaultRecordBatch]:
    out = []
    pos = 0
    while pos + 12 <= len(records):
        length = struct.unpack_from(">i", records, pos + 8)[0]
        end = pos + 12 + length
        if end > len(records):
            break
        out.append(DefaultRecordBatch(records[pos:end]))
        pos = end
    return out


def raw_records(batch_bytes: bytes) -> list[tuple]:
    """(attributes, timestamp delta, offset delta, key, value, headers) per record, read without appliance code."""
    header = HEADER.unpack_from(batch_bytes)
    codec = header[5] & 7
    data = batch_bytes[HEADER.size:]
    if codec:
        data = {1: kafka_codec.gzip_decode, 2: kafka_codec.snappy_decode, 3: kafka_codec.lz4_decode,
                4: kafka_codec.zstd_decode}[codec](data)
    out = []
    pos = 0
    for _ in range(header[12]):
        length, pos = decode_varint(data, pos)
        end = pos + length
        attributes = data[pos]
        ts, p = decode_varint(data, pos + 1)
        od, p = decode_varint(data, p)
        kl, p = decode_varint(data, p)
        key = None if kl < 0 else data[p:p + kl]
        p += max(kl, 0)
        vl, p = decode_varint(data, p)
        value = None if vl < 0 else data[p:p + vl]
        p += max(vl, 0)
        hc, p = decode_varint(data, p)
        headers = []
        for _ in range(hc):
            hkl, p = decode_varint(data, p)
            hk = data[p:p + hkl].decode()
            p += hkl
            hvl, p = decode_varint(data, p)
            hv = None if hvl < 0 else data[p:p + hvl]
            p += max(hvl, 0)
            headers.append((hk, hv))
        assert p == end
        out.append((attributes, ts, od, key, value, headers))
        pos = end
    assert pos == len(data)
    return out


def header_fields(batch_bytes: bytes) -> dict:
    f = HEADER.unpack_from(batch_bytes)
    return dict(base_offset=f[0], leader_epoch=f[2], magic=f[3], attributes=f[5], last_offset_delta=f[6],
                first_timestamp=f[7], max_timestamp=f[8], producer_id=f[9], producer_epoch=f[10],
                base_sequence=f[11], count=f[12])


def masker(rules_yaml: str, topic: str = "payments", direction: str = "produce", secret: bytes | None = SECRET):
    """The masker for `topic` from a policy whose masking section is `rules_yaml` (indented list items)."""
    policy = parse_policy("version: 1\nmasking:\n" + rules_yaml, source="test.yaml")
    masking = policy.masking.with_secret(secret) if secret else policy.masking
    return masking.for_topic(topic, direction)


def rule(body: str, *, name: str = "r", topics: str = "[payments]", on: str = "[produce]") -> str:
    """One masking rule's YAML; `body` holds its other keys, one per line."""
    lines = [f"  - name: {name}", f"    topics: {topics}", f"    on: {on}"]
    lines += [f"    {line}" for line in body.strip().splitlines()]
    return "\n".join(lines) + "\n"
