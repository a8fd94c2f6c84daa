"""The commented production configuration scripts/install writes to /etc/appliance/appliance.yaml.

Generated from `Config`'s own defaults, so the file cannot name a setting or a
default the code does not have: the install's paths are set, every other
setting is shown commented out at its default. Meanings: docs/configuration.md.

    python -m appliance.config_file --etc /etc/appliance --state /var/lib/appliance
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml

from appliance.config import Config
from appliance.identity.containers import ContainerRoots

# What the install sets; everything else stays at the code's default.
INSTALL_KEYS = ("state_dir", "run_dir", "bpffs_dir", "policy_file", "upstream_credentials", "brokers")
NESTED = ("embedded_broker", "identity", "discovery", "audit_retention")
_HEADER = """\
# The appliance's configuration (`appliance --config {path} ...`; appliance.service uses it).
# Every setting and its meaning: docs/configuration.md. Settings commented out are at the
# default shown. `appliance doctor` checks this file against the host.
# scripts/install wrote this file and never overwrites it: a newer default lands beside it
# as appliance.yaml.dist.
"""
_BROKERS_NOTE = """\
# The steered broker addresses (IP:PORT, [IPv6]:PORT): set them to your cluster's. The
# defaults are the embedded broker's (scripts/install --with-broker runs it).
"""
_NESTED_NOTE = """\
# Four mappings beside these: embedded_broker, the demo broker's ports, data_dir and heap
# (docs/embedded-broker.md); identity, OIDC token providers and static migration
# credentials (docs/identity.md); discovery, the networks where brokers a steered
# broker names in Metadata are steered too (docs/operations.md, Clusters; by default only
# the hosts in brokers); and audit_retention, how long and how much of the audit to keep
# (docs/recording.md, Retention; by default everything), such as
# {max_age_days: 90, max_bytes: 20GiB}.
"""


# The web console's mapping is off by default and needs an identity provider's client: named, not written out.
NESTED += ("console",)
_CONSOLE_NOTE = """\
# And console: the web console `appliance console` serves, off by default; it needs an
# OIDC client at your identity provider (docs/console.md, Enabling it).
"""


def _yaml_value(value) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_yaml_value(v) for v in value]
    if isinstance(value, ContainerRoots):  # a mapping setting
        return {f.name: str(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if dataclasses.is_dataclass(value):  # BrokerAddress: HOST:PORT
        return str(value)
    return value


def _line(key: str, value, *, commented: bool = False) -> str:
    text = yaml.safe_dump({key: _yaml_value(value)}, default_flow_style=False, width=1000).strip()
    return "\n".join("# " + line for line in text.splitlines()) if commented else text


def production_config(*, etc_dir: Path, state_dir: Path, with_broker: bool = False) -> str:
    """The file's text: the install's paths set, the rest commented at the code's defaults.

    The upstream credentials are a root-only file under `etc_dir`; a demo install with the embedded
    broker keeps that broker's data under `state_dir` and uses the credentials it writes there."""
    broker_dir = state_dir / "broker"
    config = dataclasses.replace(
        Config(), state_dir=state_dir, policy_file=etc_dir / "policy.yaml",
        upstream_credentials=(broker_dir / "appliance-credentials.json" if with_broker
                              else etc_dir / "credentials" / "upstream.json"))
    lines = [_HEADER.format(path=etc_dir / "appliance.yaml")]
    for f in dataclasses.fields(Config):
        if f.name in ("source", *NESTED):
            continue
        value = getattr(config, f.name)
        if value is None:
            lines.append(f"# {f.name}: (not set by default; docs/configuration.md)")
        elif f.name == "brokers":
            lines.append(_BROKERS_NOTE + _line(f.name, value))
        elif f.name in INSTALL_KEYS:
            lines.append(_line(f.name, value))
        else:
            lines.append(_line(f.name, value, commented=True))
    if with_broker:
        lines.append(yaml.safe_dump({"embedded_broker": {"data_dir": str(broker_dir)}}, default_flow_style=False).strip())
    lines.append(_NESTED_NOTE.rstrip())
    lines.append(_CONSOLE_NOTE.rstrip())
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etc", type=Path, required=True, help="the configuration directory (/etc/appliance)")
    parser.add_argument("--state", type=Path, required=True, help="state_dir (/var/lib/appliance)")
    parser.add_argument("--with-broker", action="store_true", help="the embedded broker is the upstream (a demo)")
    args = parser.parse_args()
    print(production_config(etc_dir=args.etc, state_dir=args.state, with_broker=args.with_broker), end="")


if __name__ == "__main__":
    main()
