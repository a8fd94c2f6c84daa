"""Generate docs/cli.md from the commands' own --help, so the reference cannot drift.

`make docs` runs `python -m appliance.cli.docgen --write`, which rewrites
docs/cli.md, the API-to-permission table at the end of docs/policy.md and
the settings table of docs/console.md;
tests fail when the committed files differ from what this produces.
"""

from __future__ import annotations

import click

from appliance.cli import main


def _walk(command: click.Command, path: list[str]):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1])
        for name in command.list_commands(ctx):
            yield from _walk(command.get_command(ctx, name), path + [name])


def render() -> str:
    lines = ["# Command-line reference", "",
             "Generated from each command's `--help` by `make docs`; do not edit by hand.", ""]
    for path, command in _walk(main, ["appliance"]):
        ctx = click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100)
        heading = "#" * min(len(path) + 1, 4)
        lines += [f"{heading} `{' '.join(path)}`", "", "```", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines)


POLICY_MARKER = "<!-- generated: permissions table -->"


def with_permissions_table(policy_doc: str) -> str:
    """docs/policy.md with everything after the marker replaced by the table from the code."""
    from appliance.policy.permissions import markdown_table

    head, marker, _ = policy_doc.partition(POLICY_MARKER)
    if not marker:
        raise SystemExit(f"docs/policy.md has no line {POLICY_MARKER!r} to put the table after")
    return f"{head}{marker}\n\n{markdown_table()}\n"


CONSOLE_MARKER = "<!-- generated: console settings -->"
CONSOLE_END = "<!-- end generated: console settings -->"


def console_settings_table() -> str:
    from appliance.console.settings import KEY_DOCS, KEYS

    rows = ["| key | default | what |", "| --- | --- | --- |"]
    rows += [f"| `{key}` | {KEY_DOCS[key][0]} | {KEY_DOCS[key][1]} |" for key in KEYS]
    return "\n".join(rows)


def with_console_settings(console_doc: str) -> str:
    """docs/console.md with the table between its two markers replaced by the one from the code."""
    head, marker, rest = console_doc.partition(CONSOLE_MARKER)
    _, end, tail = rest.partition(CONSOLE_END)
    if not marker or not end:
        raise SystemExit(f"docs/console.md needs the lines {CONSOLE_MARKER!r} and {CONSOLE_END!r} around its "
                         "settings table")
    return f"{head}{marker}\n{console_settings_table()}\n{end}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if "--write" in sys.argv:
        docs = Path(__file__).resolve().parents[2] / "docs"
        (docs / "cli.md").write_text(render())
        (docs / "policy.md").write_text(with_permissions_table((docs / "policy.md").read_text()))
        (docs / "console.md").write_text(with_console_settings((docs / "console.md").read_text()))
    else:
        print(render(), end="")
