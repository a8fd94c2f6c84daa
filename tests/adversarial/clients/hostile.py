"""Raw, hostile Kafka frames (built with kio where they are valid) sent to a broker address, as an attacker would.

Usage: hostile.py MODE HOST PORT
Prints one JSON line: {"answers": [{"correlation_id": N, "error_code": E}], "closed": true|false}
  killer       the 24-byte Metadata v12 request whose topics count is 0xfffffffd (aborted serve at 753e6e2)
  sasl1, sasl2 SaslAuthenticate v1 / v2 (the proxy's answer crashed on its session lifetime)
  findcoord0   FindCoordinator v0, a version the proxy offers
  addpart4     AddPartitionsToTxn v4, then a Metadata v12 on the same connection
  commit10     OffsetCommit v10 (above the v9 the proxy offers), then a Metadata v12
  above        Produce v99, a version neither the proxy nor kio knows
  duplicate    two pipelined Metadata v12 requests with the same correlation id
  metadata     one ordinary Metadata v12 request
"""

import datetime
import io
import json
import socket
import struct
import sys

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest
from kio.serial import entity_reader, entity_writer


def frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def request(entity, correlation_id: int) -> bytes:
    cls = type(entity)
    out = io.BytesIO()
    out.write(struct.pack(">hhih", cls.__api_key__, cls.__version__, correlation_id, 7) + b"hostile")
    if cls.__flexible__:
        out.write(b"\0")
    entity_writer(cls)(out, entity)
    return frame(out.getvalue())


def defaults(api_key: int, api_version: int, **fields):
    """A request of kio's schema with every field empty, zero or null where it may be."""
    import dataclasses
    import typing
    values = {}
    for f in dataclasses.fields(cls := load_request_schema(api_key, api_version)):
        if f.name in fields:
            values[f.name] = fields[f.name]
            continue
        if f.default is not dataclasses.MISSING:
            continue
        tp = typing.get_type_hints(cls)[f.name]
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is tuple or (args and typing.get_origin(args[0]) is tuple):
            values[f.name] = ()
        elif type(None) in args:
            values[f.name] = None
        elif tp is bool:
            values[f.name] = False
        elif isinstance(tp, type) and issubclass(tp, str):
            values[f.name] = "hostile"
        elif isinstance(tp, type) and issubclass(tp, datetime.timedelta):
            values[f.name] = datetime.timedelta(0)
        else:
            values[f.name] = 0
    return cls(**values)


def metadata(correlation_id: int) -> bytes:
    return request(MetadataRequest(topics=(), allow_auto_topic_creation=False,
                                   include_topic_authorized_operations=False), correlation_id)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_frames(sock, expected: dict[int, tuple[int, int]], want: int) -> tuple[list, bool]:
    """Up to `want` answers, decoded by their request's api and version; and whether the peer closed."""
    data, answers = b"", []
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return answers, False
        if not chunk:
            return answers, True
        data += chunk
        while len(data) >= 4 and len(data) >= 4 + struct.unpack(">i", data[:4])[0]:
            size = struct.unpack(">i", data[:4])[0]
            one, data = data[4:4 + size], data[4 + size:]
            correlation_id = struct.unpack(">i", one[:4])[0]
            if correlation_id not in expected:
                answers.append({"correlation_id": correlation_id, "unexpected": one.hex()[:200]})
                continue
            key, version = expected[correlation_id]
            cls = load_response_schema(key, version)
            offset = 5 if cls.__flexible__ and key != 18 else 4
            entity, _ = entity_reader(cls)(one, offset)
            error = first_error(entity)
            answers.append({"correlation_id": correlation_id, "api_key": key, "error_code": error})
            if len(answers) == want:
                return answers, False


def first_error(entity) -> int:
    import dataclasses
    for f in dataclasses.fields(entity):
        value = getattr(entity, f.name)
        if isinstance(value, ErrorCode) and value != ErrorCode.none:
            return int(value)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if dataclasses.is_dataclass(item):
                code = first_error(item)
                if code:
                    return code
    return 0


mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.create_connection((host, port), timeout=10)
answers, closed = [], False
if mode == "killer":
    body = struct.pack(">hhih", 3, 12, 7, -1) + b"\0" + uvarint(0xFFFFFFFE) + b"\0" * 4
    assert len(frame(body)) == 24
    sock.sendall(frame(body))
    answers, closed = read_frames(sock, {}, 1)
elif mode in ("sasl1", "sasl2"):
    version = int(mode[-1])
    sock.sendall(request(defaults(36, version, auth_bytes=b"\0user\0pw"), 3))
    answers, closed = read_frames(sock, {3: (36, version)}, 2)
elif mode == "findcoord0":
    sock.sendall(request(defaults(10, 0, key="group"), 4))
    answers, closed = read_frames(sock, {4: (10, 0)}, 1)
elif mode in ("addpart4", "commit10"):
    key, version = (24, 4) if mode == "addpart4" else (8, 10)
    if mode == "commit10":  # one topic (by id, as v10 names them) with one partition, so the answer has an entry
        import uuid
        from kio.schema.offset_commit.v10.request import OffsetCommitRequestPartition, OffsetCommitRequestTopic
        partition = OffsetCommitRequestPartition(partition_index=0, committed_offset=5, committed_leader_epoch=-1,
                                                 committed_metadata=None)
        entity = defaults(8, 10, group_id="g", topics=(
            OffsetCommitRequestTopic(topic_id=uuid.uuid4(), partitions=(partition,)),))
    else:
        entity = defaults(key, version)
    sock.sendall(request(entity, 5))
    first, closed = read_frames(sock, {5: (key, version)}, 1)
    answers = first
    if not closed:
        sock.sendall(metadata(6))
        more, closed = read_frames(sock, {6: (3, 12)}, 1)
        answers += more
elif mode == "above":
    sock.sendall(frame(struct.pack(">hhih", 0, 99, 8, -1) + b"\0" * 20))
    answers, closed = read_frames(sock, {}, 1)
elif mode == "duplicate":
    sock.sendall(metadata(9) + metadata(9))
    answers, closed = read_frames(sock, {9: (3, 12)}, 2)
elif mode == "metadata":
    sock.sendall(metadata(10))
    answers, closed = read_frames(sock, {10: (3, 12)}, 1)
else:
    raise SystemExit(f"unknown mode {mode!r}")
if not closed:
    sock.settimeout(0.5)
    closed = read_frames(sock, {}, 1)[1] if mode not in ("metadata", "addpart4", "commit10") else False
print(json.dumps({"answers": answers, "closed": closed}))
