"""The requests of one session still waiting for their answers, in the order they were sent.

Kafka answers the requests of a connection in the order they arrived, so a
response must answer the oldest request in flight; anything else is a broker
fault. Correlation ids are the client's own and must be unique among the
requests in flight: two with one id could not be told apart by the client
either. The proxy's own answers (a refusal, SASL) join the queue too, so the
client reads every answer in the order it asked; the head always waits for
the broker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

from appliance.kafka import apis, codec


@dataclass(slots=True)
class InFlight:
    header: codec.RequestHeader
    facts: codec.RequestFacts
    at: float
    request_bytes: int
    verdict: Any = None  # the enforcer's Verdict; None for requests no policy decides
    masked: int | None = None
    # The proxy's own answer, waiting for the broker's answers to earlier requests:
    # (frame, error code, outcome). None: the broker answers this one.
    answer: tuple[bytes, int | None, str] | None = None


class InFlightQueue:
    __slots__ = ("_queue", "_ids", "answer_bytes")

    def __init__(self) -> None:
        self._queue: deque[InFlight] = deque()
        self._ids: set[int] = set()
        self.answer_bytes = 0  # bytes of the proxy's own answers waiting their turn

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[InFlight]:
        return iter(self._queue)

    def __contains__(self, correlation_id: int) -> bool:
        return correlation_id in self._ids

    @property
    def head(self) -> InFlight | None:
        return self._queue[0] if self._queue else None

    def append(self, pending: InFlight) -> None:
        self._queue.append(pending)
        self._ids.add(pending.header.correlation_id)
        if pending.answer is not None:
            self.answer_bytes += len(pending.answer[0])

    def popleft(self) -> InFlight:
        pending = self._queue.popleft()
        self._ids.discard(pending.header.correlation_id)
        if pending.answer is not None:
            self.answer_bytes -= len(pending.answer[0])
        return pending

    def pop_ready(self) -> Iterator[InFlight]:
        """The proxy's own answers now at the head, in order, each removed as it is yielded."""
        while self._queue and self._queue[0].answer is not None:
            yield self.popleft()

    def head_fault(self, correlation_id: int) -> str | None:
        """Why a broker response with this correlation id is not the answer to the oldest request in flight
        (a broker answering out of order, or unasked); None when it is."""
        if not self._queue:
            return f"broker answered correlation id {correlation_id}, which no request in flight has"
        head = self._queue[0].header
        if head.correlation_id != correlation_id:
            return (f"broker answered correlation id {correlation_id} out of order: the oldest request in flight "
                    f"is {apis.api_name(head.api_key)} v{head.api_version} with correlation id {head.correlation_id}")
        return None

    def clear(self) -> None:
        self._queue.clear()
        self._ids.clear()
        self.answer_bytes = 0
