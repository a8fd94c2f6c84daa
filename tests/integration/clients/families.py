"""Every client family the appliance must serve, behind one interface, run as real processes in a cgroup.

    fam = FAMILIES["franz-go"]
    consumer = fam.consume(cg, BROKER4, topic, group, n=10)   # a running Client
    consumer.wait_ready(40)          # group joined, partitions assigned, fetch session incremental
    fam.produce(cg, BROKER4, topic, n=10, fmt="v-{i}").finish()
    consumer.finish().summary        # {"values": [...], "errors": [...]}

    # the same in one call; every family at once, each cell's result under its name
    trips = run_parallel({name: lambda fam=fam: tail_round_trip(fam, cg, BROKER4, f"t-{fam.name}", f"g-{fam.name}",
                                                               n=5, fmt="v-{i}") for name, fam in FAMILIES.items()})
    trips["aiokafka"].failure()      # None, or which step failed and what the clients printed

Each family's own tool or client program does the work (kcat; pyfamily.py for confluent-kafka,
kafka-python and aiokafka; franz/ for franz-go; java/FamilyClient.java for the Kafka 4.x Java clients);
this module only starts them and puts their outputs in one shape:

    produce  -> {"acked": int, "failed": int, "errors": [text, ...]}
    consume  -> {"values": [str, ...], "errors": [text, ...]}
    metadata -> {"topics": [name, ...], "errors": [text, ...]}

A client authenticates the way a workload configured for SASL would, when given `auth=`:

    fam.produce(cg, BROKER4, topic, n=5, fmt="v-{i}", auth=Sasl("SCRAM-SHA-512", "user", "pw"))
    fam.consume(cg, BROKER4, topic, group, n=5, auth=OAuth(token_endpoint, "orders", secret))

`Sasl` is a static login (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); `OAuth` is OAUTHBEARER with a token the
client fetches itself by client_credentials from the token endpoint, in its own way (librdkafka's
`oidc` method, Java's OAuthBearerLoginCallbackHandler, a token source or token provider of our own
for franz-go, kafka-python and aiokafka). Each family turns them into its own configuration; a
refused login is one of the summary's `errors`, in the client's words.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from tests.integration.clients import build

HERE = Path(__file__).resolve().parent
PY = sys.executable
GRACE = 15.0  # beyond a client's own timeout, before the harness kills it
STATIC_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class Sasl:
    """A static SASL login: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with a user name and password."""

    mechanism: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if self.mechanism not in STATIC_MECHANISMS:
            raise ValueError(f"Sasl mechanism {self.mechanism!r} is not one of {', '.join(STATIC_MECHANISMS)} "
                             f"(OAUTHBEARER is OAuth(token_endpoint, client_id, client_secret))")

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.password,)


@dataclass(frozen=True, slots=True)
class OAuth:
    """OAUTHBEARER with a token the client fetches itself: an OAuth 2.0 client_credentials grant at
    `token_endpoint` with this client id and secret, asking for `scope` when one is given."""

    token_endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None

    mechanism = "OAUTHBEARER"

    def __post_init__(self) -> None:
        if not self.token_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"OAuth token_endpoint {self.token_endpoint!r} is not an http(s) URL")

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.client_secret,)


Auth = Union[Sasl, OAuth, None]


def _redacted(argv: list[str], secrets: tuple[str, ...]) -> list[str]:
    """The command as a failing test prints it: passwords and client secrets left out."""
    out = []
    for arg in argv:
        for secret in filter(None, secrets):
            arg = arg.replace(secret, "***")
        out.append(arg)
    return out


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
                 input: str | None = None, ready: Callable[[str], bool] | None = None,
                 secrets: tuple[str, ...] = ()):
        self.argv, self.parse, self.deadline = _redacted(argv, secrets), parse, time.monotonic() + timeout + GRACE
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
    """How one client family produces, consumes from a group and lists topics.

    Each *_argv builder takes the harness's arguments and ends with `auth` (a Sasl, an OAuth or None)."""

    name: str
    produce_argv: Callable[..., list[str]]  # (bootstrap, topic, n, fmt, timeout, auth)
    consume_argv: Callable[..., list[str]]  # (bootstrap, topic, group, n, timeout, auth)
    metadata_argv: Callable[..., list[str]] | None  # (bootstrap, timeout, auth)
    authorization_error: str  # a regex: how this family words a Kafka authorization error
    produce_input: bool = False  # the values go in on stdin, one a line (kcat)
    parse_produce: Callable[[Result, int], dict] = _produce_summary
    parse_consume: Callable[[Result], dict] = last_json
    parse_metadata: Callable[[Result], dict] = last_json
    consume_ready: Callable[[str], bool] | None = None

    def produce(self, cg, bootstrap: str, topic: str, *, n: int, fmt: str, timeout: float = 20,
                auth: Auth = None) -> Client:
        """Produce values fmt.format(i=0..n-1)."""
        values = "".join(fmt.format(i=i) + "\n" for i in range(n)) if self.produce_input else None
        return Client(cg, self.produce_argv(bootstrap, topic, n, fmt, timeout, auth), timeout=timeout,
                      parse=lambda result: self.parse_produce(result, n), input=values, secrets=_secrets(auth))

    def consume(self, cg, bootstrap: str, topic: str, group: str, *, n: int, timeout: float = 40,
                auth: Auth = None) -> Client:
        return Client(cg, self.consume_argv(bootstrap, topic, group, n, timeout, auth), timeout=timeout,
                      parse=self.parse_consume, ready=self.consume_ready, secrets=_secrets(auth))

    def metadata(self, cg, bootstrap: str, *, timeout: float = 15, auth: Auth = None) -> Client:
        return Client(cg, self.metadata_argv(bootstrap, timeout, auth), timeout=timeout, parse=self.parse_metadata,
                      secrets=_secrets(auth))


