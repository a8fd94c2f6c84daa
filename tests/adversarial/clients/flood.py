"""A refusal flood: N connects to a steered broker from an unenrolled cgroup, as fast as one process can.

Usage: flood.py HOST PORT N      prints how many were refused
"""

import socket
import sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
refused = 0
for _ in range(n):
    s = socket.socket()
    try:
        s.connect((host, port))
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(refused)
