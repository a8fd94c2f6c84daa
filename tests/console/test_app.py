"""The console's handlers through Starlette's TestClient: login, sessions, CSRF, roles, votes, replay, verify.

The provider is a fake that signs ID tokens with a test key (tests/identity/token_keys.py); the state
directory is real (an audit database, approvals.db) in a temporary directory.
"""

from __future__ import annotations

import html
import json
import time
import urllib.parse

import pytest
from starlette.testclient import TestClient

from appliance.approvals.model import Need, file_request
from appliance.approvals.store import ApprovalStore
from appliance.audit import store
from appliance.audit.records import Operation, SessionOpened
from appliance.config import parse_config
from appliance.console.app import COOKIE, make_app
from appliance.console.provider import ProviderEndpoints
from appliance.console.state import ConsoleState
from appliance.identity.jwks import KeySet
from appliance.policy.model import Approval
from tests.identity.token_keys import jwks, rsa_key

ISSUER = "http://idp.test/realms/appliance"
SESSION = "3f9c0e2a71b4c5d6e7f8a9b0c1d2e3f4"


class FakeProvider:
    """Discovery, the token endpoint and the JWKS of a provider that logs in whoever the test says."""

    def __init__(self) -> None:
        self.person = {"preferred_username": "alice", "groups": ["kafka-admins"]}
        self.nonce: str | None = None
        self.exchanged: list[tuple[str, str]] = []

    def endpoints(self) -> ProviderEndpoints:
        return ProviderEndpoints(f"{ISSUER}/auth", f"{ISSUER}/token", f"{ISSUER}/certs")

    def exchange(self, code: str, verifier: str) -> dict:
        self.exchanged.append((code, verifier))
        now = time.time()
        claims = {"iss": ISSUER, "aud": "appliance-console", "azp": "appliance-console", "sub": "u-1", "iat": now,
                  "exp": now + 300, "nonce": self.nonce, **self.person}
        return {"id_token": rsa_key().sign(claims), "access_token": "unused"}

    def keys_for(self, id_token: str) -> KeySet:
        return KeySet.from_jwks(jwks(rsa_key()))


@pytest.fixture
def config(tmp_path):
    return parse_config({"state_dir": str(tmp_path), "run_dir": str(tmp_path / "run"), "console": {
        "enabled": True, "issuer": ISSUER, "client_id": "appliance-console", "client_secret_file": "/nonexistent",
        "redirect_uri": "http://testserver/callback", "auditor_group": "kafka-auditors",
        "approver_group": "kafka-admins"}})


@pytest.fixture
def provider():
    return FakeProvider()


@pytest.fixture
def client(config, provider):
    db = store.open_db(config.audit_db)
    now = time.time()
    store.write_batch(db, [
        SessionOpened(session_id=SESSION, started_at=now - 5, identity="approval-bot", groups=(), cgroup_id=7,
                      cgroup_path="/bots/approval", enrolled_cgroup_id=7, pid=4242, uid=0, gid=0,
                      command="java FamilyClient", client_address="127.0.0.1:50000", broker_address="127.0.0.1:9092"),
        Operation(session_id=SESSION, at=now - 4, api_key=19, api_name="CreateTopics", api_version=7,
                  correlation_id=3, client_id="admin", topics='{"apr-x": []}', group_id=None, records=None,
                  record_bytes=None, request_bytes=80, response_bytes=40, error_code=0, latency_ms=812.5,
                  outcome="forwarded", decision="allowed"),
    ])
    db.conn.close()
    return TestClient(make_app(config, ConsoleState(config), provider, b"k" * 32), follow_redirects=False)


def pending_request(config, identity: str = "approval-bot") -> str:
    request = file_request(rule="integration-apr-create", approval=Approval(approver_groups=("kafka-admins",)),
                           identity=identity, groups=(), needs=(Need("integration-apr-create", "create", "topic",
                                                                     "apr-x"),),
                           api="CreateTopics", session_id=SESSION, cgroup_path="/bots/approval", now=time.time())
    s = ApprovalStore(config.approvals_db)
    s.file(request)
    s.close()
    return request.id


