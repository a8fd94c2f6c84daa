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


@dataclass(frozen=True, slots=True)
class SessionClosed:
    session_id: str
    ended_at: float
    bytes_from_client: int
    bytes_to_client: int
    requests: int
    close_reason: str


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


AuditRecord = SessionOpened | SessionClosed | Operation | Event | Gap
