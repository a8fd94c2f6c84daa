"""Every client family the appliance must serve, behind one interface, run as real processes in a cgroup.

    fam = FAMILIES["franz-go"]
    consumer = fam.consume(cg, BROKER4, topic, group, n=10)   # a running Client
    consumer.wait_ready(40)          # group joined, partitions assigned, fetch session incremental
    fam.produce(cg, BROKER4, topic, n=10, fmt="v-{i}").finish()
    consumer.finish().summary        # {"values": [...], "errors": [...]}

Each family's own tool or client program does the work (kcat; pyfamily.py for confluent-kafka,
kafka-python and aiokafka; franz/ for franz-go; java/FamilyClient.java for the Kafka 4.x Java clients);
this module only starts them and puts their outputs in one shape:

    produce  -> {"acked": int, "failed": int, "errors": [text, ...]}
    consume  -> {"values": [str, ...], "errors": [text, ...]}
    metadata -> {"topics": [name, ...], "errors": [text, ...]}

Every process has a deadline and is killed past it, so a client that hangs shows up as a failed
result (`timed_out`) with everything it printed, never as a hung test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.integration.clients import build

HERE = Path(__file__).resolve().parent
PY = sys.executable
GRACE = 15.0  # beyond a client's own timeout, before the harness kills it


@dataclass(repr=False)
class Result:
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool
    summary: dict = field(default_factory=dict)
    parsed: bool = False  # the summary came from the client's own output

    def __repr__(self) -> str:
        """Everything a failing assertion needs to show why: the command, what it printed, how long it took.
        (stdout only when its summary could not be read from it: otherwise the summary says it all.)"""
        out = "" if self.parsed else f"\n--- stdout (tail)\n{self.stdout[-2500:]}"
        return (f"\n$ {' '.join(self.argv)}\nexit {self.returncode} after {self.elapsed:.1f}s"
                f"{' (killed: timed out)' if self.timed_out else ''}\nsummary: {json.dumps(self.summary)[:3000]}"
                f"{out}\n--- stderr (tail)\n{self.stderr[-2500:]}")


class Client:
    """One client process in a cgroup. Threads drain its output so it never blocks on a full pipe,
    and notice the line that says it is ready."""

    def __init__(self, cg, argv: list[str], *, timeout: float, parse: Callable[[Result], dict],
                 input: str | None = None, ready: Callable[[str], bool] | None = None):
        self.argv, self.parse, self.deadline = argv, parse, time.monotonic() + timeout + GRACE
        self.started = time.monotonic()
        self._ready_when = ready or _says_ready
        self._ready = threading.Event()
        self._out: list[str] = []
        self._err: list[str] = []
        self.proc = cg.popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
        self._exited_at: float | None = None
        self._threads = [threading.Thread(target=self._drain, args=(self.proc.stdout, self._out), daemon=True),
                         threading.Thread(target=self._drain, args=(self.proc.stderr, self._err), daemon=True),
                         threading.Thread(target=self._reap, daemon=True)]
        for t in self._threads:
            t.start()
        if input is not None:
            self.proc.stdin.write(input)
            self.proc.stdin.close()

    def _reap(self) -> None:
        """Note when the process ended (finish() may be called much later, after other clients)."""
        self.proc.wait()
        self._exited_at = time.monotonic()

    def _drain(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            if self._ready_when(line):
                self._ready.set()

    def wait_ready(self, timeout: float) -> bool:
        """True once the client said it is ready; false if it exited or the time ran out first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._ready.wait(0.1):
                return True
            if self.proc.poll() is not None:
                for t in self._threads:
                    t.join(2)
                return self._ready.is_set()
        return False

    def finish(self) -> Result:
        timed_out = False
        try:
            self.proc.wait(max(0.1, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(5)
        ended = self._exited_at or time.monotonic()
        result = Result(self.argv, self.proc.returncode, "".join(self._out), "".join(self._err),
                        ended - self.started, timed_out)
        try:
            result.summary = self.parse(result)
            result.parsed = True
        except (ValueError, KeyError, TypeError) as e:
            # Every shape's keys, empty, so a test's assertion fails on the facts and prints the output.
            result.summary = {"acked": 0, "failed": 0, "values": [], "topics": [],
                              "errors": [f"unreadable client output: {e!r}"]}
        if timed_out:
            result.summary.setdefault("errors", []).append(f"killed after {result.elapsed:.0f}s: the client hung")
        return result


def _says_ready(line: str) -> bool:
    return line.lstrip().startswith("{") and json_lines(line) == [{"ready": True}]


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def last_json(result: Result) -> dict:
    docs = [d for d in json_lines(result.stdout) if d != {"ready": True}]
    if not docs:
        raise ValueError(f"no JSON summary on stdout (exit {result.returncode})")
    return docs[-1]


def _texts(errors) -> list[str]:
    """Error tallies ({text: count}) and lists both become a list of texts."""
    if isinstance(errors, dict):
        return [f"{text} (x{count})" for text, count in errors.items()]
    return list(errors)


def _produce_summary(result: Result, n: int) -> dict:
    s = last_json(result)
    return {**s, "acked": int(s["acked"]), "failed": int(s["failed"]), "errors": _texts(s["errors"])}


@dataclass(frozen=True)
class Family:
    """How one client family produces, consumes from a group and lists topics."""

    name: str
    produce_argv: Callable[..., list[str]]
    consume_argv: Callable[..., list[str]]
    metadata_argv: Callable[..., list[str]] | None
    authorization_error: str  # a regex: how this family words a Kafka authorization error
    produce_input: bool = False  # the values go in on stdin, one a line (kcat)
    parse_produce: Callable[[Result, int], dict] = _produce_summary
    parse_consume: Callable[[Result], dict] = last_json
    parse_metadata: Callable[[Result], dict] = last_json
    consume_ready: Callable[[str], bool] | None = None

    def produce(self, cg, bootstrap: str, topic: str, *, n: int, fmt: str, timeout: float = 20) -> Client:
        """Produce values fmt.format(i=0..n-1)."""
        values = "".join(fmt.format(i=i) + "\n" for i in range(n)) if self.produce_input else None
        return Client(cg, self.produce_argv(bootstrap, topic, n, fmt, timeout), timeout=timeout,
                      parse=lambda result: self.parse_produce(result, n), input=values)

    def consume(self, cg, bootstrap: str, topic: str, group: str, *, n: int, timeout: float = 40) -> Client:
        return Client(cg, self.consume_argv(bootstrap, topic, group, n, timeout), timeout=timeout,
                      parse=self.parse_consume, ready=self.consume_ready)

    def metadata(self, cg, bootstrap: str, *, timeout: float = 15) -> Client:
        return Client(cg, self.metadata_argv(bootstrap, timeout), timeout=timeout, parse=self.parse_metadata)


# --- kcat: librdkafka's command-line client; its results are its exit code and its words -------

def _kcat_consume(result: Result) -> dict:
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line or "rror:" in line]
    values = [v for v in result.stdout.splitlines() if v]
    if result.returncode == 124 and not errors:  # timeout(1) stopped it: kcat itself never gives up
        errors = [f"timed out with {len(values)} records"]
    elif result.returncode not in (0, None) and not errors:
        errors = [f"kcat exited {result.returncode}"]
    return {"values": values, "errors": errors}


def _kcat_metadata(result: Result) -> dict:
    md = last_json(result)
    return {"topics": sorted(t["topic"] for t in md.get("topics", [])),
            "errors": [f"{t['topic']}: {t['error']}" for t in md.get("topics", []) if t.get("error")]}


def _kcat_family() -> Family:
    def produce_argv(bootstrap, topic, n, fmt, timeout):
        return ["kcat", "-b", bootstrap, "-t", topic, "-P", "-X", "acks=all", "-X", "enable.idempotence=true",
                "-X", f"message.timeout.ms={int(timeout * 1000)}"]

    def parse_produce(result: Result, n: int) -> dict:
        # kcat counts nothing: every value was delivered when it exits 0 and reports no error.
        # (It also logs what librdkafka retries, such as a coordinator still loading; those are not failures.)
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line or "elivery failed" in line]
        ok = result.returncode == 0 and not errors
        return {"acked": n if ok else 0, "failed": 0 if ok else n, "errors": errors}

    return Family(
        name="kcat",
        produce_argv=produce_argv,
        # -G: a group consumer, as a service would run it; -c N: exit after N values; -u: unbuffered, so
        # what it read survives being stopped. kcat has no deadline of its own, so timeout(1) gives it one.
        consume_argv=lambda b, t, g, n, timeout: ["timeout", str(int(timeout)), "kcat", "-b", b, "-G", g, t,
                                                   "-X", "auto.offset.reset=earliest", "-X", "fetch.wait.max.ms=500",
                                                   "-u", "-c", str(n), "-f", "%s\n"],
        metadata_argv=lambda b, timeout: ["kcat", "-b", b, "-L", "-J", "-m", str(int(timeout))],
        authorization_error=r"[Aa]uthorization failed",
        produce_input=True,
        parse_produce=parse_produce,
        parse_consume=_kcat_consume,
        parse_metadata=_kcat_metadata,
        consume_ready=lambda line: "assigned:" in line and "rebalanced" in line,
    )


