"""While the audit cannot be written, requests are answered by the proxy instead of forwarded (sans-io).

`audit_failure: refuse` (the default) puts an `AuditGate` in front of each
session's enforcer. While `failing()` returns a reason, every request except
ApiVersions and Metadata is answered at once with KAFKA_STORAGE_ERROR (56),
the reason in every `error_message` the response's schema has, and nothing
reaches the broker. Why that code:

- it is true: the appliance's storage, the audit, has failed;
- Produce and Fetch, where the data is, treat it as retriable in every client
  family (Java: KafkaStorageException is an InvalidMetadataException, so the
  producer refreshes metadata and retries within delivery.timeout.ms;
  librdkafka and franz-go retry it likewise). A short audit outage costs
  latency, not records; POLICY_VIOLATION or an authorization error would make
  producers drop the records as permanent failures;
- other APIs (group, transactions, admin) fail the call with that code and the
  message, which is what an operation that must be audited should do.

ApiVersions and Metadata go on: they carry no records, and a client that
cannot learn the brokers stops retrying at all. What they and the refusals
would have written is counted in the audit's gap marker.

The gate is the shell's mechanism: it wraps the enforcer the shell builds for
each session, so the session itself needs no hook.
"""

from __future__ import annotations

import typing
from typing import Any, Callable

from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity, element_type, mirror
from appliance.policy.enforce import Check, Verdict
from appliance.policy.permissions import permission_for

AUDIT_FAILING_ERROR = ErrorCode.kafka_storage_error
_PASSES = frozenset({apis.API_VERSIONS, apis.METADATA})


def _message(reason: str) -> str:
    return f"the appliance cannot write its audit ({reason}); requests are refused until it can (audit_failure: refuse)"


def _refused(frame: bytes, header: codec.RequestHeader, reason: str) -> Verdict:
    """Answer one request with AUDIT_FAILING_ERROR everywhere its response has an error code."""
    message = _message(reason)
    check = Check("audit", None, apis.api_name(header.api_key), False, "audit-unavailable")
    request = codec.decode_request(frame, header)
    if header.api_key == apis.PRODUCE and int(request.acks) == 0:
        return Verdict("refused", (check,), request, None)  # acks=0 expects no answer: dropped, audited
    cls = apis.response_class(header.api_key, header.api_version)
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    permission = permission_for(header.api_key, header.api_version)
    each = permission.each if permission is not None else None
    if each is not None and each.response_field in hints:
        element = element_type(hints[each.response_field])
        fields[each.response_field] = tuple(mirror(item, element, AUDIT_FAILING_ERROR, message)
                                            for item in getattr(request, each.field) or ())
    if "error_message" in hints:
        fields["error_message"] = message
    answer = codec.encode_response(header, default_entity(cls, AUDIT_FAILING_ERROR, **fields))
    return Verdict("refused", (check,), request, None, answer=answer)


class AuditGate:
    """An enforcer's stand-in: refuses while `failing()` names a reason, otherwise asks the enforcer."""

    def __init__(self, enforcer, failing: Callable[[], str | None]) -> None:
        self.enforcer = enforcer
        self.failing = failing
        self.complete = enforcer.complete  # asked of every response: bound once, not looked up each time

    def check(self, frame: bytes, header: codec.RequestHeader, *, refusal: str | None = None) -> Verdict:
        reason = self.failing()
        if reason is not None and header.api_key not in _PASSES:
            return _refused(frame, header, reason)
        return self.enforcer.check(frame, header, refusal=refusal)

    def __getattr__(self, name: str):  # policy, principal: the enforcer's own
        return getattr(self.enforcer, name)
