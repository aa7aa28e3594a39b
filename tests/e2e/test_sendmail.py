"""`outbox sendmail` (and the binary invoked as `sendmail`) as programs use it: PHP-style
`sendmail -t -i`, explicit recipients with -f/-F, the s-nail mail client with `mta=`, and the
sysexits codes for refusals. The daemon decides the account from the caller's uid."""

from __future__ import annotations

import os
import subprocess

import pytest



@pytest.fixture
def local_server(start_server, password_hashes):
    # This test process's uid may submit as alice.
    server = start_server({"account": [
        {"login": "alice", "password_hash": password_hashes["alice"], "unix_users": [str(os.getuid())],
         "identity": [{"id": "alice", "email": "alice@example.com", "name": "Alice"},
                      {"id": "alice-domain", "domain": "alice.test"}]},
    ]})
    server.env_for_clients = {**os.environ, "OUTBOX_SUBMIT_SOCKET": str(server.root / "state" / "submit.sock")}
    return server


def sendmail(server, args: list[str], message: bytes, program: list[str] | None = None):
    cmd = (program or [str(server.binary), "sendmail"]) + args
    return subprocess.run(cmd, input=message, capture_output=True, timeout=30, env=server.env_for_clients)


def delivered(server, needle: bytes) -> tuple[dict, bytes]:
    _, envelope, eml = server.wait_for_eml_containing(needle)
    return envelope, eml


def test_php_style_t_i(local_server):
    message = (b"From: Alice <alice@example.com>\nTo: to@example.net\nCc: cc@example.net\n"
               b"Bcc: hidden@example.net\nSubject: php mail\n\nLine one\n.\nstill the body\n")
    proc = sendmail(local_server, ["-t", "-i"], message)
    assert proc.returncode == 0, proc.stderr
    envelope, eml = delivered(local_server, b"Subject: php mail")
    assert sorted(envelope["recipients"]) == ["cc@example.net", "hidden@example.net", "to@example.net"]
    assert envelope["mail_from"] == "alice@example.com"
    assert b"Bcc:" not in eml
    assert b"\r\n.\r\nstill the body\r\n" in eml, "with -i a lone dot is body text; LF became CRLF"
    assert b"with local id" in eml


def test_explicit_recipients_from_and_name(local_server):
    proc = sendmail(local_server, ["-f", "news@alice.test", "-F", "Alice News", "-oi", "reader@example.net"],
                    b"Subject: no from header\n\nhello\n")
    assert proc.returncode == 0, proc.stderr
    envelope, eml = delivered(local_server, b"Subject: no from header")
    assert envelope["recipients"] == ["reader@example.net"]
    assert envelope["mail_from"] == "news@alice.test"
    assert b'From: "Alice News" <news@alice.test>\r\n' in eml


def test_invoked_as_sendmail_and_dot_ends_without_i(local_server, tmp_path):
    link = tmp_path / "sendmail"
    link.symlink_to(local_server.binary)
    proc = sendmail(local_server, ["r@example.net"], b"Subject: via symlink\n\nbefore\n.\nafter\n",
                    program=[str(link)])
    assert proc.returncode == 0, proc.stderr
    _, eml = delivered(local_server, b"Subject: via symlink")
    assert b"before" in eml and b"after" not in eml


def test_s_nail_with_mta(local_server, tmp_path):
    link = tmp_path / "sendmail"
    link.symlink_to(local_server.binary)
    proc = subprocess.run(
        ["s-nail", "-n", "-S", f"mta={link}", "-S", "sendwait", "-r", "alice@example.com",
         "-s", "from s-nail", "friend@example.net"],
        input=b"Sent by s-nail.\n", capture_output=True, timeout=30, env=local_server.env_for_clients,
    )
    assert proc.returncode == 0, proc.stderr
    envelope, eml = delivered(local_server, b"from s-nail")
    assert envelope["recipients"] == ["friend@example.net"]
    assert b"Sent by s-nail." in eml


