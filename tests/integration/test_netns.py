"""A broker that looks remote: in its own network namespace, reached over a veth pair."""

from __future__ import annotations

import secrets

from pyroute2 import IPRoute

from tests.integration.conftest import BROKER_NETNS, NETNS_PEER, VETH_HOST, audit, eventually


def broker_state(appliance, address: str) -> str | None:
    return ((appliance.status() or {}).get("broker_states") or {}).get(address)


def test_remote_broker_behaves_the_same(appliance, config_path, remote_broker, enroll, make_cgroup):
    t = f"remote-{secrets.token_hex(3)}"
    workload = enroll("remote-app")
    # The appliance probes every second: a broker that just came up is steered once a probe reached it.
    eventually(lambda: broker_state(appliance, BROKER_NETNS) == "up", message="remote broker seen as reachable")
    result = workload.client("confluent.py", BROKER_NETNS, t, "--produce", "10", "--consume", "10")
    assert result["errors"] == [] and result["consumed"] == 10
    sessions = eventually(lambda: audit(config_path, "sessions", "--identity", "remote-app"), message="remote session")
    assert {s["broker_address"] for s in sessions} == {BROKER_NETNS}
    peer = workload.client("raw.py", "connect", NETNS_PEER, "39092")
    assert peer["peer"] == [NETNS_PEER, 39092]
    outsider = make_cgroup("remote-outsider")
    assert outsider.client("raw.py", "connect", NETNS_PEER, "39092")["error"] == "ECONNREFUSED"


def test_a_broker_cut_off_is_refused_then_steered_again_when_it_is_back(appliance, config_path, remote_broker, enroll):
    """Issue 9, H: an unreachable broker gives clients ECONNREFUSED, as it would without the appliance."""
    workload = enroll("partitioned")
    eventually(lambda: broker_state(appliance, BROKER_NETNS) == "up", message="remote broker seen as reachable")
    with IPRoute() as ip:
        link = ip.link_lookup(ifname=VETH_HOST)[0]
        ip.link("set", index=link, state="down")  # the broker's network goes away
        try:
            eventually(lambda: broker_state(appliance, BROKER_NETNS) == "down", message="the probe noticing")
            refused = workload.client("raw.py", "connect", NETNS_PEER, "39092")
            assert refused["error"] == "ECONNREFUSED", refused  # not accepted and then closed
        finally:
            ip.link("set", index=link, state="up")
    eventually(lambda: broker_state(appliance, BROKER_NETNS) == "up", message="the probe noticing it is back")
    # A Kafka round trip, not a bare connect: a client gone before the proxy's accept leaves no session.
    back = workload.client("raw.py", "ask", NETNS_PEER, "39092")
    assert back["errno"] == 0 and back["peer"] == [NETNS_PEER, 39092] and back["reply_bytes"] > 0
    sessions = eventually(lambda: audit(config_path, "sessions", "--identity", "partitioned"), message="steered again")
    assert {s["broker_address"] for s in sessions} == {BROKER_NETNS}
    kinds = [e["kind"] for e in audit(config_path, "events") if e["kind"] in ("broker-down", "broker-up")
             and BROKER_NETNS in e["message"]]
    assert kinds[:2] == ["broker-up", "broker-down"]  # newest first: down, then up again