def _py_family(name: str, family: str, authorization_error: str) -> Family:
    script = str(HERE / "pyfamily.py")
    return Family(
        name=name,
        produce_argv=lambda b, t, n, fmt, timeout: [PY, script, family, "produce", b, t, str(n), fmt,
                                                     "--timeout", str(timeout)],
        consume_argv=lambda b, t, g, n, timeout: [PY, script, family, "consume", b, t, g, str(n),
                                                   "--timeout", str(timeout)],
        metadata_argv=lambda b, timeout: [PY, script, family, "metadata", b, "--timeout", str(timeout)],
        authorization_error=authorization_error,
    )


def printf_format(fmt: str) -> str:
    """The harness's "{i}" value format as Go's and Java's printf format."""
    return fmt.replace("%", "%%").replace("{i}", "%d")


def _franz_family() -> Family:
    return Family(
        name="franz-go",
        produce_argv=lambda b, t, n, fmt, timeout: [str(build.franz_binary()), "produce", "-brokers", b, "-topic", t,
                                                     "-n", str(n), "-value", printf_format(fmt),
                                                     "-delivery-timeout", f"{timeout}s", "-timeout", f"{timeout + 5}s"],
        consume_argv=lambda b, t, g, n, timeout: [str(build.franz_binary()), "consume", "-brokers", b, "-topic", t,
                                                   "-group", g, "-n", str(n), "-timeout", f"{timeout}s"],
        metadata_argv=lambda b, timeout: [str(build.franz_binary()), "metadata", "-brokers", b,
                                          "-timeout", f"{timeout}s"],
        authorization_error=r"TOPIC_AUTHORIZATION_FAILED|GROUP_AUTHORIZATION_FAILED",
    )


