"""Approvals: votes and grants (pure), their store (a real SQLite file), and a session holding a request."""

from __future__ import annotations

import datetime
import json
import threading

import pytest
from kio.schema.create_topics.v7.request import CreatableTopic, CreateTopicsRequest
from kio.schema.create_topics.v7.response import CreateTopicsResponse
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from appliance.approvals.gate import Gate, Grants
from appliance.approvals.model import (OPERATOR, ApprovalError, Approver, Need, State, file_request, vote)
from appliance.approvals.store import ApprovalStore
from appliance.kafka import codec
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Approval, GrantScope, Operation, Principal, ResourceType
from appliance.policy.parser import PolicyError, parse_policy
from appliance.proxy import events as ev
from appliance.proxy.commands import HoldForApproval, SendToClient, SendToUpstream
from appliance.proxy.session import Session
from tests.kafka.builders import request_frame
from tests.proxy.test_session import PLAIN, handshake_ok, authenticate, metadata, of

POLICY = parse_policy("""
version: 1
rules:
  - name: new-topics-need-approval
    effect: approve
    identities: [ops-bot]
    operations: [create]
    topics: ["*"]
    approval: {approvers: [kafka-admins], approvals: 2, hold_s: 5, pending_s: 600, grant: {ttl_s: 60}}
  - name: ops-bot-describes
    identities: [ops-bot]
    operations: [describe]
    topics: ["*"]
""", source="test-policy")
RULE = POLICY.rule_named("new-topics-need-approval")
BOT = Principal("ops-bot", frozenset({"bots"}))
NEED = Need(RULE.name, "create", "topic", "payments-v2")
ALICE = Approver("alice", ("kafka-admins",))
BOB = Approver("bob", ("kafka-admins",))


def request(now=100.0, approval=RULE.approval, needs=(NEED,)):
    return file_request(rule=RULE.name, approval=approval, identity="ops-bot", groups=("bots",), needs=needs,
                        api="CreateTopics", session_id="s1", cgroup_path="/ops", now=now)


# ---- the policy --------------------------------------------------------------------------------------

def test_an_approve_rule_decides_before_allow_rules_and_names_itself():
    decision = POLICY.decide(BOT, Operation.CREATE, ResourceType.TOPIC, "payments-v2")
    assert not decision.allowed and decision.rule == RULE.name and decision.approval is RULE
    assert "needs a person's approval" in decision.reason
    assert RULE.approval == Approval(("kafka-admins",), approvals=2, hold_s=5, pending_s=600, grant_ttl_s=60)


@pytest.mark.parametrize("approval, message", [
    ("", "has effect approve but no key 'approval'"),
    ("    approval: {approvals: 1}\n", "has no key 'approvers'"),
    ("    approval: {approvers: []}\n", "is empty"),
    ("    approval: {approvers: ['prefix:adm']}\n", "must name groups exactly"),
    ("    approval: {approvers: [a], hold_s: 0}\n", "must be a number of seconds from 1 to 300"),
    ("    approval: {approvers: [a], approvals: 1.5}\n", "must be a whole number from 1 to 10"),
    ("    approval: {approvers: [a], hold_s: 30, pending_s: 10}\n", "is shorter than hold_s"),
    ("    approval: {approvers: [a], grant: {scope: everything}}\n", "must be requested or rule"),
    ("    approval: {approvers: [a], webhook: 'ftp://x'}\n", "must be an http:// or https:// URL"),
    ("    approval: {approvers: [a], holds: 3}\n", "is not an approval setting"),
])
def test_a_bad_approval_is_refused_naming_the_key(approval, message):
    text = ("version: 1\nrules:\n  - name: r\n    effect: approve\n    identities: [a]\n    operations: [create]\n"
            "    topics: ['*']\n" + approval)
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, source="p.yaml")


def test_an_approval_on_an_allow_rule_is_refused():
    with pytest.raises(PolicyError, match="is only for rules with effect approve"):
        parse_policy("version: 1\nrules:\n  - name: r\n    identities: [a]\n    operations: [create]\n"
                     "    topics: ['*']\n    approval: {approvers: [a]}\n", source="p.yaml")


# ---- votes -------------------------------------------------------------------------------------------

