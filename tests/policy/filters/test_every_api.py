"""Every API the proxy offers, at every version, under a policy that allows all and one that allows nothing:
`check` and `complete` never raise, and what they produce decodes."""

from __future__ import annotations

import pytest
from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity
from appliance.policy.enforce import Enforcer, FilterClosed
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from appliance.policy.permissions import TABLE, offered
from tests.kafka.builders import request_frame
from tests.policy.test_refusals import sample

EVERYTHING = parse_policy("""
version: 1
rules:
  - name: all
    identities: [w]
    operations: [produce, consume, describe, create, delete, alter, delete-records, group, transactions, admin]
    topics: ["*"]
    consumer_groups: ["*"]
    transactional_ids: ["*"]
    cluster: true
masking:
  - name: m
    topics: ["*"]
    on: [produce, fetch]
    detectors: [email]
    action: redact
""", source="everything")
NOTHING = parse_policy("version: 1\nrules: []\n", source="nothing")
# Samples Kafka itself refuses as invalid, which close the connection: Metadata v10-11 naming a topic id.
INVALID_SAMPLES = {(apis.METADATA, 10): "by id", (apis.METADATA, 11): "by id"}


def _cases():
    for key in sorted({row.api_key for row in TABLE}):
        versions = offered(key)
        for version in range(versions.min, versions.max + 1):
            yield pytest.param(key, version, id=f"{apis.api_name(key)}-v{version}")


@pytest.mark.parametrize("api_key,version", list(_cases()))
@pytest.mark.parametrize("policy", [EVERYTHING, NOTHING], ids=["everything", "nothing"])
def test_check_and_complete_are_total(api_key, version, policy):
    request = sample(apis.request_class(api_key, version))
    frame = request_frame(request, correlation_id=5)
    header = codec.parse_request_header(frame)
    enforcer = Enforcer(Principal("w"), lambda: policy)
    if (api_key, version) in INVALID_SAMPLES:
        with pytest.raises(FilterClosed, match=INVALID_SAMPLES[api_key, version]):
            enforcer.check(frame, header)
        return
    verdict = enforcer.check(frame, header)
    if verdict.answer is not None:
        codec.decode_response(verdict.answer, api_key, version)
        return
    if verdict.forward is None:
        return  # a refused acks=0 Produce: nothing to send either way
    sent = codec.decode_request(verdict.forward, codec.parse_request_header(verdict.forward))
    assert type(sent) is type(request)
    broker = codec.encode_response(header, default_entity(apis.response_class(api_key, version), ErrorCode.none))
    _ = verdict.reads_response
    out, _ = enforcer.complete(broker, header, verdict)
    codec.decode_response(out, api_key, version)
