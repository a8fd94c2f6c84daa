"""Raw Kafka connections as a hostile (or merely idle) workload makes them; prints one JSON line per phase.

Usage: budget_client.py MODE HOST PORT [ARGS]
  partial N SIZE : N connections; each does ApiVersions, then sends a SIZE-byte frame's
                   size and all but its last byte (as far as the proxy reads); prints
                   {"ready": ..., "sent": [...]}, then how long until each was closed
  idle N [--forever]: N connections; each does ApiVersions and Metadata, then waits; prints
                   {"ready": ..., "answered": k}, then how long until each was closed
  many N [--hold]: N connections at once; each sends ApiVersions; prints how many were
                   answered and how many were reset or closed unanswered (then holds them)
  produce TOPIC  : one Produce v9 (acks=all) of one record; prints its error code and message
Closes are waited for up to 60 s.
"""

import datetime
import json
import selectors
import socket
import struct
import sys
import time

from kio.schema.api_versions.v0.request import ApiVersionsRequest
from kio.schema.metadata.v4.request import MetadataRequest
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.produce.v9.response import ProduceResponse
from kio.serial import entity_reader

from kafka.record.default_records import DefaultRecordBatchBuilder

from frames import recv_frame, request_frame


def encode(entity, correlation_id: int) -> bytes:
    return request_frame(entity, correlation_id, b"hostile")


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def api_versions(sock, correlation_id=1) -> None:
    sock.sendall(encode(ApiVersionsRequest(), correlation_id))
    recv_frame(sock)


def wait_closed(socks, started: float) -> list:
    """Seconds until each socket was closed or reset by the other side (None: still open after 60 s)."""
    sel = selectors.DefaultSelector()
    closed_after = [None] * len(socks)
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + 60
    left = len(socks)
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(1):
            i = key.data
            try:
                data = socks[i].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed_after[i] = round(time.monotonic() - started, 3)
                sel.unregister(socks[i])
                left -= 1
    return closed_after


mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "partial":
    n, size = int(sys.argv[4]), int(sys.argv[5])
    socks = [connect(host, port) for _ in range(n)]
    for s in socks:
        api_versions(s)
    sent = []
    chunk = b"\0" * (1 << 20)
    for s in socks:
        s.settimeout(0.1)  # the proxy stops reading once its budget is spent: stop there
        total = 0
        try:
            s.sendall(struct.pack(">i", size))
            while total < size - 1:
                total += s.send(chunk[:min(len(chunk), size - 1 - total)])
        except (socket.timeout, BlockingIOError):
            pass
        except OSError as e:
            sent.append(f"error: {e}")
            continue
        sent.append(total)
    started = time.monotonic()
    print(json.dumps({"ready": True, "sent": sent}), flush=True)
    print(json.dumps({"closed_after_s": wait_closed(socks, started)}), flush=True)
elif mode == "idle":
    n = int(sys.argv[4])
    socks, answered = [], 0
    for i in range(n):
        s = connect(host, port)
        api_versions(s)
        s.sendall(encode(MetadataRequest(topics=(), allow_auto_topic_creation=False,), 2))
        recv_frame(s)
        answered += 1
        socks.append(s)
    started = time.monotonic()
    print(json.dumps({"ready": True, "answered": answered}), flush=True)
    if len(sys.argv) > 5 and sys.argv[5] == "--forever":
        time.sleep(3600)
    print(json.dumps({"closed_after_s": wait_closed(socks, started)}), flush=True)
elif mode == "many":
    n = int(sys.argv[4])
    socks, answered, refused = [], 0, 0
    for i in range(n):
        s = connect(host, port)
        socks.append(s)
    for i, s in enumerate(socks):
        try:
            s.sendall(encode(ApiVersionsRequest(), 1))
            recv_frame(s)
            answered += 1
        except OSError:
            refused += 1
    print(json.dumps({"answered": answered, "refused": refused}), flush=True)
    if len(sys.argv) > 5 and sys.argv[5] == "--hold":
        time.sleep(3600)
elif mode == "produce":
    topic = sys.argv[4]
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=None, key=None, value=b"audited?", headers=[])
    request = ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=10), topic_data=(
        TopicProduceData(name=topic, partition_data=(PartitionProduceData(index=0, records=bytes(builder.build())),)),))
    s = connect(host, port)
    api_versions(s)
    s.sendall(encode(request, 2))
    response, _ = entity_reader(ProduceResponse)(recv_frame(s), 5)  # correlation id, then tagged fields
    partition = response.responses[0].partition_responses[0]
    print(json.dumps({"error_code": int(partition.error_code), "error_message": partition.error_message}))
