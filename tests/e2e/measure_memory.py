"""Measurements, not tests (pytest does not collect this file unless named): the server's PSS
growth while it receives and while it sends one large message, through the `ses` transport to
moto_server, and on the AWS spool backend (moto's S3, SQS, DynamoDB). Run it with the build to
measure (a release build for figures worth quoting):

    OUTBOX_BIN=target/release/outbox .venv/bin/python -m pytest -q -s tests/e2e/measure_memory.py

Two shapes: a 37 MiB base64 attachment beside a small text part (the usual large message: the
signature rewrites only the text part), and one 37 MiB text part (the signature rewrites it
whole). `scripts/bench-peer` measures the embedded spool and the `smtp` transport against
Postfix.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import pytest

from conftest import SES_ALICE, Server, apply_overrides, default_config, ses_env, submit_as_alice
from test_multinode import aws_spool
from test_ses import submit

SIZE = 39_000_000


def pss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def message(marker: str, shape: str) -> bytes:
    body = ("A" * 76 + "\r\n") * (SIZE // 78)
    head = (f"From: {SES_ALICE['email']}\r\nTo: rcpt@example.net\r\nSubject: big {marker}\r\n"
            f"Message-ID: <{marker}@e2e.test>\r\nMIME-Version: 1.0\r\n")
    if shape == "text":
        return (head + f"Content-Type: text/plain\r\n\r\n{body}").encode()
    return (head + "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
            "hello\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{body}--b--\r\n").encode()


class Sampler:
    """Peak PSS of `pid` every 50 ms, while receiving until `sending()`, then until `stop()`."""

    def __init__(self, pid: int):
        self.pid, self.base = pid, pss_kib(pid)
        self.peaks = {"receiving": self.base, "sending": self.base}
        self.phase, self.done = "receiving", threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.done.is_set():
            self.peaks[self.phase] = max(self.peaks[self.phase], pss_kib(self.pid))
            time.sleep(0.05)

    def sending(self):
        self.phase = "sending"

    def report(self, what: str, size_bytes: int) -> str:
        self.done.set()
        self.thread.join()
        size = size_bytes / 1024
        return (f"\n{what}: {size / 1024:.1f} MiB message, base PSS {self.base / 1024:.1f} MiB; growth while "
                + ", ".join(f"{k} {(v - self.base) / 1024:.1f} MiB ({(v - self.base) / size:.2f}x)"
                            for k, v in self.peaks.items()))


def test_measure_aws_spool_memory(start_server, moto, tmp_path, outbox_bin, password_hashes):
    name = f"mem{uuid.uuid4().hex[:10]}"
    overrides = {"spool.backend": "aws", "spool.aws": aws_spool(name)}
    env = ses_env(moto.url)
    config = apply_overrides(default_config(password_hashes), overrides)
    init_config = Server(outbox_bin, tmp_path / "init", config).config_path
    init = subprocess.run([str(outbox_bin), "aws-init", "--config", str(init_config)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert init.returncode == 0, init.stderr
    server = start_server(overrides, env=env)
    sampler = Sampler(server.proc.pid)
    msg = message(uuid.uuid4().hex, "attachment")
    qid = submit_as_alice(server, msg, ["rcpt@example.net"])
    sampler.sending()
    server.wait_delivered([qid], timeout=300)
    print(sampler.report("aws spool, dir transport, attachment", len(msg)))


@pytest.mark.parametrize("shape", ["attachment", "text"])
def test_measure_ses_memory(moto, start_ses_server, shape):
    moto.sesv2.create_email_identity(EmailIdentity=SES_ALICE["email"])
    server = start_ses_server(moto.url, {"sender.transport": {"kind": "ses", "max_send_rate": 50, "timeout_secs": 120}})
    sampler = Sampler(server.proc.pid)
    marker = uuid.uuid4().hex
    msg = message(marker, shape)
    submit(server, ["rcpt@example.net"], msg)
    sampler.sending()
    moto.wait_raw_message(marker, server=server, timeout=300)
    print(sampler.report(f"ses, {shape}", len(msg)))