def test_two_approvers_make_a_grant_for_what_was_asked_until_its_ttl():
    r, grant = vote(request(), ALICE, True, "ticket OPS-1", 101.0)
    assert grant is None and r.state == State.PENDING
    r, grant = vote(r, BOB, True, "looks fine", 102.0)
    assert r.state == State.APPROVED and grant.approvers == ("alice", "bob") and grant.expires_at == 162.0
    assert grant.covers("ops-bot", NEED, 161.9) and not grant.covers("ops-bot", NEED, 162.0)
    assert not grant.covers("ops-bot", Need(RULE.name, "create", "topic", "other"), 110)
    assert not grant.covers("someone-else", NEED, 110)


def test_a_rule_scoped_grant_covers_the_rules_operation_on_any_name():
    approval = Approval(("kafka-admins",), grant_scope=GrantScope.RULE)
    _, grant = vote(request(approval=approval), ALICE, True, "ok", 101.0)
    assert grant.covers("ops-bot", Need(RULE.name, "create", "topic", "another"), 102)
    assert not grant.covers("ops-bot", Need(RULE.name, "delete", "topic", "another"), 102)


@pytest.mark.parametrize("approver, message", [
    (Approver("ops-bot", ("kafka-admins",)), "cannot approve or deny their own request"),
    (Approver("mallory", ("bots",)), "is in none of rule new-topics-need-approval's approver groups"),
])
def test_votes_that_may_not_be_taken_are_refused(approver, message):
    with pytest.raises(ApprovalError, match=message):
        vote(request(), approver, True, "because", 101.0)


def test_one_denial_decides_and_nobody_votes_twice_or_after_the_decision():
    r, _ = vote(request(), ALICE, True, "ok", 101.0)
    with pytest.raises(ApprovalError, match="has already voted"):
        vote(r, ALICE, True, "again", 101.5)
    r, grant = vote(r, BOB, False, "not in the freeze", 102.0)
    assert grant is None and r.state == State.DENIED
    with pytest.raises(ApprovalError, match="is already denied"):
        vote(r, Approver(OPERATOR), True, "override", 103.0)


def test_an_expired_request_and_an_empty_reason_are_refused():
    with pytest.raises(ApprovalError, match="expired"):
        vote(request(now=0.0), ALICE, True, "late", 601.0)
    with pytest.raises(ApprovalError, match="a reason is required"):
        vote(request(), ALICE, True, "   ", 101.0)


def test_the_operator_needs_no_group_but_counts_once():
    r, grant = vote(request(), Approver(OPERATOR), True, "cli", 101.0)
    assert grant is None and r.approvals == (OPERATOR,)


# ---- the store ---------------------------------------------------------------------------------------

def test_the_store_keeps_requests_votes_and_grants_across_connections(tmp_path):
    path = tmp_path / "approvals.db"
    serving, cli = ApprovalStore(path), ApprovalStore(path)
    filed = request()
    serving.file(filed)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert serving.pending_for("ops-bot", RULE.name, (NEED,), 101.0).id == filed.id  # a retry joins it
    assert serving.pending_for("ops-bot", RULE.name, (NEED,), 700.0) is None  # not once it expired
    serving.changed()
    cli.vote(filed.id, ALICE, True, "one", 101.0)
    _, grant = cli.vote(filed.id, BOB, True, "two", 102.0)
    assert serving.changed() and not serving.changed()
    assert [g.id for g in serving.grants(active_at=110.0)] == [grant.id]
    assert serving.get(filed.id).state == State.APPROVED
    revoked = cli.revoke(grant.id, OPERATOR, "done", 120.0)
    assert revoked.revoked_by == OPERATOR and serving.grants(active_at=121.0) == []
    with pytest.raises(ApprovalError, match="already revoked"):
        cli.revoke(grant.id, OPERATOR, "again", 121.0)
    with pytest.raises(ApprovalError, match="no approval request 'apr-nothing'"):
        cli.get("apr-nothing")


def test_expiry_marks_only_undecided_requests_past_their_time(tmp_path):
    store = ApprovalStore(tmp_path / "approvals.db")
    old, fresh = request(now=0.0), request(now=500.0)
    store.file(old), store.file(fresh)
    assert [r.id for r in store.expire_due(650.0)] == [old.id]
    assert store.get(old.id).state == State.EXPIRED and store.get(fresh.id).state == State.PENDING
    with pytest.raises(ApprovalError, match="is already expired"):
        store.vote(old.id, ALICE, True, "late", 651.0)


