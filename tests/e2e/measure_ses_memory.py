"""A measurement, not a test (pytest does not collect this file unless named): the server's PSS
growth while it receives and while it sends one large message through the `ses` transport to
moto_server. Run it with the build to measure (a release build for figures worth quoting):

    OUTBOX_BIN=target/release/outbox .venv/bin/python -m pytest -q -s tests/e2e/measure_ses_memory.py

Two shapes: a 37 MiB base64 attachment beside a small text part (the usual large message: the
signature rewrites only the text part), and one 37 MiB text part (the signature rewrites it
whole). `scripts/bench-peer` measures the same for the `smtp` transport against Postfix.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from conftest import SES_ALICE
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


@pytest.mark.parametrize("shape", ["attachment", "text"])
def test_measure_ses_memory(moto, start_ses_server, shape):
    moto.sesv2.create_email_identity(EmailIdentity=SES_ALICE["email"])
    server = start_ses_server(moto.url, {"sender.transport": {"kind": "ses", "max_send_rate": 50, "timeout_secs": 120}})
    pid = server.proc.pid
    base = pss_kib(pid)
    peaks = {"receiving": base, "sending": base}
    phase = ["receiving"]
    done = threading.Event()

    def sample():  # every 50 ms until the message is in moto
        while not done.is_set():
            peaks[phase[0]] = max(peaks[phase[0]], pss_kib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    marker = uuid.uuid4().hex
    msg = message(marker, shape)
    submit(server, ["rcpt@example.net"], msg)
    phase[0] = "sending"
    moto.wait_raw_message(marker, server=server, timeout=300)
    done.set()
    sampler.join()
    size = len(msg) / 1024
    growth = {k: (v - base) for k, v in peaks.items()}
    print(f"\n{shape}: {size / 1024:.1f} MiB message, base PSS {base / 1024:.1f} MiB; growth while "
          + ", ".join(f"{k} {g / 1024:.1f} MiB ({g / size:.2f}x)" for k, g in growth.items()))
