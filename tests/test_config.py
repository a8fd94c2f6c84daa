import pytest

from appliance.config import BrokerAddress, ConfigError, load_config


def test_embedded_defaults_steer_the_embedded_broker():
    config = load_config(None)
    assert [str(b) for b in config.brokers] == ["127.0.0.1:19092", "[::1]:19093"]
    assert config.source == "embedded defaults"


def test_file_overrides_a_subset(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("brokers: ['10.0.0.5:9092', '[fd00::5]:9092']\nlisten_port: 20000\nstate_dir: /tmp/x\n")
    config = load_config(f)
    assert config.brokers == (BrokerAddress("10.0.0.5", 9092), BrokerAddress("fd00::5", 9092))
    assert config.listen_port == 20000 and str(config.upstream_credentials).startswith("/tmp/x/")


@pytest.mark.parametrize("text, message", [
    ("brokers: ['kafka_local:9092']", "key 'brokers' item 1: 'kafka_local' is neither an IP address nor a DNS name"),
    ("brokers: ['10.0.0.1']", "is not HOST:PORT"),
    ("brokers: ['10.0.0.1:0']", "port '0' is not a number from 1 to 65535"),
    ("listen_port: 'x'", "key 'listen_port' must be a whole number from 1 to 65535"),
    ("listn_port: 1", "key 'listn_port' is not a setting; valid settings are:"),
    ("state_dir: relative", "key 'state_dir' must be an absolute path"),
    ("refuse_unenrolled: 'no'", "must be true or false"),
    ("- a\n- b", "the top level must be a mapping"),
    ("a: [1,", "line 1: not valid YAML"),
])
def test_bad_files_name_the_file_and_key(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(str(f)) and message in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read the configuration file"):
        load_config(tmp_path / "nope.yaml")


def test_embedded_broker_settings(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("embedded_broker: {port4: 39092, data_dir: /tmp/b}\n")
    assert load_config(f).embedded_broker.port4 == 39092
    f.write_text("embedded_broker: {port9: 1}\n")
    with pytest.raises(ConfigError, match="key 'port9' is not an embedded broker setting"):
        load_config(f)


def test_the_documented_examples_are_valid_and_every_setting_is_documented():
    import re
    from dataclasses import fields
    from pathlib import Path

    import yaml

    from appliance.config import Config, EmbeddedBrokerConfig, parse_config

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    examples = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    assert [parse_config(e, source="docs/configuration.md") for e in examples if isinstance(e, dict)]
    for f in fields(Config) + fields(EmbeddedBrokerConfig):
        if f.name != "source":
            assert f"| `{f.name}` |" in doc, f"setting {f.name!r} is missing from docs/configuration.md"


@pytest.mark.parametrize("text, message", [
    ("max_request_bytes: 10", "key 'max_request_bytes' must be a whole number from 1024 to 104857600, got 10"),
    ("idle_timeout_s: 0", "key 'idle_timeout_s' must be a number of seconds from 1 to 86400, got 0"),
    ("connect_timeout_s: true", "key 'connect_timeout_s' must be a number of seconds"),
    ("audit_failure: ignore", "key 'audit_failure' must be one of refuse, forward, got 'ignore'"),
    ("audit_dir: audit", "key 'audit_dir' must be an absolute path"),
    ("max_request_bytes: 33554432", "key 'session_buffer_bytes' (16777216) must be at least 'max_request_bytes' (33554432)"),
    ("session_buffer_bytes: 536870912", "key 'buffer_budget_bytes' (134217728) must be at least 'session_buffer_bytes'"),
    ("max_sessions: 100", "key 'max_sessions_per_workload' (512) must not exceed 'max_sessions' (100)"),
])
def test_resource_bounds_are_checked_and_named(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(str(f)) and message in str(e.value)


def test_resource_bounds_default_safe_and_the_audit_can_move(tmp_path):
    from appliance.config import memory_ceiling

    config = load_config(None)
    assert (config.max_request_bytes, config.audit_failure, config.max_sessions) == (8 << 20, "refuse", 1024)
    assert memory_ceiling(config) == 2 * (128 << 20) + 1024 * (256 << 10) + 50_000 * 1024
    f = tmp_path / "a.yaml"
    f.write_text("audit_dir: /mnt/audit\nidle_timeout_s: 2.5\n")
    config = load_config(f)
    assert str(config.audit_db) == "/mnt/audit/audit.db" and str(config.run_marker) == "/mnt/audit/serve.running"
    assert config.idle_timeout_s == 2.5


def test_a_provider_s_ca_file_is_loaded_with_the_config_and_a_bad_one_is_named(tmp_path):
    from tests.identity.tls_certs import TestCa

    ca = TestCa.make("config test CA").write_cert(tmp_path / "ca.pem")
    f = tmp_path / "a.yaml"
    provider = "identity:\n  providers:\n    - {issuer: 'https://idp.example/r', audiences: [k], ca_file: '%s'}\n"
    f.write_text(provider % ca)
    assert load_config(f).identity.providers[0].ca_file == ca
    for value, message in ((tmp_path / "absent.pem", f"key 'ca_file': CA file {tmp_path / 'absent.pem'} does not exist"),
                           ("relative.pem", "key 'ca_file' must be an absolute path to a PEM file of CA certificates")):
        f.write_text(provider % value)
        with pytest.raises(ConfigError) as e:
            load_config(f)
        assert str(e.value).startswith(str(f)) and "providers' item 1" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("value, message", [
    ({"max_age_days": 0}, "key 'audit_retention': key 'max_age_days' must be a number of days above 0"),
    ({"max_age_days": "90d"}, "key 'max_age_days' must be a number of days above 0 and at most 36500"),
    ({"max_bytes": "10 parsecs"}, "key 'max_bytes' must be a size in bytes: a whole number or a number with a unit"),
    ({"max_bytes": 4096}, "key 'max_bytes' must be from 1 MiB (1048576) to 1 PiB, got 4096"),
    ({"interval_s": 0}, "key 'interval_s' must be a number of seconds from 1 to 86400"),
    ({"max_days": 3}, "key 'max_days' is not a retention setting; valid: max_age_days, max_bytes, interval_s"),
    ([90], "key 'audit_retention' must be a mapping of retention settings"),
])
def test_audit_retention_errors_name_the_key(value, message):
    from appliance.config import parse_config
    with pytest.raises(ConfigError) as e:
        parse_config({"audit_retention": value})
    assert message in str(e.value)


def test_audit_retention_defaults_to_keeping_everything_and_takes_sizes_with_units():
    from appliance.config import Config, parse_config
    assert not Config().audit_retention.enabled
    retention = parse_config({"audit_retention": {"max_age_days": 0.5, "max_bytes": "1.5GiB"}}).audit_retention
    assert (retention.max_age_days, retention.max_bytes, retention.interval_s) == (0.5, 3 << 29, 300.0)
    assert retention.describe() == "0.5 days and 1,610,612,736 bytes"
