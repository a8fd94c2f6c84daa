"""Connects to the wildcard addresses reach a loopback broker: they are steered, or refused and audited.

Defect C of issue 9: connect(0.0.0.0:PORT), [::]:PORT and ::ffff:0.0.0.0:PORT
reach a broker listening on loopback, and were neither steered nor refused
nor audited, from unenrolled and enrolled cgroups alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import audit, eventually

TRY = str(Path(__file__).resolve().parent / "clients" / "kafka_try.py")
WILDCARDS = [("0.0.0.0", "39092", "127.0.0.1:39092"), ("::", "39093", "[::1]:39093"),
             ("::ffff:0.0.0.0", "39092", "127.0.0.1:39092"), ("127.0.0.2", "39092", "127.0.0.1:39092")]


@pytest.mark.parametrize("host, port, reached", WILDCARDS)
def test_an_unenrolled_cgroup_is_refused_and_audited(appliance, config_path, make_cgroup, host, port, reached):
    outsider = make_cgroup("wildcard")
    tried = outsider.client(TRY, "once", host, port)
    assert tried["outcome"] == "refused", tried

    def audited():
        return [e for e in audit(config_path, "events", "--kind", "refused-connect")
                if e["cgroup_path"] == outsider.cgroup.path]

    (event,) = eventually(audited, message="the refusal audited")
    detail = json.loads(event["detail"])
    assert (detail["destination"], detail["reason"], event["pid"]) == (reached, "unenrolled", tried["pid"])


@pytest.mark.parametrize("host, port, reached", WILDCARDS)
def test_an_enrolled_cgroup_is_steered_through_the_proxy(appliance, config_path, enroll, host, port, reached):
    identity = f"wild-{port}-{host.replace(':', 'c').replace('.', 'd')}"
    workload = enroll(identity)
    tried = workload.client(TRY, "once", host, port)
    assert tried["outcome"] == "answered", tried

    sessions = eventually(lambda: audit(config_path, "sessions", "--identity", identity), message="session audited")
    assert [(s["broker_address"], s["pid"]) for s in sessions] == [(reached, tried["pid"])]