def test_concurrent_votes_from_two_processes_never_lose_one(tmp_path):
    path = tmp_path / "approvals.db"
    approval = Approval(("kafka-admins",), approvals=8)
    filed = request(approval=approval)
    ApprovalStore(path).file(filed)
    errors = []

    def cast(n):
        try:
            ApprovalStore(path).vote(filed.id, Approver(f"person-{n}", ("kafka-admins",)), True, "yes", 101.0 + n)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=cast, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decided = ApprovalStore(path).get(filed.id)
    assert errors == [] and decided.state == State.APPROVED and len(decided.votes) == 8
    assert len(ApprovalStore(path).grants()) == 1


# ---- the gate and the session ------------------------------------------------------------------------

def create_topics(name="payments-v2", correlation_id=7):
    return request_frame(CreateTopicsRequest(topics=(CreatableTopic(name=name, num_partitions=1, replication_factor=1,
                                                                     assignments=(), configs=()),),
                                             timeout=datetime.timedelta(seconds=30), validate_only=False),
                         correlation_id=correlation_id)


class Conn:
    """A held connection as the desk sees it: its answers kept."""

    gone = False

    def __init__(self):
        self.answers = []

    def dispatch(self, event):
        self.answers.append(event)


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def relaying_session(grants: Grants, clock: Clock) -> Session:
    enforcer = Enforcer(BOT, lambda: POLICY, gate=Gate(BOT, grants, clock))
    s = Session("s1", PLAIN, enforcer, max_frame_bytes=1 << 20, now=0.0)
    s.handle(ev.UpstreamConnected(), 0.0)
    s.handle(ev.UpstreamData(handshake_ok()), 0.0)
    s.handle(ev.UpstreamData(authenticate()), 0.0)
    return s


def created(command: SendToClient):
    data = command.data
    return entity_reader(CreateTopicsResponse)(data, 4 + 4 + 1)[0]


def test_a_held_request_holds_later_ones_and_goes_on_in_order_once_approved():
    grants, clock = Grants(), Clock()
    s = relaying_session(grants, clock)
    later = metadata(correlation_id=8, topic="payments-v2")
    out = s.handle(ev.ClientData(create_topics() + later), 1.0)
    (hold,) = of(out, HoldForApproval)
    assert hold.needs == (NEED,) and hold.api == "CreateTopics"
    assert of(out, SendToUpstream) == [] and of(out, SendToClient) == []  # nothing forwarded, nothing answered
    assert s.handle(ev.ClientData(metadata(correlation_id=9)), 1.5) == []  # parked behind the held one
    _, grant = vote(vote(request(), ALICE, True, "a", 101.0)[0], BOB, True, "b", 102.0)
    grants.replace([grant])
    out = s.handle(ev.ApprovalDecided(None), 2.0)
    sent = b"".join(c.data for c in of(out, SendToUpstream))
    assert sent == create_topics() + later + metadata(correlation_id=9)  # in order, once each


def test_a_denied_request_is_refused_with_who_and_why_and_the_session_goes_on():
    s = relaying_session(Grants(), Clock())
    s.handle(ev.ClientData(create_topics() + metadata(correlation_id=8)), 1.0)
    out = s.handle(ev.ApprovalDecided("denied by alice: not in the freeze (approval request apr-1)"), 2.0)
    (answer,) = of(out, SendToClient)
    topic = created(answer).topics[0]
    assert topic.error_code == ErrorCode.topic_authorization_failed
    assert "denied by alice: not in the freeze" in topic.error_message
    assert of(out, SendToUpstream)[0].data == metadata(correlation_id=8)  # the next one goes on


def test_approved_but_the_grant_gone_is_refused_not_held_again():
    s = relaying_session(Grants(), Clock())
    s.handle(ev.ClientData(create_topics()), 1.0)
    out = s.handle(ev.ApprovalDecided(None), 2.0)
    assert of(out, HoldForApproval) == []
    assert "no longer covers it" in created(of(out, SendToClient)[0]).topics[0].error_message


