"""Applying the policy to one request (sans-io): the session's one entry point into policy.

`Enforcer.check(frame, header) -> Verdict` hands the request to the filter of
its API family (`appliance.policy.filters`), or to the table filter, and
turns the filter's typed result into the `Verdict` the session acts on:
`forward` (the bytes to send upstream; the original object when allowed as
is), `answer` (the proxy's own response), or neither (a refused acks=0
Produce). `Enforcer.complete(response, header, verdict) -> (bytes, masked)`
runs the verdict's response step, and `verdict.reads_response` says whether
that step must see the whole response before any byte reaches the workload
(the session streams large Fetch responses only when it is False).

An API key missing from the permission table is refused CLUSTER_AUTHORIZATION_FAILED
and never forwarded. A filter's `Close` is raised as `FilterClosed`, a
`codec.DecodeError`, which the session turns into an audited close naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity
from appliance.masking.decompress import MAX_BATCH_BYTES
from appliance.policy import filters
from appliance.policy.filters.context import Context, TopicIds
from appliance.policy.filters.results import Answer, Check, Close, Forward, Rewritten, Then
from appliance.policy.filters.table import Merge, TableFilter
from appliance.policy.model import Policy, Principal, ResourceType
from appliance.policy.permissions import permission_for

if typing.TYPE_CHECKING:
    from appliance.approvals.gate import Gate

__all__ = ["Check", "Enforcer", "FilterClosed", "Merge", "Verdict"]


class FilterClosed(codec.DecodeError):
    """A filter decided the connection must end; the message names the API, version and why."""


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # allowed | partly refused | refused
    checks: tuple[Check, ...]
    request: Any  # the request as the workload sent it, decoded; None when it was not decoded
    forward: bytes | None  # the frame to send upstream (the original when allowed); None: send nothing
    answer: bytes | None = None  # the proxy's own response, sent to the client now
    then: Then | None = None  # what must be done to the broker's response
    masked: int = 0  # values masked in the request (Produce)
    facts: codec.RequestFacts | None = None  # what the audit records, when known without a decode
    # What `effect: approve` rules need a person to approve before the request may go on (outcome "held"):
    # nothing is forwarded or answered now; the session holds it and decides it again once they are decided.
    held: tuple = ()
    granted: tuple = ()  # the approvals' grants it went on under (approvals.model.Grant)
    excerpts: tuple = ()  # records of the request to excerpt for the audit (appliance.masking.excerpts)

    def excerpt_sources(self) -> tuple:
        """Everything to excerpt for the audit: the request's records (Produce), and those the response
        step took from the response the workload received (Fetch), once it ran."""
        later = getattr(self.then, "excerpts", None)
        return self.excerpts + tuple(later) if later else self.excerpts

    @property
    def merge(self) -> Merge | None:
        """Refused entries the response step adds to the broker's response, if any."""
        return getattr(self.then, "merge", None)

    @property
    def reads_response(self) -> bool:
        """Whether `Enforcer.complete` must see the whole response before any of it reaches the client;
        asked when the response starts to arrive, it answers for the policy in force then."""
        return self.then is not None and self.then.reads_response


class Enforcer:
    """Decides requests for one principal, on one connection, against whatever `policy()` returns now."""

    def __init__(self, principal: Principal, policy: typing.Callable[[], Policy], *,
                 topic_ids: TopicIds | None = None, max_batch_bytes: int = MAX_BATCH_BYTES,
                 gate: Gate | None = None) -> None:
        self.principal = principal
        self.policy = policy
        self.gate = gate
        ctx = Context(principal, policy, max_batch_bytes=max_batch_bytes, gate=gate)
        if topic_ids is not None:
            ctx.topic_ids = topic_ids
        self._filters = filters.build(ctx)
        self._produce = self._filters[apis.PRODUCE]
        self._table = TableFilter(ctx)

    def check(self, frame: bytes, header: codec.RequestHeader, *, refusal: str | None = None) -> Verdict:
        """Decide one request. `refusal`: the request was held for approval and is decided again now; what
        is still not granted is refused with this reason instead of held again."""
        if header.api_key == apis.PRODUCE and refusal is None:  # the hot path: a shape decided, no decode
            known = self._produce.by_shape(frame, header, self.policy())
            if known is not None:
                return Verdict("allowed", known[0], None, frame, None, None, 0, known[1], excerpts=known[2])
        gate = self.gate
        if gate is None:
            return self._check(frame, header)
        gate.begin(refusal)
        verdict = self._check(frame, header)
        if gate.needed:
            return Verdict("held", verdict.checks, verdict.request, None, held=tuple(dict.fromkeys(gate.needed)))
        if gate.used:  # it goes on under these grants: a counted one is charged now, before the next request
            return dataclasses.replace(verdict, granted=gate.charge())
        return verdict

    def _check(self, frame: bytes, header: codec.RequestHeader) -> Verdict:
        permission = permission_for(header.api_key, header.api_version)
        if permission is None:
            return self._unmapped(header)
        family = self._filters.get(header.api_key)
        if family is None and permission.open:
            return Verdict("allowed", (), None, frame)
        policy = self.policy()
        if family is not None:
            result = family.request(frame, header, permission, policy)
        else:
            result = self._table.request(frame, header, codec.decode_request(frame, header), permission, policy)
        match result:
            case Forward(checks, request, then, facts, outcome, excerpts):
                return Verdict(outcome, checks, request, frame, then=then, facts=facts, excerpts=excerpts)
            case Rewritten(rewritten, checks, request, then, outcome, masked, excerpts):
                return Verdict(outcome, checks, request, rewritten, then=then, masked=masked, excerpts=excerpts)
            case Answer(answer, checks, request):
                return Verdict("refused", checks, request, None, answer=answer)
            case Close(reason, _):
                raise FilterClosed(f"{apis.api_name(header.api_key)} v{header.api_version}: {reason}")
        raise TypeError(f"filter for api key {header.api_key} returned {result!r}")

    def _unmapped(self, header: codec.RequestHeader) -> Verdict:
        check = Check(ResourceType.CLUSTER, None, apis.api_name(header.api_key), False, "unmapped-api")
        cls = apis.response_class(header.api_key, header.api_version)
        message = (f"refused by the appliance: {apis.api_name(header.api_key)} is not in the appliance's "
                   f"permission table, so it is never forwarded")
        messages = {f: message for f in cls.__dataclass_fields__ if f == "error_message"}
        answer = codec.encode_response(header, default_entity(cls, ErrorCode.cluster_authorization_failed, **messages))
        return Verdict("refused", (check,), None, None, answer=answer)

    def complete(self, response: bytes, header: codec.RequestHeader, verdict: Verdict) -> tuple[bytes, int]:
        """The response the client gets, and how many values were masked in it."""
        if verdict.then is None:
            return response, 0
        return verdict.then.complete(response, header)
