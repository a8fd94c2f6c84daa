"""A structure-aware fuzz harness over the session (with a real Enforcer and policy) and the batch rewriter.

One input is one seed. From it a `random.Random` builds a conversation:
requests of offered and not-offered (api, version) pairs built by kio from
random valid entities (`tests.fuzz.entities`), then mutated the ways the
attacks on the appliance went: a length or count overwritten with a huge,
negative or off-by-one value, the version or api key changed, tagged fields
added or corrupted, the frame truncated or padded, correlation ids reused,
several frames pipelined, the byte stream split at random points. The
broker's side answers with kio-built responses to what was forwarded, mutated
the same ways, sometimes out of order or unasked.

What every input must show (`Finding` otherwise):
- `Session.handle` returns (never raises, the process never aborts);
- no fault reaches the session's error boundary (`internal fault` closes are
  findings, named by their first line), except the listed known ones;
- every close is audited once, with a non-empty reason equal to the
  CloseConnection's, and a closed session answers nothing more.

The batch rewriter gets v2 batches of every codec with e-mail addresses in
their values, mutated in their header, lengths, varints and compressed
bytes; it must return bytes or raise MaskingRejected.
"""

from __future__ import annotations

import datetime
import random
import re
import struct
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from appliance.audit.records import SessionClosed
from appliance.kafka import apis, codec
from appliance.kafka.framing import frame as framed
from appliance.masking import MaskingRejected, rewrite_records
from appliance.policy import permissions
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, Log, SendToUpstream
from appliance.proxy.session import Session
from appliance.broker.credentials import UpstreamCredentials
from tests.fuzz.entities import encode, random_entity

_MS = datetime.timedelta(milliseconds=1)
_PLAIN = UpstreamCredentials("PLAIN", "appliance", "s3cret")

_POLICIES = {
    "allow-all": """
version: 1
rules:
  - name: everything
    identities: [orders]
    operations: [produce, consume, describe, create, delete, alter, group, transactions, admin]
    topics: ["*"]
    consumer_groups: ["*"]
    transactional_ids: ["*"]
""",
    "deny-all": """
version: 1
rules:
  - name: someone-else
    identities: [nobody]
    operations: [produce, consume, describe]
    topics: ["*"]
""",
    "masked": """
version: 1
rules:
  - name: some
    identities: [orders]
    operations: [produce, consume, describe, group]
    topics: ["orders", "prefix:a"]
    consumer_groups: ["*"]
masking:
  - name: emails
    topics: ["*"]
    on: [produce, fetch]
    detectors: [email]
""",
}

# Faults known to be inside the enforcer (appliance/policy), reported to its owners; every other
# internal fault is a finding. Matched against the start of the fault's first line.
KNOWN_FAULTS: tuple[re.Pattern, ...] = ()  # enforcer faults the harness tolerates: none are known


@dataclass
class Outcome:
    inputs: int = 0
    frames: int = 0
    closes: int = 0
    answered: int = 0
    forwarded: int = 0
    known_faults: int = 0
    findings: list = field(default_factory=list)

    def add(self, other: "Outcome") -> None:
        self.inputs += other.inputs
        self.frames += other.frames
        self.closes += other.closes
        self.answered += other.answered
        self.forwarded += other.forwarded
        self.known_faults += other.known_faults
        self.findings += other.findings


_policies: dict[str, object] = {}


def _policy(name: str):
    if name not in _policies:
        _policies[name] = parse_policy(_POLICIES[name], source=f"fuzz-{name}")
    return _policies[name]


def _offered_pairs() -> list[tuple[int, int]]:
    return [(k, v) for k in range(0, 100) if (r := permissions.offered(k)) is not None for v in range(r.min, r.max + 1)]