def log_in(client, provider, **person) -> str:
    """Log in through /login and /callback; the session's CSRF token, read from a page's form."""
    provider.person.update(person)
    started = client.get("/login")
    assert started.status_code == 303
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = query["nonce"]
    done = client.get("/callback", params={"state": query["state"], "code": "the-code"})
    assert done.status_code == 303 and done.headers["location"] == "/", done.text
    page = client.get("/approvals")
    return page.text.split('name="csrf" value="')[1].split('"')[0]


def events(config, kind: str) -> list[dict]:
    db = store.open_read_only(config.audit_db)
    try:
        return store.query_events(db, kind=kind)
    finally:
        db.conn.close()


def test_pages_without_a_session_go_to_login_and_posts_get_401(client):
    for path in ("/", "/sessions", "/operations", "/events", "/refusals", "/approvals", "/grants", "/verify",
                 f"/sessions/{SESSION}/replay"):
        answer = client.get(path)
        back = "" if path == "/" else "?" + urllib.parse.urlencode({"next": path})
        assert answer.status_code == 303 and answer.headers["location"] == f"/login{back}", path
    for path in ("/approvals/apr-1/approve", "/grants/grt-1/revoke", "/verify", "/logout"):
        assert client.post(path, data={"csrf": "x", "reason": "r"}).status_code == 401, path


def test_login_uses_pkce_and_sets_a_signed_httponly_lax_cookie(client, provider, config):
    started = client.get("/login")
    url = urllib.parse.urlsplit(started.headers["location"])
    query = dict(urllib.parse.parse_qsl(url.query))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{ISSUER}/auth"
    assert query["code_challenge_method"] == "S256"
    cookie = started.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert "secure" not in cookie.lower()  # no TLS in this test: Secure only when the console serves TLS
    provider.nonce = query["nonce"]
    done = client.get("/callback", params={"state": query["state"], "code": "the-code"})
    assert done.status_code == 303
    (code, verifier), = provider.exchanged
    from appliance.console.login import code_challenge
    assert code == "the-code" and code_challenge(verifier) == query["code_challenge"]
    assert "alice (auditor, approver)" in client.get("/").text
    (event,) = events(config, "console-login")
    assert json.loads(event["detail"])["by"] == "alice (console)"


def test_a_callback_with_the_wrong_state_or_replayed_is_refused(client, provider):
    started = client.get("/login")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = query["nonce"]
    wrong = client.get("/callback", params={"state": "forged", "code": "c"})
    assert wrong.status_code == 400 and "state does not match" in wrong.text
    assert client.get("/callback", params={"state": query["state"], "code": "c"}).status_code == 303
    client.cookies.clear()
    replayed = client.get("/callback", params={"state": query["state"], "code": "c"})
    assert replayed.status_code == 400 and "no login was started" in replayed.text


def test_a_token_for_another_login_is_refused(client, provider, config):
    started = client.get("/login")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = "someone-elses"
    answer = client.get("/callback", params={"state": query["state"], "code": "c"})
    assert answer.status_code == 403 and "nonce is not this login" in answer.text
    assert client.get("/").status_code == 303
    assert events(config, "console-refused")


def test_someone_in_neither_group_is_refused_after_login_with_a_clear_page(client, provider):
    provider.person.update(groups=["payments"])
    started = client.get("/login")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = query["nonce"]
    answer = client.get("/callback", params={"state": query["state"], "code": "c"})
    assert answer.status_code == 403
    assert "alice is signed in but is in neither the auditor group (kafka-auditors)" in answer.text
    assert client.get("/approvals").status_code == 303


