"""Broker down (defect H): a client behind the appliance must see what it would see without it.

Without the appliance, a client whose broker is down gets ECONNREFUSED, and franz-go (like every
client) retries that until the broker is back. Through an appliance that accepts the connection and
then closes it, franz-go reads "broker closed the connection immediately ... is TLS missing?" and
fails records instead. One outage, shared by the tests below: a franz-go producer writes steadily,
the embedded broker is stopped for a few seconds and started again, and meanwhile a raw connect from
the same enrolled cgroup shows what the kernel and the appliance do with a new connection.
"""

from __future__ import annotations

import errno
import json
import secrets
import time

import pytest

from tests.integration.clients import build
from tests.integration.clients.families import Client, last_json
from tests.integration.conftest import BROKER4, WORKLOAD_PARENT, Cgroup, cli, eventually

IDENTITY = "ci-job"  # allowed everything by tests/integration/policy.yaml
RECORDS, INTERVAL_S = 80, 0.1  # eight seconds of steady produce
OUTAGE_S = 4.0


def expect(condition, message) -> None:
    if not condition:
        pytest.fail(str(message))


@pytest.fixture(scope="module")
def workload(appliance, config_path):
    from appliance.identity import cgroups

    cg = Cgroup(cgroups.ensure(f"{WORKLOAD_PARENT}/{IDENTITY}-{secrets.token_hex(3)}"))
    cli(config_path, "enroll", cg.cgroup.path, "--identity", IDENTITY)
    eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in appliance.status()["workloads"]),
               message=f"{IDENTITY} enrolled")
    yield cg
    cli(config_path, "unenroll", cg.cgroup.path, check=False)
    cg.cleanup()


@pytest.fixture(scope="module")
def outage(workload, broker, direct, sasl_args):
    topic = f"down-{secrets.token_hex(3)}"
    direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    franz = str(build.franz_binary())
    warm = Client(workload, [franz, "produce", "-brokers", BROKER4, "-topic", topic, "-n", "1", "-timeout", "20s"],
                  timeout=20, parse=last_json).finish()
    assert warm.summary.get("acked") == 1, f"the producer does not work even with the broker up{warm}"

    producer = Client(workload, [franz, "produce", "-brokers", BROKER4, "-topic", topic, "-n", str(RECORDS),
                                 "-value", "steady-%d", "-interval", f"{int(INTERVAL_S * 1000)}ms",
                                 "-delivery-timeout", "45s", "-timeout", "60s"], timeout=60, parse=last_json)
    time.sleep(1.5)  # the producer is connected and acking
    broker.stop()
    stopped = time.monotonic()
    try:
        time.sleep(1.5)  # long enough for anything that watches the broker to notice
        connect = workload.client("raw.py", "connect", "127.0.0.1", "39092", timeout=20)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    finally:
        broker.start()
    produced = producer.finish()
    yield {"connect": connect, "produced": produced, "outage_s": time.monotonic() - stopped}

    # Leave the appliance usable for whatever runs next: a new producer gets through again.
    def recovered():
        r = workload.client("confluent.py", BROKER4, topic, "--produce", "1", "--timeout", "10", check=False)
        return r if r["produced"] == 1 else None

    eventually(recovered, timeout=60, interval=1, message="produce through the appliance after the broker restart")


def test_a_new_connect_while_the_broker_is_down_is_refused(outage):
    result = outage["connect"]
    expect(result["errno"] == errno.ECONNREFUSED,
           f"an enrolled connect to a stopped broker should fail as it would without the appliance "
           f"(ECONNREFUSED), not be accepted: {json.dumps(result)}")


def test_franz_go_producer_retries_through_a_broker_outage(outage):
    result = outage["produced"]
    s = result.summary
    expect(s.get("failed") == 0 and s.get("acked") == RECORDS,
           f"{s.get('failed')} of {RECORDS} records failed across a {outage['outage_s']:.1f}s broker outage "
           f"instead of being retried{result}")
    expect(not any("TLS" in text for text in [*s.get("errors", {}), *s.get("read_errors", {})]),
           f"franz-go guessed at TLS: the appliance accepted and then closed its connection{result}")
    expect(any("connection refused" in text for text in s.get("connect_errors", {})),
           f"franz-go never saw ECONNREFUSED while the broker was down{result}")
