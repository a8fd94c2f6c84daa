"""The Python client families (librdkafka by confluent-kafka, kafka-python, aiokafka), unmodified, one interface.

Usage: pyfamily.py FAMILY MODE BOOTSTRAP ... [--timeout S]      FAMILY: confluent | kafka-python | aiokafka
  produce  BOOTSTRAP TOPIC N FORMAT   acks=all; FORMAT's {i} is the record's index
                                      prints {"acked", "failed", "errors": {text: count}}
  consume  BOOTSTRAP TOPIC GROUP N    prints {"ready": true} once the group assigned it partitions and a
                                      second has passed, then {"values": [...], "errors": [...]};
                                      stops at the first authorization error
  metadata BOOTSTRAP                  the client's listing of all topics: {"topics": [...], "errors": [...]}

Every mode gives up after --timeout seconds, so no invocation can hang a test.

Authentication, as a workload configures its client (any mode):
  --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P
  --oauth-token-endpoint URL --oauth-client-id ID --oauth-client-secret S [--oauth-scope SCOPE]
      OAUTHBEARER with a token the client fetches itself by client_credentials: librdkafka's own
      `oidc` method for confluent-kafka; for kafka-python and aiokafka a token provider
      (ClientCredentials below) that fetches with urllib and reuses a token until it nears expiry.
A refused login is one of the summary's errors, in the client's words.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def emit(value: dict) -> None:
    print(json.dumps(value), flush=True)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class ClientLog(logging.Handler):
    """Errors a client only logs: kafka-python reports a refused subscription this way and no other."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.name}: {record.getMessage()}")


CLIENT_LOG = ClientLog()


class Tail:
    """What a consumer saw, and when to say it is ready (assigned, then a second of fetching)."""

    def __init__(self, n: int, timeout: float):
        self.n, self.deadline = n, time.monotonic() + timeout
        self.values: list[str] = []
        self.errors: list[str] = []
        self.assigned_at: float | None = None
        self.said_ready = False

    def running(self) -> bool:
        final = False
        while CLIENT_LOG.texts:
            final = self.error(CLIENT_LOG.texts.pop(0)) or final
        return not final and len(self.values) < self.n and time.monotonic() < self.deadline

    def saw_assignment(self, assigned: bool) -> None:
        if assigned and self.assigned_at is None:
            self.assigned_at = time.monotonic()
        if self.assigned_at is not None and not self.said_ready and time.monotonic() - self.assigned_at > 1.0:
            self.said_ready = True
            emit({"ready": True})

    def error(self, text: str) -> bool:
        """Record an error; true when it is final (a refused login or an authorization error: retrying
        will not help)."""
        self.errors.append(text)
        return _final(text)

    def summary(self) -> dict:
        if len(self.values) < self.n and not self.errors:
            self.errors.append(f"timed out with {len(self.values)} of {self.n} records")
        return {"values": self.values, "errors": self.errors}


def _final(text: str) -> bool:
    lowered = text.lower()
    return "authoriz" in lowered or "authenticat" in lowered


# --- authentication -----------------------------------------------------------------------------

class TokenError(RuntimeError):
    pass