def test_an_approver_approves_with_a_reason_and_the_audit_names_them(client, provider, config):
    request_id = pending_request(config)
    csrf = log_in(client, provider)
    assert request_id in client.get("/approvals").text
    answer = client.post(f"/approvals/{request_id}/approve", data={"csrf": csrf, "reason": "ticket OPS-112"})
    assert answer.status_code == 303 and answer.headers["location"] == "/approvals"
    assert "approved by alice (console): ticket OPS-112" in client.get("/approvals").text
    (event,) = events(config, "approval-approved")
    detail = json.loads(event["detail"])
    assert detail["by"] == "alice (console)" and detail["reason"] == "ticket OPS-112"
    assert event["identity"] == "approval-bot" and event["session_id"] == SESSION
    (grant,) = ApprovalStore(config.approvals_db).grants()
    assert grant.approvers == ("alice",)


def test_a_post_without_the_sessions_csrf_token_is_403(client, provider, config):
    request_id = pending_request(config)
    csrf = log_in(client, provider)
    for form in ({"reason": "r"}, {"csrf": "", "reason": "r"}, {"csrf": csrf[:-1] + "x", "reason": "r"}):
        answer = client.post(f"/approvals/{request_id}/approve", data=form)
        assert answer.status_code == 403 and "CSRF token" in answer.text
    assert ApprovalStore(config.approvals_db).get(request_id).state == "pending"
    assert events(config, "console-refused")


def test_an_auditor_reads_but_cannot_vote_or_revoke(client, provider, config):
    request_id = pending_request(config)
    csrf = log_in(client, provider, groups=["kafka-auditors"])
    page = client.get("/approvals")
    assert page.status_code == 200 and request_id in page.text and "auditors cannot vote" in page.text
    answer = client.post(f"/approvals/{request_id}/approve", data={"csrf": csrf, "reason": "r"})
    assert answer.status_code == 403 and "alice is an auditor" in answer.text
    assert client.post("/grants/grt-1/revoke", data={"csrf": csrf, "reason": "r"}).status_code == 403
    assert ApprovalStore(config.approvals_db).get(request_id).state == "pending"


def test_the_requester_cannot_approve_their_own_request(client, provider, config):
    request_id = pending_request(config, identity="alice")
    csrf = log_in(client, provider)
    answer = client.post(f"/approvals/{request_id}/approve", data={"csrf": csrf, "reason": "mine"})
    assert answer.status_code == 409 and "cannot approve or deny their own request" in answer.text
    (refused,) = events(config, "approval-refused")
    assert json.loads(refused["detail"])["by"] == "alice (console)"


def test_a_denial_needs_a_reason_and_is_audited(client, provider, config):
    request_id = pending_request(config)
    csrf = log_in(client, provider)
    assert client.post(f"/approvals/{request_id}/deny", data={"csrf": csrf, "reason": "  "}).status_code == 400
    answer = client.post(f"/approvals/{request_id}/deny", data={"csrf": csrf, "reason": "not during the freeze"})
    assert answer.status_code == 303
    assert ApprovalStore(config.approvals_db).get(request_id).state == "denied"
    (event,) = events(config, "approval-denied")
    assert "denied by alice (console): not during the freeze" in event["message"]
    again = client.post(f"/approvals/{request_id}/approve", data={"csrf": csrf, "reason": "changed my mind"})
    assert again.status_code == 409 and "already denied" in again.text


def test_a_grant_is_revoked_from_the_grants_page(client, provider, config):
    request_id = pending_request(config)
    csrf = log_in(client, provider)
    client.post(f"/approvals/{request_id}/approve", data={"csrf": csrf, "reason": "ok"})
    (grant,) = ApprovalStore(config.approvals_db).grants()
    assert grant.id in client.get("/grants").text
    assert client.post(f"/grants/{grant.id}/revoke", data={"csrf": csrf, "reason": "done"}).status_code == 303
    (event,) = events(config, "grant-revoked")
    assert json.loads(event["detail"])["by"] == "alice (console)"
    assert client.post(f"/grants/{grant.id}/revoke", data={"csrf": csrf, "reason": "again"}).status_code == 409


