"""The reputation guard end to end: bounces and complaints — from the offline SES mailbox
simulator and from signed SNS feedback — raise a class's rate over the guard's level; the guard
holds the class, a real client (smtplib) is refused with 451 4.7.1 naming the reason, the hold
survives a restart, shows in the CLI and /metrics, and ends on `outbox reputation release`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import smtplib
import time
import urllib.request

from conftest import (
    DELIVERY_TIMEOUT, PASSWORDS, cli, make_message, submit_as_alice, wait_record,
)
from test_feedback import make_feedback, ses_event  # noqa: F401  (fixture re-used)

SIM = "simulator.amazonses.com"
# Small volumes so a test's handful of messages counts (the defaults are 200 and 2000 sends).
SMALL = {"reputation.min_sends_bounce": 4, "reputation.min_sends_complaint": 4}


def report(server) -> dict:
    return json.loads(cli(server, "reputation", "--json").stdout)["reputation"]


def wait_holds(server, predicate, timeout: float = DELIVERY_TIMEOUT) -> dict:
    """Polls `outbox reputation --json` until `predicate(holds)`; the guard's task refreshes
    about a second after the ledger changes."""
    deadline = time.monotonic() + timeout
    while True:
        rep = report(server)
        if predicate(rep["holds"]):
            return rep
        if time.monotonic() > deadline:
            raise AssertionError(f"holds never matched: {rep['holds']}\n{server.log_tail()}")
        time.sleep(0.1)


def targets(holds: list[dict]) -> set[tuple[str | None, str]]:
    return {(h["target"].get("identity"), h["target"]["class"]) for h in holds}


def submit(server, rcpt: str, klass: str) -> tuple[int, bytes]:
    """One transaction as alice over STARTTLS; the DATA reply."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        client.mail("alice@example.com")
        client.rcpt(rcpt)
        return client.data(
            make_message("news", to=rcpt, extra_headers=f"X-Outbox-Class: {klass}\r\n")
        )


def send_bulk(server, rcpts: list[str], state_of=lambda rcpt: "sent") -> None:
    for rcpt in rcpts:
        qid = submit_as_alice(
            server, make_message("news", to=rcpt, extra_headers="X-Outbox-Class: bulk\r\n"), [rcpt]
        )
        wait_record(server, qid, lambda r, s=state_of(rcpt): r["state"] == s)


def scrape(server) -> str:
    host, port = server.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def jmap_submit_bulk(server) -> dict:
    """Email/set + EmailSubmission/set (class bulk) as alice; the EmailSubmission/set answer."""
    from test_jmap import CLASS, USING, account_id, call

    session = account_id(server)
    mailboxes, identities = call(server, [
        ["Mailbox/query", {"accountId": session, "filter": {"name": "Drafts"}}, "m"],
        ["Identity/get", {"accountId": session}, "i"],
    ])
    drafts = mailboxes[1]["ids"][0]
    identity = next(i for i in identities[1]["list"] if i["email"] == "alice@example.com")
    resp = call(server, [
        ["Email/set", {"accountId": session, "create": {"d": {
            "mailboxIds": {drafts: True}, "from": [{"email": "alice@example.com"}],
            "to": [{"email": "someone@example.net"}], "subject": "news",
            "bodyValues": {"b": {"value": "hi"}}, "textBody": [{"partId": "b", "type": "text/plain"}]}}}, "0"],
        ["EmailSubmission/set", {"accountId": session, "create": {"s": {
            "emailId": "#d", "identityId": identity["id"], "messageClass": "bulk"}}}, "1"],
    ], using=USING + [CLASS])
    return resp[1][1]


def sendmail_bulk(server) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUTBOX_SUBMIT_SOCKET": str(server.root / "state" / "submit.sock")}
    message = make_message("news", to="someone@example.net", extra_headers="X-Outbox-Class: bulk\r\n")
    return subprocess.run([str(server.binary), "sendmail", "-t", "-i"], input=message,
                          capture_output=True, timeout=30, env=env)


