"""librdkafka (confluent-kafka) and raw-protocol load for the benchmark, run as a child process inside an arm's cgroup.

    python -m appliance.bench.clients latency BOOTSTRAP TOPIC --rate R --seconds S --size B [--warmup S] [--sasl-file F]
    python -m appliance.bench.clients connect BOOTSTRAP --count N [--sasl-file F]   (raw protocol, no librdkafka)
    python -m appliance.bench.clients create-topics BOOTSTRAP TOPIC... --sasl-file F
    python -m appliance.bench.clients sample BOOTSTRAP TOPIC --count N --sasl-file F

Each prints one JSON object on its last stdout line. The direct arm passes
`--sasl-file`, a JSON file (mode 0600) with mechanism, username and password,
so the password never appears on a command line; the proxied arm passes
nothing and speaks plaintext, as an enrolled workload does.

The process is started in its cgroup before it connects, so the kernel sees
every connection it makes as the arm's: exempt (direct) or enrolled (steered
to the appliance).
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import sys
import threading
import time

from kio.schema.api_versions.v3.request import ApiVersionsRequest as _ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest as _MetadataRequest
from kio.schema.metadata.v12.response import MetadataResponse as _MetadataResponse
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest as _SaslAuthenticateRequest
from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse as _SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest as _SaslHandshakeRequest
from kio.serial import entity_writer

from appliance.kafka.codec import decode_entity


def _common(bootstrap: str, sasl_file: str | None) -> dict:
    conf = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, "log_level": 3}
    if sasl_file:
        with open(sasl_file) as f:
            creds = json.load(f)
        conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": creds["mechanism"],
                     "sasl.username": creds["username"], "sasl.password": creds["password"]})
    return conf


def latency(args) -> dict:
    """Produce at a fixed rate; each record's latency is librdkafka's own, from produce() to its acknowledgement."""
    from confluent_kafka import Producer

    producer = Producer({
        **_common(args.bootstrap, args.sasl_file),
        "acks": "all", "enable.idempotence": True, "linger.ms": 0, "client.id": "bench-latency",
    })
    latencies_us: list[float] = []
    errors: list[str] = []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            latencies_us.append(msg.latency() * 1e6)

    value = b"x" * args.size
    interval = 1.0 / args.rate
    # librdkafka hands a record's latency over when its delivery report is served, so reports must be served
    # the moment they arrive: a thread blocks in poll() for them (poll releases the GIL). The main thread
    # sleeps until each record is due. Polling between sends instead either spins (poll() takes whole
    # milliseconds), burning a core that the broker and the appliance need, or serves reports up to an
    # interval late, which showed as a p50 of exactly 1 ms at 1,000 records/s.
    polling = threading.Event()
    polling.set()

    def serve_reports():
        while polling.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=serve_reports, name="delivery-reports", daemon=True)
    poller.start()

    def paced(count: int, callback) -> float:
        start = time.perf_counter()
        for i in range(count):
            wait = start + i * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            producer.produce(args.topic, value=value, on_delivery=callback)
        return time.perf_counter() - start

    # Warm-up, not measured: the connection, SASL (direct) or steering and the appliance's upstream SASL
    # (proxied), InitProducerId and the first metadata are set-up, not publish latency; then the same rate
    # for a while, so that the broker's JIT and both sides' buffers are past their first records.
    warm_errors: list[str] = []
    paced(max(1, int(args.rate * args.warmup)), lambda err, msg: warm_errors.append(str(err)) if err else None)
    deadline = time.monotonic() + 30
    while len(producer) and time.monotonic() < deadline:  # the poller serves the reports
        time.sleep(0.01)
    if len(producer) or warm_errors:
        polling.clear()
        return {"error": f"warm-up records not delivered: {warm_errors[:3] or 'timeout'}"}
    count = int(args.rate * args.seconds)
    sent_s = paced(count, delivered)
    deadline = time.monotonic() + 30
    while len(producer) and time.monotonic() < deadline:
        time.sleep(0.01)
    polling.clear()
    poller.join()
    left = producer.flush(1)
    return {"sent": count, "delivered": len(latencies_us), "undelivered": left, "errors": errors[:5],
            "error_count": len(errors), "achieved_rate": count / sent_s if sent_s else None,
            "latencies_us": [round(v, 1) for v in latencies_us]}


def connect(args) -> dict:
    """N fresh connections, one after the other, each timed from connect() to its first metadata answer.

    Speaks the protocol itself (with kio's generated codec, and scramp for SCRAM) so that nothing but the
    connection is timed: TCP connect, ApiVersions v3, then for the direct arm SaslHandshake v1 and
    SaslAuthenticate v2 (SCRAM: two round trips, the server's signature checked), then Metadata v12 for
    every topic. librdkafka was the first choice, but it holds its first connection back by its own
    sparse-connect interval (about 50 ms) and then opens a second one to the broker the metadata names,
    so it timed its own scheduling.
    """
    creds = None
    if args.sasl_file:
        with open(args.sasl_file) as f:
            creds = json.load(f)
    host, _, port = args.bootstrap.rpartition(":")
    total_ms, steps = [], {"tcp_ms": [], "api_versions_ms": [], "sasl_ms": [], "metadata_ms": []}
    for i in range(args.count + 1):  # the first, untimed, pays for imports and first calls in this process
        marks = [time.perf_counter()]
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            marks.append(time.perf_counter())
            _exchange(sock, _API_VERSIONS, 3, 1, _ApiVersionsRequest(client_software_name="appliance-bench",
                                                                     client_software_version="1"))
            marks.append(time.perf_counter())
            if creds:
                _sasl(sock, creds)
            marks.append(time.perf_counter())
            body = _exchange(sock, _METADATA, 12, 9, _MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                                                      include_topic_authorized_operations=False))
            marks.append(time.perf_counter())
        metadata = decode_entity(_MetadataResponse, body, 0, "Metadata v12 response")
        if not metadata.brokers:
            return {"error": "metadata answer without brokers"}
        if i == 0:
            continue
        total_ms.append((marks[-1] - marks[0]) * 1000)
        for name, (a, b) in zip(steps, zip(marks, marks[1:])):
            steps[name].append(round((b - a) * 1000, 3))
    return {"connect_ms": [round(v, 3) for v in total_ms], "steps": steps}


_API_VERSIONS, _METADATA, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 3, 17, 36


def _exchange(sock: socket.socket, api_key: int, version: int, correlation_id: int, entity) -> bytes:
    """Send one request and return its response body (after the response header)."""
    cls = type(entity)
    out = io.BytesIO()
    client_id = b"bench-connect"
    out.write(struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id)
    if cls.__flexible__:
        out.write(b"\0")  # no tagged fields in the request header
    entity_writer(cls)(out, entity)
    payload = out.getvalue()
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    frame = _recv_exact(sock, size)
    (answered,) = struct.unpack(">i", frame[:4])
    if answered != correlation_id:
        raise RuntimeError(f"response to correlation id {answered}, expected {correlation_id}")
    # ApiVersions answers always use response header v0; other flexible versions add (empty) tagged fields.
    offset = 5 if cls.__flexible__ and api_key != _API_VERSIONS else 4
    body = frame[offset:]
    if api_key == _API_VERSIONS and body[:2] != b"\0\0":
        raise RuntimeError(f"ApiVersions error code {struct.unpack('>h', body[:2])[0]}")
    return body


def _sasl(sock: socket.socket, creds: dict) -> None:
    import scramp

    body = _exchange(sock, _SASL_HANDSHAKE, 1, 2, _SaslHandshakeRequest(mechanism=creds["mechanism"]))
    if body[:2] != b"\0\0":
        raise RuntimeError(f"SaslHandshake refused {creds['mechanism']}")
    client = scramp.ScramClient([creds["mechanism"]], creds["username"], creds["password"])
    reply = _authenticate(sock, 3, client.get_client_first().encode())
    client.set_server_first(reply.decode())
    reply = _authenticate(sock, 4, client.get_client_final().encode())
    client.set_server_final(reply.decode())  # verifies the server's signature


def _authenticate(sock: socket.socket, correlation_id: int, payload: bytes) -> bytes:
    body = _exchange(sock, _SASL_AUTHENTICATE, 2, correlation_id, _SaslAuthenticateRequest(auth_bytes=payload))
    response = decode_entity(_SaslAuthenticateResponse, body, 0, "SaslAuthenticate v2 response")
    if int(response.error_code.value) != 0:
        raise RuntimeError(f"SaslAuthenticate failed: {response.error_message}")
    return response.auth_bytes


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise RuntimeError("connection closed by the peer")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def create_topics(args) -> dict:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_common(args.bootstrap, args.sasl_file))
    futures = admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in args.topics],
                                  operation_timeout=30)
    errors = []
    for topic, future in futures.items():
        try:
            future.result(60)
        except Exception as e:  # noqa: BLE001 - reported, not raised: the harness decides
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                errors.append(f"{topic}: {e}")
    return {"created": len(args.topics) - len(errors), "errors": errors}


def sample(args) -> dict:
    """Read the first records of partition 0 as the broker stored them (to see whether masking happened)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**_common(args.bootstrap, args.sasl_file), "group.id": "bench-sample",
                         "enable.auto.commit": False, "client.id": "bench-sample"})
    consumer.assign([TopicPartition(args.topic, 0, 0)])
    values: list[str] = []
    deadline = time.monotonic() + 20
    while len(values) < args.count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        values.append(msg.value().decode(errors="replace"))
    consumer.close()
    return {"values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.bench.clients")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("latency")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds at the same rate before measuring")
    p = sub.add_parser("connect")
    p.add_argument("bootstrap")
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("create-topics")
    p.add_argument("bootstrap")
    p.add_argument("topics", nargs="+")
    p = sub.add_parser("sample")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--count", type=int, default=5)
    for p in sub.choices.values():
        p.add_argument("--sasl-file")
    args = parser.parse_args(argv)
    result = {"latency": latency, "connect": connect, "create-topics": create_topics, "sample": sample}[args.command](args)
    print(json.dumps(result))
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
