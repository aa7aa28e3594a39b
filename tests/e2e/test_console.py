"""The operator console in a real browser: Debian's chromium, headless, through chromedriver
and Selenium, against the running binary.

Mail goes in through SMTP; the embedded SES mailbox simulator (dir transport) turns mail to
success@/bounce@/complaint@simulator.amazonses.com into real feedback events, which the
reputation figures count and the console charts. The browser signs in, reads the chart, holds
and releases a message as `admin`; a `viewer` is refused (403) and a POST without the
session's CSRF token is refused. Waits are Selenium's explicit waits or deadline polls, never
fixed sleeps; one browser serves the whole module (CI has two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import subprocess
import time
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import PASSWORDS, make_message, records, submit_as_alice, wait_record

SIM = "simulator.amazonses.com"
CONSOLE_PASSWORDS = {"ops": "ops-console-pw", "watch": "watch-console-pw"}
WAIT = 30.0


@pytest.fixture(scope="module")
def console_hashes(outbox_bin) -> dict[str, str]:
    """argon2id hashes for the console's own accounts, made by `outbox passwd`."""
    hashes = {}
    for login, password in CONSOLE_PASSWORDS.items():
        proc = subprocess.run([str(outbox_bin), "passwd"], input=password + "\n",
                              capture_output=True, text=True, timeout=60, check=True)
        hashes[login] = proc.stdout.strip().splitlines()[-1]
    return hashes


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "chromium and chromium-driver are needed (scripts/test installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1400", "--ignore-certificate-errors",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def console_config(console_hashes) -> dict:
    return {"console": {"admin": [
        {"login": "ops", "password_hash": console_hashes["ops"], "role": "admin"},
        {"login": "watch", "password_hash": console_hashes["watch"]},
    ]}}


@pytest.fixture
def console(start_server, console_hashes, browser):
    """A server with the console on (ops: admin, watch: viewer) and a browser with no cookies."""
    server = start_server(console_config(console_hashes))
    browser.delete_all_cookies()
    return server


def base(server) -> str:
    return f"https://localhost:{server.https[0][1]}"


def sign_in(browser, server, login: str, password: str):
    browser.get(base(server) + "/console/login")
    browser.find_element(By.ID, "login").send_keys(login)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "sign-in").click()


