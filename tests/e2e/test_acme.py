"""ACME certificates against Pebble, Let's Encrypt's test CA (Debian package `pebble`): the
first certificate is issued (TLS-ALPN-01 on the HTTPS listener, or HTTP-01), served on HTTPS,
465 and 587; it is renewed before it expires and the new one is served without dropping an open
SMTP session; after a restart the stored certificate is reused (no new order); a CA that cannot
be reached leaves the server up on a placeholder and says why.

How the names resolve: Pebble's validation authority looks up each name and connects to the
port in its config (httpPort for HTTP-01, tlsPort for TLS-ALPN-01). `pebble-challtestsrv`
(shipped in the same package) runs as Pebble's DNS server (`-dnsserver`) and answers every A
query with 127.0.0.1 and no AAAA, so `mail.outbox.test` reaches the Outbox under test and all
traffic stays on loopback. Pebble's own HTTPS listener needs a certificate the package does not
ship: the fixture makes a throwaway CA with openssl and gives it to Outbox as
`tls.acme.directory_ca`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PASSWORDS, _free_port, log_lines, make_message, queue_id_of, wait_for_log

DOMAIN = "mail.outbox.test"
DEADLINE = 30.0


class Pebble:
    """pebble + pebble-challtestsrv (as its DNS), on free loopback ports."""

    def __init__(self, root: Path, validity_secs: int):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = root / "pebble-ca.pem"
        self._make_listener_cert()
        self.dns_port = _free_port()
        self.acme_port = _free_port()
        self.mgmt_port = _free_port()
        # Where Pebble's validator connects: our HTTPS listener / HTTP-01 responder.
        self.tls_port = _free_port()
        self.http_port = _free_port()
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(root / "pebble-cert.pem"),
                "privateKey": str(root / "pebble-key.pem"),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": validity_secs,
            }
        }
        (root / "pebble.json").write_text(json.dumps(config))
        self.log_path = root / "pebble.log"
        log = open(self.log_path, "ab")
        self.dns = subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
             "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{_free_port()}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",  # no random 0-15 s sleeps before validating
            "PEBBLE_WFE_NONCEREJECT": "0",  # deterministic runs
            "PEBBLE_AUTHZREUSE": "0",  # every order is validated again, renewals too
        }
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(root / "pebble.json"),
             "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=root,
        )
        log.close()
        self.directory = f"https://127.0.0.1:{self.acme_port}/dir"
        self._await_up()

    def _make_listener_cert(self):
        def openssl(*args):
            subprocess.run(["openssl", *args], cwd=self.root, check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", "pebble-ca-key.pem", "-out", "pebble-ca.pem", "-days", "2",
                "-subj", "/CN=pebble listener test CA")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "pebble-key.pem", "-out", "pebble.csr", "-subj", "/CN=127.0.0.1")
        (self.root / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            "extendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", "pebble.csr", "-CA", "pebble-ca.pem", "-CAkey",
                "pebble-ca-key.pem", "-CAcreateserial", "-out", "pebble-cert.pem", "-days", "2",
                "-extfile", "san.ext")

    def _await_up(self):
        context = ssl.create_default_context(cafile=str(self.ca))
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                with urllib.request.urlopen(self.directory, context=context, timeout=5) as r:
                    json.load(r)
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"pebble did not come up\n{self.log()}")
                time.sleep(0.1)

    def root_pem(self) -> str:
        """The root of the chains Pebble issues (made anew at each Pebble start)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        url = f"https://127.0.0.1:{self.mgmt_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as r:
            return r.read().decode()

    def orders(self) -> int:
        """New orders Pebble has seen (its request log)."""
        return len(re.findall(r"POST /order-plz", self.log()))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        for proc in (self.proc, self.dns):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def pebble_factory(tmp_path):
    started = []

    def start(validity_secs: int) -> Pebble:
        pebble = Pebble(tmp_path / f"pebble{len(started)}", validity_secs)
        started.append(pebble)
        return pebble

    yield start
    for pebble in started:
        pebble.stop()


def acme_overrides(pebble: Pebble, challenge: str = "tls-alpn-01") -> dict:
    return {
        # TLS-ALPN-01 is answered on the HTTPS listener, so it listens on Pebble's tlsPort.
        "http.listen": [f"127.0.0.1:{pebble.tls_port}"],
        "tls.acme": {
            "domains": [DOMAIN],
            "contact": "postmaster@outbox.test",
            "directory": pebble.directory,
            "directory_ca": str(pebble.ca),
            "challenge": challenge,
            "http_listen": f"127.0.0.1:{pebble.http_port}",
            "retry_base_secs": 1,
        },
    }


def trusting(root_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=root_pem)
    return context


def https_serial(server, context: ssl.SSLContext) -> str:
    """The serial of the certificate the HTTPS listener serves (verified against `context`)."""
    host, port = server.https[0]
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            return tls.getpeercert()["serialNumber"]


class SMTPOverTLS(smtplib.SMTP_SSL):
    """smtplib on port 465 that checks the certificate against DOMAIN while connecting to
    127.0.0.1 (SMTP_SSL would check the address it connects to)."""

    def _get_socket(self, host, port, timeout):
        raw = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(raw, server_hostname=DOMAIN)


def smtp_serials(server, context: ssl.SSLContext) -> tuple[str, str]:
    """Serials served on 465 (implicit TLS) and 587 (STARTTLS), through smtplib."""
    with SMTPOverTLS("127.0.0.1", server.tls_port, timeout=10, context=context) as c465:
        implicit = c465.sock.getpeercert()["serialNumber"]
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c587:
        c587._host = DOMAIN  # the name smtplib checks the certificate against
        c587.starttls(context=context)
        starttls = c587.sock.getpeercert()["serialNumber"]
    return implicit, starttls


