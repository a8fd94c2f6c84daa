"""Refusals that look the way Kafka's own authorizer's do: the right error, per resource, with the reason.

A refused request is answered with a response of its own version in which
every top-level error code is the refusal's, every top-level error message is
the policy's reason, and each entry of the request is answered by an entry
of the response (mirrored: names and indexes copied, every error code set,
every error message the reason). A client that waits for one result per entry
(the Java admin's CreateAcls, AlterClientQuotas, AlterUserScramCredentials)
gets it; none is an empty result with error 0.

`ENTRIES` says, per API, which request collection a response collection
answers, for the APIs whose permission is decided on the whole request; the
APIs decided per entry name theirs in the permission table (`Each`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity, element_type, mirror
from appliance.policy.model import Decision, ResourceType
from appliance.policy.permissions import DENIED_ERROR, IMMUTABLE_ERROR, permission_for

Builder = Callable[[Any, type, ErrorCode, str], tuple]


def error_for(resource: ResourceType, decision: Decision) -> ErrorCode:
    return IMMUTABLE_ERROR if decision.rule == "immutable-topics" else DENIED_ERROR[resource]


def message_for(decision: Decision) -> str:
    return f"refused by the appliance's policy ({decision.rule}): {decision.reason}"


def _each(field: str) -> Builder:
    def build(request: Any, element: type, error: ErrorCode, message: str) -> tuple:
        return tuple(mirror(item, element, error, message) for item in getattr(request, field) or ())
    return build


def _log_dirs(request: Any, element: type, error: ErrorCode, message: str) -> tuple:
    # AlterReplicaLogDirs: the request groups partitions by directory, the response by topic.
    partition_cls = element_type(typing.get_type_hints(element)["partitions"])
    by_topic: dict[str, list[int]] = {}
    for directory in request.dirs:
        for topic in directory.topics:
            by_topic.setdefault(str(topic.name), []).extend(int(p) for p in topic.partitions)
    return tuple(element(topic_name=name, partitions=tuple(
        partition_cls(partition_index=p, error_code=error) for p in parts)) for name, parts in by_topic.items())


def _scram_users(request: Any, element: type, error: ErrorCode, message: str) -> tuple:
    # AlterUserScramCredentials: one result per user named in deletions or upsertions (Kafka dedupes).
    users = dict.fromkeys(str(e.name) for e in (*request.deletions, *request.upsertions))
    return tuple(element(user=u, error_code=error, error_message=message) for u in users)


def _quota_entries(request: Any, element: type, error: ErrorCode, message: str) -> tuple:
    # AlterClientQuotas: the Java admin completes each entity's future from the entry naming it.
    entity_cls = element_type(typing.get_type_hints(element)["entity"])
    return tuple(element(error_code=error, error_message=message, entity=tuple(
        entity_cls(entity_type=e.entity_type, entity_name=e.entity_name) for e in entry.entity))
        for entry in request.entries)


def _scram_described(request: Any, element: type, error: ErrorCode, message: str) -> tuple:
    return tuple(default_entity(element, error, user=str(u.name), error_message=message, credential_infos=())
                 for u in request.users or ())


def _one_error(request: Any, element: type, error: ErrorCode, message: str) -> tuple:
    # DescribeLogDirs v0-2 has no top-level error code: one log dir entry carries the refusal.
    return (default_entity(element, error),)


# api key -> ((response field, builder), ...) for whole-request permissions.
ENTRIES: dict[int, tuple[tuple[str, Builder], ...]] = {
    30: (("results", _each("creations")),),  # CreateAcls
    31: (("filter_results", _each("filters")),),  # DeleteAcls
    34: (("results", _log_dirs),),  # AlterReplicaLogDirs
    35: (("results", _one_error),),  # DescribeLogDirs
    43: (("replica_election_results", _each("topic_partitions")),),  # ElectLeaders
    45: (("responses", _each("topics")),),  # AlterPartitionReassignments
    49: (("entries", _quota_entries),),  # AlterClientQuotas
    50: (("results", _scram_described),),  # DescribeUserScramCredentials
    51: (("results", _scram_users),),  # AlterUserScramCredentials
}


def _top_level_messages(cls: type, message: str) -> dict[str, str]:
    return {f.name: message for f in dataclasses.fields(cls)
            if f.name == "error_message" or f.name.endswith("_error_message")}


def entry_builders(api_key: int, version: int) -> tuple[tuple[str, Builder], ...]:
    row = permission_for(api_key, version)
    if row is not None and row.each is not None:
        return ((row.each.response_field, _each(row.each.field)),)
    return ENTRIES.get(api_key, ())


def refuse(header: codec.RequestHeader, request: Any, error: ErrorCode, message: str) -> bytes:
    """The answer to a wholly refused request: every error code `error`, every message `message`."""
    cls = apis.response_class(header.api_key, header.api_version)
    hints = typing.get_type_hints(cls)
    overrides: dict[str, Any] = _top_level_messages(cls, message)
    if request is not None:
        for field, build in entry_builders(header.api_key, header.api_version):
            overrides[field] = build(request, element_type(hints[field]), error, message)
    return codec.encode_response(header, default_entity(cls, error, **overrides))


def answer_entries(header: codec.RequestHeader, field: str, entries: tuple) -> bytes:
    """A response whose only content is `entries` in `field` (every entry refused), top-level error NONE."""
    cls = apis.response_class(header.api_key, header.api_version)
    return codec.encode_response(header, default_entity(cls, ErrorCode.none, **{field: entries}))


def mirrored(header: codec.RequestHeader, field: str, refused: list[tuple[Any, ErrorCode, str]]) -> tuple:
    """Response entries of `field` answering refused request entries, each with its own error and reason."""
    element = element_type(typing.get_type_hints(apis.response_class(header.api_key, header.api_version))[field])
    return tuple(mirror(item, element, error, message) for item, error, message in refused)
