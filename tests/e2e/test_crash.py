"""Durability: a message that got `250 ... queued as ID` survives a SIGKILL of the server."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time

import pytest

from conftest import PASSWORDS, make_message, queue_id_of

SENDERS = 8
KILL_AFTER_ACKS = 50


@pytest.mark.timeout(150)
def test_acknowledged_mail_survives_kill_9(start_server):
    server = start_server({
        # Short lease: a message a sender held when the process died is taken again soon.
        "spool.visibility_timeout_secs": 3,
        "spool.retry_base_secs": 1,
        "spool.retry_max_secs": 2,
    })
    acked: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()
    errors: list[str] = []
    port, ctx = server.tls_port, server.tls_context()

    def sender(n: int):
        i = 0
        while not stop.is_set():
            try:
                s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20)
                s.login("alice", PASSWORDS["alice"])
                while not stop.is_set():
                    i += 1
                    replies = [s.mail("alice@example.com"), s.rcpt(f"crash{n}@example.net")]
                    code, resp = s.data(make_message(f"crash {n}/{i}", to=f"crash{n}@example.net"))
                    replies.append((code, resp))
                    if code != 250:
                        if not stop.is_set():
                            errors.append(f"sender {n}: refused: {replies}")
                        return
                    with lock:
                        acked.append(queue_id_of(resp))
                        if len(acked) >= KILL_AFTER_ACKS:
                            enough.set()
                s.close()
            except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
                # Expected once the server is killed.
                if not server.alive() or stop.is_set():
                    return
                errors.append(f"sender {n}: {type(e).__name__}: {e}")
                return

    threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(SENDERS)]
    for t in threads:
        t.start()
    assert enough.wait(90), f"only {len(acked)} acks before the deadline; errors={errors}\n{server.log_tail()}"
    # Some deliveries should be in progress too: no waiting, kill right now, mid-stream.
    stop.set()  # first, so senders read the coming connection errors as expected
    server.kill()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with lock:
        recorded = list(acked)
    delivered_before = server.delivered_ids()
    print(f"acked={len(acked)} delivered before restart={len(delivered_before)}")
    assert len(recorded) >= KILL_AFTER_ACKS
    assert len(set(recorded)) == len(recorded), "a queue id was handed out twice"

    server.start()  # same config, same state folder, same mail folder
    server.wait_delivered(recorded, timeout=60)
    # What was delivered before the crash is still there (the transport's files are final).
    assert delivered_before <= server.delivered_ids()
    # And the restarted server still takes mail.
    s = smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=server.tls_context(), timeout=20)
    s.login("alice", PASSWORDS["alice"])
    s.mail("alice@example.com")
    s.rcpt("after@example.net")
    code, resp = s.data(make_message("after restart", to="after@example.net"))
    s.quit()
    assert code == 250, (code, resp)
    server.wait_delivered([queue_id_of(resp)])