def wait_for_serial(server, context, unlike: str | None = None, timeout: float = DEADLINE) -> str:
    """Polls the HTTPS listener until it serves a certificate `context` trusts (and, with
    `unlike`, a different one)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            serial = https_serial(server, context)
            if serial != unlike:
                return serial
            last = f"still {serial}"
        except (ssl.SSLError, OSError) as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"no new certificate within {timeout}s ({last})\n"
                                 f"{server.log_tail()}")
        time.sleep(0.2)


def metric(server, name: str, labels: str = "") -> float:
    host, port = server.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name}{labels} not in\n{text}"
    return float(m.group(1))


def stored_files(server) -> list[Path]:
    return sorted((server.root / "state" / "acme").glob("*/*"))


@pytest.mark.timeout(90)
def test_issues_renews_and_swaps_without_dropping_a_session(start_server, pebble_factory):
    # 20-second certificates: renewed at half their life, ~10 s after issuance; the checks on
    # the first one take well under a second.
    pebble = pebble_factory(validity_secs=20)
    server = start_server(acme_overrides(pebble))
    context = trusting(pebble.root_pem())

    first = wait_for_serial(server, context)
    assert smtp_serials(server, context) == (first, first)
    # A session that starts on the first certificate and outlives it.
    session = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    session._host = DOMAIN
    session.starttls(context=context)
    assert session.sock.getpeercert()["serialNumber"] == first
    session.login("alice", PASSWORDS["alice"])
    session.mail("alice@example.com")

    second = wait_for_serial(server, context, unlike=first)
    assert smtp_serials(server, context) == (second, second)
    session.rcpt("rcpt@example.net")
    code, reply = session.data(make_message("across the renewal"))
    assert code == 250, reply
    session.quit()
    server.delivery(queue_id_of(reply))

    assert pebble.orders() >= 2
    assert metric(server, "outbox_acme_orders_total", '{result="issued"}') >= 2
    # The expiry gauge follows the served certificate (20 s after issuance, give or take).
    expiry = metric(server, "outbox_tls_certificate_expiry_seconds")
    assert time.time() < expiry < time.time() + 25, expiry
    files = stored_files(server)
    assert {f.name for f in files} == {"account.json", "certificate.pem"}, files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


@pytest.mark.timeout(90)
def test_restart_reuses_the_stored_certificate(start_server, pebble_factory):
    pebble = pebble_factory(validity_secs=3600)
    server = start_server(acme_overrides(pebble, challenge="http-01"))
    context = trusting(pebble.root_pem())
    serial = wait_for_serial(server, context)
    assert smtp_serials(server, context) == (serial, serial)
    assert pebble.orders() == 1
    wait_for_log(server, "ACME certificate good; renewal scheduled")
    # The HTTP-01 responder answers open challenges only (none now).
    for path in ["/.well-known/acme-challenge/no-such-token", "/"]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{pebble.http_port}{path}", timeout=10)
        assert refused.value.code == 404

    server.stop()
    server.start()
    # Served from the first handshake after the restart, with no new order.
    assert https_serial(server, context) == serial
    assert smtp_serials(server, context) == (serial, serial)
    wait_for_log(server, "ACME certificate good; renewal scheduled", count=2)
    # A reload keeps serving the ACME certificate (not the [tls] files).
    server.proc.send_signal(signal.SIGHUP)
    wait_for_log(server, "configuration reloaded")
    assert https_serial(server, context) == serial
    assert smtp_serials(server, context) == (serial, serial)
    assert pebble.orders() == 1
    assert len(log_lines(server, "ACME: ordering a certificate")) == 1
    assert len(log_lines(server, "ACME account created")) == 1
    # check-config accepts the table.
    proc = subprocess.run([str(server.binary), "check-config", "--config", str(server.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unreachable_ca_leaves_a_placeholder_and_says_why(start_server):
    closed = _free_port()
    server = start_server({
        "tls.acme": {
            "domains": [DOMAIN],
            "directory": f"https://127.0.0.1:{closed}/dir",
            "retry_base_secs": 1,
        },
    })
    wait_for_log(server, "ACME order failed", count=2)
    (line,) = log_lines(server, "ACME order failed")[:1]
    assert f"https://127.0.0.1:{closed}/dir" in line and "onnection refused" in line, line
    assert metric(server, "outbox_acme_orders_total", '{result="failed"}') >= 2
    # Up, on a self-signed placeholder for the configured name.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    host, port = server.https[0]
    with socket.create_connection((host, port), timeout=10) as raw:
        with insecure.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            der = tls.getpeercert(binary_form=True)
    assert b"placeholder" in der
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        assert client.ehlo()[0] == 250


def test_a_url_that_is_not_the_directory_is_named(start_server, pebble_factory):
    pebble = pebble_factory(validity_secs=3600)
    overrides = acme_overrides(pebble)
    overrides["tls.acme"]["directory"] = pebble.directory + "ectory"
    server = start_server(overrides)
    (line,) = wait_for_log(server, "ACME order failed")[:1]
    assert "answered HTTP 404 Not Found (is tls.acme.directory the directory URL?)" in line, line


def test_check_config_names_every_acme_problem(outbox_bin, tmp_path):
    config = tmp_path / "outbox.toml"
    config.write_text(
        'state_dir = "state"\n'
        "[tls.acme]\n"
        'domains = ["*.example.com", "ok.example.com"]\n'
        'contact = "nobody"\n'
        'directory = "http://acme.example/dir"\n'
        'directory_ca = "missing.pem"\n'
    )
    proc = subprocess.run([str(outbox_bin), "check-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for needle in ["wildcard", "tls.acme.contact", "not an https:// URL",
                   "tls.acme.directory_ca: reading"]:
        assert needle in out, out
