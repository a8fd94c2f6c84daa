"""Connect to a broker address again and again, as a workload retrying through an outage would.

Usage: connect_loop.py HOST PORT SECONDS

Every 0.2 s: connect (3 s timeout); once connected, send one ApiVersions request and read its
reply, then close. Stops after SECONDS, or once three attempts in a row were answered after at
least one was not. Prints one JSON object: {"pid", "attempts": [[seconds since start, outcome],
...]} where outcome is "answered" or why not ("ECONNREFUSED", "closed", "timeout", ...).
"""

import errno
import json
import os
import socket
import struct
import sys
import time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
CLIENT_ID = b"connect-loop"
REQUEST = struct.pack(">hhih", 18, 0, 1, len(CLIENT_ID)) + CLIENT_ID  # ApiVersions v0


def exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def attempt() -> str:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        sock.connect((host, port))
        sock.sendall(struct.pack(">i", len(REQUEST)) + REQUEST)
        exactly(sock, struct.unpack(">i", exactly(sock, 4))[0])
        return "answered"
    except socket.timeout:
        return "timeout"
    except ConnectionError as e:
        return "closed" if str(e) == "closed" else errno.errorcode.get(e.errno, str(e.errno))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        sock.close()


started = time.monotonic()
attempts: list[list] = []
while time.monotonic() - started < seconds:
    at = round(time.monotonic() - started, 2)
    attempts.append([at, attempt()])
    outcomes = [outcome for _, outcome in attempts]
    if any(o != "answered" for o in outcomes) and outcomes[-3:] == ["answered"] * 3:
        break
    time.sleep(0.2)
print(json.dumps({"pid": os.getpid(), "attempts": attempts}))
