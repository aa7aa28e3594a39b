"""Prometheus metrics, /healthz and /readyz, scraped over real HTTP."""

from __future__ import annotations

import re
import smtplib
import time
import urllib.request

from conftest import PASSWORDS, make_message, queue_id_of


def get(server, path: str) -> tuple[int, str]:
    host, port = server.metrics
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def value(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name}{labels} not in\n{text}"
    return float(m.group(1))


def test_metrics_follow_traffic(server):
    assert get(server, "/healthz") == (200, "ok\n")
    assert get(server, "/readyz") == (200, "ready\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        try:
            client.login("alice", "wrong password")
        except smtplib.SMTPAuthenticationError:
            pass
        client.login("alice", PASSWORDS["alice"])
        client.mail("alice@example.com")
        client.rcpt("r@example.net")
        code, reply = client.data(make_message("counted"))
        assert code == 250
    server.delivery(queue_id_of(reply))
    # The .eml appears before the spool records the send (the transport writes it, then the
    # worker settles): the queue gauge, read from the spool, may say 1 for a moment after.
    deadline = time.monotonic() + 10
    while True:
        status, text = get(server, "/metrics")
        assert status == 200
        if value(text, "outbox_queue_length") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert value(text, "outbox_messages_accepted_total") == 1
    assert value(text, "outbox_auth_failures_total") == 2  # smtplib tries PLAIN, then LOGIN
    assert value(text, "outbox_smtp_connections_total") >= 1
    assert value(text, "outbox_deliveries_total", '{transport="dir",outcome="sent"}') == 1
    assert value(text, "outbox_send_duration_seconds_count", '{transport="dir"}') == 1
    assert value(text, "outbox_queue_length") == 0
    assert value(text, "outbox_dead_letters") == 0
    assert value(text, "outbox_held_messages") == 0
    assert text.rstrip().endswith("# EOF")
