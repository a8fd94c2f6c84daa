"""Keeps a workload's Metadata flowing: one connection, a Metadata v12 request (no topics) every INTERVAL s.

Usage: metadata_loop.py HOST PORT INTERVAL

Runs until its stdin closes. Prints a JSON line {"at": time, "brokers": ["IP:PORT", ...]} each time the set of
brokers the answers list changes, and last {"answers": n, "errors": [...]}. A Metadata answer lists every live
broker of the listener it is asked on, so this is what the cluster tells its clients, as a client sees it.
"""

import io
import json
import select
import socket
import struct
import sys
import time

from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.metadata.v12.response import MetadataResponse
from kio.serial import entity_reader, entity_writer


def recv_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def exchange(sock, entity, correlation_id: int) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">hhih", 3, 12, correlation_id, 4) + b"loop" + b"\0")  # header v2: no tagged fields
    entity_writer(MetadataRequest)(out, entity)
    body = out.getvalue()
    sock.sendall(struct.pack(">i", len(body)) + body)
    return recv_exactly(sock, struct.unpack(">i", recv_exactly(sock, 4))[0])

host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.create_connection((host, port), timeout=15)
request = MetadataRequest(topics=(), allow_auto_topic_creation=False, include_topic_authorized_operations=False)
seen, answers, errors = None, 0, []
while True:
    try:
        reply = exchange(sock, request, answers + 1)
        response, _ = entity_reader(MetadataResponse)(reply, 5)  # correlation id, then tagged fields
        answers += 1
        brokers = sorted(f"{b.host}:{b.port}" for b in response.brokers)
        if brokers != seen:
            seen = brokers
            print(json.dumps({"at": time.time(), "brokers": brokers}), flush=True)
    except (OSError, ValueError) as e:
        errors.append(f"{type(e).__name__}: {e}")
        break
    ready, _, _ = select.select([sys.stdin], [], [], interval)
    if ready and not sys.stdin.readline():
        break
print(json.dumps({"answers": answers, "errors": errors}), flush=True)