def _secrets(auth: Auth) -> tuple[str, ...]:
    return () if auth is None else auth.secrets


# --- kcat: librdkafka's command-line client; its results are its exit code and its words -------

def librdkafka_config(auth: Auth) -> dict[str, str]:
    """librdkafka's properties for `auth` (kcat's -X and confluent-kafka's configuration alike).
    OAUTHBEARER uses librdkafka's own OIDC token fetch: client_credentials at the token endpoint,
    refreshed by librdkafka before the token expires."""
    if auth is None:
        return {}
    if isinstance(auth, Sasl):
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": auth.mechanism,
                "sasl.username": auth.username, "sasl.password": auth.password}
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "OAUTHBEARER",
            "sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.token.endpoint.url": auth.token_endpoint,
            "sasl.oauthbearer.client.id": auth.client_id, "sasl.oauthbearer.client.secret": auth.client_secret,
            **({"sasl.oauthbearer.scope": auth.scope} if auth.scope else {})}


def _kcat_auth(auth: Auth) -> list[str]:
    return [arg for key, value in librdkafka_config(auth).items() for arg in ("-X", f"{key}={value}")]


def _kcat(auth: Auth) -> list[str]:
    """The kcat command. For OAUTHBEARER and SCRAM it runs on confluent-kafka's librdkafka (2.16), as a
    workload would have to: Debian's (2.0.2) was built without libcurl, so it cannot fetch an OIDC
    token, and its SCRAM client-final message repeats the client nonce before the server's nonce
    (`r=<client nonce><client nonce><server nonce>`), which Kafka 4.1 refuses ("invalid credentials")
    and so does the appliance. See build.librdkafka_for_kcat."""
    if isinstance(auth, OAuth) or (isinstance(auth, Sasl) and auth.mechanism.startswith("SCRAM")):
        return ["env", f"LD_LIBRARY_PATH={build.librdkafka_for_kcat()}", "kcat"]
    return ["kcat"]