_OFFERED = _offered_pairs()
_KIO_PAIRS = [(k, v) for k in range(0, 100) for v in range(0, 20) if apis.has_schema(k, v)]
_SPECIAL_COUNTS = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mutate_body(body: bytes, rnd: random.Random, flexible: bool) -> bytes:
    """One structural mutation of a message body."""
    kind = rnd.randrange(9)
    at = rnd.randrange(len(body) + 1)
    if kind == 0:  # a compact count or length: a huge or small unsigned varint
        return body[:at] + uvarint(rnd.choice(_SPECIAL_COUNTS)) + body[at + rnd.randrange(0, 6):]
    if kind == 1:  # a legacy count or length: int32 or int16
        value = rnd.choice((-2, -1, 0, 1, 0x7FFF, 0x7FFFFFFF, -0x80000000))
        packed = struct.pack(">i", value) if rnd.random() < 0.6 else struct.pack(">h", max(-0x8000, min(value, 0x7FFF)))
        return body[:at] + packed + body[at + len(packed):]
    if kind == 2:  # truncated
        return body[:at]
    if kind == 3:  # padded
        return body + rnd.randbytes(rnd.randrange(1, 16))
    if kind == 4:  # tagged fields appended or corrupted at the end
        tags = rnd.choice((b"\x01\x09\x00", b"\x01\x00" + uvarint(0xFFFFFFF0), uvarint(1 << 28), b"\x02\x00\x00",
                           b"\x01\x00\x01\x00"))
        return (body[:-1] if flexible and body else body) + tags
    if kind == 5:  # a byte flipped
        if not body:
            return body
        i = rnd.randrange(len(body))
        return body[:i] + bytes([body[i] ^ (1 << rnd.randrange(8))]) + body[i + 1:]
    if kind == 6:  # a byte set to a special value
        if not body:
            return body
        i = rnd.randrange(len(body))
        return body[:i] + bytes([rnd.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF))]) + body[i + 1:]
    if kind == 7:  # a run of 0xff (a long varint, -1 lengths)
        return body[:at] + b"\xff" * rnd.randrange(1, 8) + body[at:]
    return body  # unmutated


def _request(rnd: random.Random, correlation_id: int) -> tuple[bytes, int, int]:
    """A request frame (offered pairs mostly, any kio pair sometimes), maybe mutated; and its api, version."""
    key, version = rnd.choice(_OFFERED if rnd.random() < 0.85 else _KIO_PAIRS)
    cls = apis.request_class(key, version)
    body = encode(random_entity(cls, rnd, width=2))
    flexible = bool(cls.__flexible__)
    if rnd.random() < 0.25:
        for _ in range(rnd.choice((1, 1, 1, 2, 3))):
            body = _mutate_body(body, rnd, flexible)
    header_version = version
    if rnd.random() < 0.03:
        header_version = rnd.choice((version + 1, version - 1, 0x7FFF, -1))
    client_id = rnd.choice((b"fuzz", b"fuzz", b"", None))
    header = struct.pack(">hhi", key if rnd.random() > 0.02 else rnd.randrange(-2, 200), header_version, correlation_id)
    header += struct.pack(">h", -1) if client_id is None else struct.pack(">h", len(client_id)) + client_id
    if flexible:
        header += b"\x00" if rnd.random() < 0.95 else rnd.choice((b"\x01\x00\x00", b"\x01\x05\x02ab", uvarint(1 << 30)))
    return framed(header + body), key, version


def _response(rnd: random.Random, key: int, version: int, correlation_id: int) -> bytes:
    cls = apis.response_class(key, version)
    body = encode(random_entity(cls, rnd, width=2))
    if rnd.random() < 0.25:
        body = _mutate_body(body, rnd, bool(cls.__flexible__))
    header = struct.pack(">i", correlation_id)
    if apis.response_header_is_flexible(key, version):
        header += b"\x00" if rnd.random() > 0.05 else b"\x01\x07\x00"
    return framed(header + body)


_AUTH_PREFIXES = (struct.pack(">hh", apis.SASL_HANDSHAKE, 1), struct.pack(">hh", apis.SASL_AUTHENTICATE, 2))


def _auth_answers(rnd: random.Random) -> bytes:
    """The broker's side of a PLAIN exchange (handshake, then authenticate), sometimes refused or mutated."""
    from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse
    from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
    handshake = encode(SaslHandshakeResponse(error_code=ErrorCode.none, mechanisms=("PLAIN",)))
    error = ErrorCode.none if rnd.random() < 0.95 else ErrorCode.sasl_authentication_failed
    authenticate = encode(SaslAuthenticateResponse(error_code=error, error_message=None, auth_bytes=b"",
                                                   session_lifetime=rnd.choice((0, 3_600_000)) * _MS))
    if rnd.random() < 0.1:
        handshake = _mutate_body(handshake, rnd, False)
    if rnd.random() < 0.1:
        authenticate = _mutate_body(authenticate, rnd, True)
    return framed(struct.pack(">i", 1) + handshake) + framed(struct.pack(">i", 2) + b"\0" + authenticate)


