"""The `ses` transport end to end: the real binary sends through the AWS SDK to moto_server.

What SES "received" is read back from moto (`/moto-api/data.json`), the exact SendEmail requests
from moto's recorder or from the fault proxy (`faultproxy.py`), and the server's decisions from
its stderr log (there is no status command yet). moto cannot throttle, fail with a 5xx or be
unreachable on cue, so those tests put the home-made fault proxy between Outbox and moto; every
message that is finally sent still goes to real moto.

Each test waits for a positive event (a log line, a message in moto) against a deadline. Where a
test asserts that something did *not* happen again (no retry), it watches for a fixed window
longer than the longest backoff the config allows (retry_max_secs = 2, plus jitter).
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import smtplib
import time
import uuid

import pytest

from conftest import PASSWORDS, SES_ALICE, cli, log_lines, queue_id_of, wait_for_log, wait_record
from faultproxy import FaultProxy, Reply, ses_error

# Longer than the largest retry delay the SES tests configure (retry_max_secs = 2, ±20% jitter).
QUIET_WINDOW = 3.0

ALICE = SES_ALICE["email"]
TO = "rcpt@example.net"
CC = "copy@example.net"
BCC = "hidden@example.org"


# --------------------------------------------------------------------------- helpers


def about(queue_id: str, phrase: str) -> str:
    """A regex for a log line that mentions both the queue id and the phrase, in any order."""
    return rf"(?=.*\b{re.escape(queue_id)}\b)(?=.*{re.escape(phrase)})"


def attempt_of(line: str) -> int:
    m = re.search(r"\battempt=(\d+)", line)
    assert m, f"no attempt=N in log line {line!r}"
    return int(m.group(1))


def submit(server, rcpts: list[str], msg: bytes) -> str:
    """STARTTLS + AUTH PLAIN as alice, one transaction; returns the queue id."""
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        code, _ = s.starttls(context=server.tls_context())
        assert code == 220
        s.ehlo()
        s.login("alice", PASSWORDS["alice"])
        code, resp = s.mail(ALICE)
        assert code == 250, (code, resp)
        for rcpt in rcpts:
            code, resp = s.rcpt(rcpt)
            assert code == 250, (rcpt, code, resp)
        code, resp = s.data(msg)
        assert code == 250, (code, resp)
        return queue_id_of(resp)


def alternative_message(marker: str) -> bytes:
    """multipart/alternative (text + HTML) from alice, To + Cc + Bcc, class mailing_list."""
    text = (
        f"From: Alice <{ALICE}>\r\n"
        f"To: Receiver <{TO}>\r\n"
        f"Cc: {CC}\r\n"
        f"Bcc: {BCC}\r\n"
        f"Subject: SES e2e {marker}\r\n"
        f"Message-ID: <{marker}@e2e.test>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "X-Outbox-Class: mailing_list\r\n"
        'Content-Type: multipart/alternative; boundary="=_alt_e2e"\r\n'
        "\r\n"
        "--=_alt_e2e\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        f"Hello from the text part {marker}.\r\n"
        "--=_alt_e2e\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        f"<html><body><p>Hello from the HTML part {marker}.</p></body></html>\r\n"
        "--=_alt_e2e--\r\n"
    )
    return text.encode("ascii")


def simple_message(marker: str) -> bytes:
    return (
        f"From: {ALICE}\r\nTo: {TO}\r\nSubject: SES e2e {marker}\r\n"
        f"Message-ID: <{marker}@e2e.test>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"\r\nBody {marker}.\r\n"
    ).encode("ascii")


def header_block(raw: str) -> str:
    end = raw.find("\r\n\r\n")
    assert end > 0, f"no header/body separator in {raw[:300]!r}"
    return raw[:end]


@pytest.fixture
def fault_proxy(moto):
    """fault_proxy(up=True) -> a FaultProxy forwarding to moto; stopped after the test."""
    proxies: list[FaultProxy] = []

    def make(up: bool = True) -> FaultProxy:
        proxy = FaultProxy(moto.url)
        proxies.append(proxy)
        return proxy.start() if up else proxy

    yield make
    for proxy in proxies:
        proxy.stop()


# --------------------------------------------------------------------------- 1. happy path


def test_ses_sends_signed_message_without_bcc_with_tags(moto, start_ses_server):
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    moto.start_recording()
    server = start_ses_server(moto.url)
    marker = uuid.uuid4().hex
    envelope = [TO, CC, BCC]
    qid = submit(server, envelope, alternative_message(marker))

    sent = moto.wait_raw_message(marker, server=server)
    line = wait_for_log(server, about(qid, "message sent"))[0]
    assert attempt_of(line) == 1, line
    assert 'transport="ses"' in line or "transport=ses" in line, line
    assert f"provider_id={sent['id']}" in line, (line, sent["id"])
    assert sent["source"] == ALICE
    # SES replaces the Message-ID with <MessageId@email.amazonses.com> (us-east-1; issue 14
    # item 12): recorded, and shown by `queue show` as what recipients see.
    visible = f"<{sent['id']}@email.amazonses.com>"
    record = wait_record(server, qid, lambda r: r.get("message_id"))
    assert record["message_id"] == visible, record
    assert f"message-id:  {visible}" in cli(server, "queue", "show", qid).stdout

    # The MIME that left: no Bcc header (nor the address anywhere), no class header.
    raw = sent["raw_data"]
    headers = header_block(raw)
    assert not re.search(r"(?im)^bcc:", headers), headers
    assert BCC not in raw, raw
    assert not re.search(r"(?im)^x-outbox-class:", headers), headers
    assert re.search(rf"(?im)^message-id: <{marker}@e2e\.test>\r?$", headers), headers
    # The Bcc recipient is still among SES's destinations (from Destination, not the headers).
    assert BCC in sent["destinations"], sent["destinations"]
    assert {TO, CC} <= set(sent["destinations"]), sent["destinations"]

    # Both alternatives signed, once each, after the original content.
    parsed = email.message_from_bytes(raw.encode("utf-8"), policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative", headers
    parts = {p.get_content_type(): p.get_content().replace("\r\n", "\n") for p in parsed.iter_parts()}
    assert set(parts) == {"text/plain", "text/html"}, parts
    text_sig = SES_ALICE["text_signature"]
    plain = parts["text/plain"]
    assert plain.count(text_sig) == 1, plain
    assert plain.index(f"Hello from the text part {marker}.") < plain.index(text_sig), plain
    html_sig = SES_ALICE["html_signature"]
    html = parts["text/html"]
    assert html.count(html_sig) == 1, html
    assert html.index(f"part {marker}.</p>") < html.index(html_sig) < html.lower().index("</body>"), html
    assert "Alice Example" not in re.sub(re.escape(html_sig), "", html), "text signature leaked into HTML"

    # The exact SendEmail request, as moto's recorder saw it.
    requests = moto.send_email_requests()
    assert len(requests) == 1, requests
    req = requests[0]
    assert req["FromEmailAddress"] == ALICE, req
    assert req["Destination"] == {"ToAddresses": envelope}, req["Destination"]
    assert req["ConfigurationSetName"] == SES_ALICE["configuration_set"], req
    assert base64.b64decode(req["Content"]["Raw"]["Data"]) == raw.encode("utf-8")
    # The message went into the request's body without the SDK's copies (README, "Memory").
    assert not log_lines(server, "the SDK's way"), log_lines(server, "SES request")
    tags = req["EmailTags"]
    assert len(tags) == 7, tags
    assert {t["Name"]: t["Value"] for t in tags} == {
        "tenant_id": "acme-co",
        "submission_id": qid,
        "identity_id": SES_ALICE["identity_id"],
        "account_id": "acct_42",
        "user_id": "alice_example_com",
        "domain": "example_com",
        "message_class": "mailing_list",
    }, tags


# --------------------------------------------------------------------------- 2. permanent error


def test_ses_message_rejected_fails_once_without_retry(moto, start_ses_server):
    # No identity for alice@example.com in moto: SendEmail answers 400 MessageRejected.
    moto.start_recording()
    server = start_ses_server(moto.url)
    marker = uuid.uuid4().hex
    qid = submit(server, [TO], simple_message(marker))

    line = wait_for_log(server, about(qid, "message failed permanently"))[0]
    assert "MessageRejected" in line, line

    # Were it retried now, the retry would succeed and show up in moto.
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    time.sleep(QUIET_WINDOW)
    requests = moto.send_email_requests()
    assert len(requests) == 1, f"SendEmail made {len(requests)} times: {requests}"
    assert requests[0]["EmailTags"] and any(
        t == {"Name": "submission_id", "Value": qid} for t in requests[0]["EmailTags"]
    ), requests[0]
    assert moto.raw_messages() == [], "a permanently failed message was sent later"
    assert log_lines(server, about(qid, "will be retried")) == []
    assert log_lines(server, about(qid, "message sent")) == []
    assert len(log_lines(server, about(qid, "failed permanently"))) == 1


# --------------------------------------------------------------------------- 3. throttling


def test_ses_throttling_is_retried_then_sent(moto, start_ses_server, fault_proxy):
    # SES answers throttling as TooManyRequestsException (429 in practice). Sending it with a 400
    # status proves the server classifies by the error code: a bare 400 would be permanent.
    throttle = ses_error(400, "TooManyRequestsException", "Maximum sending rate exceeded.")
    proxy = fault_proxy()
    proxy.send_email_fault = lambda n: throttle if n <= 2 else None
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    server = start_ses_server(proxy.url)
    marker = uuid.uuid4().hex
    qid = submit(server, [TO, BCC], alternative_message(marker))

    sent = moto.wait_raw_message(marker, server=server)
    line = wait_for_log(server, about(qid, "message sent"))[0]
    assert attempt_of(line) == 3, line
    retries = log_lines(server, about(qid, "delivery will be retried"))
    assert [attempt_of(r) for r in retries] == [1, 2], retries
    assert all("TooManyRequestsException" in r for r in retries), retries

    calls = proxy.send_emails()
    assert [c.faulted for c in calls] == [True, True, False], calls
    # Every attempt sends the same request: signed once from the stored copy, same tags.
    bodies = [c.json() for c in calls]
    assert bodies[0] == bodies[1] == bodies[2], "the retried requests differ"
    assert base64.b64decode(bodies[2]["Content"]["Raw"]["Data"]).decode() == sent["raw_data"]
    assert sent["raw_data"].count(SES_ALICE["text_signature"].replace("\n", "\r\n")) == 1


# --------------------------------------------------------------------------- 4. dead letter


def test_ses_server_errors_dead_letter_after_five_attempts(moto, start_ses_server, fault_proxy):
    proxy = fault_proxy()
    # A 5xx without any error code (as from a load balancer): classified by status alone.
    proxy.send_email_fault = lambda n: ses_error(500, None, "Internal Server Error")
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    server = start_ses_server(proxy.url)
    qid = submit(server, [TO], simple_message(uuid.uuid4().hex))

    line = wait_for_log(server, about(qid, "dead-letter queue"), timeout=40)[0]
    assert attempt_of(line) == 5, line
    retries = log_lines(server, about(qid, "delivery will be retried"))
    assert [attempt_of(r) for r in retries] == [1, 2, 3, 4], retries
    time.sleep(QUIET_WINDOW)
    assert proxy.send_email_count == 5, proxy.send_emails()
    assert all(c.faulted for c in proxy.send_emails())
    assert moto.raw_messages() == []
    assert log_lines(server, about(qid, "message sent")) == []


# --------------------------------------------------------------------------- 5. circuit breaker


def test_ses_unreachable_parks_queue_without_spending_attempts(moto, start_ses_server, fault_proxy):
    # Down = the endpoint's port refuses connections (bound, not listening): the SDK gets no
    # connection at all, which must pause sending rather than burn attempts.
    proxy = fault_proxy(up=False)
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    server = start_ses_server(proxy.url)
    marker = uuid.uuid4().hex
    qid = submit(server, [TO], simple_message(marker))

    paused = wait_for_log(server, about(qid, "sending paused"))[0]
    assert "pause_secs=5" in paused, paused
    assert proxy.send_email_count == 0
    proxy.come_up()

    line = wait_for_log(server, about(qid, "message sent"), timeout=20)[0]
    assert attempt_of(line) == 1, f"attempts were spent during the outage: {line}"
    assert proxy.send_email_count == 1, proxy.send_emails()
    moto.wait_raw_message(marker, timeout=5, server=server)
    assert log_lines(server, about(qid, "will be retried")) == []
    assert log_lines(server, about(qid, "dead-letter")) == []
    assert log_lines(server, r"provider reachable again; sending resumes"), server.log_tail()


# --------------------------------------------------------------------------- 6. unreadable 2xx


def _json_reply(body: bytes) -> Reply:
    return Reply(200, body, {"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4())})


@pytest.mark.parametrize(
    "answer",
    [
        # SendEmail's answer cut short (a dropped proxy connection, a truncated body).
        _json_reply(b'{"MessageId": "0100019a-trunc'),
        # Something in between answering 200 with its own page.
        Reply(200, b"<html><body>Request accepted</body></html>", {"Content-Type": "text/html"}),
        # Parseable, but not SES's answer: SES always returns the MessageId.
        _json_reply(b"{}"),
    ],
    ids=["truncated-json", "html-page", "no-message-id"],
)
def test_ses_unreadable_2xx_is_retried_not_failed(moto, start_ses_server, fault_proxy, answer):
    """Issue 14 item 1. Only an error SES states (an error code) may be permanent; a 2xx whose
    body cannot be read says nothing about the message (SES v2 API reference, SendEmail:
    "Response Syntax" — a MessageId on success), so the message is retried, not failed."""
    proxy = fault_proxy()
    proxy.send_email_fault = lambda n: answer if n == 1 else None
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    server = start_ses_server(proxy.url)
    marker = uuid.uuid4().hex
    qid = submit(server, [TO], simple_message(marker))

    line = wait_for_log(server, about(qid, "message sent"))[0]
    assert attempt_of(line) == 2, line
    retries = log_lines(server, about(qid, "delivery will be retried"))
    assert [attempt_of(r) for r in retries] == [1], retries
    assert log_lines(server, about(qid, "failed permanently")) == []
    assert [c.faulted for c in proxy.send_emails()] == [True, False], proxy.send_emails()
    moto.wait_raw_message(marker, timeout=5, server=server)


# --------------------------------------------------------------------------- 7. SMTPUTF8 / IDN


def test_ses_refuses_non_ascii_local_parts_and_sends_idn_as_a_labels(moto, start_ses_server):
    """Issue 14 item 2. SES does not support SMTPUTF8 (local parts 7-bit ASCII, domains as
    punycode): SMTPUTF8 is not offered (RFC 6531 §3.1), a non-ASCII local part gets 553 5.6.7
    at MAIL/RCPT (RFC 6531 §3.5), and an IDN domain goes to SES as A-labels (RFC 5890)."""
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    moto.start_recording()
    server = start_ses_server(moto.url)
    marker = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        s.starttls(context=server.tls_context())
        code, features = s.ehlo()
        assert code == 250
        assert "SMTPUTF8" not in features.decode().upper().split(), features
        s.login("alice", PASSWORDS["alice"])
        s.command_encoding = "utf-8"  # send the RFC 6531 addresses the way a client would
        code, resp = s.docmd("MAIL", f"FROM:<{ALICE}> SMTPUTF8")  # smtplib would not send it
        assert code == 555, (code, resp)
        code, resp = s.mail(ALICE)
        assert code == 250, (code, resp)
        code, resp = s.rcpt("pelé@example.net")
        assert (code, resp[:5]) == (553, b"5.6.7"), (code, resp)
        code, resp = s.rcpt("info@bücher.example")
        assert code == 250, (code, resp)
        code, resp = s.data(
            f"From: {ALICE}\r\nTo: info@xn--bcher-kva.example\r\nSubject: IDN {marker}\r\n\r\n{marker}\r\n".encode()
        )
        assert code == 250, (code, resp)
        qid = queue_id_of(resp)

    wait_for_log(server, about(qid, "message sent"))
    sent = moto.wait_raw_message(marker, server=server)
    assert "info@xn--bcher-kva.example" in sent["destinations"], sent["destinations"]
    requests = moto.send_email_requests()
    assert [r["Destination"] for r in requests] == [{"ToAddresses": ["info@xn--bcher-kva.example"]}]


# --------------------------------------------------------------------------- 8. size after additions

# What Outbox keeps free under the provider's limit for its own additions (config.rs
# ADDITIONS_RESERVE): trace, Date/Message-ID, signature, DKIM.
ADDITIONS_RESERVE = 64 * 1024


def ehlo_size(server) -> int:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        return int(s.esmtp_features["size"])


def test_ses_size_leaves_room_for_additions(moto, start_ses_server):
    """Issue 14 item 3. SES takes 40 MB *as sent*; RFC 1870 SIZE tells the client what it may
    send, so the advertised SIZE (41,943,040 before) must leave room for what Outbox adds."""
    server = start_ses_server(moto.url)
    assert ehlo_size(server) == 40_000_000 - ADDITIONS_RESERVE


def test_ses_message_grown_past_the_limit_fails_with_reason_before_send_email(moto, start_ses_server):
    """Issue 14 item 3: the final size is checked before SendEmail. A latin-1 8bit text part
    must be relabelled UTF-8 to carry the signature, which doubles it: within SIZE when
    accepted, over SES's limit once signed — failed with that reason, SES never called."""
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    moto.start_recording()
    limit = 200_000
    server = start_ses_server(moto.url, {"sender.transport.max_message_size": limit})
    size = ehlo_size(server)
    assert size == limit - ADDITIONS_RESERVE
    head = (
        f"From: {ALICE}\r\nTo: {TO}\r\nSubject: big latin-1\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode("ascii")
    line = b"\xe9" * 200 + b"\r\n"
    body = line * ((size - len(head) - 2048) // len(line))
    qid = submit(server, [TO], head + body)

    failed = wait_for_log(server, about(qid, "message failed permanently"))[0]
    assert f"SES accepts at most {limit}" in failed, failed
    time.sleep(QUIET_WINDOW)
    assert moto.send_email_requests() == []
    assert log_lines(server, about(qid, "will be retried")) == []


# --------------------------------------------------------------------------- 9. SES's own headers, attachment types


def test_ses_control_headers_from_the_client_are_stripped(moto, start_ses_server):
    """Issue 14 item 13. SES reads X-SES-CONFIGURATION-SET and X-SES-MESSAGE-TAGS (and the
    sending-authorization X-SES-*-ARN headers) from a raw message; a client's must not choose
    the set, the tags or the identity: only the configured ones apply."""
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    moto.start_recording()
    server = start_ses_server(moto.url)
    marker = uuid.uuid4().hex
    msg = (
        f"From: {ALICE}\r\nTo: {TO}\r\nSubject: tags {marker}\r\n"
        "X-SES-CONFIGURATION-SET: client-chosen-set\r\n"
        "X-SES-MESSAGE-TAGS: campaign=client, submission_id=forged\r\n"
        "x-ses-source-arn: arn:aws:ses:us-east-1:999999999999:identity/other.example\r\n"
        f"\r\nBody {marker}.\r\n"
    ).encode("ascii")
    qid = submit(server, [TO], msg)
    sent = moto.wait_raw_message(marker, server=server)
    assert not re.search(r"(?im)^x-ses-", header_block(sent["raw_data"])), sent["raw_data"]
    [req] = moto.send_email_requests()
    assert req["ConfigurationSetName"] == SES_ALICE["configuration_set"], req
    assert {"Name": "submission_id", "Value": qid} in req["EmailTags"], req["EmailTags"]


def test_ses_refused_attachment_type_is_refused_at_data(moto, start_ses_server):
    """Issue 14 item 13. SES refuses attachments of certain file types ("Unsupported attachment
    types"); the sender learns it at once (550 5.6.0 naming the file), not from a later failure."""
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    moto.start_recording()
    server = start_ses_server(moto.url)
    msg = (
        f"From: {ALICE}\r\nTo: {TO}\r\nSubject: tool\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        '--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="Setup.EXE"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b1--\r\n"
    ).encode("ascii")
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=15) as s:
        s.starttls(context=server.tls_context())
        s.login("alice", PASSWORDS["alice"])
        s.mail(ALICE)
        s.rcpt(TO)
        code, resp = s.data(msg)
    assert code == 550 and resp.startswith(b"5.6.0"), (code, resp)
    assert b"Setup.EXE" in resp and b".exe" in resp, resp
    assert moto.send_email_requests() == []


# --------------------------------------------------------------------------- 10. static tags


def test_ses_static_tags_global_and_per_identity(moto, start_ses_server, password_hashes):
    """Issue 14 item 10: static SES EmailTags from the config — global ([sender.transport]
    tags) and per identity (ses_tags) — ride along after the seven built-in ones."""
    from conftest import ses_accounts

    accounts = ses_accounts(password_hashes)
    accounts[0]["identity"][0]["ses_tags"] = {"team": "billing", "env": "prod-eu"}
    moto.sesv2.create_email_identity(EmailIdentity=ALICE)
    moto.start_recording()
    server = start_ses_server(moto.url, {
        "account": accounts,
        "sender.transport": {"kind": "ses", "max_send_rate": 50, "timeout_secs": 10,
                             "tags": {"env": "prod", "service": "outbox"}},
    })
    marker = uuid.uuid4().hex
    qid = submit(server, [TO], simple_message(marker))
    moto.wait_raw_message(marker, server=server)
    [req] = moto.send_email_requests()
    tags = {t["Name"]: t["Value"] for t in req["EmailTags"]}
    assert len(req["EmailTags"]) == 10, req["EmailTags"]  # 7 built-in + team, env, service
    assert tags["submission_id"] == qid
    # The identity's value wins over the global one of the same name.
    assert (tags["team"], tags["env"], tags["service"]) == ("billing", "prod-eu", "outbox"), tags