def test_the_listings_take_filters_and_refuse_bad_ones(client, provider):
    log_in(client, provider)
    assert "java FamilyClient" in client.get("/sessions", params={"identity": "approval-bot"}).text
    assert "java FamilyClient" not in client.get("/sessions", params={"identity": "nobody"}).text
    assert "CreateTopics v7" in client.get("/operations", params={"topic": "apr-x", "since": "1h"}).text
    assert "CreateTopics v7" not in client.get("/operations", params={"decision": "refused"}).text
    assert "console-login" in client.get("/events").text
    bad = client.get("/operations", params={"since": "yesterday"})
    assert bad.status_code == 400 and "neither an age" in bad.text
    assert client.get("/sessions", params={"limit": "100000"}).status_code == 400
    assert client.get("/refusals").status_code == 200


def test_the_live_page_reads_status_json(client, provider, config):
    log_in(client, provider)
    assert "not running" in client.get("/").text
    config.status_file.parent.mkdir(parents=True, exist_ok=True)
    config.status_file.write_text(json.dumps({"written_at": time.time(), "sessions": [
        {"session_id": SESSION, "identity": "approval-bot", "auth": "cgroup", "pid": 4242, "command": "java",
         "client_address": "127.0.0.1:50000", "broker_address": "127.0.0.1:9092", "started_at": time.time()}]}))
    page = client.get("/")
    assert SESSION[:12] in page.text and f"/sessions/{SESSION}/replay" in page.text


def test_the_replay_page_has_a_scrubber_over_the_timeline(client, provider):
    log_in(client, provider)
    page = client.get(f"/sessions/{SESSION}/replay")
    assert page.status_code == 200
    assert 'type="range" id="scrubber" min="0" max="1"' in page.text
    assert "connected from 127.0.0.1:50000" in page.text and "CreateTopics v7 apr-x: allowed" in page.text
    assert client.get("/sessions/ffffffffff/replay").status_code == 404


def test_verify_is_cached_and_rerun_on_demand(client, provider, config):
    csrf = log_in(client, provider)
    assert "Not verified since the console started" in client.get("/verify").text
    assert client.post("/verify", data={}).status_code == 403
    assert client.post("/verify", data={"csrf": csrf}).status_code == 303
    page = client.get("/verify").text
    assert "entries is intact" in page, page[page.find("verify-state"):][:400]
    (event,) = events(config, "console-verify")
    assert "alice verified the audit record from the console: ok" in event["message"]


def test_every_answer_forbids_framing_and_caching(client):
    answer = client.get("/login")
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_a_webhooks_link_shows_the_request_and_its_forms_and_following_it_decides_nothing(client, provider, config):
    request_id = pending_request(config)
    away = client.get(f"/approvals/{request_id}")  # the webhook's link, followed without a session
    assert away.status_code == 303 and away.headers["location"] == f"/login?next=%2Fapprovals%2F{request_id}"
    started = client.get(away.headers["location"])
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = query["nonce"]
    done = client.get("/callback", params={"state": query["state"], "code": "c"})
    assert done.status_code == 303 and done.headers["location"] == f"/approvals/{request_id}"  # back to the link
    page = client.get(f"/approvals/{request_id}")
    assert page.status_code == 200 and "topic 'apr-x'" in html.unescape(page.text) and "approval-bot" in page.text
    for action in ("approve", "deny"):
        assert f'action="/approvals/{request_id}/{action}" id="{action}"' in page.text
    assert ApprovalStore(config.approvals_db).get(request_id).state == "pending"  # GET never acts
    assert client.get(f"/approvals/{request_id}/approve").status_code == 405
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    answer = client.post(f"/approvals/{request_id}/deny", data={"csrf": csrf, "reason": "no", "from": "request"})
    assert answer.status_code == 303 and answer.headers["location"] == f"/approvals/{request_id}"
    decided = client.get(f"/approvals/{request_id}").text
    assert "denied by alice (console): no" in decided and "nothing is left to decide" in decided
    assert 'id="approve"' not in decided


