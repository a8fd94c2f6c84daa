"""Workloads that prove who they are with OIDC tokens from the real identity provider, bound to their cgroup.

Every client here fetches its own token from the session's Keycloak (client_credentials) and presents
it over SASL/OAUTHBEARER, unmodified otherwise; the appliance validates it against the provider's keys
and binds it to the enrolment of the cgroup it came from.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time

import jwt
import pytest
import yaml

from appliance.idp.realm import service_account_id
from tests.integration.fixtures import BROKER4, PY, CLIENTS, STATE, audit, cli, eventually

SUFFIX = secrets.token_hex(3)


def oauth(keycloak, client_id: str) -> list[str]:
    """librdkafka's own OIDC client (confluent-kafka; Debian's kcat is built without it): it fetches the
    token by client_credentials and sends it in the OAUTHBEARER initial response."""
    return ["--oauth", f"{client_id}:{keycloak.secret(client_id)}@{keycloak.token_endpoint}"]


def librdkafka(cg, topic: str, *args: str, timeout: float = 20) -> dict:
    return cg.client("confluent.py", BROKER4, topic, "--timeout", str(timeout), *args, timeout=timeout + 30)


def sessions_by_cgroup(config_path, cg) -> list[dict]:
    return [s for s in audit(config_path, "sessions") if s["cgroup_path"] == cg.cgroup.path]


def authentications_of(config_path, sessions) -> list[dict]:
    ids = {s["session_id"] for s in sessions}
    return [a for a in audit(config_path, "authentications") if a["session_id"] in ids]


@pytest.fixture(scope="module")
def idp_topic(direct, sasl_args):
    topic = f"idp-auth-{SUFFIX}"
    direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    return topic


def test_a_token_authenticated_produce_and_consume_under_the_tokens_group(appliance, config_path, keycloak,
                                                                         enroll, idp_topic):
    # auth token: the identity and groups are the token's. Client `ledger` is in group payments, whose
    # rule (integration-payments-group) allows the idp-* topics.
    workload = enroll("token-pool", auth="token")
    produced = librdkafka(workload, idp_topic, "--produce", "3", *oauth(keycloak, "ledger"))
    assert produced["produced"] == 3 and produced["errors"] == [], produced
    consumed = librdkafka(workload, idp_topic, "--consume", "3", "--group", f"idp-g-{SUFFIX}",
                          *oauth(keycloak, "ledger"))
    assert consumed["values"] == ["record-0", "record-1", "record-2"], consumed
    sessions = eventually(lambda: [s for s in sessions_by_cgroup(config_path, workload) if s["auth_method"]],
                          message="token sessions audited")
    sub = service_account_id("appliance", "ledger")
    assert {(s["identity"], s["auth_method"], s["subject"]) for s in sessions} == {("ledger", "token", sub)}
    # The client was started with its client secret on the command line; the audit keeps the command without it.
    secret = keycloak.secret("ledger")
    assert all("--oauth ledger:***@" in s["command"] and secret not in s["command"] for s in sessions), sessions
    assert secret not in cli(config_path, "status", "--json").stdout
    auths = authentications_of(config_path, sessions)
    assert auths and all(a["outcome"] == "ok" and a["mechanism"] == "OAUTHBEARER" for a in auths), auths
    first = auths[-1]
    assert first["client_id"] == "ledger" and first["jti"] and first["issuer"] == keycloak.issuer
    assert first["groups"] == '["payments"]'
    assert 0 < first["expires_at"] - first["at"] <= 300 + 5  # the demo realm's token lifespan
    ops = [o for o in audit(config_path, "operations", "--identity", "ledger") if o["api_name"] == "Produce"]
    assert ops and ops[0]["decision"] == "allowed" and "integration-payments-group" in ops[0]["checks"]


def test_a_valid_token_from_the_wrong_cgroup_is_refused_as_a_mismatch(appliance, config_path, keycloak, enroll,
                                                                      idp_topic):
    # cgroup+token: the token must agree with the enrolment. `orders` is a valid client of the provider,
    # but this cgroup is enrolled as billing and accepts only billing's tokens.
    wrong = enroll("billing", auth="cgroup+token", accepts=("billing",))
    result = librdkafka(wrong, idp_topic, "--produce", "1", *oauth(keycloak, "orders"), timeout=8)
    assert result["produced"] == 0, result
    assert any("identity mismatch" in e and "enrolled as 'billing'" in e for e in result["client_errors"]), result
    sessions = eventually(lambda: sessions_by_cgroup(config_path, wrong), message="refused session audited")
    refused = eventually(lambda: [a for a in authentications_of(config_path, sessions) if a["outcome"] == "refused"],
                         message="mismatch audited")
    assert "mismatch" in refused[0]["reason"] and "enrolled as 'billing'" in refused[0]["reason"]
    # Nothing from the wrong cgroup authenticated or reached the broker (a session may also end because the
    # client closed it first, so close reasons vary).
    assert not [a for a in authentications_of(config_path, sessions) if a["outcome"] == "ok"]
    ids = {s["session_id"] for s in sessions}
    assert not [o for o in audit(config_path, "operations", "--topic", idp_topic) if o["session_id"] in ids
                and o["api_name"] == "Produce"]
    # The same token from the cgroup it belongs to passes.
    right = enroll("orders", auth="cgroup+token", accepts=("orders",))
    mine = librdkafka(right, idp_topic, "--produce", "1", *oauth(keycloak, "orders"))
    assert mine["produced"] == 1 and mine["errors"] == [], mine


def test_revocation_cuts_live_consumers_within_a_second_and_refuses_their_tokens(appliance, config_path, keycloak,
                                                                                enroll, idp_topic):
    # One live consumer of each kind, all with tokens of the provider's client platform-reader: librdkafka,
    # franz-go and the Java 4.1 consumer (KIP-848 protocol, so with fetch sessions and heartbeats).
    from tests.integration.clients.families import FAMILIES, OAuth

    def token_for(family: str) -> OAuth:
        # Kafka's Java login module wants a non-empty scope claim; the demo realm gives one for openid.
        return OAuth(keycloak.token_endpoint, "platform-reader", keycloak.secret("platform-reader"),
                     scope="openid" if family.startswith("java") else None)

    workloads = {name: enroll(f"revokable-{name}", auth="token") for name in ("librdkafka", "franz-go", "java-kip848")}
    consumers = {
        "librdkafka": workloads["librdkafka"].popen([
            PY, str(CLIENTS / "confluent.py"), BROKER4, idp_topic, "--consume", "1000000", "--timeout", "60",
            "--group", f"idp-rev-{SUFFIX}", *oauth(keycloak, "platform-reader")]),
        **{name: FAMILIES[name].consume(workloads[name], BROKER4, idp_topic, f"idp-rev-{name}-{SUFFIX}", n=10 ** 6,
                                        timeout=60, auth=token_for(name)) for name in ("franz-go", "java-kip848")},
    }

    def live_sessions(cg):
        return [s for s in sessions_by_cgroup(config_path, cg) if s["auth_method"] == "token" and s["ended_at"] is None]

    live = {name: eventually(lambda cg=cg: live_sessions(cg), timeout=40, message=f"a live {name} token session")
            for name, cg in workloads.items()}
    # appliance status lists the live sessions with how they authenticated and until when.
    first = live["librdkafka"][0]["session_id"]
    listed = eventually(lambda: [s for s in (appliance.status() or {}).get("sessions", [])
                                 if s["session_id"] == first and s["auth"] == "token"],
                        timeout=5, message="the token session in appliance status")
    assert listed[0]["identity"] == "platform-reader" and listed[0]["subject"] == service_account_id(
        "appliance", "platform-reader")
    assert listed[0]["token_expires_at"] > time.time() and listed[0]["reauthenticate_by"] <= listed[0]["token_expires_at"]

    revoked_at = time.time()
    cli(config_path, "revoke", "--client-id", "platform-reader", "--reason", "test: client secret leaked")
    for name, cg in workloads.items():
        ids = {s["session_id"] for s in live[name]}
        ended = eventually(lambda cg=cg, ids=ids: [s for s in sessions_by_cgroup(config_path, cg)
                                                   if s["session_id"] in ids and s["ended_at"]] if all(
            s["ended_at"] for s in sessions_by_cgroup(config_path, cg) if s["session_id"] in ids) else None,
            timeout=5, message=f"the revoked {name} sessions ended")
        for s in ended:
            assert s["close_reason"].startswith("revoked: client id 'platform-reader' revoked by"), (name, s)
            assert s["ended_at"] - revoked_at < 1.0, (name, s["ended_at"] - revoked_at)
        # Each reconnects with a fresh token: refused as revoked, and audited so.
        refused = eventually(lambda cg=cg: [a for a in authentications_of(config_path, sessions_by_cgroup(config_path, cg))
                                            if a["outcome"] == "refused"], timeout=20,
                             message=f"the {name} reconnect refused")
        assert "revoked" in refused[0]["reason"], (name, refused)
    events = audit(config_path, "events", "--kind", "revoke")
    assert any("platform-reader" in e["message"] and "leaked" in e["message"] for e in events), events
    consumers["librdkafka"].kill()
    consumers["librdkafka"].wait()
    for name in ("franz-go", "java-kip848"):
        consumers[name].proc.kill()
        consumers[name].finish()
    cli(config_path, "revoke", "--client-id", "platform-reader", "--withdraw")


# A Python client with a token provider of its own (client_credentials by urllib), producing one record
# a second and printing one JSON line per send: kafka-python 3 re-authenticates on the connection
# (KIP-368); aiokafka 0.14 does not.
_TOKEN_PRODUCER = r"""
import asyncio, json, sys, time, urllib.parse, urllib.request
family, bootstrap, topic, endpoint, client_id, secret, seconds = sys.argv[1:8]


