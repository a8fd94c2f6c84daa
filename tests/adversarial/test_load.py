"""Load: 500 concurrent sessions beside a steady producer, with no stall beyond the documented bound.

500 raw connections from one enrolled cgroup each do ApiVersions and Metadata
and then idle, opened while a librdkafka producer in another enrolled cgroup
sends 200 records a second for 20 s; every record's latency (produce() to its
delivery report) is measured. The bound, documented in docs/configuration.md#resource-bounds:
p99 under 100 ms, no delivery error, and serve under 600 MiB resident with
500 sessions open.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from tests.adversarial.reconfigured import CLIENTS, enroll_in, fds, hostile, line, reconfigured, rss_kib
from tests.integration.conftest import BROKER4, PY, eventually

pytestmark = pytest.mark.integration  # real serve, real broker: run under the shared lock


def test_500_sessions_beside_a_steady_producer(appliance, make_cgroup, direct, sasl_args):
    topic = f"load-{secrets.token_hex(3)}"
    direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    with reconfigured(appliance, "load", max_sessions=1024, max_sessions_per_workload=600) as app:
        steady = enroll_in(app, make_cgroup, "steady")
        crowd = enroll_in(app, make_cgroup, "orders")
        producer = steady.popen([PY, str(CLIENTS / "steady_producer.py"), BROKER4, topic, "200", "20"])
        time.sleep(3)
        idle = hostile(crowd, "idle", "127.0.0.1", "39092", "500", "--forever")
        assert line(idle, timeout=60)["answered"] == 500
        eventually(lambda: app.status()["limits"]["sessions"] >= 501, message="501 live sessions in status")
        rss = rss_kib(app.proc.pid)
        open_files = fds(app.proc.pid)
        out, err = producer.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
        idle.kill()
        print(json.dumps({"producer": result, "serve_rss_kib_at_500": rss, "serve_fds_at_500": open_files}))
        assert result["error_count"] == 0 and result["produced"] >= 3900, result
        assert result["p99_ms"] < 100, result
        assert rss < 600 * 1024, rss
