"""Brokers given by DNS name in `brokers`: parsed, resolved, and only new addresses steered (pure)."""

from __future__ import annotations

import pytest

from appliance.config import BrokerAddress, BrokerName, ConfigError, parse_config
from appliance.steering.names import BrokerNames


def test_brokers_may_be_named_by_dns_name_beside_addresses():
    config = parse_config({"brokers": ["10.0.0.5:9092", "Kafka-1.Example.COM.:9093", "[fd00::5]:9092"],
                           "broker_resolve_interval_s": 10})
    assert config.broker_addresses == (BrokerAddress("10.0.0.5", 9092), BrokerAddress("fd00::5", 9092))
    assert config.broker_names == (BrokerName("kafka-1.example.com", 9093),)
    assert config.broker_resolve_interval_s == 10.0


@pytest.mark.parametrize("text, message", [
    ("kafka_1.example.com:9092", "neither an IP address nor a DNS name"),
    ("kafka-1.example.com:0", "port '0' is not a number from 1 to 65535"),
    ("kafka-1.example.com", "is not HOST:PORT"),
    ("a" * 300 + ":9092", "neither an IP address nor a DNS name"),
    ("10.0.0:9092", "is not an IP address"),
])
def test_a_broker_that_is_neither_address_nor_name_is_named_in_the_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"brokers": [text]})


def test_each_new_address_is_steered_once_and_an_old_one_stays():
    name = BrokerName("kafka-1.example.com", 9092)
    names = BrokerNames((name,))
    assert names.resolved(name, ["10.0.0.5", "::ffff:10.0.0.5", "fd00::5", "not-an-address"]) == (
        ("10.0.0.5", 9092), ("fd00::5", 9092))
    assert names.resolved(name, ["10.0.0.5"]) == ()
    assert names.resolved(name, ["10.0.0.6"]) == (("10.0.0.6", 9092),)
    assert names.status() == {"kafka-1.example.com:9092": ["10.0.0.6"]}
    assert names.steered == {("10.0.0.5", 9092), ("fd00::5", 9092), ("10.0.0.6", 9092)}