def fetch():
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
                                   "client_secret": secret}).encode()
    with urllib.request.urlopen(endpoint, body, timeout=10) as r:
        return json.load(r)["access_token"]


def report(i, error=None):
    print(json.dumps({"sent": i, "at": time.time()} if error is None else {"error": error, "at": time.time()}),
          flush=True)


if family == "kafka-python":
    from kafka import KafkaProducer
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class Provider(AbstractTokenProvider):
        def token(self):
            return fetch()

    producer = KafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=Provider(), acks="all",
                             request_timeout_ms=10000, reconnect_backoff_ms=200)
    end, i = time.time() + float(seconds), 0
    while time.time() < end:
        try:
            producer.send(topic, f"kp-{i}".encode()).get(timeout=10)
            report(i)
        except Exception as e:
            report(i, str(e))
        i += 1
        time.sleep(1)
    producer.close()
else:
    from aiokafka import AIOKafkaProducer
    from aiokafka.abc import AbstractTokenProvider

    class Provider(AbstractTokenProvider):
        async def token(self):
            return await asyncio.to_thread(fetch)

    async def main():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                                    sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=Provider(),
                                    acks="all", request_timeout_ms=10000, retry_backoff_ms=200)
        await producer.start()
        end, i = time.time() + float(seconds), 0
        while time.time() < end:
            try:
                await producer.send_and_wait(topic, f"ak-{i}".encode())
                report(i)
            except Exception as e:
                report(i, str(e))
            i += 1
            await asyncio.sleep(1)
        await producer.stop()

    asyncio.run(main())
