"""Reading the Kafka performance tools' output: pure functions of their text.

The formats are those of Apache Kafka 4.1's `org.apache.kafka.tools`:

ProducerPerformance prints a progress line every 5 s and, last, a total:

    50000 records sent, 48216.007714 records/sec (47.09 MB/sec), 312.31 ms avg latency,
    517.00 ms max latency, 310 ms 50th, 480 ms 95th, 505 ms 99th, 515 ms 99.9th.

ConsumerPerformance prints a header and one line of values:

    start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    2025-01-01 10:00:00:000, 2025-01-01 10:00:02:000, 97.6562, 48.8281, 100000, 50000.0, 312, 1688, 57.85, 59241.7

"MB" is 2^20 bytes of record values in both tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ToolOutputError(ValueError):
    """The tool's output did not hold the figures expected; the message quotes what it held."""


@dataclass(frozen=True, slots=True)
class ProducerTotals:
    records: int
    records_per_s: float
    mb_per_s: float
    avg_latency_ms: float
    max_latency_ms: float
    p50_ms: int
    p95_ms: int
    p99_ms: int
    p999_ms: int


@dataclass(frozen=True, slots=True)
class ConsumerTotals:
    records: int
    mb: float
    rebalance_ms: float
    fetch_ms: float
    fetch_records_per_s: float
    fetch_mb_per_s: float


_NUM = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|Infinity)"
_PRODUCER_TOTAL = re.compile(
    rf"(\d+) records sent, {_NUM} records/sec \({_NUM} MB/sec\), {_NUM} ms avg latency, {_NUM} ms max latency, "
    r"(\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99\.9th"
)


def producer_totals(stdout: str) -> ProducerTotals:
    """The final totals line of ProducerPerformance."""
    found = _PRODUCER_TOTAL.findall(stdout)
    if not found:
        raise ToolOutputError(f"no ProducerPerformance totals line in its output: {_tail(stdout)!r}")
    r = found[-1]
    try:
        return ProducerTotals(
            records=int(r[0]), records_per_s=_float(r[1]), mb_per_s=_float(r[2]), avg_latency_ms=_float(r[3]),
            max_latency_ms=_float(r[4]), p50_ms=int(r[5]), p95_ms=int(r[6]), p99_ms=int(r[7]), p999_ms=int(r[8]),
        )
    except ValueError as e:
        raise ToolOutputError(f"ProducerPerformance totals are not usable ({e}): {_tail(stdout)!r}") from None


def consumer_totals(stdout: str) -> ConsumerTotals:
    """The values line of ConsumerPerformance, read by its header's column names."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("start.time,") and i + 1 < len(lines):
            names = [n.strip() for n in line.split(",")]
            values = [v.strip() for v in lines[i + 1].split(",")]
            if len(values) != len(names):
                break
            row = dict(zip(names, values))
            try:
                return ConsumerTotals(
                    records=int(row["data.consumed.in.nMsg"]), mb=_float(row["data.consumed.in.MB"]),
                    rebalance_ms=_float(row["rebalance.time.ms"]), fetch_ms=_float(row["fetch.time.ms"]),
                    fetch_records_per_s=_float(row["fetch.nMsg.sec"]), fetch_mb_per_s=_float(row["fetch.MB.sec"]),
                )
            except (KeyError, ValueError) as e:
                raise ToolOutputError(f"ConsumerPerformance values do not match its header ({e}): {_tail(stdout)!r}") from None
    raise ToolOutputError(f"no ConsumerPerformance header and values in its output: {_tail(stdout)!r}")


_JAVA_ERROR = re.compile(r"^(?:\S+\.)?\w*(?:Exception|Error)\b.*$", re.MULTILINE)


def java_errors(stderr: str) -> list[str]:
    """Exception lines a tool printed (ProducerPerformance prints a failed send's stack trace and goes on)."""
    return [m.group(0).strip() for m in _JAVA_ERROR.finditer(stderr) if not m.group(0).startswith("at ")]


def _float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {text}")
    return value


def _tail(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]
