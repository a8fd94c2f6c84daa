"""The `console:` configuration mapping: defaults, each key's checks, and the errors naming them."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, parse_config
from appliance.console.settings import ConsoleConfig

LOGIN = {"issuer": "http://127.0.0.1:39180/realms/appliance", "client_id": "appliance-console",
         "client_secret_file": "/etc/appliance/console-secret", "redirect_uri": "http://127.0.0.1:19443/callback"}


def test_the_console_is_off_by_default_on_loopback():
    console = parse_config({}).console
    assert console == ConsoleConfig()
    assert console.enabled is False and console.listen == ("127.0.0.1", 19443) and console.tls is None


def test_an_enabled_console_with_its_login_settings_parses():
    console = parse_config({"console": {"enabled": True, **LOGIN, "approver_group": "kafka-admins",
                                        "listen": "[::1]:8443", "session_s": 600}}).console
    assert console.listen == ("::1", 8443) and console.base_url == "http://127.0.0.1:19443"  # the redirect's
    assert console.client_id == "appliance-console" and console.session_s == 600.0


@pytest.mark.parametrize("console, words", [
    ({"colour": "blue"}, "key 'colour' is not a console setting"),
    ({"enabled": "yes"}, "key 'enabled' must be true or false"),
    ({"listen": "localhost:19443"}, "'localhost' is not an IP address"),
    ({"listen": "127.0.0.1:0"}, "port '0' must be from 1 to 65535"),
    ({"listen": "0.0.0.0:19443"}, "not a loopback address, and 'tls' is not set"),
    ({"tls": {"cert": "/c.pem"}}, "key 'tls' must be a mapping of exactly cert and key"),
    ({"tls": {"cert": "c.pem", "key": "/k.pem"}}, "key 'cert' must be an absolute path"),
    ({"enabled": True}, "'issuer', 'client_id', 'client_secret_file', 'redirect_uri' are not set"),
    ({"enabled": True, **{k: v for k, v in LOGIN.items() if k != "client_secret_file"}},
     "'client_secret_file' is not set"),
    ({"issuer": "ftp://idp"}, "key 'issuer' must be an http:// or https:// URL"),
    ({"redirect_uri": "https://u:p@host/callback"}, "no user information"),
    ({"auditor_group": "ops", "approver_group": "ops"}, "give each role its own group"),
    ({"session_s": 5}, "key 'session_s' must be a number of seconds from 60 to 86400"),
    ({"tls": {"cert": "/c.pem", "key": "/k.pem"}, "redirect_uri": "http://127.0.0.1:19443/callback"},
     "key 'redirect_uri' must be https"),
    ({"redirect_uri": "http://127.0.0.1:19443/"}, "key 'redirect_uri' must be the console's URL with the path "
                                                   "/callback"),
    ({"redirect_uri": "http://127.0.0.1:19443/callback?x=1"}, "with the path /callback and no query"),
    ("on", "must be a mapping of console settings"),
])
def test_a_bad_console_setting_names_its_key(console, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"console": console}, source="appliance.yaml")
    assert "appliance.yaml: key 'console'" in str(e.value) and words in str(e.value), str(e.value)


def test_a_non_loopback_listen_is_allowed_with_tls():
    console = parse_config({"console": {"listen": "0.0.0.0:19443",
                                        "tls": {"cert": "/etc/c.pem", "key": "/etc/k.pem"}}}).console
    assert console.tls is not None and console.base_url == "https://0.0.0.0:19443"


def test_the_consoles_url_is_the_redirect_uri_people_reach_it_by_not_the_listen_address():
    console = parse_config({"console": {"listen": "0.0.0.0:19443", "tls": {"cert": "/etc/c.pem", "key": "/etc/k.pem"},
                                        "redirect_uri": "https://gateway.example.com:19443/callback"}}).console
    assert console.base_url == "https://gateway.example.com:19443"


def test_every_key_is_documented_and_every_example_in_docs_console_md_parses():
    import re
    from pathlib import Path

    import yaml

    from appliance.console.settings import KEY_DOCS, KEYS

    assert list(KEY_DOCS) == list(KEYS), "KEY_DOCS (docs/console.md's table) must list every setting, in order"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "console.md").read_text()
    examples = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    assert len(examples) >= 2
    for example in examples:
        parse_config(example, source="docs/console.md")
