"""The filter for APIs the permission table describes fully, and the pieces other filters share.

`Whole` rows decide the request once (a group, a transactional id, the
cluster): a refusal answers the whole request (see `refusals`). An `Each` row
decides every entry of one collection: refused entries are cut from the
request and merged back into the broker's response with their error; when
every entry is refused, the proxy answers alone. `Edit` is the usual response
step: decode, merge refused entries, let the filter change the response,
re-encode only when something changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from kio.schema.errors import ErrorCode

from appliance.kafka import codec
from appliance.policy.filters import refusals
from appliance.policy.filters.context import Context
from appliance.policy.filters.results import Answer, Check, Forward, Result, Rewritten
from appliance.policy.model import Operation, Policy, ResourceType
from appliance.policy.permissions import Each, Permission


@dataclass(frozen=True, slots=True)
class Merge:
    """Refused entries to add to the broker's response before it reaches the client."""

    field: str
    entries: tuple


# (entity, policy now) -> (entity, values masked); return the same entity when nothing changed.
ResponseEdit = Callable[[Any, Policy], tuple[Any, int]]


@dataclass(frozen=True, slots=True)
class Edit:
    """Decode the response, apply `edit` under the policy in force now, merge `merge`, re-encode if changed."""

    ctx: Context
    merge: Merge | None = None
    edit: ResponseEdit | None = None

    @property
    def reads_response(self) -> bool:
        return True

    def complete(self, response: bytes, header: codec.RequestHeader) -> tuple[bytes, int]:
        entity = codec.decode_response(response, header.api_key, header.api_version)
        before = entity
        masked = 0
        if self.edit is not None:  # the broker's entries only: the merged ones are the proxy's own
            entity, masked = self.edit(entity, self.ctx.policy())
        if self.merge is not None:
            field = self.merge.field
            entity = dataclasses.replace(entity, **{field: tuple(getattr(entity, field)) + self.merge.entries})
        if entity is before:
            return response, 0
        return codec.replace_response_body(response, header.api_key, header.api_version, entity), masked


def _kind(kinds, value, default: tuple[ResourceType, Operation]) -> tuple[ResourceType, Operation]:
    for k, resource, operation in kinds:
        if int(value) == k:
            return resource, operation
    return default


def whole_refusal(ctx: Context, permission: Permission, request: Any, policy: Policy,
                  checks: list) -> tuple[ErrorCode, str] | None:
    """Check the request-wide resources; the first refusal's (error, message), or None."""
    first = None
    for whole in permission.whole:
        name = getattr(request, whole.field) if whole.field else None
        if whole.optional and name is None:
            continue
        resource, operation = whole.resource, whole.operation
        if whole.kind_field:
            resource, operation = _kind(whole.kinds, getattr(request, whole.kind_field, 0), (resource, operation))  # v0: groups only
        decision = ctx.check(checks, operation, resource, None if name is None else str(name), policy)
        if not decision.allowed and first is None:
            first = (refusals.error_for(resource, decision), refusals.message_for(decision))
    if permission.idempotent_produce and getattr(request, "transactional_id", None) is None:
        decision = policy.allows_any(ctx.principal, Operation.PRODUCE, ResourceType.TOPIC)
        checks.append(Check(ResourceType.CLUSTER, None, "idempotent-produce", decision.allowed, decision.rule))
        if not decision.allowed and first is None:
            first = (ErrorCode.cluster_authorization_failed, refusals.message_for(decision))
    return first


def entry(each: Each, request: Any, item: Any) -> tuple[ResourceType, Operation, str | None]:
    name = item if each.name is None else getattr(item, each.name)
    resource, operation = each.resource, each.operation
    if each.kind_field:
        resource, operation = _kind(each.kinds, getattr(item, each.kind_field), (resource, operation))
    elif each.top_kind_field:
        resource, operation = _kind(each.kinds, getattr(request, each.top_kind_field), (resource, operation))
    if resource == ResourceType.CLUSTER:
        name = None
    return resource, operation, None if name is None else str(name)


def split(ctx: Context, each: Each, request: Any, policy: Policy,
          checks: list) -> tuple[tuple, list, list[tuple[Any, ErrorCode, str]]]:
    """(every entry, the allowed ones, the refused ones with their error and reason)."""
    items = tuple(getattr(request, each.field) or ())
    kept, refused = [], []
    for item in items:
        resource, operation, name = entry(each, request, item)
        decision = ctx.check(checks, operation, resource, name, policy)
        if decision.allowed:
            kept.append(item)
        else:
            refused.append((item, refusals.error_for(resource, decision), refusals.message_for(decision)))
    return items, kept, refused


class TableFilter:
    """Any API whose permission row says all there is to decide."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def request(self, frame: bytes, header: codec.RequestHeader, request: Any, permission: Permission,
                policy: Policy, then: Callable[[Merge | None], Any] | None = None) -> Result:
        """Decide; `then` builds the response step from the merge (filters that edit responses pass it)."""
        checks: list = []
        whole = whole_refusal(self.ctx, permission, request, policy, checks)
        if whole is not None:
            return Answer(refusals.refuse(header, request, *whole), tuple(checks), request)
        each = permission.each
        if each is None:
            return Forward(tuple(checks), request, then(None) if then else None)
        _, kept, refused = split(self.ctx, each, request, policy, checks)
        if not refused:
            return Forward(tuple(checks), request, then(None) if then else None)
        entries = refusals.mirrored(header, each.response_field, refused)
        if not kept:
            return Answer(refusals.answer_entries(header, each.response_field, entries), tuple(checks), request)
        rewritten = dataclasses.replace(request, **{each.field: tuple(kept)})
        merge = Merge(each.response_field, entries)
        return Rewritten(codec.replace_request_body(frame, header, rewritten), tuple(checks), request,
                         then(merge) if then else Edit(self.ctx, merge), outcome="partly refused")