def test_suppressed_recipient_is_left_out_alone(local_server):
    """Issue 16: one suppressed recipient no longer costs the others the message (exit 0, as
    for a recipient that will bounce: `mail` keeps a dead.letter on any other code); it is
    named on stderr. Only when nobody is left is the message refused (EX_NOPERM)."""
    from conftest import cli
    cli(local_server, "suppression", "add", "gone@example.net", "--reason", "hard-bounce")
    proc = sendmail(local_server, ["friend@example.net", "gone@example.net"], b"Subject: cron output\n\nok\n")
    assert proc.returncode == 0, proc.stderr
    assert b"gone@example.net is suppressed for transactional mail: hard-bounce" in proc.stderr, proc.stderr
    envelope, _ = delivered(local_server, b"Subject: cron output")
    assert envelope["recipients"] == ["friend@example.net"]
    proc = sendmail(local_server, ["gone@example.net"], b"Subject: nobody\n\nx\n")
    assert proc.returncode == 77, proc.stderr
    assert b"suppressed" in proc.stderr


def test_cron_mail_to_root_is_qualified(start_server, password_hashes):
    """Issue 16: what cron runs for MAILTO=root. With default_domain the bare names in the
    envelope and in From/To become root@default_domain; without it, a clear refusal (67)."""
    server = start_server({"default_domain": "alice.test", "account": [
        {"login": "alice", "password_hash": password_hashes["alice"], "unix_users": [str(os.getuid())],
         "identity": [{"id": "alice-domain", "domain": "alice.test"}]},
    ]})
    server.env_for_clients = {**os.environ, "OUTBOX_SUBMIT_SOCKET": str(server.root / "state" / "submit.sock")}
    cron = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> date\n\nTue Dec  1\n"
    proc = sendmail(server, ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], cron)
    assert proc.returncode == 0, proc.stderr
    envelope, eml = delivered(server, b"Subject: Cron <root@host> date")
    assert envelope["recipients"] == ["root@alice.test"]
    assert b"\r\nFrom: root@alice.test (Cron Daemon)\r\nTo: root@alice.test\r\n" in eml, eml


def test_bare_local_name_refused_without_default_domain(local_server):
    proc = sendmail(local_server, ["root"], b"Subject: x\n\nx\n")
    assert proc.returncode == 67, proc.stderr
    assert b'recipient "root" has no domain' in proc.stderr and b"default_domain" in proc.stderr


@pytest.mark.parametrize("args,message,code,text", [
    (["-f", "ceo@bank.example", "r@example.net"], b"Subject: x\n\nx\n", 77, "not this account"),
    (["-t"], b"From: alice@example.com\nSubject: nobody\n\nx\n", 64, "no recipients"),
    (["-x"], b"", 64, "unsupported option"),
    (["r@example.net"], b"From: alice@example.com\nSubject: long\n\n" + b"x" * 1200 + b"\n", 65, "998"),
])
def test_refusals_use_sysexits(local_server, args, message, code, text):
    proc = sendmail(local_server, args, message)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert text in proc.stderr.decode()


def test_unknown_uid_is_refused(server):
    env = {**os.environ, "OUTBOX_SUBMIT_SOCKET": str(server.root / "state" / "submit.sock")}
    proc = subprocess.run([str(server.binary), "sendmail", "r@example.net"], input=b"Subject: x\n\nx\n",
                          capture_output=True, timeout=30, env=env)
    assert proc.returncode == 77, proc.stderr
    assert b"may not submit" in proc.stderr


def test_daemon_down_is_unavailable(tmp_path, outbox_bin):
    env = {**os.environ, "OUTBOX_SUBMIT_SOCKET": str(tmp_path / "none.sock")}
    proc = subprocess.run([str(outbox_bin), "sendmail", "r@example.net"], input=b"x\n",
                          capture_output=True, timeout=30, env=env)
    assert proc.returncode == 69, proc.stderr
