"""Raw TCP probes of a broker address, as a workload would make them.

Usage: raw.py MODE HOST PORT [--source-port N]
  connect : connect, print the errno (0 on success) and getpeername()
  garbage : connect, send a frame size no Kafka peer sends, wait for the close
  ask     : connect, send one ApiVersions request, print its reply size and close (a
            connection the proxy has certainly taken: one closed at once may be gone,
            record and all, before the proxy accepts it)
  hold    : as ask, then wait for the other side to close and print how long that took
--source-port N binds the socket to local port N first, so that its packets can be told apart
where they arrive (NAT keeps a free source port).
"""

import errno
import json
import os
import socket
import struct
import sys
import time

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.settimeout(10)
if sys.argv[4:5] == ["--source-port"]:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(sys.argv[5])))
result = {"pid": os.getpid()}
try:
    sock.connect((host, port))
    result["errno"] = 0
    result["peer"] = list(sock.getpeername()[:2])
except OSError as e:
    result["errno"] = e.errno
    result["error"] = errno.errorcode.get(e.errno, str(e.errno))
    print(json.dumps(result))
    sys.exit(0)

if mode == "garbage":
    sock.sendall(b"\x7f\xff\xff\xff" + b"garbage" * 10)
    try:
        result["read"] = len(sock.recv(100))
    except OSError as e:
        result["read_error"] = errno.errorcode.get(e.errno, str(e.errno))
elif mode in ("ask", "hold"):
    client_id = b"raw-hold"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(body)) + body)
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed mid-reply")
            data += chunk
        return data

    size = struct.unpack(">i", exactly(4))[0]
    exactly(size)
    result["reply_bytes"] = size
if mode == "hold":
    print(json.dumps({"ready": True}), flush=True)
    sock.settimeout(30)
    started = time.monotonic()
    try:
        data = sock.recv(100)
        result["closed_after_s"] = round(time.monotonic() - started, 3)
        result["read"] = len(data)
    except OSError as e:
        result["read_error"] = errno.errorcode.get(e.errno, str(e.errno))
        result["closed_after_s"] = round(time.monotonic() - started, 3)
print(json.dumps(result))
