"""Rendering rows for operators: a rich table on a terminal, a JSON array with --json."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

import click
from rich.console import Console
from rich.table import Table


def when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def emit(rows: list[dict[str, Any]], *, as_json: bool, columns: Iterable[str], title: str,
         times: Iterable[str] = ()) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    columns, times = list(columns), set(times)
    table = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*(when(row.get(c)) if c in times else ("" if row.get(c) is None else str(row.get(c)))
                        for c in columns))
    Console(width=200).print(table)
    if not rows:
        click.echo("(no rows)")


def parse_until(text: str) -> float:
    """`30m`, `12h`, `7d` from now, or an ISO-8601 time, as a Unix timestamp."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() + float(text[:-1]) * units[text[-1]]
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration like 30m/12h/7d nor an ISO-8601 time",
                                 param_hint="--until") from None


def parse_since(text: str | None) -> float | None:
    """`30s`, `10m`, `2h`, `1d` ago, or an ISO-8601 time, as a Unix timestamp."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration like 10m/2h/1d nor an ISO-8601 time",
                                 param_hint="--since") from None