def held_submission(server) -> str:
    """A message that stays queued for an hour (RFC 4865 HOLDFOR), so the queue can be acted on."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        client.mail("alice@example.com", ["HOLDFOR=3600"])
        client.rcpt("later@example.net")
        code, reply = client.data(make_message("later", to="later@example.net"))
        assert code == 250, reply
    from conftest import queue_id_of
    return queue_id_of(reply)


def state_of(server, queue_id: str) -> str:
    return records(server, "queue", "show", queue_id)[0]["state"]


def chart_totals(browser) -> dict[str, int]:
    return {
        line.get_attribute("data-series"): int(line.get_attribute("data-total"))
        for line in browser.find_elements(By.CSS_SELECTOR, "#flow-chart g.series")
    }


def test_admin_signs_in_sees_the_chart_and_holds_then_releases(console, browser):
    server = console
    sent = {}
    for rcpt, klass in [(f"success@{SIM}", None), (f"success+2@{SIM}", None),
                        (f"bounce@{SIM}", None), (f"complaint@{SIM}", "bulk")]:
        extra = f"X-Outbox-Class: {klass}\r\n" if klass else ""
        sent[rcpt] = submit_as_alice(server, make_message(rcpt, to=rcpt, extra_headers=extra), [rcpt])
    for rcpt, want in [(f"success@{SIM}", "delivered"), (f"bounce@{SIM}", "bounced"),
                       (f"complaint@{SIM}", "complained")]:
        wait_record(server, sent[rcpt], lambda r, w=want: r["state"] == w)
    later = held_submission(server)

    # A wrong password is refused, and no session cookie is set.
    sign_in(browser, server, "ops", "not-the-password")
    error = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "login-error")))
    assert "Wrong login or password" in error.text
    assert browser.get_cookie("__Host-outbox-console") is None
    # A mail account's password is no console password.
    sign_in(browser, server, "alice", PASSWORDS["alice"])
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "login-error")))

    sign_in(browser, server, "ops", CONSOLE_PASSWORDS["ops"])
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "flow-chart")))
    cookie = browser.get_cookie("__Host-outbox-console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    # The chart counts what the simulator reported; the figures refresh as the ledger changes,
    # so the page is reloaded until they are in (bounded by the explicit wait).
    def counted(driver):
        driver.refresh()
        totals = chart_totals(driver)
        return totals if totals.get("sent", 0) >= 4 and totals.get("bounced", 0) >= 1 \
            and totals.get("complained", 0) >= 1 and totals.get("delivered", 0) >= 2 else False
    totals = WebDriverWait(browser, WAIT, poll_frequency=0.5).until(counted)
    assert totals["sent"] == 4, totals
    assert browser.find_element(By.ID, "flow-chart").is_displayed()
    legend = browser.find_element(By.CSS_SELECTOR, "[data-legend=sent]").text
    assert legend == "4"
    account = browser.find_element(By.CSS_SELECTOR, "#reputation tr[data-scope=account][data-window='24h']")
    assert "25.00 %" in account.text, account.text  # 1 hard bounce of 4 sent
    assert browser.find_element(By.ID, "depth-queued").text == "1"
    screenshot = os.environ.get("CONSOLE_SCREENSHOT")
    if screenshot:  # README's picture (docs/console.png): `CONSOLE_SCREENSHOT=path pytest ...`
        browser.set_window_size(1100, 900)
        browser.save_screenshot(screenshot)
        browser.set_window_size(1200, 1400)

    # Hold the queued message from its page, then release it.
    browser.get(f"{base(server)}/console/submission/{later}")
    assert browser.find_element(By.ID, "state").text == "queued"
    browser.find_element(By.CSS_SELECTOR, "button[data-action=hold]").click()
    notice = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "notice")))
    assert notice.text == "hold: 1 changed"
    assert browser.find_element(By.ID, "state").text == "held"
    assert state_of(server, later) == "held"
    browser.find_element(By.CSS_SELECTOR, "button[data-action=release]").click()
    WebDriverWait(browser, WAIT).until(EC.text_to_be_present_in_element((By.ID, "notice"), "release: 1"))
    # Released, it is queued again but keeps the hour its submitter asked for (HOLDFOR), as
    # `outbox queue release` does; "send now" is the explicit override (`queue send-now`).
    record = records(server, "queue", "show", later)[0]
    assert record["state"] == "queued" and record["due_ms"] == record["release_ms"], record
    assert record["due_ms"] > time.time() * 1000 + 30 * 60 * 1000, record
    browser.find_element(By.CSS_SELECTOR, "button[data-action=send_now]").click()
    WebDriverWait(browser, WAIT).until(EC.text_to_be_present_in_element((By.ID, "notice"), "send now: 1"))
    wait_record(server, later, lambda r: r["state"] == "sent")

    # The bounced submission's page shows its per-recipient outcome and SES-side id.
    browser.get(f"{base(server)}/console/submission/{sent[f'bounce@{SIM}']}")
    assert "bounced" in browser.find_element(By.ID, "recipients").text
    assert browser.find_element(By.ID, "provider-id").text not in ("", "—")
    browser.get(f"{base(server)}/console/suppressions")
    assert f"bounce@{SIM}" in browser.find_element(By.ID, "suppressions").text

    # Signing out ends the session: the pages send the browser back to the sign-in form.
    browser.get(base(server) + "/console")
    browser.find_element(By.CSS_SELECTOR, "button[data-action=logout]").click()
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "login-form")))
    browser.get(base(server) + "/console")
    assert browser.find_element(By.ID, "login-form")


def test_viewer_is_refused_and_the_csrf_token_is_enforced(console, browser):
    server = console
    later = held_submission(server)

    # A viewer reads the queue but gets no buttons; a form posted anyway is refused (403).
    sign_in(browser, server, "watch", CONSOLE_PASSWORDS["watch"])
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "flow-chart")))
    browser.get(base(server) + "/console/queue")
    assert later in browser.find_element(By.CSS_SELECTOR, "table.records").text
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.CSS_SELECTOR, "button[data-action=hold]")
    csrf = browser.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    browser.execute_script(
        """const f = document.createElement('form'); f.method = 'post'; f.action = '/console/action';
           for (const [k, v] of Object.entries(arguments[0])) {
             const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v;
             f.appendChild(i); }
           document.body.appendChild(f); f.submit();""",
        {"op": "hold", "id": later, "csrf": csrf, "back": "/console/queue"})
    refused = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "refused")))
    assert "admin role" in refused.text
    assert state_of(server, later) == "queued"
    # The same POST outside the browser, to read the status code: 403.
    session = {"__Host-outbox-console": browser.get_cookie("__Host-outbox-console")["value"]}
    url = base(server) + "/console/action"
    form = {"op": "hold", "id": later, "csrf": csrf, "back": "/console"}
    r = requests.post(url, data=form, cookies=session, verify=server.ca, allow_redirects=False, timeout=10)
    assert r.status_code == 403 and "admin role" in r.text
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp

    # An admin whose form carries a wrong token is refused too, and nothing changes.
    browser.delete_all_cookies()
    sign_in(browser, server, "ops", CONSOLE_PASSWORDS["ops"])
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "flow-chart")))
    browser.get(f"{base(server)}/console/submission/{later}")
    hold = browser.find_element(By.CSS_SELECTOR, "button[data-action=hold]")
    browser.execute_script(
        "arguments[0].form.querySelector('input[name=csrf]').value = 'forged';", hold)
    hold.click()
    refused = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "refused")))
    assert "CSRF" in refused.text
    assert state_of(server, later) == "queued"
    admin = {"__Host-outbox-console": browser.get_cookie("__Host-outbox-console")["value"]}
    for data in ({"op": "hold", "id": later}, {"op": "hold", "id": later, "csrf": ""}):
        r = requests.post(url, data=data, cookies=admin, verify=server.ca, allow_redirects=False, timeout=10)
        assert r.status_code == 403 and "CSRF" in r.text
    assert state_of(server, later) == "queued"
    # With the page's own token it works.
    browser.get(f"{base(server)}/console/submission/{later}")
    browser.find_element(By.CSS_SELECTOR, "button[data-action=hold]").click()
    WebDriverWait(browser, WAIT).until(EC.text_to_be_present_in_element((By.ID, "notice"), "hold: 1"))
    assert state_of(server, later) == "held"


def test_admin_redrives_the_dead_letter_queue(start_server, console_hashes, browser):
    """A message whose one allowed attempt failed (the dir transport's folder is a file) is a
    dead letter; its page shows the attempt and the error; once the cause is fixed, the admin
    redrives the queue from the browser and the message is sent."""
    def setup(root):
        (root / "blocked").write_text("not a folder")
    server = start_server({**console_config(console_hashes),
                           "sender.transport": {"kind": "dir", "path": "blocked"},
                           "spool.max_attempts": 1}, setup=setup)
    browser.delete_all_cookies()
    doomed = submit_as_alice(server, make_message("doomed"), ["rcpt@example.net"])
    wait_record(server, doomed, lambda r: r["state"] == "dead")

    sign_in(browser, server, "ops", CONSOLE_PASSWORDS["ops"])
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "flow-chart")))
    assert browser.find_element(By.ID, "depth-dead").text == "1"
    browser.get(f"{base(server)}/console/submission/{doomed}")
    facts = browser.find_element(By.ID, "submission").text
    assert "Attempts 1" in facts and "blocked" in facts, facts
    assert "dead" in browser.find_element(By.ID, "history").text

    blocked = server.root / "blocked"
    blocked.unlink()
    blocked.mkdir()
    browser.get(base(server) + "/console/dlq")
    assert doomed in browser.find_element(By.CSS_SELECTOR, "table.records").text
    # The first button is "redrive" for the whole queue.
    browser.find_element(By.CSS_SELECTOR, "main > form button[data-action=redrive]").click()
    notice = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "notice")))
    assert notice.text == "redrive: 1 changed"
    wait_record(server, doomed, lambda r: r["state"] == "sent")
    assert records(server, "dlq", "list") == []


def test_a_guard_hold_shows_and_the_admin_releases_it(start_server, console_hashes, browser):
    """Simulated bounces push bulk mail over the guard's level (small minimum volumes for the
    test); the overview names the hold against its figures; the admin ends it from there."""
    server = start_server({**console_config(console_hashes),
                           "reputation.min_sends_bounce": 4, "reputation.min_sends_complaint": 4})
    browser.delete_all_cookies()
    for rcpt in [f"success@{SIM}", f"success+2@{SIM}", f"bounce@{SIM}", f"bounce+2@{SIM}"]:
        qid = submit_as_alice(server, make_message("news", to=rcpt, extra_headers="X-Outbox-Class: bulk\r\n"), [rcpt])
        wait_record(server, qid, lambda r: r["state"] in ("delivered", "bounced"))

    sign_in(browser, server, "ops", CONSOLE_PASSWORDS["ops"])
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "flow-chart")))

    def held(driver):
        driver.refresh()
        holds = driver.find_elements(By.CSS_SELECTOR, "ul#holds li")
        return holds if holds else False
    holds = WebDriverWait(browser, WAIT, poll_frequency=0.5).until(held)
    assert "bulk mail is held: bounce rate 50.00%" in holds[0].text, holds[0].text
    over = browser.find_elements(By.CSS_SELECTOR, "#reputation tr[data-scope='class bulk'] td.over")
    assert [td.text for td in over] == ["50.00 %"] * len(over) and over
    holds[0].find_element(By.CSS_SELECTOR, "button[data-action=reputation_release]").click()
    notice = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.ID, "notice")))
    assert notice.text == "reputation release: 1 changed"
    assert browser.find_element(By.ID, "holds").text == "Nothing is held."
    rep = json.loads(subprocess.run(
        [str(server.binary), "reputation", "--json", "--config", str(server.config_path)],
        capture_output=True, text=True, timeout=30, check=True).stdout)["reputation"]
    assert rep["holds"] == [] and rep["decisions"][0]["kind"] == "release", rep["decisions"][:1]


def test_the_console_is_off_unless_configured(start_server):
    server = start_server()
    for path in ("/console", "/console/login", "/console/static/console.css"):
        r = requests.get(base(server) + path, verify=server.ca, allow_redirects=False, timeout=10)
        assert r.status_code == 404, (path, r.status_code)
