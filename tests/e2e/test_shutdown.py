"""SIGTERM: no new connections, idle sessions get 421, a transaction under way finishes and
its message is delivered (or stays safely spooled), and the process exits by itself."""

from __future__ import annotations

import signal
import smtplib
import socket

import pytest

from conftest import PASSWORDS, make_message, queue_id_of, wait_for_log


def login(server) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    client.starttls(context=server.tls_context())
    client.login("alice", PASSWORDS["alice"])
    return client


def test_sigterm_finishes_open_transaction(server):
    busy, idle = login(server), login(server)
    busy.mail("alice@example.com")
    busy.rcpt("rcpt@example.net")

    server.proc.send_signal(signal.SIGTERM)
    wait_for_log(server, "shutting down")

    # The idle session is told to go away.
    code, _ = idle.getreply()  # unsolicited: the server speaks first
    assert code == 421
    # The transaction under way completes.
    code, reply = busy.data(make_message("finished during shutdown"))
    assert code == 250, reply
    qid = queue_id_of(reply)
    assert busy.noop()[0] == 421, "after the transaction, the session is closed"
    # No new connections.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)
    assert server.proc.wait(timeout=30) == 0, "exits by itself, cleanly"
    # Delivered before exit, or still in the spool for the next start: never lost.
    server.start()
    server.wait_delivered([qid])