def _kcat_errors(stderr: str) -> list[str]:
    # kcat prints librdkafka's errors ("% ERROR: ..."), and a refused login as librdkafka logs it
    # ("%3|...|FAIL|...: SASL authentication error: ..."), which it only retries.
    return [line for line in stderr.splitlines()
            if "ERROR" in line or "rror:" in line or "elivery failed" in line or "uthentication" in line]


def _kcat_consume(result: Result) -> dict:
    errors = _kcat_errors(result.stderr)
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
    def produce_argv(bootstrap, topic, n, fmt, timeout, auth):
        return [*_kcat(auth), "-b", bootstrap, "-t", topic, "-P", "-X", "acks=all", "-X", "enable.idempotence=true",
                "-X", f"message.timeout.ms={int(timeout * 1000)}", *_kcat_auth(auth)]

    def parse_produce(result: Result, n: int) -> dict:
        # kcat counts nothing: every value was delivered when it exits 0 and reports no error.
        # (It also logs what librdkafka retries, such as a coordinator still loading; those are not failures.)
        errors = [line for line in _kcat_errors(result.stderr)
                  if "ERROR" in line or "elivery failed" in line or "uthentication" in line]
        ok = result.returncode == 0 and not errors
        return {"acked": n if ok else 0, "failed": 0 if ok else n, "errors": errors}

    return Family(
        name="kcat",
        produce_argv=produce_argv,
        # -G: a group consumer, as a service would run it; -c N: exit after N values; -u: unbuffered, so
        # what it read survives being stopped. kcat has no deadline of its own, so timeout(1) gives it one.
        consume_argv=lambda b, t, g, n, timeout, auth: ["timeout", str(int(timeout)), *_kcat(auth), "-b", b, "-G", g, t,
                                                         "-X", "auto.offset.reset=earliest",
                                                         "-X", "fetch.wait.max.ms=500", *_kcat_auth(auth),
                                                         "-u", "-c", str(n), "-f", "%s\n"],
        metadata_argv=lambda b, timeout, auth: [*_kcat(auth), "-b", b, "-L", "-J", "-m", str(int(timeout)),
                                                *_kcat_auth(auth)],
        authorization_error=r"[Aa]uthorization failed",
        produce_input=True,
        parse_produce=parse_produce,
        parse_consume=_kcat_consume,
        parse_metadata=_kcat_metadata,
        consume_ready=lambda line: "assigned:" in line and "rebalanced" in line,
    )


def _pyfamily_auth(auth: Auth) -> list[str]:
    """pyfamily.py's flags; it turns them into each Python client's own configuration."""
    if auth is None:
        return []
    if isinstance(auth, Sasl):
        return ["--sasl-mechanism", auth.mechanism, "--sasl-username", auth.username,
                "--sasl-password", auth.password]
    return ["--oauth-token-endpoint", auth.token_endpoint, "--oauth-client-id", auth.client_id,
            "--oauth-client-secret", auth.client_secret, *(["--oauth-scope", auth.scope] if auth.scope else [])]


def _py_family(name: str, family: str, authorization_error: str) -> Family:
    script = str(HERE / "pyfamily.py")
    return Family(
        name=name,
        produce_argv=lambda b, t, n, fmt, timeout, auth: [PY, script, family, "produce", b, t, str(n), fmt,
                                                           "--timeout", str(timeout), *_pyfamily_auth(auth)],
        consume_argv=lambda b, t, g, n, timeout, auth: [PY, script, family, "consume", b, t, g, str(n),
                                                         "--timeout", str(timeout), *_pyfamily_auth(auth)],
        metadata_argv=lambda b, timeout, auth: [PY, script, family, "metadata", b, "--timeout", str(timeout),
                                                *_pyfamily_auth(auth)],
        authorization_error=authorization_error,
    )


def printf_format(fmt: str) -> str:
    """The harness's "{i}" value format as Go's and Java's printf format."""
    return fmt.replace("%", "%%").replace("{i}", "%d")


