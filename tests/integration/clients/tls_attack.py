"""A hostile workload against a broker address whose TLS the appliance terminates.

Usage: tls_attack.py HOST PORT CAFILE

Opens one well-behaved TLS connection (verifying CAFILE) and asks ApiVersions on it; then, on other
connections: garbage records after a finished handshake, and a ClientHello claiming 16 MiB; then asks
ApiVersions again on the first connection. Prints what each saw as JSON.
"""

import json
import os
import socket
import ssl
import struct
import sys

host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=cafile)
result = {"pid": os.getpid()}


def api_versions(conn, correlation_id: int) -> int:
    client_id = b"tls-attack"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    conn.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", recv_exactly(conn, 4))[0]
    reply = recv_exactly(conn, size)
    assert struct.unpack(">i", reply[:4])[0] == correlation_id
    return size


def recv_exactly(conn, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def until_closed(sock) -> str:
    try:
        while sock.recv(65536):
            pass
        return "closed"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "still open"


good = context.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)
result["version"] = good.version()
result["first_answer"] = api_versions(good, 1)

# Garbage after a finished handshake: an application-data record no key decrypts.
raw = socket.create_connection((host, port), timeout=10)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        raw.sendall(outgoing.read())
        incoming.write(raw.recv(65536))
raw.sendall(outgoing.read() + bytes((0x17, 0x03, 0x03, 0x00, 0x40)) + os.urandom(0x40))
result["garbage"] = until_closed(raw)
raw.close()

# A ClientHello whose handshake header claims 16 MiB.
huge = socket.create_connection((host, port), timeout=10)
huge.sendall(bytes((0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff, 0x03, 0x03)) + b"\0" * 0x3ffa)
result["huge"] = until_closed(huge)
huge.close()

result["second_answer"] = api_versions(good, 2)
good.close()
print(json.dumps(result))
