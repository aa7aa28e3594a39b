"""Real clients against a real server: Python's smtplib, swaks and msmtp."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import uuid

import pytest

from conftest import PASSWORDS, make_message, queue_id_of

ALICE_PW = PASSWORDS["alice"]


def _smtp_starttls(server) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=15)
    s.ehlo()
    return s


def _send(s: smtplib.SMTP, sender: str, rcpts: list[str], msg: bytes, mail_options=()) -> str:
    """MAIL/RCPT/DATA by hand so the queue id in the DATA reply is seen."""
    code, resp = s.mail(sender, list(mail_options))
    assert code == 250, (code, resp)
    for rcpt in rcpts:
        code, resp = s.rcpt(rcpt)
        assert code == 250, (rcpt, code, resp)
    code, resp = s.data(msg)
    assert code == 250, (code, resp)
    assert resp.startswith(b"2.0.0 Ok: queued as "), resp
    return queue_id_of(resp)


# --------------------------------------------------------------------------- smtplib


def test_smtplib_starttls_auth_plain(server):
    s = _smtp_starttls(server)
    # Before TLS: STARTTLS offered, AUTH not.
    assert s.has_extn("starttls")
    assert not s.has_extn("auth")
    for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking"):
        assert s.has_extn(ext), ext
    assert s.esmtp_features["size"] == "41943040"
    code, _ = s.starttls(context=server.tls_context())
    assert code == 220
    s.ehlo()
    assert not s.has_extn("starttls")
    mechs = s.esmtp_features.get("auth", "").upper().split()
    assert "PLAIN" in mechs and "LOGIN" in mechs, mechs
    s.user, s.password = "alice", ALICE_PW
    code, resp = s.auth("PLAIN", s.auth_plain)
    assert code == 235 and resp.startswith(b"2.7.0"), (code, resp)
    qid = _send(s, "alice@example.com", ["rcpt@example.net"], make_message("plain over starttls"))
    s.quit()
    envelope, eml = server.delivery(qid)
    assert envelope["queue_id"] == qid
    assert envelope["mail_from"] == "alice@example.com"
    assert envelope["recipients"] == ["rcpt@example.net"]
    assert envelope["account"] == "alice"
    assert eml.startswith(b"Received:"), eml[:200]
    assert b"Subject: plain over starttls" in eml


def test_smtplib_starttls_auth_login(server):
    s = _smtp_starttls(server)
    s.starttls(context=server.tls_context())
    s.ehlo()
    s.user, s.password = "alice", ALICE_PW
    # No initial response: the server must send the two standard challenges.
    code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235, (code, resp)
    qid = _send(s, "alice@example.com", ["rcpt@example.net"], make_message("login over starttls"))
    s.quit()
    _, eml = server.delivery(qid)
    assert b"Subject: login over starttls" in eml


def test_smtplib_login_wrong_password(server):
    s = _smtp_starttls(server)
    s.starttls(context=server.tls_context())
    s.ehlo()
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        s.login("alice", "not-the-password")
    assert err.value.smtp_code == 535
    assert err.value.smtp_error.startswith(b"5.7.8")
    s.close()


def test_smtplib_implicit_tls(server):
    s = smtplib.SMTP_SSL(
        "127.0.0.1", server.tls_port, local_hostname="client.test",
        context=server.tls_context(), timeout=15,
    )
    s.ehlo()
    assert not s.has_extn("starttls")
    assert "PLAIN" in s.esmtp_features.get("auth", "").upper().split()
    s.login("alice", ALICE_PW)
    qid = _send(s, "alice@example.com", ["rcpt@example.net"], make_message("implicit tls"))
    s.quit()
    envelope, eml = server.delivery(qid)
    assert envelope["account"] == "alice"
    assert b"Subject: implicit tls" in eml


def test_smtplib_several_messages_one_connection(server):
    s = smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=server.tls_context(), timeout=15)
    s.login("bob", PASSWORDS["bob"])
    qids = []
    for i in range(5):
        msg = make_message(f"batch {i}", sender="bob@example.org", to=f"r{i}@example.net")
        qids.append(_send(s, "bob@example.org", [f"r{i}@example.net"], msg))
        assert s.rset()[0] == 250
    s.quit()
    assert len(set(qids)) == 5, qids
    for i, qid in enumerate(qids):
        envelope, eml = server.delivery(qid)
        assert envelope["recipients"] == [f"r{i}@example.net"]
        assert envelope["account"] == "bob"
        assert f"Subject: batch {i}\r\n".encode() in eml


def test_smtplib_bcc_and_class_header_stripped(server):
    s = smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=server.tls_context(), timeout=15)
    s.login("alice", ALICE_PW)
    msg = make_message(
        "with bcc",
        to="to@example.net",
        extra_headers="Cc: cc@example.net\r\nBcc: hidden@example.net\r\nX-Outbox-Class: bulk\r\n",
        body="Body with a Bcc: line that is not a header.\r\n",
    )
    rcpts = ["to@example.net", "cc@example.net", "hidden@example.net"]
    # sendmail/raw DATA, not send_message: smtplib's send_message drops Bcc itself.
    qid = _send(s, "alice@example.com", rcpts, msg)
    s.quit()
    envelope, eml = server.delivery(qid)
    assert sorted(envelope["recipients"]) == sorted(rcpts)
    head, _, body = eml.partition(b"\r\n\r\n")
    header_names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in header_names, head
    assert b"hidden@example.net" not in head
    assert b"x-outbox-class" not in header_names, head
    assert b"cc" in header_names and b"Cc: cc@example.net" in head
    assert header_names[0] == b"received", head
    assert b"Body with a Bcc: line that is not a header." in body


def test_smtplib_smtputf8_and_8bit_body(server):
    s = smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=server.tls_context(), timeout=15)
    s.login("alice", ALICE_PW)
    assert s.has_extn("smtputf8") and s.has_extn("8bitmime")
    sender = "renée@alice.test"  # owned through the alice.test domain identity
    rcpt = "josé@exämple.net"
    body = "Grüße, ça va? 日本語のテキスト 🚀\r\n"
    msg = (
        f"From: Renée <{sender}>\r\nTo: {rcpt}\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}"
    ).encode("utf-8")
    qid = _send(s, sender, [rcpt], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    s.quit()
    envelope, eml = server.delivery(qid)
    assert envelope["mail_from"] == sender
    assert envelope["recipients"] == [rcpt]
    assert body.encode("utf-8") in eml
    assert f"From: Renée <{sender}>".encode("utf-8") in eml


# --------------------------------------------------------------------------- swaks


def _swaks(server, *args: str, subject: str) -> subprocess.CompletedProcess:
    cmd = [
        "swaks", "--server", "127.0.0.1", "--ehlo", "client.test",
        "--from", "alice@example.com", "--to", "rcpt@example.net",
        "--header", f"Subject: {subject}",
        "--body", "Sent by swaks.",
        "--tls-verify", "--tls-ca-path", server.ca,
        "--timeout", "20",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


needs_swaks = pytest.mark.skipif(
    shutil.which("swaks") is None and not os.environ.get("CI"), reason="swaks not installed"
)


@needs_swaks
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_starttls(server, mech):
    subject = f"swaks starttls {mech} {uuid.uuid4().hex}"
    r = _swaks(
        server, "--port", str(server.port), "--tls",
        "--auth", mech, "--auth-user", "alice", "--auth-password", ALICE_PW,
        subject=subject,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    qid = queue_id_of(r.stdout)
    _, eml = server.delivery(qid)
    assert f"Subject: {subject}".encode() in eml


@needs_swaks
def test_swaks_tls_on_connect(server):
    subject = f"swaks tls-on-connect {uuid.uuid4().hex}"
    r = _swaks(
        server, "--port", str(server.tls_port), "--tls-on-connect",
        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", ALICE_PW,
        subject=subject,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    qid = queue_id_of(r.stdout)
    _, eml = server.delivery(qid)
    assert f"Subject: {subject}".encode() in eml


@needs_swaks
def test_swaks_wrong_password(server):
    r = _swaks(
        server, "--port", str(server.port), "--tls",
        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong",
        subject="never",
    )
    assert r.returncode == 28, r.stdout + r.stderr
    assert "535 5.7.8" in r.stdout, r.stdout


@needs_swaks
def test_swaks_refuses_to_auth_without_tls(server):
    # swaks must not even see AUTH advertised in plain text: it fails the AUTH step (28).
    r = _swaks(
        server, "--port", str(server.port),
        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", ALICE_PW,
        subject="never",
    )
    assert r.returncode == 28, r.stdout + r.stderr


# --------------------------------------------------------------------------- msmtp

needs_msmtp = pytest.mark.skipif(
    shutil.which("msmtp") is None and not os.environ.get("CI"), reason="msmtp not installed"
)


def _msmtp(server, tmp_path, starttls: bool, password: str, subject: str, rcpts: list[str]):
    rc = tmp_path / "msmtprc"
    rc.write_text("# empty: everything is on the command line\n")
    rc.chmod(0o600)
    port = server.port if starttls else server.tls_port
    cmd = [
        "msmtp", "-C", str(rc),
        "--host=127.0.0.1", f"--port={port}", "--domain=client.test",
        "--tls=on", f"--tls-starttls={'on' if starttls else 'off'}",
        f"--tls-trust-file={server.ca}",
        "--auth=plain", "--user=alice", f"--passwordeval=echo {password}",
        "--from=alice@example.com", "--timeout=20",
        *rcpts,
    ]
    msg = make_message(subject, to=", ".join(rcpts), body="Sent by msmtp.\r\n")
    return subprocess.run(cmd, input=msg, capture_output=True, timeout=60)


@needs_msmtp
@pytest.mark.parametrize("starttls", [True, False], ids=["starttls", "implicit-tls"])
def test_msmtp(server, tmp_path, starttls):
    subject = f"msmtp {uuid.uuid4().hex}"
    rcpts = ["one@example.net", "two@example.net"]
    r = _msmtp(server, tmp_path, starttls, ALICE_PW, subject, rcpts)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    _, envelope, eml = server.wait_for_eml_containing(f"Subject: {subject}".encode())
    assert envelope["mail_from"] == "alice@example.com"
    assert sorted(envelope["recipients"]) == rcpts
    assert envelope["account"] == "alice"


@needs_msmtp
def test_msmtp_wrong_password(server, tmp_path):
    r = _msmtp(server, tmp_path, True, "wrong", "never", ["one@example.net"])
    assert r.returncode != 0
    assert b"535" in r.stderr, r.stderr
