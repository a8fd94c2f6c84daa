"""The console in a real browser: Debian's Chromium, driven by Selenium through chromium-driver, headless.

A person in the approver group (kafka-admins, which the integration policy's approve rule names) logs in
through the local Keycloak, approves the Java admin client's held CreateTopics while it waits, and opens
that session's replay. `appliance console` runs as its own process on the test appliance's state directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time

import pytest
import yaml

from tests.integration.clients.families import java_admin
from tests.integration.conftest import BROKER4, PY, audit, eventually
from tests.integration.fixtures import IDP_ISSUER, STATE
from tests.integration.test_approvals import pending_for

CONSOLE_PORT = 39443
CONSOLE = f"http://127.0.0.1:{CONSOLE_PORT}"
CLIENT_ID = "appliance-console"
PERSON, PASSWORD = "ada", "ada-" + secrets.token_hex(8)


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


@pytest.fixture
def console(config_path, appliance, keycloak):
    """`appliance console` on the test state directory, with a browser client and a person at Keycloak."""
    secret = secrets.token_urlsafe(24)
    keycloak.ensure_browser_client(CLIENT_ID, secret, f"{CONSOLE}/callback")
    keycloak.ensure_person(PERSON, PASSWORD, ("kafka-admins",))
    secret_file = STATE / "console-client-secret"
    secret_file.write_text(secret + "\n")
    os.chmod(secret_file, 0o600)
    settings = yaml.safe_load(config_path.read_text())
    settings["console"] = {"enabled": True, "listen": f"127.0.0.1:{CONSOLE_PORT}", "issuer": keycloak.issuer,
                           "client_id": CLIENT_ID, "client_secret_file": str(secret_file),
                           "redirect_uri": f"{CONSOLE}/callback", "approver_group": "kafka-admins",
                           "auditor_group": "kafka-auditors"}
    console_config = STATE / "console.yaml"
    console_config.write_text(yaml.safe_dump(settings))
    log = (STATE / "console.log").open("w")
    proc = subprocess.Popen([PY, "-m", "appliance", "--config", str(console_config), "console"], stdout=log,
                            stderr=subprocess.STDOUT)

    def listening() -> bool:
        assert proc.poll() is None, f"appliance console exited:\n{(STATE / 'console.log').read_text()[-3000:]}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", CONSOLE_PORT)) == 0

    eventually(listening, timeout=30, message="appliance console listening")
    yield console_config
    proc.terminate()
    proc.wait(10)
    log.close()


def _log_in(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{CONSOLE}/")  # no session: to /login, then to Keycloak's login form
    eventually(lambda: driver.find_elements(By.ID, "username"), timeout=30, message="Keycloak's login form")
    assert driver.current_url.startswith(f"{IDP_ISSUER}/protocol/openid-connect/auth")
    assert "code_challenge_method=S256" in driver.current_url
    driver.find_element(By.ID, "username").send_keys(PERSON)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "kc-login").click()
    eventually(lambda: driver.find_elements(By.ID, "who"), timeout=30,
               message=f"the console after login (at {driver.current_url}: {driver.page_source[:1500]})")
    assert driver.find_element(By.ID, "who").text == f"{PERSON} (auditor, approver)"
    cookie = driver.get_cookie("appliance_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"


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
