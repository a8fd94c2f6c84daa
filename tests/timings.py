"""Where the suite's time goes: seconds per test file (setup, call and teardown, module fixtures included),
printed at the end of every run, so a CI log says what each part of CI costs."""

from __future__ import annotations

from collections import defaultdict

_SPENT: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report) -> None:
    _SPENT[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _SPENT:
        return
    total = sum(_SPENT.values())
    terminalreporter.section("seconds per test file")
    for path, seconds in sorted(_SPENT.items(), key=lambda item: -item[1]):
        if seconds >= 5 or seconds >= total / 50:
            terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    rest = [s for s in _SPENT.values() if s < 5 and s < total / 50]
    terminalreporter.write_line(f"{sum(rest):8.1f} s  {len(rest)} other files")
    terminalreporter.write_line(f"{total:8.1f} s  in all")
