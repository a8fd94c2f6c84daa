"""The production configuration scripts/install writes: it loads, sets the install's paths, names every setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from appliance.config import Config, parse_config
from appliance.config_file import production_config


def test_the_generated_file_loads_with_the_install_paths_and_the_code_defaults_elsewhere():
    text = production_config(etc_dir=Path("/p/etc/appliance"), state_dir=Path("/p/var/lib/appliance"))
    config = parse_config(yaml.safe_load(text), source="generated")
    assert config.state_dir == Path("/p/var/lib/appliance")
    assert config.policy_file == Path("/p/etc/appliance/policy.yaml")
    assert config.upstream_credentials == Path("/p/etc/appliance/credentials/upstream.json")
    assert config.listen_port == Config().listen_port and config.brokers == Config().brokers


def test_every_top_level_setting_is_named_so_an_operator_sees_what_exists():
    text = production_config(etc_dir=Path("/etc/appliance"), state_dir=Path("/var/lib/appliance"))
    for f in dataclasses.fields(Config):
        if f.name != "source":
            assert f"{f.name}" in text, f.name


def test_a_demo_install_keeps_the_embedded_brokers_data_under_state_dir_and_uses_its_credentials():
    text = production_config(etc_dir=Path("/p/etc/appliance"), state_dir=Path("/p/var/lib/appliance"), with_broker=True)
    config = parse_config(yaml.safe_load(text))
    assert config.embedded_broker.data_dir == Path("/p/var/lib/appliance/broker")
    assert config.upstream_credentials == Path("/p/var/lib/appliance/broker/appliance-credentials.json")


def test_each_commented_setting_loads_when_uncommented():
    text = production_config(etc_dir=Path("/etc/appliance"), state_dir=Path("/var/lib/appliance"))
    keys = tuple(f"# {f.name}:" for f in dataclasses.fields(Config))
    uncommented = "\n".join(line[2:] if (line.startswith(keys) and "(not set" not in line) or line.startswith(("# - ", "#   "))
                            else line for line in text.splitlines())
    data = yaml.safe_load(uncommented)
    assert "max_sessions" in data and "exempt_cgroups" in data
    assert parse_config(data).max_sessions == Config().max_sessions