def _split(data: bytes, rnd: random.Random) -> list[bytes]:
    if len(data) < 2 or rnd.random() < 0.5:
        return [data]
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randrange(1, 5))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def _check(out: list, s: Session, result: Outcome, seed: int, was_closed: bool) -> None:
    if was_closed:
        if out:
            result.findings.append((seed, f"closed session answered: {[type(c).__name__ for c in out]}"))
        return
    closes = [c for c in out if isinstance(c, CloseConnection)]
    audited = [c.record for c in out if isinstance(c, Audit) and isinstance(c.record, SessionClosed)]
    if len(closes) != len(audited) or len(closes) > 1:
        result.findings.append((seed, f"{len(closes)} closes, {len(audited)} audited"))
    for close, record in zip(closes, audited):
        result.closes += 1
        if not close.reason or close.reason != record.close_reason:
            result.findings.append((seed, f"close reason {close.reason!r} audited as {record.close_reason!r}"))
    if closes and not s.closed:
        result.findings.append((seed, "CloseConnection without the session closed"))
    for c in out:
        if isinstance(c, Log) and c.level == "error" and "internal fault" in c.message:
            first = c.message.split(": ", 1)[1].splitlines()[0]
            if any(p.search(first) for p in KNOWN_FAULTS):
                result.known_faults += 1
            else:
                result.findings.append((seed, first))


def _discovery():
    import ipaddress

    from appliance.config import BrokerAddress, DiscoveryConfig
    from appliance.proxy.discovery import Discovery

    return Discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),), max_brokers=8,
                                     max_per_response=4), (BrokerAddress("10.0.0.5", 9092),))


def run_session(seed: int) -> Outcome:
    """One conversation through a fresh session; the findings it shows."""
    rnd = random.Random(seed)
    result = Outcome(inputs=1)
    policy = _policy(rnd.choice(tuple(_POLICIES)))
    enforcer = Enforcer(Principal("orders", frozenset({"team"})), lambda: policy)
    # Half the sessions learn brokers from the random answers they relay (one Discovery per session, so a
    # seed's outcome does not depend on the seeds before it).
    discovery = _discovery() if rnd.random() < 0.5 else None
    s = Session(f"fuzz-{seed}", _PLAIN, enforcer, max_frame_bytes=1 << 20, now=0.0,
                max_held_bytes=64 if rnd.random() < 0.05 else 1 << 20, discovery=discovery)
    now = 0.0

    def feed(event) -> list:
        nonlocal now
        now += 0.001
        was_closed = s.closed
        try:
            out = s.handle(event, now)
        except BaseException as e:  # noqa: BLE001 - that is the finding
            result.findings.append((seed, f"handle raised {type(e).__name__}: {e}"))
            raise
        _check(out, s, result, seed, was_closed)
        return out

    pooled = rnd.random() < 0.6
    feed(ev.UpstreamConnected(authenticated=pooled, authenticated_at=0.0,
                              session_lifetime_s=rnd.choice((None, 3600.0))))
    auth = b"" if pooled else _auth_answers(rnd)
    if auth and rnd.random() < 0.5:  # authenticated before the workload's first bytes
        for chunk in _split(auth, rnd):
            feed(ev.UpstreamData(chunk))
        auth = b""
    ids = [rnd.randrange(-5, 5) if rnd.random() < 0.3 else rnd.randrange(1 << 31) for _ in range(rnd.randrange(1, 6))]
    frames = [_request(rnd, cid) for cid in ids]
    result.frames += len(frames)
    stream = b"".join(f for f, _, _ in frames)
    if rnd.random() < 0.05:
        stream += rnd.randbytes(rnd.randrange(1, 40))  # trailing garbage
    sent: list[bytes] = []
    for chunk in _split(stream, rnd):
        for c in feed(ev.ClientData(chunk)):
            if isinstance(c, SendToUpstream):
                sent.append(c.data)
    for chunk in _split(auth, rnd):  # authenticated while holding the workload's bytes
        for c in feed(ev.UpstreamData(chunk)):
            if isinstance(c, SendToUpstream):
                sent.append(c.data)
    sent = [data for data in sent if not data.startswith(_AUTH_PREFIXES, 4)]
    if s.closed:
        return result
    # The broker answers what was forwarded, mostly in order.
    forwarded = []
    upstream = b"".join(sent)
    while len(upstream) >= 12:
        size = struct.unpack_from(">i", upstream)[0]
        one, upstream = upstream[:4 + size], upstream[4 + size:]
        # An acks=0 Produce answered anyway is one more broker fault for the session to close on.
        forwarded.append(codec.parse_request_header(one))
    result.forwarded += len(forwarded)
    if rnd.random() < 0.1:
        rnd.shuffle(forwarded)
    answers = b"".join(_response(rnd, h.api_key, h.api_version, h.correlation_id if rnd.random() > 0.03 else 7)
                       for h in forwarded if apis.has_schema(h.api_key, h.api_version))
    renewal = rnd.random() < 0.3
    if renewal:  # the appliance's own broker session falls due with some answers still to come
        cut = rnd.randrange(len(answers) + 1)
        answers, rest = answers[:cut], answers[cut:]
    for chunk in _split(answers, rnd):
        feed(ev.UpstreamData(chunk))
    result.answered += len(forwarded)
    if renewal and not s.closed:
        now = max(now, 3600.0 * 0.9)
        feed(ev.UpstreamReauthenticationDue(_PLAIN))
        later = [_request(rnd, rnd.randrange(-5, 5)) for _ in range(rnd.randrange(0, 3))]
        pieces = [ev.UpstreamData(c) for c in _split(rest, rnd)]
        pieces += [ev.ClientData(c) for c in _split(b"".join(f for f, _, _ in later), rnd)]
        pieces += [ev.UpstreamData(c) for c in _split(_auth_answers(rnd), rnd)]
        for event in pieces if rnd.random() < 0.8 else rnd.sample(pieces, len(pieces)):
            feed(event)
    feed(rnd.choice((ev.ClientClosed(), ev.UpstreamClosed(), ev.DeadlinePassed("fuzz deadline"), ev.Revoked("fuzz"))))
    if not s.closed:
        result.findings.append((seed, "session not closed after a close event"))
    return result


