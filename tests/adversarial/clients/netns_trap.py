"""An enrolled workload in a network namespace of its own (run under `unshare --net`), setting a trap.

Usage: netns_trap.py PROXY_PORT BROKER_PORT HOLD_SECONDS
It listens on 127.0.0.1:PROXY_PORT of its own namespace, where steering would
send its connect, then connects to the broker address 127.0.0.1:BROKER_PORT.
On 753e6e2 the handshake completed against its own listener and left a
hand-off record under 127.0.0.1:<its local port> for a host process to claim.
Prints {"errno": N, "local_port": P}; holds the connection HOLD_SECONDS.
"""

import json
import socket
import subprocess
import sys
import time

proxy_port, broker_port, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
trap = socket.socket()
trap.bind(("127.0.0.1", proxy_port))
trap.listen()
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", broker_port))
    out = {"errno": 0, "local_port": s.getsockname()[1]}
except OSError as e:
    out = {"errno": e.errno}
print(json.dumps(out), flush=True)
time.sleep(hold)