def _franz_auth(auth: Auth) -> list[str]:
    """franz/main.go's flags: franz-go's sasl/plain, sasl/scram, or sasl/oauth with a token source that
    does the client_credentials grant itself (and fetches again before the token expires)."""
    if auth is None:
        return []
    if isinstance(auth, Sasl):
        return ["-sasl-mechanism", auth.mechanism, "-sasl-username", auth.username, "-sasl-password", auth.password]
    return ["-sasl-mechanism", "OAUTHBEARER", "-oauth-token-endpoint", auth.token_endpoint,
            "-oauth-client-id", auth.client_id, "-oauth-client-secret", auth.client_secret,
            *(["-oauth-scope", auth.scope] if auth.scope else [])]


def _franz_family() -> Family:
    return Family(
        name="franz-go",
        produce_argv=lambda b, t, n, fmt, timeout, auth: [
            str(build.franz_binary()), "produce", "-brokers", b, "-topic", t, "-n", str(n),
            "-value", printf_format(fmt), "-delivery-timeout", f"{timeout}s", "-timeout", f"{timeout + 5}s",
            *_franz_auth(auth)],
        consume_argv=lambda b, t, g, n, timeout, auth: [
            str(build.franz_binary()), "consume", "-brokers", b, "-topic", t, "-group", g, "-n", str(n),
            "-timeout", f"{timeout}s", *_franz_auth(auth)],
        metadata_argv=lambda b, timeout, auth: [str(build.franz_binary()), "metadata", "-brokers", b,
                                                "-timeout", f"{timeout}s", *_franz_auth(auth)],
        authorization_error=r"TOPIC_AUTHORIZATION_FAILED|GROUP_AUTHORIZATION_FAILED",
    )


JAVA_OAUTH_HANDLER = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler"
JAVA_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "OAUTHBEARER": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule",
}


def _jaas_quoted(value: str) -> str:
    """A JAAS option value: Kafka's JaasConfig reads it with a StreamTokenizer, so quote and escape it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_client_config(auth: Auth) -> dict[str, str]:
    """The Kafka Java client's properties for `auth`, as a workload's client.properties would set them.
    OAUTHBEARER uses Kafka's own OAuthBearerLoginCallbackHandler: it fetches the token by
    client_credentials, refreshes it, and the client re-authenticates (KIP-368) before the session
    lifetime the server gave in SaslAuthenticate runs out."""
    if auth is None:
        return {}
    module = JAVA_LOGIN_MODULES[auth.mechanism]
    if isinstance(auth, Sasl):
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": auth.mechanism,
                "sasl.jaas.config": f"{module} required username={_jaas_quoted(auth.username)} "
                                    f"password={_jaas_quoted(auth.password)};"}
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER",
            "sasl.login.callback.handler.class": JAVA_OAUTH_HANDLER,
            "sasl.oauthbearer.token.endpoint.url": auth.token_endpoint,
            "sasl.oauthbearer.client.credentials.client.id": auth.client_id,
            "sasl.oauthbearer.client.credentials.client.secret": auth.client_secret,
            **({"sasl.oauthbearer.scope": auth.scope} if auth.scope else {}),
            "sasl.jaas.config": f"{module} required;"}


def java_system_properties(auth: Auth) -> dict[str, str]:
    """Kafka 4.x refuses to contact a token endpoint the JVM was not told to allow."""
    if isinstance(auth, OAuth):
        return {"org.apache.kafka.sasl.oauthbearer.allowed.urls": auth.token_endpoint}
    return {}


def _java_argv(auth: Auth, *args: str) -> list[str]:
    options = [arg for key, value in java_client_config(auth).items() for arg in ("--config", f"{key}={value}")]
    return build.java_argv(*options, *args, system_properties=java_system_properties(auth))


def _java_family(name: str, protocol: str) -> Family:
    return Family(
        name=name,
        produce_argv=lambda b, t, n, fmt, timeout, auth: _java_argv(auth, "produce", b, t, str(n), printf_format(fmt),
                                                                     str(int(timeout * 1000))),
        consume_argv=lambda b, t, g, n, timeout, auth: _java_argv(auth, "consume", b, t, g, str(n), protocol,
                                                                   str(int(timeout * 1000))),
        metadata_argv=lambda b, timeout, auth: _java_argv(auth, "metadata", b, str(int(timeout * 1000))),
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


def java_admin(cg, bootstrap: str, *, timeout: float = 10, auth: Auth = None, **names: str) -> Client:
    """The Java Admin client's calls (see FamilyClient.java), each bounded by `timeout`; 12 calls at most."""
    argv = _java_argv(auth, "admin", bootstrap, str(int(timeout * 1000)), *(f"{k}={v}" for k, v in names.items()))
    return Client(cg, argv, timeout=timeout * 13, parse=last_json, secrets=_secrets(auth))


