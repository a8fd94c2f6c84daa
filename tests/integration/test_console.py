"""The console in a real browser: Debian's Chromium, driven by Selenium through chromium-driver, headless.

A person in the approver group (kafka-admins, which the integration policy's approve rule names) logs in
through the local Keycloak, approves the Java admin client's held CreateTopics while it waits, and opens
that session's replay; another denies librdkafka's, and the client is told who and why. A person only in
the auditor group sees the requests but cannot vote, even with a forged POST. Requests a browser would not
make (no session, no or a wrong CSRF token, a forged vote) go over plain HTTP to the same console, with the
cookie the browser got; after logout, that cookie is refused. `appliance console` runs as its own process on the test appliance's state directory.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time

import pytest

from tests.integration.clients.families import java_admin
from tests.integration.conftest import BROKER4, PY, audit, eventually
from tests.integration.fixtures import (CONSOLE_CLIENT_ID, CONSOLE_PORT, CONSOLE_SECRET_FILE, CONSOLE_URL,
                                        IDP_ISSUER, STATE)
from tests.integration.test_approvals import Webhook, admin_create, approvals, pending_for, result_of

CONSOLE = CONSOLE_URL
PERSON, PASSWORD = "ada", "ada-" + secrets.token_hex(8)  # in the approver group
AUDITOR, AUDITOR_PASSWORD = "grace", "grace-" + secrets.token_hex(8)  # in the auditor group only


def _browser():
    for path in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not shutil.which(path):
            pytest.fail(f"integration prerequisite missing: {path} (apt-get install chromium chromium-driver; "
                        "scripts/setup does)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f"integration prerequisite missing: selenium does not import ({e}); scripts/setup installs the "
                    "test extras", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.implicitly_wait(0)
    return driver


@pytest.fixture(scope="module")
def console(config_path, appliance, keycloak):
    """`appliance console` on the test appliance's own configuration (its `console:` mapping, which also makes
    serve link its webhooks here), with a browser client and two people at Keycloak."""
    secret = secrets.token_urlsafe(24)
    keycloak.ensure_browser_client(CONSOLE_CLIENT_ID, secret, f"{CONSOLE}/callback")
    keycloak.ensure_person(PERSON, PASSWORD, ("kafka-admins",))
    keycloak.ensure_person(AUDITOR, AUDITOR_PASSWORD, ("kafka-auditors",))
    CONSOLE_SECRET_FILE.write_text(secret + "\n")
    os.chmod(CONSOLE_SECRET_FILE, 0o600)
    log = (STATE / "console.log").open("w")
    proc = subprocess.Popen([PY, "-m", "appliance", "--config", str(config_path), "console"], stdout=log,
                            stderr=subprocess.STDOUT)

    def listening() -> bool:
        assert proc.poll() is None, f"appliance console exited:\n{(STATE / 'console.log').read_text()[-3000:]}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", CONSOLE_PORT)) == 0

    eventually(listening, timeout=30, message="appliance console listening")
    yield config_path
    proc.terminate()
    proc.wait(10)
    log.close()


def _log_in(driver, person: str = PERSON, password: str = PASSWORD, roles: str = "auditor, approver", *,
            at: str = "/") -> None:
    """Log in through Keycloak's form, starting at the console page `at`, where the browser is brought back."""
    from selenium.webdriver.common.by import By

    driver.get(f"{CONSOLE}{at}")  # no session: to /login, then to Keycloak's login form
    eventually(lambda: driver.find_elements(By.ID, "username"), timeout=30, message="Keycloak's login form")
    assert driver.current_url.startswith(f"{IDP_ISSUER}/protocol/openid-connect/auth")
    assert "code_challenge_method=S256" in driver.current_url
    driver.find_element(By.ID, "username").send_keys(person)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "kc-login").click()
    eventually(lambda: driver.find_elements(By.ID, "who"), timeout=30,
               message=f"the console after login (at {driver.current_url}: {driver.page_source[:1500]})")
    assert driver.find_element(By.ID, "who").text == f"{person} ({roles})"
    assert driver.current_url == f"{CONSOLE}{at}"
    cookie = driver.get_cookie("appliance_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"


def _session_of(driver) -> tuple[str, str]:
    """The browser's console cookie (as a Cookie header) and its session's CSRF token, from the page's forms."""
    from selenium.webdriver.common.by import By

    cookie = driver.get_cookie("appliance_console")
    csrf = driver.find_element(By.CSS_SELECTOR, "form.who input[name=csrf]").get_attribute("value")
    assert cookie and csrf
    return f"appliance_console={cookie['value']}", csrf


def _http(method: str, path: str, *, cookie: str | None = None,
          form: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """One real HTTP request to the console, no redirect followed: (status, headers, body unescaped)."""
    import html
    import urllib.parse

    connection = http.client.HTTPConnection("127.0.0.1", CONSOLE_PORT, timeout=10)
    try:
        headers = {} if cookie is None else {"Cookie": cookie}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return (answer.status, {k.lower(): v for k, v in answer.getheaders()},
                html.unescape(answer.read().decode("utf-8", "replace")))
    finally:
        connection.close()


def _refused_events(config_path, path: str) -> list[dict]:
    """The console-refused events for requests to `path`, their detail decoded."""
    found = []
    for event in audit(config_path, "events", "--kind", "console-refused"):
        detail = json.loads(event["detail"])
        if detail.get("path") == path:
            found.append({**event, "detail": detail})
    return found


def test_a_person_approves_the_java_admins_held_create_topics_in_the_browser_and_replays_it(
        console, config_path, enroll):
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        _log_in(driver)
        bot = enroll("approval-bot")
        topic = f"apr-{secrets.token_hex(3)}"
        client = java_admin(bot, BROKER4, timeout=25, new_topic=topic, new_denied=f"other-{topic}", allowed=topic,
                            denied="nothing", group="apr-g", denied_group="nothing")
        request = eventually(lambda: pending_for(config_path, topic), timeout=40,
                             message="the Java admin's request filed")
        assert request["api"] == "CreateTopics"
        driver.get(f"{CONSOLE}/approvals")
        row = driver.find_element(By.ID, f"request-{request['id']}")
        assert topic in row.text and "approval-bot" in row.text
        row.find_element(By.NAME, "reason").send_keys("approved in the browser")
        row.find_element(By.CSS_SELECTOR, "button.approve").click()
        flash = eventually(lambda: driver.find_elements(By.ID, "flash"), timeout=10, message="the approval's answer")
        assert f"approved by {PERSON} (console): approved in the browser" in flash[0].text

        calls = client.finish().summary["calls"]
        assert calls["createTopics"]["ok"] is True, calls["createTopics"]
        assert calls["describeTopics"]["value"] == {"partitions": 1}, calls["describeTopics"]

        (event,) = [e for e in audit(config_path, "events", "--kind", "approval-approved")
                    if json.loads(e["detail"])["request"] == request["id"]]
        assert json.loads(event["detail"])["by"] == f"{PERSON} (console)"

        def replayed():
            driver.get(f"{CONSOLE}/sessions/{request['session_id']}/replay")
            text = driver.find_element(By.ID, "timeline").text
            return text if "CreateTopics" in text and "approval-approved" in text else None

        timeline = eventually(replayed, timeout=15, message="the session's replay showing the request and approval")
        assert f"approved by {PERSON} (console)" in timeline
        scrubber = driver.find_element(By.ID, "scrubber")
        entries = driver.find_elements(By.CSS_SELECTOR, "#timeline .entry")
        assert int(scrubber.get_attribute("max")) == len(entries) - 1 and len(entries) >= 3
        driver.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'))", scrubber)
        shown = [e for e in entries if e.is_displayed()]
        assert len(shown) == 1 and "connect" in shown[0].text
        assert driver.find_element(By.ID, "position").text == f"1 / {len(entries)}"
    finally:
        driver.quit()


def test_a_person_denies_librdkafkas_held_create_topics_from_the_webhooks_link_and_the_client_is_told_who_and_why(
        console, config_path, enroll):
    from selenium.webdriver.common.by import By

    webhook, driver = Webhook(), _browser()
    try:
        _log_in(driver)
        bot = enroll("approval-bot")
        topic = f"apr-{secrets.token_hex(3)}"
        client = admin_create(bot, topic)  # confluent-kafka's AdminClient: librdkafka
        request = eventually(lambda: pending_for(config_path, topic), timeout=15, message="librdkafka's request filed")
        assert request["api"] == "CreateTopics"
        (posted,) = eventually(lambda: [p for p in webhook.posted if request["id"] in p["text"]], timeout=5,
                               message="the approvers' webhook told")
        (actions,) = [b for b in posted["blocks"] if b["type"] == "actions"]
        deny_link = next(e["url"] for e in actions["elements"] if e["text"]["text"].startswith("Deny"))
        assert deny_link == f"{CONSOLE}/approvals/{request['id']}#deny"
        driver.get(deny_link)  # following the link shows the request and decides nothing
        assert driver.find_element(By.ID, "request-state").text == "pending" and topic in driver.page_source
        assert pending_for(config_path, topic) is not None
        form = driver.find_element(By.ID, "deny")
        form.find_element(By.NAME, "reason").send_keys("not during the freeze")
        form.find_element(By.CSS_SELECTOR, "button.deny").click()
        flash = eventually(lambda: driver.find_elements(By.ID, "flash"), timeout=10, message="the denial's answer")
        assert f"denied by {PERSON} (console): not during the freeze" in flash[0].text
        assert driver.current_url == f"{CONSOLE}/approvals/{request['id']}"  # back on the request's page
        assert driver.find_element(By.ID, "request-state").text == "denied"
        assert driver.find_elements(By.ID, "deny") == []

        result = result_of(client)
        assert result["ok"] is False and result["code"] == "TOPIC_AUTHORIZATION_FAILED", result
        assert f"denied by {PERSON}: not during the freeze" in result["message"], result

        (event,) = [e for e in audit(config_path, "events", "--kind", "approval-denied")
                    if json.loads(e["detail"])["request"] == request["id"]]
        assert json.loads(event["detail"])["by"] == f"{PERSON} (console)"
        assert event["identity"] == "approval-bot" and event["session_id"] == request["session_id"]
    finally:
        driver.quit()
        webhook.close()


def test_an_auditor_sees_the_held_requests_but_a_forged_vote_is_refused_and_audited(console, config_path, enroll):
    from selenium.webdriver.common.by import By

    bot = enroll("approval-bot")
    topic = f"apr-{secrets.token_hex(3)}"
    client = admin_create(bot, topic)
    request = eventually(lambda: pending_for(config_path, topic), timeout=15, message="the request filed")
    driver = _browser()
    try:
        # The request's page, as a webhook links it, with no session yet: login, then back to it.
        _log_in(driver, AUDITOR, AUDITOR_PASSWORD, "auditor", at=f"/approvals/{request['id']}")
        assert "Auditors cannot vote" in driver.find_element(By.ID, "cannot-vote").text
        assert driver.find_elements(By.CSS_SELECTOR, "form.vote") == []
        driver.get(f"{CONSOLE}/approvals")
        row = driver.find_element(By.ID, f"request-{request['id']}")
        assert topic in row.text and "approval-bot" in row.text and "auditors cannot vote" in row.text
        assert row.find_elements(By.CSS_SELECTOR, "button.approve, button.deny") == []

        cookie, csrf = _session_of(driver)
        path = f"/approvals/{request['id']}/approve"
        status, _, body = _http("POST", path, cookie=cookie, form={"csrf": csrf, "reason": "forged"})
        assert status == 403, (status, body[:500])
        assert f"{AUDITOR} is an auditor: only the approver group may approve, deny or revoke" in body
        (refused,) = eventually(lambda: _refused_events(config_path, path), timeout=5,
                                message="the forged vote audited")
        assert refused["detail"]["by"] == f"{AUDITOR} (console)"
        assert f"by {AUDITOR} refused: {AUDITOR} is an auditor" in refused["message"]
        assert pending_for(config_path, topic)["state"] == "pending"  # the forged vote did nothing
        assert not [e for e in audit(config_path, "events", "--kind", "approval-approved")
                    if json.loads(e["detail"])["request"] == request["id"]]
    finally:
        driver.quit()
        approvals(config_path, "deny", request["id"], "--reason", "test over", check=False)
        result_of(client)


def test_requests_without_a_session_or_its_csrf_token_are_refused_and_audited(console, config_path):
    status, headers, _ = _http("GET", "/approvals")
    assert status == 303 and headers["location"] == "/login?next=%2Fapprovals", (status, headers)
    path = f"/approvals/{secrets.token_hex(8)}/approve"
    status, _, body = _http("POST", path, form={"csrf": "x", "reason": "no session"})
    assert status == 401 and "no valid console session: log in first" in body, (status, body[:300])
    status, _, body = _http("POST", path, cookie="appliance_console=forged.cookie.value",
                            form={"csrf": "x", "reason": "forged cookie"})
    assert status == 401, (status, body[:300])

    driver = _browser()
    try:
        _log_in(driver)
        cookie, csrf = _session_of(driver)
        missing = f"/approvals/{secrets.token_hex(8)}/approve"
        status, _, body = _http("POST", missing, cookie=cookie, form={"reason": "no token"})
        assert status == 403 and "CSRF token is missing or is not this session's" in body, (status, body[:500])
        wrong = f"/approvals/{secrets.token_hex(8)}/deny"
        status, _, body = _http("POST", wrong, cookie=cookie, form={"csrf": csrf[::-1], "reason": "wrong token"})
        assert status == 403 and "CSRF token is missing or is not this session's" in body, (status, body[:500])
        for path in (missing, wrong):
            (refused,) = eventually(lambda: _refused_events(config_path, path), timeout=5,
                                    message=f"the refused POST to {path} audited")
            assert refused["detail"]["by"] == f"{PERSON} (console)" and "CSRF" in refused["message"]
        status, _, _ = _http("GET", "/approvals", cookie=cookie)
        assert status == 200  # the session itself is still good
    finally:
        driver.quit()


def test_logging_out_ends_the_session_for_a_copy_of_its_cookie_too(console, config_path):
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        _log_in(driver)
        cookie, csrf = _session_of(driver)  # copied before logout, as from a shared machine or a proxy's log
        assert _http("GET", "/approvals", cookie=cookie)[0] == 200
        driver.find_element(By.CSS_SELECTOR, "form.who button").click()
        eventually(lambda: driver.find_elements(By.ID, "logged-out"), timeout=10, message="the logged-out page")
        assert driver.current_url == f"{CONSOLE}/logged-out" and not driver.find_elements(By.ID, "who")
        assert [e for e in audit(config_path, "events", "--kind", "console-logout")
                if json.loads(e["detail"])["by"] == f"{PERSON} (console)"]
        status, headers, _ = _http("GET", "/approvals", cookie=cookie)
        assert status == 303 and headers["location"].startswith("/login"), (status, headers)
        path = f"/approvals/{secrets.token_hex(5)}/approve"
        status, _, body = _http("POST", path, cookie=cookie, form={"csrf": csrf, "reason": "after logout"})
        assert status == 401 and "no valid console session" in body, (status, body[:300])
        (refused,) = eventually(lambda: _refused_events(config_path, path), timeout=5,
                                message="the replayed cookie audited")
        assert refused["detail"] == {"by": f"{PERSON} (console)", "path": path, "session": "ended"}
    finally:
        driver.quit()