class ClientCredentials:
    """OAuth 2.0 client_credentials (RFC 6749 section 4.4) at a token endpoint: an access token, reused
    until 80% of its life has passed, then fetched again. Thread-safe: clients ask from their own threads."""

    def __init__(self, endpoint: str, client_id: str, secret: str, scope: str | None = None, timeout: float = 10.0):
        self.endpoint, self.client_id, self._secret, self._timeout = endpoint, client_id, secret, timeout
        self._form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                began = time.monotonic()
                self._token, lifetime = self._fetch()
                self._refresh_at = began + 0.8 * lifetime
            return self._token

    def _fetch(self) -> tuple[str, float]:
        # client_secret_basic: both halves form-encoded first (RFC 6749 section 2.3.1).
        basic = base64.b64encode(f"{urllib.parse.quote(self.client_id, safe='')}:"
                                 f"{urllib.parse.quote(self._secret, safe='')}".encode()).decode()
        request = urllib.request.Request(
            self.endpoint, data=urllib.parse.urlencode(self._form).encode(), method="POST",
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                status, body = response.status, response.read(1 << 20)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read(1 << 20)
        except OSError as e:
            raise TokenError(f"token request to {self.endpoint} failed: {e}") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise TokenError(f"token response from {self.endpoint} (HTTP {status}) is not JSON: "
                             f"{body[:200]!r}") from None
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            detail = answer if not isinstance(answer, dict) else \
                f"{answer.get('error', '')} {answer.get('error_description', '')}".strip()
            raise TokenError(f"token request to {self.endpoint} for client {self.client_id!r} refused "
                             f"(HTTP {status}): {detail}")
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else 60.0
        return answer["access_token"], lifetime


def oauth_source(a) -> ClientCredentials | None:
    if not a.oauth_token_endpoint:
        return None
    return ClientCredentials(a.oauth_token_endpoint, a.oauth_client_id, a.oauth_client_secret, a.oauth_scope)


def confluent_auth(a) -> dict:
    """librdkafka's properties; OAUTHBEARER by librdkafka's own OIDC client_credentials fetch."""
    if a.oauth_token_endpoint:
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER",
                "sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.token.endpoint.url": a.oauth_token_endpoint,
                "sasl.oauthbearer.client.id": a.oauth_client_id,
                "sasl.oauthbearer.client.secret": a.oauth_client_secret,
                **({"sasl.oauthbearer.scope": a.oauth_scope} if a.oauth_scope else {})}
    if a.sasl_mechanism:
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": a.sasl_mechanism,
                "sasl.username": a.sasl_username, "sasl.password": a.sasl_password}
    return {}


def kafka_python_auth(a) -> dict:
    """kafka-python's keyword arguments; OAUTHBEARER through its AbstractTokenProvider."""
    source = oauth_source(a)
    if source is not None:
        from kafka.net.sasl.oauth import AbstractTokenProvider

        class Provider(AbstractTokenProvider):
            def token(self):
                return source.token()

        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": Provider()}
    if a.sasl_mechanism:
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": a.sasl_mechanism,
                "sasl_plain_username": a.sasl_username, "sasl_plain_password": a.sasl_password}
    return {}


def aiokafka_auth(a) -> dict:
    """aiokafka's keyword arguments; OAUTHBEARER through its (async) AbstractTokenProvider, which asks
    the blocking token source off the event loop."""
    source = oauth_source(a)
    if source is not None:
        from aiokafka.abc import AbstractTokenProvider

        class Provider(AbstractTokenProvider):
            async def token(self):
                return await asyncio.get_running_loop().run_in_executor(None, source.token)

        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": Provider()}
    if a.sasl_mechanism:
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": a.sasl_mechanism,
                "sasl_plain_username": a.sasl_username, "sasl_plain_password": a.sasl_password}
    return {}


def logged_refusals() -> list[str]:
    """Refused logins a client logged but did not raise (kafka-python and aiokafka retry them)."""
    return [t for t in CLIENT_LOG.texts if "authenticat" in t.lower()]


# --- confluent-kafka (librdkafka) ---------------------------------------------------------------

def confluent_produce(a) -> dict:
    from confluent_kafka import Producer

    errors: collections.Counter = collections.Counter()
    acked = 0

    def delivered(err, _msg):
        nonlocal acked
        if err is None:
            acked += 1
        else:
            errors[str(err)] += 1

    refused: list[str] = []

    def client_error(err):
        # librdkafka retries a refused login until message.timeout.ms; the application sees it here.
        errors[str(err)] += 1
        if _final(str(err)):
            refused.append(str(err))

    producer = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": int(a.timeout * 1000), "error_cb": client_error, **confluent_auth(a)})
    for i in range(a.n):
        producer.produce(a.topic, a.format.format(i=i).encode(), callback=delivered)
    deadline = time.monotonic() + a.timeout
    while producer.flush(0.2) > 0 and not refused and time.monotonic() < deadline:
        pass
    if refused:  # a service gives up here, as this one does: no record is delivered after a refused login
        producer.purge()
        producer.flush(1)
    return {"acked": acked, "failed": a.n - acked, "errors": dict(errors)}


def confluent_consume(a) -> dict:
    from confluent_kafka import Consumer

    tail = Tail(a.n, a.timeout)
    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 500, **confluent_auth(a)})
    consumer.subscribe([a.topic])
    while tail.running():
        msg = consumer.poll(0.2)
        tail.saw_assignment(bool(consumer.assignment()))
        if msg is None:
            continue
        if msg.error():
            if tail.error(str(msg.error())):
                break
            continue
        tail.values.append(msg.value().decode())
    consumer.close()
    return tail.summary()


