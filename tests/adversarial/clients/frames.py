"""Kafka frames for the raw-protocol client scripts in this directory: a request header and an entity
encoded by kio, each framed by its length; reading exactly one frame back. Each script runs as a program
in a workload's cgroup, with this directory first on its path, so it imports this module by name."""

import io
import struct

from kio.serial import entity_writer


def header(api_key: int, version: int, correlation_id: int, flexible: bool, client_id: bytes) -> bytes:
    """A request header (v1, or v2 with its empty tagged fields when the request is flexible)."""
    return struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id \
        + (b"\0" if flexible else b"")


def request_frame(entity, correlation_id: int, client_id: bytes) -> bytes:
    cls = type(entity)
    out = io.BytesIO()
    out.write(header(cls.__api_key__, cls.__version__, correlation_id, cls.__flexible__, client_id))
    entity_writer(cls)(out, entity)
    body = out.getvalue()
    return struct.pack(">i", len(body)) + body


def recv_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def recv_frame(sock) -> bytes:
    """One frame's body (without its length)."""
    return recv_exactly(sock, struct.unpack(">i", recv_exactly(sock, 4))[0])
