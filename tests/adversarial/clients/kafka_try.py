"""One workload's attempts at a broker address, as a client library would make them.

Usage:
  kafka_try.py once HOST PORT [--bind-port P]   one attempt, JSON on stdout
  kafka_try.py loop HOST PORT SECONDS           attempts every 50 ms, one JSON line each, then a summary

An attempt: connect (timed), send an ApiVersions v0 request, read the answer.
Outcome: "refused" (connect failed with ECONNREFUSED), "answered" (a reply
came), "closed" (accepted, then closed without a reply: what clients read as
a protocol fault), "reset", "timeout", or "error:<errno name>".
"""

import errno
import json
import os
import socket
import struct
import sys
import time


def attempt(host: str, port: int, bind_port: int | None = None) -> dict:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    out = {"at": time.time(), "pid": os.getpid()}
    started = time.monotonic()
    try:
        if bind_port is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", bind_port))
        s.connect((host, port))
        out["connect_s"] = round(time.monotonic() - started, 4)
        out["local"] = list(s.getsockname()[:2])
        client_id = b"kafka-try"
        body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
        s.sendall(struct.pack(">i", len(body)) + body)
        head = s.recv(4)
        out["outcome"] = "answered" if head else "closed"
        if head:
            out["reply_bytes"] = struct.unpack(">i", head)[0]
    except ConnectionRefusedError:
        out["connect_s"] = round(time.monotonic() - started, 4)
        out["outcome"] = "refused"
    except ConnectionResetError:
        out["outcome"] = "reset"
    except (TimeoutError, socket.timeout):
        out["outcome"] = "timeout"
    except OSError as e:
        out["outcome"] = f"error:{errno.errorcode.get(e.errno, e.errno)}"
    finally:
        s.close()
    return out


mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "once":
    bind = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--bind-port" else None
    print(json.dumps(attempt(host, port, bind)))
else:
    deadline = time.monotonic() + float(sys.argv[4])
    results = []
    while time.monotonic() < deadline:
        results.append(attempt(host, port))
        print(json.dumps(results[-1]), flush=True)
        time.sleep(0.05)
    print(json.dumps({"attempts": len(results)}))
