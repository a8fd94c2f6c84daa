"""Every API in the permission table, at every offered version, refused the way Kafka would refuse it.

For each (api, version) a request with two entries in every collection is
built from the schema, refused under a policy that grants nothing, and the
answer the workload would get (the proxy's own, or the broker's with the
refused entries merged in) is decoded and checked: one result per request
entry, every error code in it non-zero, every error message the policy's
reason, and never an empty result with error 0.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid

import pytest
from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity, default_value, element_type
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from appliance.policy.permissions import TABLE, offered, permission_for
from tests.kafka.builders import request_frame

NOTHING = parse_policy("version: 1\nrules: []\n", source="deny-all")
REASON = "refused by the appliance"
# Request collections answered entry for entry, for APIs decided on the whole request.
WHOLE_ENTRIES = {30: ("creations", "results"), 31: ("filters", "filter_results"),
                 43: ("topic_partitions", "replica_election_results"), 45: ("topics", "responses"),
                 49: ("entries", "entries"), 50: ("users", "results")}
# Answered with one error entry when the version has no top-level error code (DescribeLogDirs v0-2).
ONE_ENTRY = {35: "results"}


def _sample_value(name: str, tp, i: int):
    base = tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        base = next(a for a in typing.get_args(tp) if a is not type(None))
    element = element_type(base)
    if element is not None:
        return tuple(_sample_value(name, element, j) for j in range(2))
    if dataclasses.is_dataclass(base):
        return sample(base, i)
    if name == "acks":
        return -1
    if getattr(base, "__name__", "") == "f64":
        return base(0.5)
    if base is uuid.UUID:
        return uuid.UUID(int=i + 1)
    if isinstance(base, type) and issubclass(base, str):
        return base(f"{name}-{i}")
    if isinstance(base, type) and issubclass(base, bool):
        return False
    if isinstance(base, type) and issubclass(base, int) and "partition" in name:
        return base(i)
    return default_value(name, base, ErrorCode.none)


def sample(cls: type, i: int = 0):
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _sample_value(f.name, hints[f.name], i) for f in dataclasses.fields(cls)})


def _errors(entity) -> list[int]:
    found = []
    for f in dataclasses.fields(entity):
        value = getattr(entity, f.name)
        if isinstance(value, ErrorCode):
            found.append(int(value))
        elif dataclasses.is_dataclass(value):
            found += _errors(value)
        elif isinstance(value, tuple):
            for v in value:
                if dataclasses.is_dataclass(v):
                    found += _errors(v)
    return found


def _messages(entity) -> list[str | None]:
    found = []
    for f in dataclasses.fields(entity):
        value = getattr(entity, f.name)
        if f.name == "error_message" or f.name.endswith("_error_message"):
            found.append(value)
        elif dataclasses.is_dataclass(value):
            found += _messages(value)
        elif isinstance(value, tuple):
            for v in value:
                if dataclasses.is_dataclass(v):
                    found += _messages(v)
    return found


def _cases():
    for row in TABLE:
        if row.open:
            continue
        versions = offered(row.api_key)
        for version in range(max(versions.min, row.since_version), versions.max + 1):
            if permission_for(row.api_key, version) is row:
                yield pytest.param(row.api_key, version, id=f"{row.name}-v{version}")


def _expected(api_key: int, version: int, request) -> tuple[str, int] | None:
    row = permission_for(api_key, version)
    if api_key == 34:  # AlterReplicaLogDirs: one result per topic named in any directory
        return "results", len({str(t.name) for d in request.dirs for t in d.topics})
    if api_key == 51:  # AlterUserScramCredentials: one result per user
        return "results", len({str(e.name) for e in (*request.deletions, *request.upsertions)})
    if row.each is not None:
        return row.each.response_field, len(getattr(request, row.each.field))
    if api_key in ONE_ENTRY:
        return ONE_ENTRY[api_key], 1
    if api_key in WHOLE_ENTRIES:
        field, response_field = WHOLE_ENTRIES[api_key]
        return response_field, len(getattr(request, field))
    return None


@pytest.mark.parametrize("api_key,version", list(_cases()))
def test_a_refusal_answers_every_entry_with_kafkas_error_and_the_reason(api_key, version):
    request = sample(apis.request_class(api_key, version))
    if api_key == apis.METADATA and version >= 10:
        # By name: a request naming ids is decided on them alone (tests/policy/filters/test_metadata.py).
        request = dataclasses.replace(request, topics=tuple(dataclasses.replace(t, topic_id=None)
                                                            for t in request.topics))
    frame = request_frame(request, correlation_id=77)
    header = codec.parse_request_header(frame)
    verdict = Enforcer(Principal("nobody"), lambda: NOTHING).check(frame, header)
    assert verdict.outcome == "refused", verdict
    if verdict.answer is not None:
        answer = verdict.answer
        assert verdict.forward is None and codec.response_correlation_id(answer) == 77
    else:  # forwarded asking for nothing (Metadata, a Fetch session's epoch): the broker's answer, merged
        assert verdict.forward is not None and verdict.reads_response
        cls = apis.response_class(api_key, version)
        broker = codec.encode_response(header, default_entity(cls, ErrorCode.none))
        answer, _ = Enforcer(Principal("nobody"), lambda: NOTHING).complete(broker, header, verdict)
    response = codec.decode_response(answer, api_key, version)
    expected = _expected(api_key, version, request)
    top_error = int(getattr(response, "error_code", 0) or 0)
    if expected is None:
        assert top_error != 0, f"no entries to answer, so the top-level error must say why: {response}"
    else:
        field, count = expected
        entries = getattr(response, field)
        assert count > 0 and len(entries) == count, (field, count, entries)
        for entry in entries:
            codes = _errors(entry)
            assert codes and all(codes), f"an entry of {field} without its error: {entry}"
    for field in dataclasses.fields(response):  # never an empty result with error 0
        value = getattr(response, field.name)
        if isinstance(value, tuple) and value == () and expected is not None and field.name == expected[0]:
            assert top_error != 0
    messages = _messages(response)
    if verdict.answer is None:  # the broker's own top-level message stays the broker's
        messages = [m for e in getattr(response, expected[0]) for m in _messages(e)]
    for message in messages:
        assert message and REASON in message, (message, response)