"""


def test_short_lived_tokens_are_reauthenticated_or_the_session_expires(appliance, config_path, keycloak, enroll,
                                                                       idp_topic):
    # Client short-lived gets 30 s tokens; the session lifetime the appliance answers is the token's.
    token_args = (keycloak.token_endpoint, "short-lived", keycloak.secret("short-lived"), "45")
    renewing = {"librdkafka": enroll("short-rdkafka", auth="token"),
                "kafka-python": enroll("short-kafka-python", auth="token")}
    lapsing = enroll("short-aiokafka", auth="token")
    procs = {
        "librdkafka": renewing["librdkafka"].popen([
            PY, str(CLIENTS / "confluent.py"), BROKER4, idp_topic, "--consume", "1000000", "--timeout", "45",
            "--group", f"idp-short-{SUFFIX}", *oauth(keycloak, "short-lived")]),
        "kafka-python": renewing["kafka-python"].popen([PY, "-c", _TOKEN_PRODUCER, "kafka-python", BROKER4,
                                                        idp_topic, *token_args]),
        "aiokafka": lapsing.popen([PY, "-c", _TOKEN_PRODUCER, "aiokafka", BROKER4, idp_topic, *token_args]),
    }
    outputs = {name: p.communicate(timeout=90) for name, p in procs.items()}
    for name in ("kafka-python", "aiokafka"):
        out, err = outputs[name]
        sent = [line for line in out.splitlines() if '"sent"' in line]
        assert len(sent) >= 35, (name, out[-3000:], err[-3000:])  # kept producing across the token's expiry

    for name, cg in renewing.items():  # re-authenticated on the same connection before the token ran out
        renewed = authentications_of(config_path, sessions_by_cgroup(config_path, cg))
        reauths = [a for a in renewed if a["kind"] == "reauth"]
        assert reauths and all(a["outcome"] == "ok" for a in renewed), (name, renewed)
        assert all(a["identity"] == "short-lived" for a in renewed)
        expired = [s for s in sessions_by_cgroup(config_path, cg) if (s["close_reason"] or "").startswith("expired")]
        assert not expired, (name, expired)

    # aiokafka did not: the appliance ended its session as expired when the token ran out, and the
    # client reconnected with a new token.
    sessions = sessions_by_cgroup(config_path, lapsing)
    lapsed = [s for s in sessions if (s["close_reason"] or "").startswith("expired")]
    assert lapsed, sessions
    first = lapsed[-1]
    assert "did not re-authenticate" in first["close_reason"]
    assert 25 <= first["ended_at"] - first["started_at"] <= 35, first  # a 30 s token, checked each second


def test_a_revocation_survives_a_restart_and_audit_sessions_finds_the_subject(appliance, config_path, keycloak,
                                                                              enroll, idp_topic):
    sub = service_account_id("appliance", "ledger")
    cli(config_path, "revoke", "--subject", sub, "--reason", "test: rotate the ledger's secret")
    appliance.stop()
    appliance.start()
    workload = enroll("after-restart", auth="token")
    refused = librdkafka(workload, idp_topic, "--produce", "1", *oauth(keycloak, "ledger"), timeout=8)
    assert refused["produced"] == 0 and any("revoked" in e for e in refused["client_errors"]), refused
    cli(config_path, "revoke", "--subject", sub, "--withdraw")
    allowed = eventually(lambda: (lambda r: r if r["produced"] == 1 else None)(
        librdkafka(workload, idp_topic, "--produce", "1", *oauth(keycloak, "ledger"), timeout=8)),
        timeout=30, message="a produce once the revocation is withdrawn")
    assert allowed["errors"] == []
    by_subject = audit(config_path, "sessions", "--subject", sub)
    assert by_subject and {s["subject"] for s in by_subject} == {sub}
    assert {s["identity"] for s in by_subject} == {"ledger"}


def test_disabling_the_service_account_ends_its_session_by_its_token_s_expiry_and_refuses_new_ones(
        appliance, config_path, keycloak, enroll, idp_topic):
    """docs/identity.md: 'Disabling the service account at the provider ends its sessions at their next
    re-authentication.' librdkafka (sasl.oauthbearer.method=oidc) consumes with the short-lived client's 30 s
    tokens; the client is disabled through Keycloak's admin REST API; its session must end no later than the
    token it holds runs out (plus the appliance's one-second expiry check and a margin), audited as expired or
    as a refused re-authentication, and a new connection must not get in. Measured and printed (-s): how long
    after disabling the session ended, and what Keycloak still says of a token issued before."""
    from appliance.idp import TokenRefused

    workload = enroll("short-disabled", auth="token")
    consumer = workload.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, idp_topic, "--consume", "1000000",
                               "--timeout", "60", "--group", f"idp-disabled-{SUFFIX}",
                               *oauth(keycloak, "short-lived")])
    facts: dict[str, object] = {}
    try:
        def authenticated():
            auths = authentications_of(config_path, sessions_by_cgroup(config_path, workload))
            return [a for a in auths if a["outcome"] == "ok"]

        eventually(authenticated, timeout=30, message="the consumer's first authentication")
        copied = keycloak.token("short-lived")  # a copy of a token issued before the client is disabled
        keycloak.set_client_enabled("short-lived", False)
        disabled_at = time.time()
        with pytest.raises(TokenRefused) as refused:
            keycloak.token("short-lived")
        facts["keycloak after disabling"] = f"HTTP {refused.value.status} {refused.value.error}: {refused.value.description}"
        facts["introspection of a token issued before"] = keycloak.introspect(copied).get("active")
        # Meanwhile: a new librdkafka client of the disabled client (it cannot get a token), and a new
        # connection presenting the copy, which is unexpired (measured, not asserted: what a leaked token is
        # worth until its exp, with no introspection at the appliance).
        fresh = workload.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, idp_topic, "--produce", "1",
                                "--timeout", "6", *oauth(keycloak, "short-lived")])
        early = workload.client("given_token.py", BROKER4, copied, "--timeout", "6", timeout=40)
        facts["a new connection with the unexpired copy, after disabling"] = (
            "admitted" if early["metadata"] else f"refused: {early['client_errors'][:1]}")
        # The live sessions, and the token (expiry) each last authenticated with before the client was disabled.
        held = {}
        for a in sorted(authenticated(), key=lambda a: a["at"]):
            if a["at"] <= disabled_at:
                held[a["session_id"]] = a["expires_at"]
        live = {s["session_id"] for s in sessions_by_cgroup(config_path, workload) if s["ended_at"] is None}
        held = {sid: exp for sid, exp in held.items() if sid in live}
        assert held, "no live authenticated session when the client was disabled"
        latest_expiry = max(held.values())

        def all_ended():
            rows = {s["session_id"]: s for s in sessions_by_cgroup(config_path, workload) if s["session_id"] in held}
            return rows if all(r["ended_at"] is not None for r in rows.values()) else None

        ended = eventually(all_ended, timeout=latest_expiry - time.time() + 15, interval=0.5,
                           message="the disabled client's sessions ended")
        for sid, row in ended.items():
            reason = row["close_reason"] or ""
            assert reason.startswith(("expired: ", "SASL authentication failed: ")), row
            assert row["ended_at"] <= held[sid] + 3, (row, held[sid])  # its token's expiry, 1 s checks, margin
            facts[f"session {sid}"] = (f"ended {row['ended_at'] - disabled_at:.1f} s after disabling, "
                                       f"{row['ended_at'] - held[sid]:+.1f} s from its token's expiry: {reason[:160]}")
        # No session of the disabled client authenticated after it was disabled with a token issued after it.
        later = [a for a in authenticated() if a["at"] > disabled_at and a["issued_at"] > disabled_at]
        assert not later, later
        # A new connection does not get in: the client cannot get a token, and the copy has run out by now.
        out, err = fresh.communicate(timeout=40)
        fresh_summary = json.loads(out.strip().splitlines()[-1])
        assert fresh_summary["produced"] == 0, (fresh_summary, err[-2000:])
        facts["a new librdkafka client"] = (fresh_summary["client_errors"] or fresh_summary["errors"])[:1]
        copied_expiry = jwt.decode(copied, options={"verify_signature": False})["exp"]
        time.sleep(max(0.0, copied_expiry + 1 - time.time()))
        stale_from = time.time()
        stale = workload.client("given_token.py", BROKER4, copied, "--timeout", "6", timeout=40)
        assert not stale["metadata"], stale
        refusals = eventually(lambda: [a for a in authentications_of(config_path, sessions_by_cgroup(config_path, workload))
                                       if a["at"] >= stale_from and a["outcome"] == "refused"],
                              message="the expired copy's refusal audited")
        assert all("expired" in a["reason"] for a in refusals), refusals
        facts["a new connection with the copy after its exp"] = refusals[0]["reason"]
    finally:
        keycloak.set_client_enabled("short-lived", True)
        if consumer.poll() is None:
            consumer.kill()
        consumer.communicate(timeout=10)
        print("\n" + "\n".join(f"disabled client: {k}: {v}" for k, v in facts.items()))


@pytest.fixture
def introspecting(appliance, config_path, keycloak):
    """The session's appliance restarted with introspection at Keycloak (as its confidential client
    'appliance-upstream'), for one test, then restarted as it was: the session's configuration stays
    without it, so no other test pays the round trip or depends on Keycloak being up at the appliance's start."""
    secret_file = STATE / "introspection-secret"
    secret_file.unlink(missing_ok=True)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, keycloak.secret("appliance-upstream").encode() + b"\n")
    os.close(fd)
    data = yaml.safe_load(config_path.read_text())
    endpoint = f"{keycloak.issuer}/protocol/openid-connect/token/introspect"
    data["identity"]["providers"][0].update(introspection_endpoint=endpoint,
                                            introspection_client_id="appliance-upstream",
                                            introspection_client_secret_file=str(secret_file),
                                            introspection_cache_s=5)
    path = config_path.with_name("appliance-introspection.yaml")
    path.write_text(yaml.safe_dump(data))
    timings = {}
    began = time.monotonic()
    appliance.stop()
    appliance.config_path = path
    appliance.start()
    timings["restart with introspection"] = time.monotonic() - began
    try:
        yield endpoint, timings
    finally:
        began = time.monotonic()
        appliance.stop()
        appliance.config_path = config_path
        appliance.start()
        print(f"\nintrospection: restart back to the session's configuration took {time.monotonic() - began:.1f} s")


