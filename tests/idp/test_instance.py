"""instance.json: written by start, read back by status and stop as hostile input."""

from __future__ import annotations

import json

import pytest

from appliance.idp.instance import InstanceRecord, RecordError
from appliance.idp.realm import DEMO_REALM, Endpoints, service_account_id


def _record(pid=1234) -> InstanceRecord:
    return InstanceRecord.of(DEMO_REALM, pid=pid, port=18080, started_at=1.5e9, keycloak_version="26.5.6",
                             endpoints=Endpoints.of("http://127.0.0.1:18080", "appliance"))


def test_round_trip():
    record = _record()
    assert InstanceRecord.from_json(record.to_json()) == record
    assert record.clients[0].client_id == "orders" and record.clients[0].groups == ("payments",)
    assert record.clients[0].sub == service_account_id("appliance", "orders")
    assert {c.client_id: c.token_lifespan_s for c in record.clients}["short-lived"] == 30


def test_stopped_keeps_everything_but_the_pid():
    stopped = InstanceRecord.from_json(_record().stopped().to_json())
    assert stopped.pid is None and stopped.endpoints == _record().endpoints


def _damaged(**changes) -> str:
    data = json.loads(_record().to_json())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer][inner] = value
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ("[]", "the record is []"),
    (_damaged(pid="1234"), "pid '1234' is not a process id"),
    (_damaged(pid=True), "pid True is not a process id"),
    (_damaged(pid=-1), "pid -1"),
    (_damaged(port=70000), "port 70000"),
    (_damaged(port="18080"), "port is '18080', not int"),
    (_damaged(endpoints=None), "endpoints is None"),
    (_damaged(**{"endpoints.jwks": 5}), "endpoints.jwks is 5"),
    (_damaged(clients=[{"client_id": "a", "groups": "g", "sub": "s", "token_lifespan_s": 1}]), "clients[0].groups"),
    (_damaged(started_at="now"), "started_at is 'now'"),
])
def test_a_damaged_record_is_refused_naming_the_field(text, message):
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        InstanceRecord.from_json(text)