def test_an_auditor_sees_a_requests_page_without_its_forms(client, provider, config):
    request_id = pending_request(config)
    log_in(client, provider, groups=["kafka-auditors"])
    page = client.get(f"/approvals/{request_id}").text
    assert "Auditors cannot vote" in page and 'id="approve"' not in page and 'id="deny"' not in page


@pytest.mark.parametrize("request_id, status, words", [
    ("apr-00000000ff", 404, "no approval request 'apr-00000000ff'"),
    ("<script>", 404, "is not an approval request id"),
    ("apr-" + "f" * 300, 404, "is not an approval request id"),
])
def test_a_request_page_for_an_unknown_or_malformed_id_is_a_404_naming_it(client, provider, request_id, status,
                                                                          words):
    log_in(client, provider)
    answer = client.get(f"/approvals/{urllib.parse.quote(request_id)}")
    assert answer.status_code == status and words in html.unescape(answer.text), answer.text[-600:]
    assert "<script>" not in answer.text.split("<main>")[1]


@pytest.mark.parametrize("asked", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "/login",
                                   "/approvals/../../x?y=1", "/" + "a" * 300, None, 3])
def test_a_login_returns_only_to_one_of_the_consoles_own_pages(client, provider, asked):
    started = client.get("/login", params={} if asked is None else {"next": asked})
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.headers["location"]).query))
    provider.nonce = query["nonce"]
    done = client.get("/callback", params={"state": query["state"], "code": "c"})
    assert done.status_code == 303 and done.headers["location"] == "/", asked


def test_logout_ends_the_session_server_side_so_a_copy_of_its_cookie_is_refused(client, provider, config):
    request_id = pending_request(config)
    csrf = log_in(client, provider)
    copied = client.cookies[COOKIE]  # taken before logout: from a shared machine, a proxy's log
    answer = client.post("/logout", data={"csrf": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/logged-out"
    page = client.get("/logged-out")
    assert page.status_code == 200 and "You are logged out" in page.text and 'id="who"' not in page.text
    (event,) = events(config, "console-logout")
    assert json.loads(event["detail"])["by"] == "alice (console)"
    client.cookies.clear()
    client.cookies[COOKIE] = copied  # still signed by the console, and within its max-age
    assert client.get("/approvals").status_code == 303
    replayed = client.post(f"/approvals/{request_id}/approve", data={"csrf": csrf, "reason": "after logout"})
    assert replayed.status_code == 401 and "no valid console session" in replayed.text
    assert ApprovalStore(config.approvals_db).get(request_id).state == "pending"
    (refused,) = events(config, "console-refused")
    assert json.loads(refused["detail"]) == {"by": "alice (console)", "path": f"/approvals/{request_id}/approve",
                                             "session": "ended"}


def test_a_new_login_ends_the_browsers_previous_session(client, provider):
    log_in(client, provider)
    old = client.cookies[COOKIE]
    client.post("/logout", data={"csrf": client.get("/approvals").text.split('name="csrf" value="')[1].split('"')[0]})
    log_in(client, provider)
    client.cookies.clear()
    client.cookies[COOKIE] = old
    assert client.get("/approvals").status_code == 303


def test_a_restarted_console_knows_no_session_of_the_one_before(client, provider, config):
    log_in(client, provider)
    cookie = client.cookies[COOKIE]
    restarted = TestClient(make_app(config, ConsoleState(config), provider, b"k" * 32), follow_redirects=False)
    restarted.cookies[COOKIE] = cookie  # the same signing key: only the session table is new
    assert restarted.get("/approvals").status_code == 303