# The Java admin's calls an identity allowed to create and describe `allowed` and its group gets answers to,
# and requests of theirs that the appliance's audit names (as Kafka names the API).
ADMIN_CALLS_OF_A_DESCRIBER = ("createTopics", "describeTopics", "listTopics", "describeCluster",
                              "describeConsumerGroups")
ADMIN_REQUESTS = frozenset({"CreateTopics", "DescribeCluster", "Metadata"})


def admin_failure(result: Result, allowed: str) -> str | None:
    """None when java_admin's calls for an identity that may create and describe topics (and `allowed`, a topic
    of one partition) succeeded, and no call went unanswered; otherwise which calls failed, and the output."""
    calls = result.summary.get("calls") or {}
    failed = [name for name in ADMIN_CALLS_OF_A_DESCRIBER if not (calls.get(name) or {}).get("ok")]
    hung = [name for name, call in calls.items() if call.get("error") == "java.util.concurrent.TimeoutException"]
    if failed or hung:
        return f"admin calls failed: {failed}, never answered: {hung}{result}"
    if calls["describeTopics"]["value"] != {"partitions": 1} or allowed not in calls["listTopics"]["value"]:
        return f"the admin did not see {allowed} as it is (one partition){result}"
    return None


def authorization_error_in(family: Family, errors: list[str]) -> bool:
    return any(re.search(family.authorization_error, e) for e in errors)


@dataclass(frozen=True)
class RoundTrip:
    """What one family did in a tail round trip: was its consumer ready, what its producer and consumer said."""

    family: str
    ready: bool
    produced: Result
    consumed: Result
    expected: tuple[str, ...]

    def failure(self) -> str | None:
        """None when every value produced was delivered and read back, once; otherwise which step failed,
        with everything that client printed."""
        made, read = self.produced.summary, self.consumed.summary
        if made.get("acked") != len(self.expected) or made.get("failed") or made.get("errors"):
            return f"{self.family}: the producer did not deliver {len(self.expected)} values{self.produced}"
        if not self.ready:
            return f"{self.family}: the consumer never became ready{self.consumed}"
        if sorted(read.get("values", [])) != sorted(self.expected) or read.get("errors"):
            return f"{self.family}: the consumer did not read back exactly what was produced{self.consumed}"
        return None


def tail_round_trip(family: Family, cg, bootstrap: str, topic: str, group: str, *, n: int, fmt: str,
                    timeout: float = 45) -> RoundTrip:
    """A consumer of `group` tails `topic` first (ready: assigned, and for franz-go and Java fetching in an
    incremental fetch session), then `n` values fmt.format(i=...) are produced to it: the consumer reads
    them the way a service reads new records."""
    consumer = family.consume(cg, bootstrap, topic, group, n=n, timeout=timeout)
    ready = consumer.wait_ready(timeout - 5)
    produced = family.produce(cg, bootstrap, topic, n=n, fmt=fmt).finish()
    return RoundTrip(family.name, ready, produced, consumer.finish(), tuple(fmt.format(i=i) for i in range(n)))


def run_parallel(jobs: dict, workers: int = 4) -> dict:
    """Each job's result under its key, `workers` jobs at a time: the cells of a matrix run at once."""
    with ThreadPoolExecutor(workers) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}
