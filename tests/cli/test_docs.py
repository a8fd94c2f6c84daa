from pathlib import Path

from click.testing import CliRunner

from appliance.cli import main
from appliance.cli.docgen import _walk, render, with_console_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_generated_from_help():
    assert DOCS.read_text() == render(), "docs/cli.md is stale: run `make docs`"


def test_every_command_has_help_and_an_example():
    for path, command in _walk(main, ["appliance"]):
        assert command.help and "Example:" in command.help, f"`{' '.join(path)}` lacks help with an example"


def test_bad_config_is_a_usage_error_naming_the_key(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("listen_port: 0\n")
    result = CliRunner().invoke(main, ["--config", str(bad), "workloads"])
    assert result.exit_code == 2 and "key 'listen_port' must be a whole number" in result.output


def test_the_consoles_settings_table_is_generated_from_the_code():
    doc = (DOCS.parent / "console.md").read_text()
    assert doc == with_console_settings(doc), "docs/console.md's settings table is stale: run `make docs`"