def test_with_introspection_disabling_the_service_account_refuses_its_tokens_at_once_and_ends_its_session_at_re_authentication(
        introspecting, config_path, keycloak, enroll, idp_topic):
    """docs/identity.md, 'Disabling the service account in Keycloak also ends its sessions at their next
    re-authentication', with introspection configured: a librdkafka consumer of the short-lived client (30 s
    tokens) is live; the client is disabled; (a) a new connection presenting an unexpired token issued before is
    refused at once, naming introspection, and (b) the live session ends at its next re-authentication, before
    the token it holds runs out. Measured and printed (-s)."""
    endpoint, facts = introspecting
    workload = enroll("short-introspected", auth="token")
    consumer = workload.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, idp_topic, "--consume", "1000000",
                               "--timeout", "60", "--group", f"idp-introspected-{SUFFIX}",
                               *oauth(keycloak, "short-lived")])
    try:
        def auths(outcome):
            found = authentications_of(config_path, sessions_by_cgroup(config_path, workload))
            return [a for a in found if a["outcome"] == outcome]

        eventually(lambda: auths("ok"), timeout=30, message="the consumer's first authentication")
        copied = keycloak.token("short-lived")  # the consumer got in: introspection said active while enabled
        keycloak.set_client_enabled("short-lived", False)
        disabled_at = time.time()
        held = {a["session_id"]: a["expires_at"] for a in sorted(auths("ok"), key=lambda a: a["at"])
                if a["at"] <= disabled_at}
        live = {s["session_id"] for s in sessions_by_cgroup(config_path, workload) if s["ended_at"] is None}
        held = {sid: exp for sid, exp in held.items() if sid in live}
        assert held, "no live authenticated session when the client was disabled"

        # (a) A new connection with the unexpired copy, from a cgroup of its own (so that its refusals are
        # told apart from the consumer's): refused at once, naming introspection.
        holder = enroll("short-copy-holder", auth="token")
        asked_at = time.time()
        early = holder.client("given_token.py", BROKER4, copied, "--timeout", "6", timeout=40)
        assert not early["metadata"], early
        assert jwt.decode(copied, options={"verify_signature": False})["exp"] > time.time(), "the copy ran out first"

        def copy_refusals():
            found = authentications_of(config_path, sessions_by_cgroup(config_path, holder))
            return sorted((a for a in found if a["outcome"] == "refused"), key=lambda a: a["at"])

        refusals = eventually(copy_refusals, timeout=10, message="the copy's refusal audited")
        assert not [a for a in authentications_of(config_path, sessions_by_cgroup(config_path, holder))
                    if a["outcome"] == "ok"]
        for refusal in refusals:
            assert "the identity provider says the token is no longer active (introspection)" in refusal["reason"], refusal
            assert endpoint in refusal["reason"], refusal
        first = refusals[0]
        facts["(a) a new connection with the unexpired copy"] = (
            f"{len(refusals)} attempt(s), all refused; the first {first['at'] - asked_at:.2f} s after the client "
            f"started (process start included): {first['reason'][:220]}")

        # (b) The live sessions end at their next re-authentication, before their token's exp.
        def all_ended():
            rows = {s["session_id"]: s for s in sessions_by_cgroup(config_path, workload) if s["session_id"] in held}
            return rows if all(r["ended_at"] is not None for r in rows.values()) else None

        ended = eventually(all_ended, timeout=max(held.values()) - time.time() + 15, interval=0.5,
                           message="the disabled client's sessions ended")
        for sid, row in ended.items():
            reason = row["close_reason"] or ""
            assert reason.startswith("SASL authentication failed: "), row
            assert "no longer active (introspection)" in reason, row
            assert row["ended_at"] < held[sid], (row, held[sid])  # at a re-authentication, not at the token's expiry
            facts[f"(b) session {sid}"] = (f"ended {row['ended_at'] - disabled_at:.1f} s after disabling, "
                                           f"{held[sid] - row['ended_at']:.1f} s before its token's exp: {reason[:200]}")
    finally:
        keycloak.set_client_enabled("short-lived", True)
        if consumer.poll() is None:
            consumer.kill()
        consumer.communicate(timeout=10)
        print("\n" + "\n".join(f"introspection: {k}: {v if isinstance(v, str) else f'{v:.1f} s'}"
                                  for k, v in facts.items()))
