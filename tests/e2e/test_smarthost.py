"""The `smtp` transport end to end: Outbox relays to a real SMTP receiver on loopback
(Python's aiosmtpd), in the clear and with STARTTLS + AUTH, and classifies the receiver's
4xx / 5xx replies (retry / fail)."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from conftest import PASSWORDS, submit_as_alice, make_message, queue_id_of

RELAY_USER, RELAY_PASSWORD = "relay-user", "relay-pass"


class Recorder:
    """aiosmtpd handler: records each envelope; can answer RCPT with scripted codes."""

    def __init__(self, rcpt_replies: list[str] | None = None):
        self.messages: list[dict] = []
        self.rcpt_replies = list(rcpt_replies or [])
        self.got = threading.Condition()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_replies:
            reply = self.rcpt_replies.pop(0)
            if reply:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.got:
            self.messages.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "data": envelope.original_content,
                    "auth": session.authenticated,
                    "tls": session.ssl is not None,
                }
            )
            self.got.notify_all()
        return "250 2.0.0 Queued as relay-1"

    def wait(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.got:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"relay got {len(self.messages)} of {count} messages"
                self.got.wait(left)
            return list(self.messages)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == RELAY_USER
        and auth_data.password.decode() == RELAY_PASSWORD
    )
    return AuthResult(success=ok)


def make_ca_and_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a localhost certificate it signed, with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ["ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem"])
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=relay test CA",
        "-keyout", ca_key, "-out", ca)
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr)
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
        "-extfile", ext, "-out", cert)
    return ca, cert, key


@pytest.fixture
def relay(request):
    controllers = []

    def start(handler: Recorder, tls: tuple[Path, Path] | None = None) -> int:
        kwargs = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            kwargs = dict(tls_context=context, require_starttls=True, auth_require_tls=True,
                          authenticator=authenticator, auth_required=True)
        # aiosmtpd 1.4 cannot listen on port 0 (its start-up self-check connects to the port).
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


def submit(server, message: bytes, rcpts: list[str]) -> str:
    return submit_as_alice(server, message, rcpts)


def wait_log(server, *needles: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log_path.read_text(errors="replace").splitlines():
            if all(n in line for n in needles):
                return line
        assert time.monotonic() < deadline, f"no log line with {needles}\n{server.log_tail()}"
        time.sleep(0.05)


def smarthost_config(port: int, **extra) -> dict:
    transport = {"kind": "smtp", "host": "127.0.0.1", "port": port, "tls": "none", "timeout_secs": 10}
    transport.update(extra)
    return {"sender.transport": transport, "spool.retry_base_secs": 1, "spool.retry_max_secs": 2}


def test_relays_envelope_and_stripped_message(start_server, relay):
    handler = Recorder()
    port = relay(handler)
    server = start_server(smarthost_config(port))
    msg = make_message("via smarthost", extra_headers="Bcc: hidden@example.org\r\n")
    qid = submit(server, msg, ["rcpt@example.net", "hidden@example.org"])
    [got] = handler.wait(1)
    assert got["from"] == "alice@example.com"
    assert sorted(got["to"]) == ["hidden@example.org", "rcpt@example.net"]
    assert b"Subject: via smarthost" in got["data"]
    assert b"\nBcc:" not in got["data"] and not got["data"].startswith(b"Bcc:")
    assert f"id {qid}".encode() in got["data"], "Received header with our queue id"
    wait_log(server, qid, "message sent", "Queued as relay-1")


def test_delivered_bytes_are_the_submitted_bytes_after_our_received_line(start_server, relay):
    # Issue 15 item 4: the relay must get what the client submitted, changed only as the README
    # says. This message has Date and Message-ID and no Bcc, so the one change is our Received
    # header in front. Lines starting with dots and an empty last body line must survive
    # dot-stuffing and the end of data (mail-send added an empty line before the final dot).
    handler = Recorder()
    port = relay(handler)
    server = start_server(smarthost_config(port))
    msg = make_message("bytes", body="Hello.\r\n.one dot\r\n..two dots\r\n.\r\n\r\nlast line\r\n\r\n")
    qid = submit(server, msg, ["rcpt@example.net"])
    [got] = handler.wait(1)
    data = got["data"]
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"Received: ")
    trace = 1
    while lines[trace][:1] in (b" ", b"\t"):  # the Received header's folded lines
        trace += 1
    received = b"\r\n".join(lines[:trace]) + b"\r\n"
    assert f"id {qid}".encode() in received
    assert data[len(received):] == msg


def test_starttls_and_auth_to_the_relay(start_server, relay, tmp_path):
    ca, cert, key = make_ca_and_cert(tmp_path / "relay-tls")
    (tmp_path / "relay-pass").write_text(RELAY_PASSWORD + "\n")
    handler = Recorder()
    port = relay(handler, tls=(cert, key))
    server = start_server(smarthost_config(
        port, host="localhost", tls="starttls", username=RELAY_USER,
        password_file=str(tmp_path / "relay-pass"), ca_file=str(ca)))
    qid = submit(server, make_message("tls relay"), ["rcpt@example.net"])
    [got] = handler.wait(1)
    assert got["tls"] and got["auth"], got
    wait_log(server, qid, "message sent")


def test_untrusted_relay_certificate_parks_the_queue(start_server, relay, tmp_path):
    _, cert, key = make_ca_and_cert(tmp_path / "relay-tls")
    other_ca, _, _ = make_ca_and_cert(tmp_path / "other")
    (tmp_path / "relay-pass").write_text(RELAY_PASSWORD)
    handler = Recorder()
    port = relay(handler, tls=(cert, key))
    server = start_server(smarthost_config(
        port, host="localhost", tls="starttls", username=RELAY_USER,
        password_file=str(tmp_path / "relay-pass"), ca_file=str(other_ca)))
    qid = submit(server, make_message("untrusted"), ["rcpt@example.net"])
    wait_log(server, qid, "provider unavailable")
    assert handler.messages == [], "nothing may be sent to an unverified relay"


def test_relay_5xx_fails_and_4xx_retries(start_server, relay):
    # First message: RCPT refused permanently. Second: one temporary refusal, then accepted.
    handler = Recorder(rcpt_replies=["550 5.1.1 No such user", "451 4.3.0 Try later", ""])
    port = relay(handler)
    server = start_server(smarthost_config(port))
    bad = submit(server, make_message("to be refused"), ["nobody@example.net"])
    line = wait_log(server, bad, "failed permanently")
    assert "550" in line
    good = submit(server, make_message("retried"), ["rcpt@example.net"])
    wait_log(server, good, "delivery will be retried")
    wait_log(server, good, "message sent", "attempt=2")
    assert [m["to"] for m in handler.wait(1)] == [["rcpt@example.net"]]