def test_a_grant_ends_and_the_next_request_is_held_again():
    grants, clock = Grants(), Clock()
    _, grant = vote(vote(request(), ALICE, True, "a", 101.0)[0], BOB, True, "b", 102.0)
    grants.replace([grant])
    s = relaying_session(grants, clock)
    out = s.handle(ev.ClientData(create_topics(correlation_id=7)), 1.0)
    assert of(out, SendToUpstream)[0].data == create_topics(correlation_id=7)
    clock.now = grant.expires_at
    out = s.handle(ev.ClientData(create_topics(correlation_id=10)), 2.0)
    assert of(out, HoldForApproval) and not of(out, SendToUpstream)


def test_a_workload_cannot_pile_up_bytes_behind_a_held_request():
    s = relaying_session(Grants(), Clock())
    s.handle(ev.ClientData(create_topics()), 1.0)
    s.max_held_bytes = 1000
    out = s.handle(ev.ClientData(b"\0" * 2000), 1.5)
    assert s.closed and "while a request waited for approval" in repr(out)


def test_without_a_gate_an_approve_decision_is_a_refusal():
    enforcer = Enforcer(BOT, lambda: POLICY)
    frame = create_topics()
    verdict = enforcer.check(frame, codec.parse_request_header(frame))
    assert verdict.held == () and verdict.answer is not None and verdict.outcome == "refused"


# ---- the webhook, against a local HTTP receiver ------------------------------------------------------

class Receiver:
    """A real HTTP server on loopback that fails the first `failures` posts with 500, then answers ok."""

    def __init__(self, failures: int) -> None:
        import http.server

        self.bodies: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                receiver.bodies.append({"type": self.headers["Content-Type"],
                                        "body": json.loads(self.rfile.read(length))})
                status = 500 if len(receiver.bodies) <= failures else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"try later")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvals"

    def close(self) -> None:
        self.server.shutdown()


def notify_once(url: str) -> tuple[list, list[float]]:
    import asyncio

    from appliance.approvals.webhook import Webhooks
    from appliance.identity.provider_http import ProviderHttp

    events, waits = [], []

    async def sleep(s):
        waits.append(s)

    async def run():
        notifier = Webhooks(ProviderHttp(timeout_s=2), lambda kind, message, **f: events.append((kind, message, f)),
                            sleep=sleep)
        notifier.notify(request(approval=Approval(("kafka-admins",), webhook=url)))
        while notifier._tasks:
            await asyncio.sleep(0.01)

    asyncio.run(run())
    return events, waits


def test_the_webhook_posts_a_slack_message_and_retries_with_backoff_until_it_is_taken():
    receiver = Receiver(failures=2)
    try:
        events, waits = notify_once(receiver.url)
    finally:
        receiver.close()
    assert len(receiver.bodies) == 3 and waits == [1.0, 2.0]
    posted = receiver.bodies[-1]
    assert posted["type"] == "application/json"
    assert "ops-bot asks for create on topic 'payments-v2'" in posted["body"]["text"]
    assert any("appliance approvals approve apr-" in json.dumps(b) for b in posted["body"]["blocks"])
    ((kind, message, fields),) = events
    assert kind == "approval-notified" and "(attempt 3)" in message and fields["detail"]["attempt"] == 3


def test_a_webhook_that_never_takes_it_is_an_error_naming_the_url_and_the_fault():
    receiver = Receiver(failures=99)
    try:
        events, waits = notify_once(receiver.url)
    finally:
        receiver.close()
    assert len(receiver.bodies) == 5 and waits == [1.0, 2.0, 4.0, 8.0]
    ((kind, message, _),) = events
    assert kind == "error" and receiver.url in message and "HTTP 500" in message


def test_one_identity_cannot_file_more_than_its_share_of_pending_requests(tmp_path):
    from appliance.approvals.desk import MAX_PENDING_PER_IDENTITY, Desk

    clock = Clock()
    desk = Desk(ApprovalStore(tmp_path / "approvals.db"), lambda: POLICY, lambda *a, **k: None, clock=clock)

    conns = [Conn() for _ in range(MAX_PENDING_PER_IDENTITY + 1)]
    for n, conn in enumerate(conns):
        desk.hold(conn, BOT, (Need(RULE.name, "create", "topic", f"t-{n}"),), "CreateTopics", f"s{n}", None)
    desk.step()
    assert len(desk.store.requests(state=State.PENDING)) == MAX_PENDING_PER_IDENTITY
    (answer,) = conns[-1].answers
    assert f"already has {MAX_PENDING_PER_IDENTITY} approval requests pending" in answer.refusal
    assert all(c.answers == [] for c in conns[:-1])  # still held