# ---- the batch rewriter -----------------------------------------------------------

_MASKERS: dict = {}


def _masker():
    if "m" not in _MASKERS:
        policy = parse_policy("version: 1\nmasking:\n  - name: e\n    topics: [payments]\n    on: [produce]\n"
                              "    detectors: [email]\n    headers: [authorization]\n", source="fuzz-mask.yaml")
        _MASKERS["m"] = policy.masking.with_secret(b"s" * 32).for_topic("payments", "produce")
    return _MASKERS["m"]


def _batch(rnd: random.Random) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=rnd.choice((0, 0, 1, 2, 3, 4)),
                                        is_transactional=False, producer_id=-1, producer_epoch=-1,
                                        base_sequence=-1, batch_size=1 << 20)
    for i in range(rnd.randrange(1, 6)):
        value = rnd.choice((b'{"email": "someone@example.com", "n": %d}' % i, b"plain value", b"", None,
                            b"x" * rnd.randrange(0, 300) + b" a@b.io"))
        headers = [("authorization", b"Bearer abc")] if rnd.random() < 0.3 else []
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"k" if rnd.random() < 0.5 else None, value=value,
                       headers=headers)
    return bytes(builder.build())


def run_batches(seed: int) -> Outcome:
    rnd = random.Random(seed)
    result = Outcome(inputs=1)
    records = b"".join(_batch(rnd) for _ in range(rnd.randrange(1, 3)))
    for _ in range(rnd.choice((0, 1, 1, 2, 4))):
        records = _mutate_body(records, rnd, False)
    if rnd.random() < 0.3 and len(records) > 61:
        # Recompute the CRC after a mutation past it, so the mutation reaches the record parser.
        from crc32c import crc32c
        data = bytearray(records)
        length = struct.unpack_from(">i", data, 8)[0]
        end = min(len(data), 12 + max(length, 0))
        if end > 21:
            struct.pack_into(">I", data, 17, crc32c(memoryview(data)[21:end]))
        records = bytes(data)
    try:
        rewritten, _ = rewrite_records(records, _masker(), partition=rnd.randrange(4))
        if not isinstance(rewritten, (bytes, bytearray, memoryview)):
            result.findings.append((seed, f"rewrite_records returned {type(rewritten).__name__}"))
    except MaskingRejected:
        pass
    except Exception as e:  # noqa: BLE001 - that is the finding
        result.findings.append((seed, f"rewrite_records raised {type(e).__name__}: {e}"))
    return result


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def run(seeds, *, batches_every: int = 4) -> Outcome:
    """Sessions for every seed, and the rewriter for every `batches_every`-th."""
    total = Outcome()
    for seed in seeds:
        total.add(run_session(seed))
        if seed % batches_every == 0:
            rewriter = run_batches(seed)
            rewriter.inputs = 1
            total.add(rewriter)
    return total
