"""What a filter decides about one request, and what must then be done to the broker's response.

A filter returns exactly one of:
- `Forward`: the request's own bytes go to the broker;
- `Rewritten`: re-encoded bytes go instead (refused entries cut, a flag cleared, a partition forgotten);
- `Answer`: the proxy answers the workload itself (a refusal) and nothing is forwarded; `frame` None
  when the workload expects no answer (a Produce with acks=0);
- `Close`: the connection must end; `reason` names the API, version and fault.

`Forward` and `Rewritten` carry a `Then`, or None: the step that turns the broker's response into the
one the workload gets (refused entries merged back, hidden topics removed, records masked). A step says
whether it must see the whole response (`reads_response`) before any byte of it reaches the workload;
it is asked when the response starts to arrive, so it can answer for the policy in force then.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

if typing.TYPE_CHECKING:
    from appliance.kafka import codec


@dataclass(frozen=True, slots=True)
class Check:
    """One decision, as the audit records it."""

    resource: str
    name: str | None
    operation: str
    allowed: bool
    rule: str

    def as_row(self) -> list:
        return [self.resource, self.name, self.operation, "allow" if self.allowed else "deny", self.rule]


class Then(typing.Protocol):
    @property
    def reads_response(self) -> bool: ...

    def complete(self, response: bytes, header: codec.RequestHeader) -> tuple[bytes, int]:
        """(the response for the workload, values masked in it)."""


@dataclass(frozen=True, slots=True)
class Forward:
    checks: tuple[Check, ...]
    request: Any = None  # decoded, when it was
    then: Then | None = None
    facts: codec.RequestFacts | None = None
    outcome: str = "allowed"
    excerpts: tuple = ()  # appliance.masking.excerpts.ExcerptSource: records to excerpt for the audit


@dataclass(frozen=True, slots=True)
class Rewritten:
    frame: bytes
    checks: tuple[Check, ...]
    request: Any  # as the workload sent it
    then: Then | None = None
    outcome: str = "allowed"  # or "partly refused" / "refused" (Metadata still asks for the broker list)
    masked: int = 0
    excerpts: tuple = ()  # as Forward's


@dataclass(frozen=True, slots=True)
class Answer:
    frame: bytes | None
    checks: tuple[Check, ...]
    request: Any = None


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    checks: tuple[Check, ...] = ()


Result = Forward | Rewritten | Answer | Close
