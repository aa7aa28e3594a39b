"""`outbox spool backup FILE` while the daemon runs, and the restore steps of
docs/production.md: stop, put the copy in place of state/spool/spool.redb, start."""

from __future__ import annotations

import os
import shutil
import smtplib
import stat

from conftest import PASSWORDS, cli, make_message, queue_id_of, records


def submit(server, subject: str, hold: bool = False) -> str:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        client.mail("alice@example.com", ["HOLDFOR=3600"] if hold else [])
        client.rcpt("r@example.net")
        code, reply = client.data(make_message(subject))
        assert code == 250, reply
        return queue_id_of(reply)


def test_online_backup_and_restore(server, tmp_path):
    waiting = submit(server, "waits an hour", hold=True)
    sent = submit(server, "sent before the backup")
    server.delivery(sent)
    backup = tmp_path / "spool-backup.redb"
    out = cli(server, "spool", "backup", str(backup)).stdout
    assert out.startswith(f"{backup}: ") and out.rstrip().endswith("spool format 1"), out
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    spool_dir = server.root / "state" / "spool"
    assert sorted(p.name for p in spool_dir.iterdir()) == ["spool.redb"], "no copy left beside it"
    assert not (tmp_path / "spool-backup.redb.partial").exists()
    after = submit(server, "after the backup")
    server.delivery(after)

    # Restore: stop, replace the file, start.
    server.stop()
    shutil.copyfile(backup, spool_dir / "spool.redb")
    server.start()
    [held] = records(server, "queue", "show", waiting)
    assert held["state"] == "queued" and held["due_ms"] is not None
    assert records(server, "queue", "show", sent)[0]["state"] == "sent"
    missing = cli(server, "queue", "show", after, check=False)
    assert missing.returncode != 0, "a message taken after the backup is not in it"


def test_backup_needs_the_daemon_and_says_where_it_looked(server, tmp_path):
    server.stop()
    proc = cli(server, "spool", "backup", str(tmp_path / "b.redb"), check=False)
    assert proc.returncode == 1
    assert "admin.sock" in proc.stderr and "is `outbox serve` running?" in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("b.redb*"))
