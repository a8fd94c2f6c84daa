"""Audit record types: plain, frozen data built by the pure core and written by the writer thread."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session_id: str
    started_at: float
    identity: str | None
    groups: tuple[str, ...]
    cgroup_id: int
    cgroup_path: str | None
    enrolled_cgroup_id: int
    pid: int
    uid: int
    gid: int
    command: str
    client_address: str
    broker_address: str
    # The workload's network namespace: its cookie, and net:[inode] as /proc/PID/ns/net shows it.
    netns_cookie: int | None = None
    netns: str | None = None


@dataclass(frozen=True, slots=True)
class SessionClosed:
    session_id: str
    ended_at: float
    bytes_from_client: int
    bytes_to_client: int
    requests: int
    close_reason: str


@dataclass(frozen=True, slots=True)
class Authentication:
    """One SASL exchange a workload completed or failed: the first, or a re-authentication (KIP-368)."""

    session_id: str
    at: float
    kind: str  # initial | reauth
    mechanism: str
    outcome: str  # ok | refused
    reason: str
    method: str | None = None  # token | static
    identity: str | None = None  # the session's identity from then on
    groups: str | None = None  # JSON list: the groups its decisions use
    subject: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    jti: str | None = None
    issued_at: float | None = None  # the token's
    expires_at: float | None = None  # the token's
    session_expires_at: float | None = None  # when the session must re-authenticate by
    username: str | None = None  # a static credential's


@dataclass(frozen=True, slots=True)
class Operation:
    session_id: str
    at: float
    api_key: int
    api_name: str
    api_version: int
    correlation_id: int
    client_id: str | None
    topics: str | None  # JSON {"topic": [partitions]}
    group_id: str | None
    records: int | None
    record_bytes: int | None
    request_bytes: int
    response_bytes: int | None
    error_code: int | None
    latency_ms: float | None
    outcome: str  # forwarded | no-response (acks=0) | unanswered (closed first) | answered-by-proxy | refused | partly-refused
    decision: str | None = None  # allowed | partly refused | refused (None: no policy check applies)
    checks: str | None = None  # JSON [[resource, name, operation, allow|deny, rule], ...]
    masked: int | None = None  # values masked in the request (Produce) or the response (Fetch)


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    kind: str  # one of store.EVENT_KINDS
    message: str
    identity: str | None = None
    cgroup_id: int | None = None
    cgroup_path: str | None = None
    pid: int | None = None
    session_id: str | None = None
    detail: str | None = None  # JSON


@dataclass(frozen=True, slots=True)
class Gap:
    """Records that were never written: how many, the span of time they covered, and why."""

    started_at: float
    ended_at: float
    records_lost: int
    reason: str


@dataclass(frozen=True, slots=True)
class RecordedOperation:
    """An operation recorded at depth excerpts (docs/recording.md, Depth): its `operations` row, then the
    `record_excerpts` rows the writer builds from `sources` (appliance.masking.excerpts.ExcerptSource, the
    batches held for them) off the proxy's event loop, linked to the row by `operation_id`."""

    operation: Operation
    direction: str  # produce (as forwarded, after produce-side masking) | fetch (as the reader received it)
    sources: tuple  # ExcerptSource, one per partition

    @property
    def at(self) -> float:
        return self.operation.at

    @property
    def held_bytes(self) -> int:
        return sum(len(s.records) for s in self.sources)


AuditRecord = SessionOpened | SessionClosed | Authentication | Operation | RecordedOperation | Event | Gap
