"""Generate docs/cli.md from the commands' own --help, so the reference cannot drift.

Run as `python -m appliance.cli.docgen > docs/cli.md` (`make docs`); a test
fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import click

from appliance.cli import main


def _walk(command: click.Command, path: list[str]):
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _walk(command.commands[name], path + [name])


def render() -> str:
    lines = ["# Command-line reference", "",
             "Generated from each command's `--help` by `make docs`; do not edit by hand.", ""]
    for path, command in _walk(main, ["appliance"]):
        ctx = click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100)
        heading = "#" * min(len(path) + 1, 4)
        lines += [f"{heading} `{' '.join(path)}`", "", "```", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
