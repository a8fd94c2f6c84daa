"""The embedded broker's optional OAUTHBEARER listener: its configuration and what server.properties says (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.broker import jvm
from appliance.broker.credentials import UpstreamCredentials
from appliance.broker.properties import (
    BrokerFiles,
    jvm_system_properties,
    listening_addresses,
    oauth_address,
    server_properties,
)
from appliance.config import BrokerAddress, ConfigError, EmbeddedBrokerConfig, parse_config

ISSUER = "http://127.0.0.1:39180/realms/appliance"
JWKS = f"{ISSUER}/protocol/openid-connect/certs"
OAUTH = {"issuer": ISSUER, "jwks_url": JWKS, "audience": "kafka-appliance"}


def _broker(**oauth) -> EmbeddedBrokerConfig:
    return parse_config({"embedded_broker": {"oauth": {**OAUTH, **oauth}}}).embedded_broker


def _properties(config: EmbeddedBrokerConfig) -> dict[str, str]:
    text = server_properties(config, BrokerFiles(Path("/tmp/b")), appliance=UpstreamCredentials(
        "SCRAM-SHA-512", "appliance", "pw"), intruder=UpstreamCredentials("SCRAM-SHA-512", "intruder", "pw2"),
        node_password="n")
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_without_oauth_there_is_no_oauthbearer_listener_and_no_jvm_property():
    props = _properties(EmbeddedBrokerConfig())
    assert "OAUTH" not in props["listeners"] and not any(k.startswith("sasl.oauthbearer") for k in props)
    assert jvm_system_properties(EmbeddedBrokerConfig()) == {}
    assert oauth_address(EmbeddedBrokerConfig()) is None


def test_the_oauth_listener_is_validated_by_kafka_s_jwks_validator_and_the_appliance_is_a_super_user():
    config = _broker(port=29196, principal="appliance-upstream")
    props = _properties(config)
    assert "OAUTH://127.0.0.1:29196" in props["listeners"] and "OAUTH://127.0.0.1:29196" in props["advertised.listeners"]
    assert "OAUTH:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["listener.name.oauth.sasl.enabled.mechanisms"] == "OAUTHBEARER"
    assert props["listener.name.oauth.oauthbearer.sasl.server.callback.handler.class"] == \
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
    # Kafka 4.1's default validator checks no signature when made by that handler: the broker one is named.
    assert props["sasl.oauthbearer.jwt.validator.class"] == "org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator"
    assert props["sasl.oauthbearer.jwks.endpoint.url"] == JWKS
    assert props["sasl.oauthbearer.expected.issuer"] == ISSUER
    assert props["sasl.oauthbearer.expected.audience"] == "kafka-appliance"
    assert props["sasl.oauthbearer.sub.claim.name"] == "azp"
    assert props["sasl.oauthbearer.scope.claim.name"] == "scope"
    assert _properties(_broker(scope_claim="kafka_scope"))["sasl.oauthbearer.scope.claim.name"] == "kafka_scope"
    assert props["super.users"].split(";") == ["User:appliance", "User:node", "User:appliance-upstream"]
    assert jvm_system_properties(config) == {"org.apache.kafka.sasl.oauthbearer.allowed.urls": JWKS}
    assert listening_addresses(config)[-1] == BrokerAddress("127.0.0.1", 29196)


def test_the_jvm_gets_the_allowed_urls_property_before_the_main_class():
    argv = jvm.server_argv("java", Path("/j"), Path("/l"), "1g", Path("/s"),
                           {"org.apache.kafka.sasl.oauthbearer.allowed.urls": JWKS})
    assert argv.index(f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={JWKS}") < argv.index("kafka.Kafka")


@pytest.mark.parametrize("change, problem", [
    ({"issuer": None}, "key 'issuer' is required"),
    ({"jwks_url": "file:///etc/jwks.json"}, "key 'jwks_url' must be an http(s) URL"),
    ({"jwks_url": f"{JWKS}\nsuper.users=User:x"}, "key 'jwks_url' must be an http(s) URL"),
    ({"audience": "a,b"}, "key 'audience' must be one audience"),
    ({"audience": "a b"}, "key 'audience' must be one audience"),
    ({"principal": "x;User:evil"}, "key 'principal' must be a principal name"),
    ({"principal_claim": "a b"}, "key 'principal_claim' must be a claim name"),
    ({"port": 70000}, "key 'port' must be a port"),
    ({"port": 19094}, "port 19094 is also controller_port"),
    ({"port": 19095}, "port 19095 is also the inter-broker listener"),
    ({"clock_skew_s": -1}, "key 'clock_skew_s' must be whole seconds from 0 to 300"),
    ({"colour": "blue"}, "key 'colour' is not an OAuth listener setting"),
])
def test_a_bad_oauth_setting_names_the_key(change, problem):
    settings = {k: v for k, v in {**OAUTH, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        parse_config({"embedded_broker": {"oauth": settings}}, source="a.yaml")
    assert str(e.value).startswith("a.yaml: key 'embedded_broker': key 'oauth'") and problem in str(e.value)
