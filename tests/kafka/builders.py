"""Builders of real Kafka bytes for pure tests: requests, responses and v2 record batches."""

from __future__ import annotations

import io
import struct

from kio.serial import entity_writer

from appliance.kafka.framing import frame


def request_frame(entity, *, correlation_id: int, client_id: str | None = "test", tagged: bytes = b"\x00") -> bytes:
    cls = type(entity)
    out = io.BytesIO()
    cid = -1 if client_id is None else len(client_id.encode())
    out.write(struct.pack(">hhih", cls.__api_key__, cls.__version__, correlation_id, cid))
    if client_id is not None:
        out.write(client_id.encode())
    if cls.__flexible__:
        out.write(tagged)
    entity_writer(cls)(out, entity)
    return frame(out.getvalue())


def response_frame(entity, *, correlation_id: int, flexible_header: bool) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">i", correlation_id))
    if flexible_header:
        out.write(b"\x00")
    entity_writer(type(entity))(out, entity)
    return frame(out.getvalue())


def batch(count: int, *, payload: bytes = b"x" * 10) -> bytes:
    """An uncompressed v2 record batch with `count` records (CRC left zero: nothing here checks it)."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i in range(count):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=None, value=payload, headers=[])
    return bytes(builder.build())
