"""An unprivileged local user (uid/gid 65534) listening on the proxy's address.

Usage: squat.py HOST PORT SECONDS
Prints {"ready": true, "uid": 65534} once listening, then, after SECONDS, every
connection it received and the first bytes of each.
"""

import json
import os
import socket
import sys
import time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(64)
print(json.dumps({"ready": True, "uid": os.getuid()}), flush=True)
deadline = time.monotonic() + seconds
received = []
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        conn, peer = s.accept()
    except (TimeoutError, socket.timeout):
        break
    conn.settimeout(0.5)
    try:
        data = conn.recv(100)
    except OSError:
        data = b""
    received.append({"peer": list(peer[:2]), "first_bytes": data.hex()})
    conn.close()
print(json.dumps({"received": received}), flush=True)