def test_a_store_locked_by_another_process_is_tried_again_at_the_next_step_not_waited_for(tmp_path):
    import sqlite3

    from appliance.approvals.desk import Desk

    path = tmp_path / "approvals.db"
    desk = Desk(ApprovalStore(path, busy_timeout_ms=50), lambda: POLICY, lambda *a, **k: None, clock=Clock())
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # an operator's sqlite3 shell holding the file

    conn = Conn()
    desk.hold(conn, BOT, (NEED,), "CreateTopics", "s1", None)
    desk.step()  # neither raises nor waits the default 5 s
    holder.execute("ROLLBACK")
    desk.step()
    assert "approvals store is busy" in conn.answers[0].refusal


def test_the_demo_screen_names_the_held_request_and_the_command_that_approves_it(tmp_path):
    from appliance.cli.serve import _held
    from appliance.config import parse_config

    config = parse_config({"state_dir": str(tmp_path)})
    filed = request()
    ApprovalStore(config.approvals_db).file(filed)
    (tmp_path / "demo-archive.txt").write_text("waiting for approval\n")
    shown = _held(config, tmp_path / "demo-archive.txt").plain
    assert "creating demo-orders-archive: waiting for approval" in shown
    assert f'appliance approvals approve {filed.id} --reason "looks fine"' in shown


def test_asking_again_for_what_a_person_denied_is_refused_with_that_denial_and_files_nothing(tmp_path):
    from appliance.approvals.desk import Desk

    clock = Clock()
    desk = Desk(ApprovalStore(tmp_path / "approvals.db"), lambda: POLICY, lambda *a, **k: None, clock=clock)

    first = Conn()
    desk.hold(first, BOT, (NEED,), "CreateTopics", "s1", None)
    (filed,) = desk.store.requests(state=State.PENDING)
    desk.store.vote(filed.id, ALICE, False, "not during the freeze", clock())
    desk.step()
    assert first.answers[0].refusal == f"denied by alice: not during the freeze (approval request {filed.id})"

    clock.now += 30  # the workload tries again: refused at once with the same denial, no new request
    again = Conn()
    desk.hold(again, BOT, (NEED,), "CreateTopics", "s2", None)
    desk.step()
    assert f"denied by alice: not during the freeze (approval request {filed.id}) 30 s ago" in again.answers[0].refusal
    assert "for 570 s more" in again.answers[0].refusal
    assert desk.store.requests(state=State.PENDING) == []

    other = Conn()  # something else it asks for is a new request
    desk.hold(other, BOT, (Need(RULE.name, "create", "topic", "payments-v3"),), "CreateTopics", "s3", None)
    assert len(desk.store.requests(state=State.PENDING)) == 1

    clock.now += RULE.approval.denied_for_s  # past denied_for_s, asking again files a new request
    later = Conn()
    desk.hold(later, BOT, (NEED,), "CreateTopics", "s4", None)
    assert len(desk.store.requests(state=State.PENDING)) == 2 and later.answers == []


# One approve rule "r" whose approval mapping ends with the setting a test fills in (line 9 of the source).
ONE_RULE = """
version: 1
rules:
  - name: r
    effect: approve
    identities: [ops-bot]
    operations: [create]
    topics: ["*"]
    approval: {approvers: [kafka-admins], %s}
"""


def test_denied_for_s_is_checked_and_zero_forgets_a_denial_at_once():
    source = ONE_RULE % "denied_for_s: %s"
    assert parse_policy(source % "0", source="p").rule_named("r").approval.denied_for_s == 0
    with pytest.raises(PolicyError, match=r"p line 9: .*denied_for_s.* must be a number of seconds from 0 to 604800"):
        parse_policy(source % "-1", source="p")


# ---- counted grants ----------------------------------------------------------------------------------

ONE_TIME = Approval(("kafka-admins",), approvals=1, hold_s=5, pending_s=600, grant_ttl_s=600, grant_uses=1)


