"""The operator's CLI against a running daemon, over the admin socket: list, show, retry,
delete, dead letters and redrive."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess

from conftest import PASSWORDS, cli, records, submit_as_alice, make_message, queue_id_of, wait_for_log


def submit(server, subject: str) -> str:
    return submit_as_alice(server, make_message(subject), ["rcpt@example.net"])


def blocked_server(start_server, **overrides):
    """A server whose `dir` transport path is a regular file, so every delivery fails."""
    def setup(root):
        (root / "blocked").write_text("not a folder")
    config = {"sender.transport": {"kind": "dir", "path": "blocked"}, "spool.retry_base_secs": 3600,
              "spool.retry_max_secs": 3600}
    config.update(overrides)
    return start_server(config, setup=setup)


def test_list_show_retry_delete(start_server):
    server = blocked_server(start_server)
    a, b = submit(server, "first"), submit(server, "second")
    wait_for_log(server, rf"{b}.*delivery will be retried|delivery will be retried.*{b}")
    wait_for_log(server, rf"{a}.*delivery will be retried|delivery will be retried.*{a}")

    queued = {r["id"]: r for r in records(server, "queue", "list")}
    assert set(queued) == {a, b}, queued
    assert all(r["receive_count"] == 1 and "blocked" in r["last_error"] for r in queued.values())
    text = cli(server, "queue", "list").stdout
    assert a in text and b in text and "2 message(s)" in text

    [shown] = records(server, "queue", "show", a)
    assert shown["mail_from"] == "alice@example.com" and shown["recipients"] == ["rcpt@example.net"]
    assert [t["state"] for t in shown["history"]] == ["queued", "queued"]
    human = cli(server, "queue", "show", a).stdout
    assert "last error:" in human and "history:" in human

    # Retry ignores the hour-long backoff: a second attempt happens at once.
    assert "2 message(s) changed" in cli(server, "queue", "retry", "--all").stdout
    wait_for_log(server, rf"{a}.*attempt=2|attempt=2.*{a}")

    cli(server, "queue", "delete", b)
    [gone] = records(server, "queue", "show", b)
    assert gone["state"] == "failed" and gone["last_error"] == "deleted by the operator"
    assert [r["id"] for r in records(server, "queue", "list")] == [a]
    assert records(server, "queue", "list", "--state", "failed")[0]["id"] == b

    unknown = "0" * 23 + "BAD"
    bad = cli(server, "queue", "show", unknown, check=False)
    assert bad.returncode != 0 and "no such submission" in bad.stderr
    malformed = cli(server, "queue", "show", "0000000000000BAD", check=False)
    assert malformed.returncode != 0 and "not a queue id" in malformed.stderr


def test_dead_letters_redrive(start_server):
    server = blocked_server(start_server, **{"spool.max_attempts": 1})
    qid = submit(server, "doomed")
    wait_for_log(server, rf"{qid}.*dead-letter|dead-letter.*{qid}")
    dead = records(server, "dlq", "list")
    assert [r["id"] for r in dead] == [qid] and dead[0]["state"] == "dead"
    assert records(server, "queue", "list") == []

    # The operator fixes the cause, then redrives.
    blocked = server.root / "blocked"
    blocked.unlink()
    blocked.mkdir()
    assert "1 message(s) changed" in cli(server, "dlq", "redrive", "--all").stdout
    assert (blocked / f"{qid}.eml").exists() or wait_for_log(server, rf"message sent.*{qid}|{qid}.*message sent")
    assert records(server, "dlq", "list") == []
    assert records(server, "queue", "show", qid)[0]["state"] == "sent"


def test_socket_is_private(server):
    socket = server.root / "state" / "admin.sock"
    mode = os.stat(socket).st_mode & 0o777
    assert mode == 0o660, oct(mode)


def test_hold_and_release(start_server):
    server = blocked_server(start_server)
    qid = submit(server, "to be held")
    wait_for_log(server, rf"{qid}.*delivery will be retried|delivery will be retried.*{qid}")
    assert "1 message(s) changed" in cli(server, "queue", "hold", qid).stdout
    assert records(server, "queue", "list") == []
    [held] = records(server, "queue", "list", "--state", "held")
    assert held["id"] == qid
    # A held message is not tried, even when everything is retried.
    assert "0 message(s) changed" in cli(server, "queue", "retry", "--all").stdout
    assert "1 message(s) changed" in cli(server, "queue", "release", "--all").stdout
    wait_for_log(server, rf"{qid}.*attempt=2|attempt=2.*{qid}")
    assert records(server, "queue", "show", qid)[0]["state"] == "queued"


def test_suppression_by_class(server):
    cli(server, "suppression", "add", "gone@example.net", "--reason", "hard bounce")
    cli(server, "suppression", "add", "annoyed@example.net", "--class", "bulk")
    listed = {(s["address"], s["class"]) for s in json.loads(cli(server, "suppression", "list", "--json").stdout)["suppressions"]}
    assert listed == {("gone@example.net", "*"), ("annoyed@example.net", "bulk")}
    assert cli(server, "suppression", "add", "x@example.net", "--class", "spam", check=False).returncode != 0

    def session():
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        return client

    # At RCPT (issue 16): the suppressed recipient alone is refused, naming it and the reason;
    # the others get the message.
    with session() as client:
        refused = client.sendmail("alice@example.com", ["fan@example.net", "gone@example.net"],
                                  make_message("to fan"))
        assert list(refused) == ["gone@example.net"], refused
        code, text = refused["gone@example.net"]
        assert code == 550 and text.startswith(b"5.7.1 recipient gone@example.net is suppressed"), text
        assert b"hard bounce" in text
    _, envelope, _ = server.wait_for_eml_containing(b"to fan")
    assert envelope["recipients"] == ["fan@example.net"]
    # Suppressed for the class the message declares (known only after DATA): the one reply to
    # DATA cannot refuse one recipient, so it is left out and recorded on the submission; the
    # message goes to the others.
    with session() as client:
        client.ehlo()
        client.mail("alice@example.com")
        assert client.rcpt("fan@example.net")[0] == 250
        assert client.rcpt("annoyed@example.net")[0] == 250
        code, reply = client.data(make_message("bulk news", extra_headers="X-Outbox-Class: bulk\r\n"))
        assert code == 250, reply
        bulk = queue_id_of(reply)
    _, envelope, _ = server.wait_for_eml_containing(b"bulk news")
    assert envelope["recipients"] == ["fan@example.net"]
    status = records(server, "queue", "show", bulk)[0]["delivery"]["annoyed@example.net"]
    assert status["outcome"] == "suppressed" and "bulk" in status["detail"], status
    # Nobody left: refused, naming the address.
    with session() as client:
        try:
            client.sendmail("alice@example.com", ["annoyed@example.net"],
                            make_message("bulk", extra_headers="X-Outbox-Class: bulk\r\n"))
            raise AssertionError("accepted a bulk mail to a bulk-suppressed address")
        except smtplib.SMTPDataError as e:
            assert e.smtp_code == 550 and b"5.7.1" in e.smtp_error and b"annoyed@example.net" in e.smtp_error
        # A password reset (transactional) still reaches the bulk-suppressed reader.
        assert client.sendmail("alice@example.com", ["annoyed@example.net"], make_message("reset ok")) == {}
    server.wait_for_eml_containing(b"reset ok")

    # Suppressed after acceptance: left out at send time, and each left-out recipient says why.
    def held(subject: str, rcpts: list[str]) -> str:
        with session() as client:
            client.ehlo()
            client.mail("alice@example.com", ["HOLDFOR=3600"])
            for r in rcpts:
                client.rcpt(r)
            code, reply = client.data(make_message(subject))
            assert code == 250, reply
            return queue_id_of(reply)

    some = held("late ok", ["fan@example.net", "late@example.net"])
    nobody = held("nobody", ["late@example.net"])
    cli(server, "suppression", "add", "late@example.net", "--reason", "complaint")
    for qid in (some, nobody):
        cli(server, "queue", "send-now", qid)  # retry would keep the HOLDFOR time
    _, envelope, _ = server.wait_for_eml_containing(b"late ok")
    assert envelope["recipients"] == ["fan@example.net"]
    line = wait_for_log(server, "every recipient is suppressed")[0]
    assert "complaint" in line
    assert records(server, "queue", "show", nobody)[0]["state"] == "failed"
    status = records(server, "queue", "show", some)[0]["delivery"]["late@example.net"]
    assert status["outcome"] == "suppressed" and "complaint" in status["detail"]
    assert cli(server, "suppression", "remove", "gone@example.net").returncode == 0
    remaining = {s["address"] for s in json.loads(cli(server, "suppression", "list", "--json").stdout)["suppressions"]}
    assert remaining == {"annoyed@example.net", "late@example.net"}


def test_release_keeps_the_release_time_and_cli_texts(server):
    """Issue 16: `queue release` of a FUTURERELEASE message keeps its release time (`queue
    send-now` goes before it); one id form in JSON, tables and the SMTP reply; usage errors
    and wrong-state errors in plain words; help lists every state."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        client.mail("alice@example.com", ["HOLDFOR=3600"])
        client.rcpt("later@example.net")
        code, reply = client.data(make_message("an hour later"))
        assert code == 250, reply
    qid = queue_id_of(reply)
    [listed] = records(server, "queue", "list")
    assert listed["id"] == qid and qid in cli(server, "queue", "list").stdout
    release_at = listed["due_ms"]
    assert release_at >= listed["created_ms"] + 3_590_000

    assert "1 message(s) changed" in cli(server, "queue", "hold", qid).stdout
    assert "1 message(s) changed" in cli(server, "queue", "release", qid).stdout
    [shown] = records(server, "queue", "show", qid)
    assert (shown["state"], shown["due_ms"]) == ("queued", release_at), shown
    cli(server, "queue", "retry", qid)
    assert records(server, "queue", "show", qid)[0]["due_ms"] == release_at

    assert "1 message(s) changed" in cli(server, "queue", "send-now", qid).stdout
    server.wait_delivered([qid])
    assert records(server, "queue", "show", qid)[0]["state"] == "sent"

    again = cli(server, "queue", "retry", qid, check=False)
    assert again.returncode != 0
    assert again.stderr.strip() == f"outbox: submission {qid} is sent: this applies to queued messages only"
    usage = cli(server, "queue", "retry", check=False)
    assert usage.returncode != 0 and usage.stderr.strip() == "outbox: give a queue id or --all"
    help_text = cli(server, "queue", "list", "--help").stdout
    for state in ("queued", "held", "dead", "sent", "delivered", "bounced", "complained", "failed"):
        assert state in help_text, state
