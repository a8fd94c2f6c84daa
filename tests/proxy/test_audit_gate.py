"""While the audit fails, the gate answers requests with KAFKA_STORAGE_ERROR and the reason; nothing is forwarded."""

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator.v4.request import FindCoordinatorRequest
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest

from appliance.kafka import apis, codec
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from appliance.proxy import events as ev
from appliance.proxy.audit_gate import AuditGate
from appliance.proxy.commands import Audit, SendToClient, SendToUpstream
from appliance.proxy.session import Session
from tests.kafka.builders import request_frame
from tests.proxy.test_session import ALLOW_ALL, PLAIN, authenticate, handshake_ok, metadata, of, produce


def gated_session(failing):
    gate = AuditGate(Enforcer(Principal("orders", frozenset()), lambda: ALLOW_ALL), failing)
    s = Session("s1", PLAIN, gate, max_frame_bytes=1 << 20, now=0.0)
    s.handle(ev.UpstreamConnected(), 0.0)
    s.handle(ev.UpstreamData(handshake_ok()), 0.0)
    s.handle(ev.UpstreamData(authenticate()), 0.0)
    return s


def test_produce_is_answered_with_a_retriable_storage_error_naming_the_reason():
    s = gated_session(lambda: "write error on /x/audit.db: database or disk is full")
    out = s.handle(ev.ClientData(produce(acks=-1)), 1.0)
    assert not of(out, SendToUpstream)
    (answer,) = of(out, SendToClient)
    response = codec.decode_response(answer.data, apis.PRODUCE, 9)
    (partition,) = response.responses[0].partition_responses
    assert response.responses[0].name == "orders" and partition.index == 0
    assert partition.error_code == ErrorCode.kafka_storage_error
    assert "database or disk is full" in partition.error_message and "audit_failure: refuse" in partition.error_message
    (operation,) = [a.record for a in of(out, Audit)]
    assert operation.outcome == "refused" and operation.error_code == ErrorCode.kafka_storage_error
    assert '"audit-unavailable"' in operation.checks


def test_acks_0_produce_is_dropped_not_answered():
    s = gated_session(lambda: "audit queue full")
    out = s.handle(ev.ClientData(produce(acks=0)), 1.0)
    assert not of(out, SendToUpstream) and not of(out, SendToClient)
    assert [a.record.outcome for a in of(out, Audit)] == ["refused"]


def test_other_apis_get_the_error_in_every_entry_and_at_the_top():
    s = gated_session(lambda: "audit queue full")
    out = s.handle(ev.ClientData(request_frame(FindCoordinatorRequest(key_type=0, coordinator_keys=("g1",)),
                                               correlation_id=9)), 1.0)
    (answer,) = of(out, SendToClient)
    response = codec.decode_response(answer.data, 10, 4)
    assert response.coordinators[0].key == "g1"
    assert response.coordinators[0].error_code == ErrorCode.kafka_storage_error
    assert "audit queue full" in response.coordinators[0].error_message
    out = s.handle(ev.ClientData(request_frame(InitProducerIdRequest(
        transactional_id=None, transaction_timeout=datetime.timedelta(seconds=60), producer_id=-1, producer_epoch=-1),
        correlation_id=10)), 1.0)
    response = codec.decode_response(of(out, SendToClient)[0].data, 22, 4)
    assert response.error_code == ErrorCode.kafka_storage_error


def test_metadata_goes_on_and_everything_goes_on_once_the_audit_writes():
    reason = ["audit queue full"]
    s = gated_session(lambda: reason[0])
    assert of(s.handle(ev.ClientData(metadata()), 1.0), SendToUpstream)
    reason[0] = None
    assert of(s.handle(ev.ClientData(produce(acks=-1, correlation_id=7)), 1.0), SendToUpstream)
