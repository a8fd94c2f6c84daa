"""The approval webhook's message (pure): what the approvers are told, and the console's links when it is on."""

from __future__ import annotations

import json

from appliance.approvals.model import Need, file_request
from appliance.approvals.webhook import console_link, message
from appliance.policy.model import Approval

REQUEST = file_request(rule="ops-create", approval=Approval(("kafka-admins",), webhook="http://hooks.test/a"),
                       identity="ops-bot", groups=("bots",), needs=(Need("ops-create", "create", "topic", "pay-v2"),),
                       api="CreateTopics", session_id="s1", cgroup_path="/ops", now=100.0)


def test_without_the_console_the_message_says_how_to_decide_on_the_gateway_and_links_nowhere():
    posted = message(REQUEST)
    assert posted["text"].startswith("Approval needed: ops-bot asks for create on topic 'pay-v2' (CreateTopics)")
    assert "http" not in json.dumps(posted)
    assert f"appliance approvals approve {REQUEST.id}" in json.dumps(posted["blocks"])
    assert [b for b in posted["blocks"] if b["type"] == "actions"] == []


def test_with_the_console_the_message_links_to_the_requests_page_to_approve_or_deny_there():
    posted = message(REQUEST, "https://gateway.example.com:19443")
    page = f"https://gateway.example.com:19443/approvals/{REQUEST.id}"
    assert posted["text"].endswith(f"; approve or deny at {page}")
    (actions,) = [b for b in posted["blocks"] if b["type"] == "actions"]
    assert [(e["text"]["text"], e["url"]) for e in actions["elements"]] == [
        ("Approve…", f"{page}#approve"), ("Deny…", f"{page}#deny")]
    assert f"<{page}|request {REQUEST.id}>" in json.dumps(posted["blocks"])
    assert f"appliance approvals deny {REQUEST.id}" in json.dumps(posted["blocks"])  # the gateway way stays


def test_a_link_quotes_the_id_and_joins_the_url_with_one_slash():
    assert console_link("http://127.0.0.1:19443/", "apr-0a1b") == "http://127.0.0.1:19443/approvals/apr-0a1b"
    assert console_link("http://h", "a/b?c") == "http://h/approvals/a%2Fb%3Fc"
