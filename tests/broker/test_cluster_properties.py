"""server.properties of a node of a multi-node KRaft cluster (pure)."""

from __future__ import annotations

from pathlib import Path

from appliance.broker.credentials import UpstreamCredentials
from appliance.broker.properties import BrokerFiles, ClusterMember, server_properties
from appliance.config import EmbeddedBrokerConfig


def test_a_node_of_a_cluster_lists_every_voter_and_keeps_internal_topics_on_every_node():
    config = EmbeddedBrokerConfig(host4="10.231.8.3", host6="", port4=39292, controller_port=39294)
    member = ClusterMember(node_id=2, voters=((1, "10.231.8.2"), (2, "10.231.8.3"), (3, "10.231.8.4")),
                           cluster_id="c", node_password="shared")
    text = server_properties(config, BrokerFiles(Path("/d")),
                             appliance=UpstreamCredentials("SCRAM-SHA-512", "appliance", "A"),
                             intruder=UpstreamCredentials("SCRAM-SHA-512", "intruder", "I"), node_password="shared",
                             cluster=member)
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@10.231.8.2:39294,2@10.231.8.3:39294,3@10.231.8.4:39294"
    assert props["listeners"] == "CLIENT://10.231.8.3:39292,INTERNAL://10.231.8.3:39295,CONTROLLER://10.231.8.3:39294"
    assert props["advertised.listeners"] == "CLIENT://10.231.8.3:39292,INTERNAL://10.231.8.3:39295"
    assert props["offsets.topic.replication.factor"] == props["default.replication.factor"] == "3"
    assert 'user_node="shared"' in props["listener.name.controller.plain.sasl.jaas.config"]
