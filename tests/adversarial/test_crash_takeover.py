"""After kill -9 of `appliance serve`, nobody else receives enrolled workloads' connections.

Defect B of issue 9: the kernel kept rewriting enrolled connects to
127.0.0.1:<listen_port> after the appliance died, and an unprivileged process
that bound that port received them, first bytes included.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.integration.conftest import PY

CLIENTS = Path(__file__).resolve().parent / "clients"
PROXY_PORT = 39190  # listen_port of the test appliance


def squat(host: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([PY, str(CLIENTS / "squat.py"), host, str(PROXY_PORT), str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")
    assert ready == {"ready": True, "uid": 65534}, proc.stderr.read()
    return proc


def received(proc: subprocess.Popen) -> list:
    out, err = proc.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])["received"]


def test_after_kill_9_an_unprivileged_squatter_on_the_proxy_port_receives_nothing(appliance, enroll):
    workload = enroll("crash-victim")
    assert workload.client(str(CLIENTS / "kafka_try.py"), "once", "127.0.0.1", "39092")["outcome"] == "answered"

    appliance.kill()  # kill -9: no chance to clean up
    squatters = []
    try:
        squatters = [squat("127.0.0.1", 4), squat("::1", 4)]
        for host, port in (("127.0.0.1", "39092"), ("::1", "39093"), ("::ffff:127.0.0.1", "39092")):
            tried = workload.client(str(CLIENTS / "kafka_try.py"), "once", host, port)
            assert tried["outcome"] == "refused", tried
            assert tried["connect_s"] < 1.0
        assert [received(s) for s in squatters] == [[], []]
    finally:
        for s in squatters:
            s.kill()
            s.wait()
        appliance.start()
    assert workload.client(str(CLIENTS / "kafka_try.py"), "once", "127.0.0.1", "39092")["outcome"] == "answered"


def test_a_squatter_that_holds_the_port_across_a_restart_still_receives_nothing(appliance, enroll, config_path):
    from tests.integration.conftest import audit, eventually

    workload = enroll("squat-victim")
    appliance.kill()
    squatter = squat("127.0.0.1", 25)
    try:
        appliance.start()  # the port is taken: the appliance listens elsewhere, the kernel still hands it the SYNs
        tried = workload.client(str(CLIENTS / "kafka_try.py"), "once", "127.0.0.1", "39092")
        assert tried["outcome"] == "answered", tried
        eventually(lambda: [e for e in audit(config_path, "events", "--kind", "error")
                            if "is bound by another process" in e["message"]], message="the squat audited")
    finally:
        squatter.kill()
        out, _ = squatter.communicate()
    assert '"first_bytes"' not in out