def confluent_metadata(a) -> dict:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": a.bootstrap, **confluent_auth(a)}).list_topics(timeout=a.timeout)
        return {"topics": sorted(md.topics), "errors": [str(t.error) for t in md.topics.values() if t.error]}
    except Exception as e:  # noqa: BLE001 - the client's own words are the result
        return {"topics": [], "errors": [describe(e)]}


# --- kafka-python ------------------------------------------------------------------------------

def kafka_python_produce(a) -> dict:
    from kafka import KafkaProducer

    errors: collections.Counter = collections.Counter()
    acked = 0
    ms = int(a.timeout * 1000)
    producer = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", max_block_ms=ms,
                             request_timeout_ms=min(ms, 10000), **kafka_python_auth(a))
    futures = []
    for i in range(a.n):
        try:
            futures.append(producer.send(a.topic, a.format.format(i=i).encode()))
        except Exception as e:  # noqa: BLE001 - send() raises when the topic's metadata is refused
            errors[describe(e)] += 1
    for f in futures:
        try:
            f.get(timeout=a.timeout)
            acked += 1
        except Exception as e:  # noqa: BLE001
            errors[describe(e)] += 1
    producer.close(timeout=2)
    for text in logged_refusals():
        errors[text] += 1
    return {"acked": acked, "failed": a.n - acked, "errors": dict(errors)}


def kafka_python_consume(a) -> dict:
    from kafka import KafkaConsumer

    tail = Tail(a.n, a.timeout)
    consumer = KafkaConsumer(bootstrap_servers=a.bootstrap, group_id=a.group, auto_offset_reset="earliest",
                             fetch_max_wait_ms=500, request_timeout_ms=10000, **kafka_python_auth(a))
    # kafka-python may join the group before its metadata names the topic's partitions, assign itself
    # nothing, and not rejoin for minutes (seen here); asking for the partitions first avoids that.
    refused = False
    try:
        consumer.partitions_for_topic(a.topic)
    except Exception as e:  # noqa: BLE001 - a refused topic says so here already
        refused = tail.error(describe(e))
    consumer.subscribe([a.topic])
    while not refused and tail.running():
        try:
            # kafka-python gives the offset commit before a rebalance only what is left of this poll's
            # timeout (ConsumerCoordinator._on_join_prepare_async), and logs an ERROR when it runs out:
            # with 200 ms that was seen once in a clean-clone run, all records read. A second leaves the
            # commit a broker round trip's time; the poll returns as soon as records arrive.
            for records in consumer.poll(timeout_ms=1000).values():
                tail.values.extend(r.value.decode() for r in records)
        except Exception as e:  # noqa: BLE001
            if tail.error(describe(e)):
                break
        tail.saw_assignment(bool(consumer.assignment()))
    consumer.close(autocommit=False)
    return tail.summary()


def kafka_python_metadata(a) -> dict:
    from kafka import KafkaConsumer

    try:
        consumer = KafkaConsumer(bootstrap_servers=a.bootstrap, request_timeout_ms=int(a.timeout * 1000),
                                 **kafka_python_auth(a))
        topics = sorted(consumer.topics())
        consumer.close()
        return {"topics": topics, "errors": []}
    except Exception as e:  # noqa: BLE001
        return {"topics": [], "errors": [describe(e)]}


# --- aiokafka ----------------------------------------------------------------------------------

async def aiokafka_produce(a) -> dict:
    from aiokafka import AIOKafkaProducer

    errors: collections.Counter = collections.Counter()
    acked = 0
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=min(int(a.timeout * 1000), 10000), **aiokafka_auth(a))
    await producer.start()
    try:
        for i in range(a.n):
            try:
                await asyncio.wait_for(producer.send_and_wait(a.topic, a.format.format(i=i).encode()), a.timeout)
                acked += 1
            except Exception as e:  # noqa: BLE001
                errors[describe(e)] += 1
    finally:
        await producer.stop()
    for text in logged_refusals():
        errors[text] += 1
    return {"acked": acked, "failed": a.n - acked, "errors": dict(errors)}


async def aiokafka_consume(a) -> dict:
    from aiokafka import AIOKafkaConsumer

    tail = Tail(a.n, a.timeout)
    consumer = AIOKafkaConsumer(a.topic, bootstrap_servers=a.bootstrap, group_id=a.group,
                                auto_offset_reset="earliest", fetch_max_wait_ms=500, request_timeout_ms=10000,
                                **aiokafka_auth(a))
    await consumer.start()
    try:
        while tail.running():
            try:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    tail.values.extend(r.value.decode() for r in records)
            except Exception as e:  # noqa: BLE001
                if tail.error(describe(e)):
                    break
            tail.saw_assignment(bool(consumer.assignment()))
    finally:
        await consumer.stop()
    return tail.summary()