def _java_family(name: str, protocol: str) -> Family:
    return Family(
        name=name,
        produce_argv=lambda b, t, n, fmt, timeout: build.java_argv("produce", b, t, str(n), printf_format(fmt),
                                                                    str(int(timeout * 1000))),
        consume_argv=lambda b, t, g, n, timeout: build.java_argv("consume", b, t, g, str(n), protocol,
                                                                  str(int(timeout * 1000))),
        metadata_argv=lambda b, timeout: build.java_argv("metadata", b, str(int(timeout * 1000))),
        authorization_error=r"(Topic|Group)AuthorizationException",
    )


FAMILIES: dict[str, Family] = {f.name: f for f in (
    _kcat_family(),
    _py_family("confluent-kafka", "confluent", r"TOPIC_AUTHORIZATION_FAILED|GROUP_AUTHORIZATION_FAILED"),
    # kafka-python raises on produce, but a refused subscription it only logs, in these words.
    _py_family("kafka-python", "kafka-python",
               r"(Topic|Group)AuthorizationFailedError|is not authorized for this client"),
    _py_family("aiokafka", "aiokafka", r"(Topic|Group)AuthorizationFailedError"),
    _franz_family(),
    _java_family("java-classic", "classic"),
    _java_family("java-kip848", "consumer"),
)}


def java_admin(cg, bootstrap: str, *, timeout: float = 10, **names: str) -> Client:
    """The Java Admin client's calls (see FamilyClient.java), each bounded by `timeout`; 12 calls at most."""
    argv = build.java_argv("admin", bootstrap, str(int(timeout * 1000)), *(f"{k}={v}" for k, v in names.items()))
    return Client(cg, argv, timeout=timeout * 13, parse=last_json)


def authorization_error_in(family: Family, errors: list[str]) -> bool:
    return any(re.search(family.authorization_error, e) for e in errors)
