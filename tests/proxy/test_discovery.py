"""Brokers learned from the answers the proxy relays: decoding, validation, caps, and the session's order.

A broker's answer is hostile input: these are the attacker's cases (ten thousand endpoints, port 0, an
address outside the allowed networks, a 300-byte host name) besides the ordinary ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import json

import pytest
from kio.schema.describe_cluster.v1.response import DescribeClusterBroker, DescribeClusterResponse
from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator.v3.response import FindCoordinatorResponse as FindCoordinatorV3
from kio.schema.find_coordinator.v4.response import Coordinator, FindCoordinatorResponse as FindCoordinatorV4
from kio.schema.metadata.v12.response import MetadataResponse, MetadataResponseBroker
from kio.schema.types import BrokerId
from kio.static.primitive import i32

from appliance.audit.records import Event, Operation, SessionClosed
from appliance.config import BrokerAddress, ConfigError, DiscoveryConfig, parse_config
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, SendToClient, SendToUpstream, SteerBrokers
from appliance.proxy.discovery import (NOTHING, Discovery, expiry_interval_s, forgotten_events, named_endpoints,
                                       parse_endpoint, parse_snapshot)
from appliance.proxy.session import Session
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from tests.kafka.builders import response_frame
from tests.proxy.test_session import ALLOW_ALL, PLAIN, authenticate, handshake_ok, metadata, of

CONFIGURED = (BrokerAddress("10.0.0.5", 9092),)
CLUSTER = DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/8")))


def metadata_answer(brokers, correlation_id=5) -> bytes:
    return response_frame(MetadataResponse(
        throttle_time=datetime.timedelta(0), cluster_id="c", controller_id=BrokerId(1), topics=(),
        brokers=tuple(MetadataResponseBroker(node_id=BrokerId(i), host=h, port=i32(p), rack=None)
                      for i, (h, p) in enumerate(brokers))), correlation_id=correlation_id, flexible_header=True)


def discovery(config=CLUSTER) -> Discovery:
    return Discovery(config, CONFIGURED)


# ---- decoding ---------------------------------------------------------------------------

def test_each_answer_that_names_brokers_is_read_for_them():
    assert named_endpoints(metadata_answer([("10.0.0.5", 9092), ("b2", 9093)]), 3, 12) == [("10.0.0.5", 9092),
                                                                                           ("b2", 9093)]
    v3 = response_frame(FindCoordinatorV3(throttle_time=datetime.timedelta(0), error_code=ErrorCode.none,
                                          error_message=None, node_id=BrokerId(2), host="10.0.0.6", port=i32(9092)),
                        correlation_id=1, flexible_header=True)
    assert named_endpoints(v3, 10, 3) == [("10.0.0.6", 9092)]
    v4 = response_frame(FindCoordinatorV4(throttle_time=datetime.timedelta(0), coordinators=(
        Coordinator(key="g", node_id=BrokerId(3), host="10.0.0.7", port=i32(9092), error_code=ErrorCode.none,
                    error_message=None),
        Coordinator(key="h", node_id=BrokerId(-1), host="", port=i32(-1),
                    error_code=ErrorCode.coordinator_not_available, error_message=None))),
                        correlation_id=1, flexible_header=True)
    assert named_endpoints(v4, 10, 4) == [("10.0.0.7", 9092)]  # an entry with an error names nothing
    cluster = response_frame(DescribeClusterResponse(
        throttle_time=datetime.timedelta(0), error_code=ErrorCode.none, error_message=None, endpoint_type=1,
        cluster_id="c", controller_id=BrokerId(1), cluster_authorized_operations=0,
        brokers=(DescribeClusterBroker(broker_id=BrokerId(1), host="fd00::8", port=i32(9092), rack=None),)),
        correlation_id=1, flexible_header=True)
    assert named_endpoints(cluster, 60, 1) == [("fd00::8", 9092)]


@pytest.mark.parametrize("host, port, reason", [
    ("10.0.0.6", 0, "port 0 is not a port from 1 to 65535"),
    ("10.0.0.6", 65536, "port 65536"),
    ("10.0.0.6", -1, "port -1"),
    ("a" * 300, 9092, "a host of 300 bytes (a host name has at most 253)"),
    ("", 9092, "an empty host"),
    ("broker_1", 9092, "neither an IP address nor a DNS name"),
    ("b\u00fcr.example", 9092, "neither an IP address nor a DNS name"),
    ("10.0.0.6 ", 9092, "neither"),
    ("10.1", 9092, "neither"),
    ("fe80::1%eth0", 9092, "names an interface"),
    ("0.0.0.0", 9092, "is not one a broker can be reached at"),
    ("::", 9092, "is not one a broker can be reached at"),
    ("224.0.0.1", 9092, "is not one a broker can be reached at"),
])
def test_an_endpoint_that_is_no_endpoint_is_named_as_such(host, port, reason):
    kind, why = parse_endpoint(host, port)
    assert kind == "invalid" and reason in why


def test_addresses_are_read_canonically_and_names_lowercased():
    assert parse_endpoint("::ffff:10.0.0.6", 9092) == ("ip", ("10.0.0.6", 9092))
    assert parse_endpoint("fd00:0::8", 9092) == ("ip", ("fd00::8", 9092))
    assert parse_endpoint("Kafka-2.Example.COM.", 9092) == ("name", ("kafka-2.example.com", 9092))


# ---- deciding ---------------------------------------------------------------------------

def test_an_allowed_broker_is_steered_once_and_a_known_one_costs_nothing():
    d = discovery()
    learned = d.learn([("10.0.0.5", 9092), ("10.0.0.6", 9092), ("10.0.0.7", 9092)], 1.0, "Metadata v12 response")
    assert set(learned.steer) == {("10.0.0.6", 9092), ("10.0.0.7", 9092)} and not learned.outside
    assert d.steered == {("10.0.0.5", 9092), ("10.0.0.6", 9092), ("10.0.0.7", 9092)}
    assert not d.learn([("10.0.0.6", 9092), ("10.0.0.7", 9092), ("10.0.0.5", 9092)], 2.0, "Metadata v12 response")


def test_an_address_outside_the_allowed_networks_is_not_steered_and_is_reported_once():
    d = discovery()
    learned = d.learn([("10.0.0.6", 9092), ("192.0.2.1", 9092)], 1.0, "Metadata v12 response")
    assert learned.steer == (("10.0.0.6", 9092),) and learned.outside == (("192.0.2.1", 9092),)
    assert ("192.0.2.1", 9092) not in d.steered
    assert not d.learn([("192.0.2.1", 9092)], 2.0, "Metadata v12 response")


def test_by_default_only_the_configured_brokers_hosts_are_allowed():
    d = Discovery(DiscoveryConfig(), CONFIGURED)
    learned = d.learn([("10.0.0.5", 9093), ("10.0.0.6", 9092)], 1.0, "Metadata v12 response")
    assert learned.steer == (("10.0.0.5", 9093),)  # the same host, another port: the operator named that host
    assert learned.outside == (("10.0.0.6", 9092),)


def test_ten_thousand_endpoints_in_one_answer_are_refused_whole():
    d = discovery()
    named = named_endpoints(metadata_answer([(f"10.0.{i // 250}.{i % 250 + 1}", 9092) for i in range(10_000)]), 3, 12)
    learned = d.learn(named, 1.0, "Metadata v12 response")
    assert learned.fault == ("Metadata v12 response names 10000 broker endpoints, more than the 128 the appliance "
                             "takes from one answer (discovery.max_per_response); it was not delivered")
    assert d.steered == {("10.0.0.5", 9092)}  # nothing of it was taken


def test_port_zero_or_a_300_byte_host_refuses_the_answer():
    d = discovery()
    assert "port 0 is not a port" in d.learn([("10.0.0.6", 0)], 1.0, "Metadata v12 response").fault
    assert "a host of 300 bytes" in d.learn([("h" * 300, 9092)], 1.0, "Metadata v12 response").fault
    assert d.steered == {("10.0.0.5", 9092)}


def test_the_total_is_capped_across_answers():
    d = discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),), max_brokers=3))
    assert len(d.learn([(f"10.0.1.{i}", 9092) for i in range(1, 4)], 1.0, "m").steer) == 3
    assert "more than the 0 discovery.max_brokers (3) leaves room for" in d.learn([("10.0.1.9", 9092)], 2.0, "m").fault
    assert not d.learn([("10.0.1.2", 9092)], 3.0, "m")  # what is steered stays so


def test_a_host_name_is_resolved_before_it_is_decided_and_not_again_for_a_while():
    d = discovery()
    learned = d.learn([("kafka-2.example.com", 9092)], 1.0, "Metadata v12 response")
    assert learned.names == (("kafka-2.example.com", 9092),) and not learned.steer
    done = d.resolved(("kafka-2.example.com", 9092), ["10.0.0.6", "fd00::6", "192.0.2.9"], 1.5)
    assert set(done.steer) == {("10.0.0.6", 9092), ("fd00::6", 9092)} and done.outside == (("192.0.2.9", 9092),)
    assert not d.learn([("kafka-2.example.com", 9092)], 30.0, "Metadata v12 response")
    assert d.learn([("kafka-2.example.com", 9092)], 100.0, "Metadata v12 response").names  # re-resolved later
    assert "does not resolve" in d.resolved(("nowhere.example", 9092), [], 2.0).fault


def test_allowed_networks_are_parsed_and_a_network_of_everything_is_refused():
    config = parse_config({"discovery": {"allowed_networks": ["10.0.0.0/8", "fd00::/8"], "max_brokers": 50}})
    assert config.discovery.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    with pytest.raises(ConfigError, match=r"key 'discovery': key 'allowed_networks' item 1: '0.0.0.0/0' allows every"):
        parse_config({"discovery": {"allowed_networks": ["0.0.0.0/0"]}})
    with pytest.raises(ConfigError, match=r"'10.0.0.1/8' is not a network in CIDR form"):
        parse_config({"discovery": {"allowed_networks": ["10.0.0.1/8"]}})
    with pytest.raises(ConfigError, match=r"key 'discovery': key 'networks' is not a discovery setting"):
        parse_config({"discovery": {"networks": []}})


# ---- in the session -----------------------------------------------------------------------

def session(d: Discovery) -> Session:
    s = Session("s1", PLAIN, Enforcer(Principal("orders", frozenset()), lambda: ALLOW_ALL),
                max_frame_bytes=64 << 20, now=0.0, discovery=d)
    s.handle(ev.UpstreamConnected(), 0.0)
    s.handle(ev.UpstreamData(handshake_ok()), 0.0)
    s.handle(ev.UpstreamData(authenticate()), 0.0)
    return s


def test_the_kernel_is_told_before_the_workload_reads_the_answer_and_each_broker_is_audited():
    s = session(discovery())
    s.handle(ev.ClientData(metadata()), 1.0)
    out = s.handle(ev.UpstreamData(metadata_answer([("10.0.0.5", 9092), ("10.0.0.6", 9092), ("192.0.2.1", 9092)])), 1.1)
    kinds = [type(c) for c in out if isinstance(c, (SteerBrokers, SendToClient))]
    assert kinds == [SteerBrokers, SendToClient]
    steer = of(out, SteerBrokers)[0]
    assert steer.steer == (("10.0.0.6", 9092),) and steer.outside == (("192.0.2.1", 9092),)
    events = {e.record.kind: json.loads(e.record.detail) for e in of(out, Audit) if isinstance(e.record, Event)}
    assert events["broker-discovered"] == {"broker": "10.0.0.6:9092", "named_in": "Metadata v12 response"}
    assert events["discovery-refused"]["broker"] == "192.0.2.1:9092"
    # the next answer naming the same brokers is passed on with nothing to do
    s.handle(ev.ClientData(metadata(correlation_id=6)), 2.0)
    out = s.handle(ev.UpstreamData(metadata_answer([("10.0.0.5", 9092), ("10.0.0.6", 9092), ("192.0.2.1", 9092)],
                                                   correlation_id=6)), 2.1)
    assert not of(out, SteerBrokers) and len(of(out, SendToClient)) == 1


def test_a_hostile_answer_is_never_delivered_and_the_session_closes_naming_it():
    s = session(discovery())
    s.handle(ev.ClientData(metadata()), 1.0)
    out = s.handle(ev.UpstreamData(metadata_answer([("10.0.0.6", 0)])), 1.1)
    assert not of(out, SendToClient) and not of(out, SteerBrokers)
    reason = of(out, CloseConnection)[0].reason
    assert reason.startswith("Metadata v12 response names a broker endpoint that is not one: port 0")
    assert [a.record.outcome for a in of(out, Audit) if isinstance(a.record, Operation)] == ["unanswered"]
    assert [a.record.close_reason for a in of(out, Audit) if isinstance(a.record, SessionClosed)] == [reason]


def test_a_failed_steering_closes_the_session():
    s = session(discovery())
    out = s.handle(ev.DiscoveryFailed("the kernel's brokers map is full"), 1.0)
    assert of(out, CloseConnection)[0].reason == "the kernel's brokers map is full"


def test_without_discovery_nothing_is_decoded_for_it():
    s = session(None)
    s.handle(ev.ClientData(metadata()), 1.0)
    out = s.handle(ev.UpstreamData(metadata_answer([("10.0.0.6", 0)])), 1.1)
    assert len(of(out, SendToClient)) == 1 and not of(out, SteerBrokers) and not of(out, SendToUpstream)


def test_an_address_a_configured_name_resolves_to_is_configured_and_its_host_allowed():
    d = Discovery(DiscoveryConfig(), CONFIGURED)
    d.add_configured(("10.0.0.9", 9092))
    assert not d.learn([("10.0.0.9", 9092)], 1.0, "m")
    assert d.learn([("10.0.0.9", 9093)], 1.0, "m").steer == (("10.0.0.9", 9093),)


@pytest.mark.parametrize("version", [0, 3, 8, 9, 12])
def test_a_metadata_answer_declaring_too_many_brokers_is_refused_before_it_is_decoded(version):
    from appliance.kafka import apis
    from appliance.proxy.discovery import TooMany, metadata_broker_count

    cls = apis.response_class(3, version)
    broker_cls = __import__(cls.__module__, fromlist=["MetadataResponseBroker"]).MetadataResponseBroker
    fields = {"throttle_time": datetime.timedelta(0), "cluster_id": "c", "controller_id": BrokerId(1),
              "cluster_authorized_operations": 0}
    hints = cls.__dataclass_fields__
    answer = cls(**{k: v for k, v in fields.items() if k in hints}, topics=(), brokers=tuple(
        broker_cls(**{"node_id": BrokerId(i), "host": "10.0.0.6", "port": i32(9000 + i), "rack": None}
                   if "rack" in broker_cls.__dataclass_fields__ else
                   {"node_id": BrokerId(i), "host": "10.0.0.6", "port": i32(9000 + i)}) for i in range(3)))
    frame = response_frame(answer, correlation_id=1, flexible_header=version >= 9)
    assert metadata_broker_count(frame, version) == 3
    assert len(named_endpoints(frame, 3, version, limit=3)) == 3
    with pytest.raises(TooMany, match="declares 3 brokers"):
        named_endpoints(frame, 3, version, limit=2)


def test_the_session_refuses_ten_thousand_declared_brokers_without_building_them():
    s = session(discovery())
    s.handle(ev.ClientData(metadata()), 1.0)
    answer = metadata_answer([(f"10.0.{i // 250}.{i % 250 + 1}", 9092) for i in range(10_000)])
    out = s.handle(ev.UpstreamData(answer), 1.1)
    assert not of(out, SendToClient)
    assert of(out, CloseConnection)[0].reason == ("Metadata v12 response declares 10000 brokers, more than the 128 "
                                                  "the appliance takes from one answer (discovery.max_per_response); "
                                                  "it was not delivered")


def test_an_answer_refused_leaves_nothing_half_learned():
    d = discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),), max_brokers=2))
    assert "port 0" in d.learn([("10.0.1.1", 9092), ("10.0.1.2", 0)], 1.0, "m").fault
    assert "3 new broker endpoint(s)" in d.learn([(f"10.0.1.{i}", 9092) for i in range(1, 4)], 1.0, "m").fault
    assert d.steered == {("10.0.0.5", 9092)} and not d.outside
    assert len(d.learn([("10.0.1.1", 9092), ("10.0.1.2", 9092)], 2.0, "m").steer) == 2  # still decided afresh


def test_what_a_previous_run_discovered_is_decided_again_under_todays_networks():
    d = Discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/24"),), max_brokers=2), CONFIGURED)
    seeded = d.seed([("10.0.0.6", 9092), ("192.0.2.1", 9092), ("10.0.0.7", 9092), ("10.0.0.5", 9092)], 1.0)
    assert seeded.steer == (("10.0.0.6", 9092),) and seeded.outside == (("192.0.2.1", 9092),)


def test_a_failed_produce_naming_a_new_leader_steers_it_before_it_is_delivered():
    from kio.schema.produce.v11.request import PartitionProduceData, ProduceRequest, TopicProduceData
    from kio.schema.produce.v11.response import (NodeEndpoint, PartitionProduceResponse, ProduceResponse,
                                                 TopicProduceResponse)

    from tests.kafka.builders import batch, request_frame

    s = session(discovery())
    request = request_frame(ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=1),
                                           topic_data=(TopicProduceData(name="orders", partition_data=(
                                               PartitionProduceData(index=0, records=batch(1)),)),)),
                            correlation_id=7)
    s.handle(ev.ClientData(request), 1.0)
    answer = response_frame(ProduceResponse(throttle_time=datetime.timedelta(0), responses=(
        TopicProduceResponse(name="orders", partition_responses=(PartitionProduceResponse(
            index=0, error_code=ErrorCode.not_leader_or_follower, base_offset=-1, log_append_time=None,
            log_start_offset=-1, record_errors=(), error_message=None),)),),
        node_endpoints=(NodeEndpoint(node_id=BrokerId(7), host="10.0.0.7", port=i32(9092), rack=None),)),
        correlation_id=7, flexible_header=True)
    out = s.handle(ev.UpstreamData(answer), 1.1)
    assert [type(c) for c in out if isinstance(c, (SteerBrokers, SendToClient))] == [SteerBrokers, SendToClient]
    assert of(out, SteerBrokers)[0].steer == (("10.0.0.7", 9092),)


# ---- forgetting -----------------------------------------------------------------------------
# A discovered endpoint leaves the set only on evidence that the cluster moved on (proxy/discovery.py):
# nothing named it or connected to it for forget_after_s, a Metadata answer of its cluster and listener that
# long after its last naming listed the brokers without it, and no live session uses it.

HOUR = 3600.0
FORGETFUL = DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/24"),), forget_after_s=HOUR)
C, E, F = ("10.0.0.5", 9092), ("10.0.0.6", 9092), ("10.0.0.7", 9092)


def listed(d: Discovery, brokers, at: float, cluster_id: str | None = "c"):
    return d.learn(list(brokers), at, "Metadata v12 response", listing=True, cluster_id=cluster_id)


def test_a_quiet_cluster_forgets_nothing():
    d = discovery(FORGETFUL)
    assert set(listed(d, [C, E, F], 0.0).steer) == {E, F}
    # No Metadata at all for ten hours (a FindCoordinator naming F is no listing of the cluster's brokers).
    d.learn([F], 5 * HOUR, "FindCoordinator v4 response")
    assert d.expire(10 * HOUR, ()) == ()
    assert set(d.discovered) == {E, F}


def test_an_endpoint_the_cluster_stops_naming_is_forgotten_only_a_full_window_after_its_last_naming():
    d = discovery(FORGETFUL)
    listed(d, [C, E, F], 0.0)
    listed(d, [C, F], 100.0)  # E fenced: left out since
    listed(d, [C, F], HOUR - 1)
    assert d.expire(HOUR + 10, ()) == ()  # no answer a whole window after its last naming left it out yet
    listed(d, [C, F], HOUR + 20)
    forgotten = d.expire(HOUR + 21, ())
    assert [(f.endpoint, f.outside, f.last_named, f.left_out_at) for f in forgotten] == [(E, False, 0.0, HOUR + 20)]
    assert forgotten[0].listed_with in {C, F}
    assert E not in d.steered and F in d.steered and d.forgotten == 1
    [(level, event)] = forgotten_events(forgotten, HOUR + 21, HOUR)
    assert event.kind == "broker-forgotten" and "no longer steered" in event.message
    assert json.loads(event.detail)["broker"] == "10.0.0.6:9092" and json.loads(event.detail)["was"] == "steered"
    assert d.expire(HOUR + 22, ()) == ()  # forgotten once


def test_an_endpoint_named_in_any_answer_in_the_window_is_kept():
    d = discovery(FORGETFUL)
    listed(d, [C, E, F], 0.0)
    d.learn([E], HOUR / 2, "FindCoordinator v4 response")  # the group coordinator: named, so held by clients
    listed(d, [C, F], HOUR + 1)
    assert d.expire(HOUR + 2, ()) == ()
    listed(d, [C, F], HOUR / 2 + HOUR)
    assert [f.endpoint for f in d.expire(HOUR / 2 + HOUR + 1, ())] == [E]


def test_an_endpoint_a_live_session_uses_is_not_forgotten():
    d = discovery(FORGETFUL)
    listed(d, [C, E], 0.0)
    listed(d, [C], 2 * HOUR)
    assert d.expire(2 * HOUR + 1, [("10.0.0.6", 9092)]) == ()
    assert d.expire(2 * HOUR + 1, [("::ffff:10.0.0.6", 9092)]) == ()  # however the kernel spelled it
    assert [f.endpoint for f in d.expire(2 * HOUR + 2, [("10.0.0.5", 9092)])] == [E]


def test_a_connect_to_it_restarts_the_window():
    d = discovery(FORGETFUL)
    listed(d, [C, E], 0.0)
    d.used("10.0.0.6", 9092, HOUR)  # a session opened, or the kernel refused a connect, to it
    listed(d, [C], HOUR + 10)
    assert d.expire(HOUR + 11, ()) == ()
    listed(d, [C], 2 * HOUR)
    assert [f.endpoint for f in d.expire(2 * HOUR + 1, ())] == [E]


def test_a_listing_of_another_listener_or_another_cluster_is_no_evidence():
    d = discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/24"),), forget_after_s=HOUR))
    listed(d, [C, E], 0.0, cluster_id="x")
    listed(d, [("10.0.0.5", 9093)], 2 * HOUR, cluster_id="x")  # the same cluster, another listener: E not its
    listed(d, [C], 2 * HOUR, cluster_id="y")  # C's address now answers for another cluster
    assert d.expire(2 * HOUR + 1, ()) == ()
    listed(d, [C], 3 * HOUR, cluster_id="x")
    assert [f.endpoint for f in d.expire(3 * HOUR + 1, ())] == [E]


def test_a_forgotten_endpoint_named_again_is_learned_again():
    d = discovery(FORGETFUL)
    listed(d, [C, E], 0.0)
    listed(d, [C], 2 * HOUR)
    assert [f.endpoint for f in d.expire(2 * HOUR + 1, ())] == [E]
    learned = listed(d, [C, E], 3 * HOUR)  # not hidden by the known spellings
    assert learned.steer == (E,) and E in d.steered
    assert d.expire(3 * HOUR + 10, ()) == ()


def test_endpoints_outside_the_allowed_networks_expire_too_and_free_the_room():
    d = discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/24"),), forget_after_s=HOUR,
                                  max_brokers=1))
    outside = ("192.0.2.1", 9092)
    assert listed(d, [C, outside], 0.0).outside == (outside,)
    assert "discovery.max_brokers (1)" in listed(d, [C, E], HOUR).fault  # full
    listed(d, [C], 2 * HOUR)
    [forgotten] = d.expire(2 * HOUR + 1, ())
    assert forgotten.endpoint == outside and forgotten.outside
    assert "no longer refused" in forgotten_events([forgotten], 2 * HOUR + 1, HOUR)[0][1].message
    assert listed(d, [C, E], 2 * HOUR + 2).steer == (E,)


def test_without_forget_after_s_nothing_is_forgotten():
    d = discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/24"),), forget_after_s=None))
    listed(d, [C, E], 0.0)
    listed(d, [C], 100 * HOUR)
    assert d.expire(100 * HOUR + 1, ()) == () and E in d.steered
    assert expiry_interval_s(d.config) is None and expiry_interval_s(FORGETFUL) == 60.0


def test_an_answer_whose_endpoints_are_all_known_parses_nothing(monkeypatch):
    d = discovery(FORGETFUL)
    listed(d, [C, E, F], 0.0)
    d.learn([E], 0.0, "FindCoordinator v4 response")

    def no_parsing(*_):
        raise AssertionError("a known endpoint was parsed again")

    monkeypatch.setattr("appliance.proxy.discovery.parse_endpoint", no_parsing)
    assert listed(d, [C, E, F], 1.0) is NOTHING
    assert d.learn([E, F], 2.0, "FindCoordinator v4 response") is NOTHING


def test_what_is_saved_lets_the_next_run_forget_a_broker_that_never_comes_back():
    d = discovery(FORGETFUL)
    listed(d, [C, E, F], 0.0)
    saved = json.loads(json.dumps(d.snapshot()))  # as the file holds it
    endpoints, listings = parse_snapshot(saved)
    assert sorted(endpoints) == [E, F] and listings[E] == ("c", [C, E, F])
    restarted = discovery(FORGETFUL)
    assert set(restarted.seed(endpoints, 10.0, listings).steer) == {E, F}
    listed(restarted, [C, F], HOUR + 5)  # seeded counts as named at the start: a full window from there
    assert restarted.expire(HOUR + 6, ()) == ()
    listed(restarted, [C, F], HOUR + 10)
    assert [f.endpoint for f in restarted.expire(HOUR + 11, ())] == [E]
    # A file of an earlier version names no listings: what it seeds is kept until a listing names it.
    old = discovery(FORGETFUL)
    endpoints, listings = parse_snapshot({"steered": [list(E)], "outside": []})
    old.seed(endpoints, 0.0, listings)
    listed(old, [C], 2 * HOUR)
    assert old.expire(2 * HOUR + 1, ()) == () and E in old.steered
    with pytest.raises(ValueError, match="not what discovery saves"):
        parse_snapshot({"steered": [["10.0.0.6"]]})


def test_an_endpoint_whose_steering_failed_is_decided_afresh():
    d = discovery(FORGETFUL)
    assert listed(d, [C, E], 0.0).steer == (E,)
    d.forget(E)  # the kernel would not take it
    assert listed(d, [C, E], 1.0).steer == (E,)


def test_the_session_reads_a_metadata_answer_as_a_listing_of_its_cluster():
    d = discovery(FORGETFUL)
    s = session(d)
    s.handle(ev.ClientData(metadata()), 1.0)
    s.handle(ev.UpstreamData(metadata_answer([C, E])), 1.1)
    s.handle(ev.ClientData(metadata(correlation_id=6)), 2 * HOUR)
    out = s.handle(ev.UpstreamData(metadata_answer([C], correlation_id=6)), 2 * HOUR)
    assert len(of(out, SendToClient)) == 1
    [forgotten] = d.expire(2 * HOUR + 1, ())
    assert forgotten.endpoint == E and forgotten.listed_with == C


@pytest.mark.parametrize("value, expected", [(None, None), (0, None), (30, 30.0), (7200.5, 7200.5)])
def test_forget_after_s_is_seconds_or_null(value, expected):
    assert parse_config({"discovery": {"forget_after_s": value}}).discovery.forget_after_s == expected
    assert DiscoveryConfig().forget_after_s == 3600.0


@pytest.mark.parametrize("value", ["an hour", -5, 0.5, True, 31 * 86400, [60]])
def test_a_bad_forget_after_s_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"key 'discovery': key 'forget_after_s' must be a number of seconds from 1 "
                                          r"to 2592000 \(30 days\), or null \(or 0\) to never forget"):
        parse_config({"discovery": {"forget_after_s": value}})