async def aiokafka_metadata(a) -> dict:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=a.bootstrap, request_timeout_ms=int(a.timeout * 1000),
                                **aiokafka_auth(a))
    try:
        await consumer.start()
        return {"topics": sorted(await consumer.topics()), "errors": []}
    except Exception as e:  # noqa: BLE001
        return {"topics": [], "errors": [describe(e)]}
    finally:
        await consumer.stop()


FAMILIES = {
    "confluent": {"produce": confluent_produce, "consume": confluent_consume, "metadata": confluent_metadata},
    "kafka-python": {"produce": kafka_python_produce, "consume": kafka_python_consume,
                     "metadata": kafka_python_metadata},
    "aiokafka": {"produce": aiokafka_produce, "consume": aiokafka_consume, "metadata": aiokafka_metadata},
}


def main() -> None:
    # The clients' own warnings and errors go to stderr: when a cell fails, they say why.
    # PYFAMILY_DEBUG=DIR: the clients' debug logs, one file per process, for a failure stderr cannot explain.
    debug = os.environ.get("PYFAMILY_DEBUG")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if debug:
        handler = logging.FileHandler(os.path.join(debug, f"{os.getpid()}-{sys.argv[1]}-{sys.argv[2]}.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.DEBUG)
        logging.getLogger().handlers[0].setLevel(logging.WARNING)
    logging.getLogger().addHandler(CLIENT_LOG)
    p = argparse.ArgumentParser()
    p.add_argument("family", choices=sorted(FAMILIES))
    sub = p.add_subparsers(dest="mode", required=True)
    for mode, positional in (("produce", ("topic", "n", "format")), ("consume", ("topic", "group", "n")),
                             ("metadata", ())):
        s = sub.add_parser(mode)
        s.add_argument("bootstrap")
        for name in positional:
            s.add_argument(name, type=int if name == "n" else str)
        s.add_argument("--timeout", type=float, default=20)
        s.add_argument("--sasl-mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
        s.add_argument("--sasl-username")
        s.add_argument("--sasl-password")
        s.add_argument("--oauth-token-endpoint", help="OAUTHBEARER: the token endpoint for client_credentials")
        s.add_argument("--oauth-client-id")
        s.add_argument("--oauth-client-secret")
        s.add_argument("--oauth-scope")
    a = p.parse_args()
    if a.sasl_mechanism and a.oauth_token_endpoint:
        p.error("--sasl-mechanism (a static login) and --oauth-token-endpoint (OAUTHBEARER) exclude each other")
    run = FAMILIES[a.family][a.mode]
    try:
        if asyncio.iscoroutinefunction(run):
            result = asyncio.run(asyncio.wait_for(run(a), a.timeout + 5))
        else:
            result = within_deadline(run, a)
    except Exception as e:  # noqa: BLE001 - a client that raises has still answered: say what it said
        logging.exception("%s %s raised", a.family, a.mode)
        result = {"acked": 0, "failed": getattr(a, "n", 0), "values": [], "topics": [],
                  "errors": [describe(e), *logged_refusals()]}
    emit(result)
    # A client thread still blocked (see within_deadline) must not keep the process alive.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


class GaveUp(RuntimeError):
    pass


def within_deadline(run, a) -> dict:
    """run(a) in a thread, given up on at the deadline, or soon after a refused login that the client
    only logs: kafka-python's constructors retry a refused SASL login for ever, ignoring max_block_ms,
    where a service would stop and report it."""
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = run(a)
        except Exception as e:  # noqa: BLE001 - raised again below, in the main thread
            outcome["error"] = e

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    started, refused_at = time.monotonic(), None
    deadline = started + a.timeout + 5
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(0.1)
        if refused_at is None and logged_refusals():
            refused_at = time.monotonic()
        if refused_at is not None and time.monotonic() - refused_at > 2.0:
            break
    if "error" in outcome:
        raise outcome["error"]
    if "result" in outcome:
        return outcome["result"]
    raise GaveUp(f"{a.family} {a.mode} gave up after {time.monotonic() - started:.1f}s: the client had not returned")


if __name__ == "__main__":
    main()
