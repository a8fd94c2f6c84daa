"""Budgets and deadlines the I/O shell keeps for every session: pure decisions, time passed in.

The shell (`server.py`) asks two questions, and this module answers them
from numbers alone, so they are tested with a fake clock:

- **May this session's client be read now?** Not while the session holds
  more than `session_buffer_bytes` (bytes held before upstream authentication,
  partial frames of both sides), and, while every session together holds more
  than `buffer_budget_bytes`, not while it holds more than its fair share of
  that budget (the budget divided by the live sessions). A session holding
  little goes on, so a few connections pinning partial frames slow only
  themselves. The broker side is never paused for the budget: a response
  already asked for frees its bytes only once read to its end, and pausing
  the client is what stops new responses from being asked for.
- **Has one of its deadlines passed?** Which one, and after how long, in
  words for the audit's close reason:
  - connect: the broker did not accept the TCP connection in time;
  - SASL: the proxy's own upstream authentication did not finish in time;
  - request: the broker has not answered the oldest request in flight;
  - frame: the session holds part of a frame and no whole frame has arrived
    from either side for that long (a client trickling a large request, or
    never sending its last byte);
  - idle: nothing in flight, nothing held, no byte either way for that long.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    session_buffer_bytes: int
    buffer_budget_bytes: int
    connect_timeout_s: float
    sasl_timeout_s: float
    idle_timeout_s: float
    request_timeout_s: float
    frame_timeout_s: float

    @classmethod
    def of(cls, config) -> Limits:
        return cls(**{name: getattr(config, name) for name in cls.__slots__})


def may_read_client(limits: Limits, held: int, total_held: int, live: int) -> bool:
    """Whether the shell may read the client of a session holding `held` bytes, with `total_held` held by all."""
    if held > limits.session_buffer_bytes:
        return False
    if total_held > limits.buffer_budget_bytes:
        return held <= limits.buffer_budget_bytes // max(live, 1)
    return True


@dataclass(slots=True)
class Clock:
    """When things last happened on one connection, kept by the shell as events pass.

    Times are on the clock the shell passes the session (`time.time()`), since
    the session's `oldest_request_at` is on it too.
    """

    accepted_at: float
    upstream_connected_at: float | None = None
    active_at: float = 0.0  # last byte from either side
    progress_at: float = 0.0  # last whole frame either way, or last time the session held nothing
    requests: int = 0  # the session's request count when progress_at was last set
    bytes_to_client: int = 0

    def __post_init__(self) -> None:
        self.active_at = self.progress_at = self.accepted_at

    def saw(self, now: float, held: int, requests: int, bytes_to_client: int) -> None:
        """Bytes passed; a whole frame passed if the session's counters moved, or it now holds nothing.

        (The shell inlines this on its hot path; the rule is here, tested.)"""
        self.active_at = now
        if held == 0 or requests != self.requests or bytes_to_client != self.bytes_to_client:
            self.progress_at, self.requests, self.bytes_to_client = now, requests, bytes_to_client


def _took(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def deadline_passed(limits: Limits, clock: Clock, now: float, *, upstream_open: bool, relaying: bool,
                    oldest_request_at: float | None, held: int, broker: str) -> str | None:
    """The close reason of the first deadline that has passed, or None."""
    if not upstream_open:
        if now - clock.accepted_at > limits.connect_timeout_s:
            return (f"connect deadline: the broker at {broker} did not accept the connection within "
                    f"{_took(limits.connect_timeout_s)} (connect_timeout_s)")
        return None
    if not relaying:
        since = clock.upstream_connected_at if clock.upstream_connected_at is not None else clock.accepted_at
        if now - since > limits.sasl_timeout_s:
            return (f"SASL deadline: the appliance's authentication to the broker at {broker} did not finish "
                    f"within {_took(limits.sasl_timeout_s)} (sasl_timeout_s)")
        return None
    if oldest_request_at is not None and now - oldest_request_at > limits.request_timeout_s:
        return (f"request deadline: the broker at {broker} has not answered a request sent "
                f"{_took(now - oldest_request_at)} ago (request_timeout_s {_took(limits.request_timeout_s)})")
    if held and now - clock.progress_at > limits.frame_timeout_s:
        return (f"frame deadline: {held} bytes of an unfinished frame held with no whole frame for "
                f"{_took(now - clock.progress_at)} (frame_timeout_s {_took(limits.frame_timeout_s)})")
    if oldest_request_at is None and not held and now - clock.active_at > limits.idle_timeout_s:
        return (f"idle deadline: no request for {_took(now - clock.active_at)} "
                f"(idle_timeout_s {_took(limits.idle_timeout_s)})")
    return None
