"""A broker the appliance cannot reach: enrolled connects are refused, not accepted and closed.

Defect H of issue 9 (first bullet): with the broker down, the proxy accepted
the connection and closed it; franz-go read that as "is TLS missing?" and
failed records instead of retrying, as it does after ECONNREFUSED. The test
appliance steers 10.231.0.2:39092, the broker in test_netns.py's namespace,
which is not running here: nothing answers there.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import BROKER_NETNS, NETNS_PEER, audit, eventually

TRY = str(Path(__file__).resolve().parent / "clients" / "kafka_try.py")


def test_an_enrolled_connect_to_an_unreachable_broker_gets_econnrefused(appliance, config_path, enroll):
    workload = enroll("down-client")
    eventually(lambda: (appliance.status() or {}).get("broker_states", {}).get(BROKER_NETNS) == "down",
               message="the probe marking the absent broker down")

    tried = workload.client(TRY, "once", NETNS_PEER, "39092")
    assert tried["outcome"] == "refused", tried
    assert tried["connect_s"] < 1.0
    (event,) = eventually(lambda: [e for e in audit(config_path, "events", "--kind", "refused-connect")
                                   if e["cgroup_path"] == workload.cgroup.path], message="the refusal audited")
    assert json.loads(event["detail"])["reason"] == "broker_down"
    assert [e for e in audit(config_path, "events", "--kind", "broker-down") if BROKER_NETNS in e["message"]]
    assert audit(config_path, "sessions", "--identity", "down-client") == []  # nothing accepted, nothing closed

    other = workload.client(TRY, "once", "127.0.0.1", "39092")  # the brokers that are up are steered as ever
    assert other["outcome"] == "answered", other