def test_simulated_bounces_hold_bulk_refuse_with_451_survive_restart_and_release(
    start_server, password_hashes
):
    # This process's uid may use `outbox sendmail` as alice.
    server = start_server({**SMALL, "account": [
        {"login": "alice", "password_hash": password_hashes["alice"], "unix_users": [str(os.getuid())],
         "identity": [{"id": "alice", "email": "alice@example.com", "name": "Alice"}]},
    ]})
    # 3 delivered, 1 hard bounce: 25 % of bulk, far over the 2 % level.
    rcpts = [f"success+{i}@{SIM}" for i in range(3)] + [f"bounce@{SIM}"]
    send_bulk(server, rcpts, lambda r: "bounced" if r.startswith("bounce@") else "delivered")
    rep = wait_holds(server, lambda h: len(h) == 1)
    assert targets(rep["holds"]) == {(None, "bulk")}
    [hold] = rep["holds"]
    assert hold["metric"] == "bounce"
    assert hold["figures"]["sends"] == 4 and hold["figures"]["bounces"] == 1
    assert abs(hold["figures"]["rate"] - 0.25) < 1e-9
    kinds = [(d["kind"], d["by"]) for d in rep["decisions"]]
    assert kinds == [("hold", "guard")]

    # A real client is refused, temporarily, with the reason; other classes still go.
    code, reply = submit(server, "someone@example.net", "bulk")
    assert code == 451, reply
    assert reply.startswith(b"4.7.1 ") and b"bulk mail is held: bounce rate 25.00%" in reply, reply
    code, reply = submit(server, "someone@example.net", "transactional")
    assert code == 250, reply
    # The other front doors: JMAP's SetError and sendmail's EX_TEMPFAIL, with the same reason.
    answer = jmap_submit_bulk(server)
    assert "s" not in (answer.get("created") or {}), answer
    error = answer["notCreated"]["s"]
    assert error["type"] == "forbiddenToSend" and "bulk mail is held" in error["description"], error
    proc = sendmail_bulk(server)
    assert proc.returncode == 75 and b"bulk mail is held" in proc.stderr, proc

    # The CLI shows the rates, the holds and the decisions with their figures.
    text = cli(server, "reputation").stdout
    assert "class bulk" in text and "25.00%" in text, text
    assert "bulk mail is held" in text and "by guard" in text, text
    metrics = scrape(server)
    assert 'outbox_reputation_held{identity="",class="bulk"} 1' in metrics
    assert 'outbox_reputation_bounce_rate{scope="class",identity="",class="bulk",window="24h"} 0.25' in metrics
    assert 'outbox_reputation_refusals_total{identity="alice",class="bulk"} 3' in metrics
    assert 'outbox_messages_refused_total{reason="reputation_hold"} 1' in metrics  # SMTP's

    # Restart: the holds are still there, before any new figure arrives.
    server.stop()
    server.start()
    code, reply = submit(server, "someone@example.net", "bulk")
    assert code == 451, reply

    # Releasing a hold that does not exist says so and changes nothing.
    wrong = cli(server, "reputation", "release", "bulk", "--identity", "alice", check=False)
    assert wrong.returncode != 0 and "bulk mail of identity alice is not held" in wrong.stderr
    code, _ = submit(server, "someone@example.net", "bulk")
    assert code == 451
    # The operator releases the hold; the guard does not take it back on the same figures.
    out = cli(server, "reputation", "release", "bulk").stdout
    assert "release" in out and "by operator" in out, out
    code, reply = submit(server, "someone@example.net", "bulk")
    assert code == 250, reply
    again = cli(server, "reputation", "release", "bulk", check=False)
    assert again.returncode != 0 and "bulk mail is not held" in again.stderr
    rep = report(server)
    assert rep["holds"] == []
    assert [d["kind"] for d in rep["decisions"]] == ["release", "hold"]


def test_signed_complaints_hold_bulk_and_release_lets_it_through(make_feedback):  # noqa: F811
    feedback = make_feedback(SMALL)
    server = feedback.server
    recs = [feedback.send(f"news {i}", [f"reader{i}@example.net"], klass="bulk") for i in range(4)]
    assert report(server)["holds"] == []
    # A complaint counts in the hour it happened: the AWS sample's 2016 timestamp is moved to now.
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    event = ses_event("Complaint", recs[0], "reader0@example.net", complaint__timestamp=now)
    resp = feedback.post(feedback.signer.notification(event))
    assert resp.status_code == 200, resp.text
    rep = wait_holds(server, lambda h: len(h) == 1)
    assert [h["metric"] for h in rep["holds"]] == ["complaint"]
    code, reply = submit(server, "someone@example.net", "bulk")
    assert code == 451 and b"4.7.1" in reply and b"complaint rate 25.00%" in reply, reply
    cli(server, "reputation", "release", "bulk")
    code, reply = submit(server, "someone@example.net", "bulk")
    assert code == 250, reply