def test_a_one_time_grant_lets_one_request_through_and_the_pipelined_next_is_held_again():
    grants, clock = Grants(), Clock()
    _, grant = vote(request(approval=ONE_TIME), ALICE, True, "once", 101.0)
    assert grant.uses == 1 and grant.used == 0
    grants.replace([grant])
    s = relaying_session(grants, clock)
    out = s.handle(ev.ClientData(create_topics(correlation_id=7) + create_topics(correlation_id=8)), 1.0)
    assert [c.data for c in of(out, SendToUpstream)] == [create_topics(correlation_id=7)]
    (hold,) = of(out, HoldForApproval)  # the same ask again: the grant's one use is spent
    assert hold.needs == (NEED,)
    (used,) = [c for c in out if type(c).__name__ == "GrantsUsed"]
    assert [(g.id, g.used, g.uses) for g in used.grants] == [(grant.id, 1, 1)]
    assert grants.unsaved == {grant.id: 1}
    grants.replace([grant])  # a reload before the store has the use: the charge is kept
    assert grants.covering("ops-bot", NEED, clock()) is None


def test_a_counted_grants_uses_reach_the_store_and_a_busy_store_loses_none(tmp_path):
    import sqlite3

    from appliance.approvals.desk import Desk

    path = tmp_path / "approvals.db"
    clock = Clock()
    events = []
    desk = Desk(ApprovalStore(path, busy_timeout_ms=50), lambda: POLICY,
                lambda kind, message, **kw: events.append((kind, message)), clock=clock)
    twice = Approval(("kafka-admins",), approvals=1, hold_s=5, pending_s=600, grant_ttl_s=600, grant_uses=2)
    filed = request(approval=twice)
    desk.store.file(filed)
    _, grant = desk.store.vote(filed.id, ALICE, True, "twice", clock())
    desk.reload()
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # someone's sqlite3 shell holds the store
    desk.used(desk.grants.charge((grant,)), "s1", "ops-bot")
    holder.execute("ROLLBACK")
    assert desk.grants.unsaved == {grant.id: 1}
    assert ApprovalStore(path).grants()[0].used == 0
    desk.step()  # written now, and the reload it may do keeps the count
    assert desk.grants.unsaved == {} and ApprovalStore(path).grants()[0].used == 1
    (after,) = desk.grants.charge((grant,))
    desk.used((after,), "s2", "ops-bot")
    assert [g.used for g in ApprovalStore(path).grants()] == [2]
    assert ApprovalStore(path).grants(active_at=clock()) == []  # used up: no longer in force
    assert desk.grants.covering("ops-bot", NEED, clock()) is None
    assert [m for k, m in events if k == "grant-used"][-1].endswith("go on (use 2 of 2)")
    with pytest.raises(ApprovalError, match=r"already used up \(2 of 2 uses\)"):
        desk.store.revoke(grant.id, "alice", "too late", clock())


def test_a_store_made_before_counted_grants_gets_their_columns_and_keeps_its_grants(tmp_path):
    import sqlite3

    path = tmp_path / "approvals.db"
    old = sqlite3.connect(str(path))
    old.executescript("""
        CREATE TABLE grants (id TEXT PRIMARY KEY, request_id TEXT NOT NULL, identity TEXT NOT NULL, rule TEXT NOT NULL,
            scope TEXT NOT NULL, needs TEXT NOT NULL, approvers TEXT NOT NULL, created_at REAL NOT NULL,
            expires_at REAL NOT NULL, revoked_at REAL, revoked_by TEXT, revoke_reason TEXT);
        INSERT INTO grants VALUES ('grt-1', 'apr-1', 'ops-bot', 'r', 'requested', '[]', '["alice"]', 1, 9e9,
            NULL, NULL, NULL);""")
    old.close()
    (grant,) = ApprovalStore(path).grants(active_at=2.0)
    assert (grant.id, grant.uses, grant.used) == ("grt-1", None, 0)


def test_grant_uses_is_checked():
    source = ONE_RULE % "grant: {uses: %s}"
    assert parse_policy(source % "1", source="p").rule_named("r").approval.grant_uses == 1
    with pytest.raises(PolicyError, match=r"p line 9: key 'uses' of rule 'r' must be a whole number from 1 to 1000, not '0'"):
        parse_policy(source % "0", source="p")
