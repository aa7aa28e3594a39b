"""Storage faults: the state directory's filesystem fills up (ENOSPC), then space comes back.

The state dir sits on its own small tmpfs (the suite runs as root, as on the CI machine), with
`min_free_disk_bytes = 0` so the free-space floor does not refuse mail before the disk does.
Expected (issue 15 item 1): every submission gets an answer (a 4xx while the disk is full, never
silence), /readyz says not ready while storage is failing, the queue CLI answers, and everything
works again once space is freed — with nothing that got 250 lost, across a kill -9 too.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import PASSWORDS, cli, log_lines, make_message, queue_id_of

FS_BYTES = 24 * 1024 * 1024


def _mount_small_fs(root):
    state = root / "state"
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", str(state)],
        check=True,
    )


def _fill(path) -> int:
    """Writes zeros into `path` until the filesystem refuses (ENOSPC); returns bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(chunk)
        except OSError:
            pass
        # The last partial block too, so not even a page is left.
        try:
            while True:
                written += f.write(b"\0" * 512)
        except OSError:
            pass
    return written


def _ready(server) -> int:
    host, port = server.metrics
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _submit(server, body_bytes: int, subject: str) -> tuple[int, str]:
    """One STARTTLS+AUTH submission; returns the DATA (or MAIL) reply code and text."""
    body = ("x" * 76 + "\r\n") * (body_bytes // 78 + 1)
    msg = make_message(subject, body=body)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        code, reply = client.mail("alice@example.com")
        if code != 250:
            return code, reply.decode()
        client.rcpt("rcpt@example.net")
        code, reply = client.data(msg)
        return code, reply.decode()


@pytest.mark.timeout(120)
def test_a_full_disk_gets_4xx_answers_and_mail_flows_again_when_space_returns(start_server):
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and must run as root (scripts/test does)")
    roots = []

    def setup(root):
        roots.append(root)
        _mount_small_fs(root)

    try:
        server = start_server({"spool.min_free_disk_bytes": 0}, setup=setup)
        state = roots[0] / "state"
        acked: list[str] = []
        code, reply = _submit(server, 4096, "before the disk fills")
        assert code == 250, reply
        acked.append(queue_id_of(reply))
        assert _ready(server) == 200

        filler = state / "filler"
        _fill(filler)
        # While the disk is full: every attempt is answered with a temporary failure (or, if
        # redb still had free pages for it, accepted) — never silence, never a 5xx.
        refused = 0
        for n in range(6):
            code, reply = _submit(server, 512 * 1024, f"disk full {n}")
            assert code in (250, 451, 452), (code, reply)
            if code == 250:
                acked.append(queue_id_of(reply))
            else:
                refused += 1
        assert refused >= 1, "a full disk refused nothing"
        assert server.alive(), server.log_tail()
        deadline = time.monotonic() + 10
        while _ready(server) != 503:
            assert time.monotonic() < deadline, "/readyz stayed ready while storage fails"
            time.sleep(0.1)
        # The operator's CLI answers at once: the listing (reads work while the file is open),
        # or, when even reopening the file needs space (redb's recovery writes), a clear error
        # naming the cause.
        listing = cli(server, "queue", "list", check=False)
        assert listing.returncode == 0 or (
            "storage unavailable" in listing.stderr and "No space left" in listing.stderr
        ), listing.stderr

        os.unlink(filler)
        # Space is back: mail flows again without a restart.
        deadline = time.monotonic() + 20
        while True:
            code, reply = _submit(server, 4096, "after space returned")
            if code == 250:
                acked.append(queue_id_of(reply))
                break
            assert code in (451, 452), (code, reply)
            assert time.monotonic() < deadline, f"still refused after space returned: {reply}"
            time.sleep(0.5)
        deadline = time.monotonic() + 10
        while _ready(server) != 200:
            assert time.monotonic() < deadline, "/readyz did not recover"
            time.sleep(0.1)
        code, reply = _submit(server, 4096, "steady again")
        assert code == 250, reply
        acked.append(queue_id_of(reply))

        # A full disk again, and the operator stops the service: SIGTERM still ends it.
        _fill(filler)
        code, reply = _submit(server, 512 * 1024, "full again")
        assert code in (250, 451, 452), (code, reply)
        if code == 250:
            acked.append(queue_id_of(reply))
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0, server.log_tail()
        os.unlink(filler)

        # Nothing acknowledged is lost, across a crash too.
        server.start()
        server.kill()
        server.start()
        server.wait_delivered(acked)
    finally:
        for root in roots:
            subprocess.run(["umount", "-l", str(root / "state")], check=False)


@pytest.mark.timeout(120)
def test_below_the_free_space_floor_warns_and_is_not_ready_until_space_returns(start_server):
    """Issue 16: a state dir below `min_free_disk_bytes` warns at start-up, /readyz answers 503
    with the reason and MAIL gets 452 while it lasts; both recover when space returns."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and must run as root (scripts/test does)")
    roots = []

    def setup(root):
        roots.append(root)
        _mount_small_fs(root)

    try:
        floor = 2 * FS_BYTES
        server = start_server({"spool.min_free_disk_bytes": floor}, setup=setup)
        state = roots[0] / "state"
        [warning] = log_lines(server, "below spool.min_free_disk_bytes")
        assert "WARN" in warning and str(state / "spool") in warning, warning
        host, port = server.metrics
        try:
            urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5)
            raise AssertionError("/readyz said ready below the floor")
        except urllib.error.HTTPError as e:
            assert e.code == 503
            assert f"below spool.min_free_disk_bytes ({floor})" in e.read().decode()
        code, reply = _submit(server, 1024, "below the floor")
        assert code == 452, (code, reply)

        # Space returns (the file system grows): ready again, mail accepted, no restart.
        subprocess.run(["mount", "-o", f"remount,size={3 * FS_BYTES}", str(state)], check=True)
        assert _ready(server) == 200
        code, reply = _submit(server, 1024, "above the floor")
        assert code == 250, reply
    finally:
        for root in roots:
            subprocess.run(["umount", "-l", str(root / "state")], check=False)


def test_a_second_instance_on_one_state_dir_says_so(server):
    """Issue 16: `serve` twice on one state dir names the file and the likely cause."""
    proc = subprocess.run([str(server.binary), "serve", "--config", str(server.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    spool = server.root / "state" / "spool" / "spool.redb"
    assert f"{spool} is locked by another process: probably another Outbox instance" in proc.stderr, proc.stderr
    assert "Cannot acquire lock" not in proc.stderr
    assert server.alive()


def test_a_read_only_state_dir_names_the_path(start_server, tmp_path, outbox_bin):
    """Issue 16: a state dir the service cannot write is named, with the likely cause (as
    root, permissions do not bite: a read-only mount stands in)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and must run as root (scripts/test does)")
    server = start_server()
    server.stop()
    state = server.root / "state"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)], check=True)
    try:
        proc = subprocess.run([str(outbox_bin), "serve", "--config", str(server.config_path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert str(state) in proc.stderr and "read-only" in proc.stderr, proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
