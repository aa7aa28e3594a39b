"""Several Outbox nodes sharing one spool on AWS (SQS + S3 + DynamoDB, here moto_server):
load spread over three `outbox serve` processes, one killed with SIGKILL mid-load and started
again; every message that got 250 is delivered (lost = 0; duplicates counted and reported).
The queue, suppressions and feedback are shared: `queue list` on one node shows mail queued at
another, and a bounce that arrives at one node refuses the recipient at another."""

from __future__ import annotations

import json
import os
import re
import smtplib
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import (
    PASSWORDS, Server, apply_overrides, default_config, make_message, queue_id_of, records, ses_env,
    submit_as_alice, wait_for_log, wait_record,
)
from snsfake import TOPIC, CERT_NAME, CertServer, Signer
from test_feedback import refuse_submission, ses_event

NODES = 3
SENDERS_PER_NODE = 3
KILL_AFTER_ACKS = 60
TOTAL_ACKS = 150


def aws_spool(name: str) -> dict:
    return {
        "region": "us-east-1",
        "queue": f"{name}-queue",
        "dead_letter_queue": f"{name}-dlq",
        "bucket": name,
        "table": name,
    }


@pytest.fixture
def cluster(start_server, moto, tmp_path, outbox_bin, password_hashes):
    """Three nodes on one AWS spool, each with its own state folder and mail folder, all
    trusting the test's SNS stand-in."""
    name = f"mn{uuid.uuid4().hex[:10]}"
    signer = Signer()
    certs = CertServer(tmp_path / "sns", {CERT_NAME: signer.cert_pem})
    overrides = {
        "spool.backend": "aws",
        "spool.aws": aws_spool(name),
        # Short leases: what a killed node held is taken by another node soon.
        "spool.visibility_timeout_secs": 5,
        "spool.retry_base_secs": 1,
        "spool.retry_max_secs": 2,
        "feedback.topics": [TOPIC],
        "feedback.test_trust_override": certs.config(),
        "log.level": "info,outbox::spool=debug",
    }
    env = {**ses_env(moto.url), "OUTBOX_ALLOW_TEST_TRUST_OVERRIDE": "yes"}
    # The shared resources exist before any node starts: `outbox aws-init` with the nodes'
    # own config.
    config = apply_overrides(default_config(password_hashes), overrides)
    init_config = Server(outbox_bin, tmp_path / "init", config).config_path
    init = subprocess.run(
        [str(outbox_bin), "aws-init", "--config", str(init_config)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )
    assert init.returncode == 0, init.stderr
    assert "queue" in init.stdout and "table" in init.stdout, init.stdout
    nodes = [start_server(overrides, name=f"node{n}-", env=env) for n in range(NODES)]
    yield nodes, signer
    certs.stop()


def delivered_everywhere(nodes) -> set[str]:
    out: set[str] = set()
    for node in nodes:
        out |= node.delivered_ids()
    return out


def sends_logged(nodes) -> list[str]:
    """Queue ids of every "message sent" log line of every node (all runs)."""
    ids = []
    for node in nodes:
        text = node.log_path.read_text(errors="replace")
        ids += re.findall(r"message sent id=([0-9A-HJKMNP-TV-Z]{26})", text)
    return ids


@pytest.mark.timeout(300)
def test_three_nodes_one_killed_mid_load_lose_nothing(cluster, monkeypatch):
    nodes, _ = cluster
    acked: list[str] = []
    lock = threading.Lock()
    kill_now = threading.Event()
    killing = threading.Event()
    stop = threading.Event()
    errors: list[str] = []

    def sender(node, n: int):
        i = 0
        while not stop.is_set():
            try:
                s = smtplib.SMTP_SSL("127.0.0.1", node.tls_port, context=node.tls_context(), timeout=30)
                s.login("alice", PASSWORDS["alice"])
                while not stop.is_set():
                    i += 1
                    rcpt = f"n{n}@example.net"
                    s.mail("alice@example.com")
                    s.rcpt(rcpt)
                    code, resp = s.data(make_message(f"multi {n}/{i}", to=rcpt))
                    if code != 250:
                        errors.append(f"sender {n}: {code} {resp!r}")
                        return
                    with lock:
                        acked.append(queue_id_of(resp))
                        if len(acked) >= KILL_AFTER_ACKS:
                            kill_now.set()
                        if len(acked) >= TOTAL_ACKS:
                            stop.set()
                s.close()
            except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
                # Expected from the killed node's sessions.
                if killing.is_set() and node is nodes[1] or stop.is_set():
                    return
                errors.append(f"sender {n}: {type(e).__name__}: {e}")
                return

    def jmap_sender(node):
        """JMAP clients submit too (jmapc: draft + EmailSubmission/set in one request)."""
        from test_jmap import client, create_and_submit, draft, draft_and_identity

        c = client(node, monkeypatch)
        drafts, identity = draft_and_identity(c)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                _, sub_id = create_and_submit(
                    c, draft(drafts, identity, ["j@example.net"], f"jmap {i}", "x"), identity.id)
            except Exception as e:  # noqa: BLE001 - reported as a test error
                if not stop.is_set():
                    errors.append(f"jmap: {type(e).__name__}: {e}")
                return
            with lock:
                acked.append(sub_id)

    threads = [
        threading.Thread(target=sender, args=(node, k * NODES + j), daemon=True)
        for j, node in enumerate(nodes)
        for k in range(SENDERS_PER_NODE)
    ]
    # (REQUESTS_CA_BUNDLE is one per process: one JMAP client, on a node that stays up.)
    threads.append(threading.Thread(target=jmap_sender, args=(nodes[2],), daemon=True))
    for t in threads:
        t.start()
    assert kill_now.wait(120), f"{len(acked)} acks; errors={errors}\n{nodes[1].log_tail()}"
    victim = nodes[1]
    killing.set()  # first, so its senders read the coming connection errors as expected
    victim.kill()
    assert stop.wait(180), f"{len(acked)} acks after the kill; errors={errors}"
    for t in threads:
        t.join(30)
    assert not errors, errors
    with lock:
        got = list(acked)
    assert len(set(got)) == len(got), "a queue id was handed out twice"
    # The killed node comes back later; meanwhile the others already sent what it held.
    victim.start()
    deadline = time.monotonic() + 120
    while set(got) - delivered_everywhere(nodes):
        assert time.monotonic() < deadline, (
            f"lost: {sorted(set(got) - delivered_everywhere(nodes))}\n{nodes[0].log_tail()}"
        )
        time.sleep(0.2)
    sent = sends_logged(nodes)
    duplicates = len(sent) - len(set(sent))
    assert set(sent) >= set(got) - nodes[1].delivered_ids(), "the log names every send"
    per_node = [len(n.delivered_ids()) for n in nodes]
    print(f"acked={len(got)} lost=0 duplicates={duplicates} delivered per node={per_node}")
    # Every node sent some of the load: the queue is shared.
    assert sum(1 for c in per_node if c > 0) >= 2, per_node


def test_queue_suppressions_and_feedback_are_shared(cluster):
    (a, b, c), signer = cluster
    # Mail queued at A for later is listed by B.
    with smtplib.SMTP("127.0.0.1", a.port, timeout=10) as client:
        client.starttls(context=a.tls_context())
        client.login("alice", PASSWORDS["alice"])
        client.mail("alice@example.com", options=["HOLDFOR=3600"])
        client.rcpt("later@example.net")
        code, reply = client.data(make_message("later", to="later@example.net"))
        assert code == 250, reply
    later = queue_id_of(reply)
    listed = records(b, "queue", "list")
    assert later in [r["id"] for r in listed], listed

    # A message sent through A; SES's bounce for it arrives at C.
    bulk = "X-Outbox-Class: bulk\r\n"
    qid = submit_as_alice(
        a, make_message("bulk", to="gone@example.net", extra_headers=bulk), ["gone@example.net"])
    rec = wait_record(b, qid, lambda r: r["state"] == "sent")
    import requests

    host, port = c.https[0]
    message = signer.notification(ses_event("Bounce", rec, "gone@example.net"))
    resp = requests.post(
        f"https://{host}:{port}/sns", data=json.dumps(message),
        headers={"Content-Type": "text/plain; charset=UTF-8"}, verify=c.ca, timeout=30,
    )
    assert resp.status_code == 200, resp.text
    # B sees the outcome, A refuses the suppressed recipient for that class.
    assert wait_record(b, qid, lambda r: r["state"] == "bounced")["state"] == "bounced"
    code, reply = refuse_submission(a, "gone@example.net", "bulk")
    assert code >= 500, (code, reply)
    assert b"suppress" in reply.lower(), reply


def test_aws_unreachable_answers_451_keeps_nothing_and_spends_no_attempts(
    start_server, moto, tmp_path, outbox_bin, password_hashes
):
    """While AWS does not answer (here: every call through a proxy whose upstream is gone,
    502), RCPT (which reads the suppression list) or DATA gets 451 4.3.0 and nothing is stored; mail accepted before the outage is sent
    once it is back, on its first attempt."""
    from faultproxy import FaultProxy

    proxy = FaultProxy(moto.url).start()
    try:
        name = f"out{uuid.uuid4().hex[:10]}"
        # A short visibility timeout: a copy received while its claim could not be written is
        # hidden for at most this long.
        overrides = {
            "spool.backend": "aws",
            "spool.aws": aws_spool(name),
            "spool.visibility_timeout_secs": 10,
        }
        env = ses_env(proxy.url)
        config = apply_overrides(default_config(password_hashes), overrides)
        init_config = Server(outbox_bin, tmp_path / "init", config).config_path
        subprocess.run(
            [str(outbox_bin), "aws-init", "--config", str(init_config)],
            check=True, capture_output=True, timeout=120, env={**os.environ, **env},
        )
        node = start_server(overrides, env=env)

        def submit(subject: str, options=()) -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", node.port, timeout=60) as client:
                client.starttls(context=node.tls_context())
                client.login("alice", PASSWORDS["alice"])
                client.mail("alice@example.com", options=list(options))
                # RCPT reads the suppression list (issue 16): unreachable, it is 451 there.
                code, reply = client.rcpt("r@example.net")
                if code != 250:
                    return code, reply
                return client.data(make_message(subject, to="r@example.net"))

        code, reply = submit("before the outage", options=["HOLDFOR=3"])
        assert code == 250, reply
        held = queue_id_of(reply)
        upstream = proxy.upstream_port
        proxy.upstream_port = _closed_port()
        try:
            code, reply = submit("during the outage")
            assert (code, reply[:5]) == (451, b"4.3.0"), (code, reply)
            # The held message falls due during the outage (3 s): the sender meets it.
            wait_for_log(node, "leasing from the spool failed", timeout=15)
        finally:
            proxy.upstream_port = upstream
        node.wait_delivered([held], timeout=60)
        assert len(node.delivered_ids()) == 1, "the refused message was not kept"
        sent = re.findall(rf"message sent id={held}\b.*attempt=(\d+)", node.log_path.read_text())
        assert sent == ["1"], sent
    finally:
        proxy.stop()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jmap_client_on_one_node_sees_a_submission_made_on_another(cluster, monkeypatch):
    """jmapc on node A creates a draft and submits it; a client of node B sees the same
    Email and EmailSubmission, its deliveryStatus as SES feedback (the offline simulator)
    arrives, and B's EventSource pushes the state changes."""
    from test_jmap import Events, client, create_and_submit, draft, draft_and_identity, poll, submission
    from jmapc.methods import EmailGet

    (a, b, _), _ = cluster
    sim = "simulator.amazonses.com"
    on_a = client(a, monkeypatch)
    drafts, identity = draft_and_identity(on_a)
    events = Events(b)
    try:
        events.wait(lambda k, d: k == "state", "initial state from B")
        email_id, sub_id = create_and_submit(
            on_a, draft(drafts, identity, [f"success@{sim}", f"bounce@{sim}"], "across", "x"),
            identity.id)
        acct = on_a.account_id
        events.wait(
            lambda k, d: k == "state" and "EmailSubmission" in d["changed"].get(acct, {}),
            "an EmailSubmission push on B for a submission made on A")
    finally:
        events.close()
    on_b = client(b, monkeypatch)
    assert on_b.account_id == acct
    done = lambda s: (s.delivery_status[f"success@{sim}"].delivered.value == "yes"
                      and s.delivery_status[f"bounce@{sim}"].delivered.value == "no")
    s = poll(lambda: submission(on_b, sub_id), done, "B sees delivered yes / bounced no")
    assert s.undo_status.value == "final"
    [seen] = on_b.request(EmailGet(ids=[email_id], properties=["subject"])).data
    assert seen.subject == "across"


def test_mail_arriving_during_a_long_poll_is_sent_at_once(cluster):
    """Senders wait on SQS long polls; a message that arrives while they wait is due as it
    arrives (it must not be taken for early and put back with a delay)."""
    (a, _, _), _ = cluster
    # Let every sender settle into a long poll (they wait up to 20 s each).
    wait_for_log(a, "listening", timeout=10)
    time.sleep(6)
    with smtplib.SMTP("127.0.0.1", a.port, timeout=10) as client:
        client.starttls(context=a.tls_context())
        client.login("alice", PASSWORDS["alice"])
        client.mail("alice@example.com")
        client.rcpt("now@example.net")
        code, reply = client.data(make_message("now", to="now@example.net"))
    assert code == 250, reply
    qid = queue_id_of(reply)
    start = time.monotonic()
    nodes = cluster[0]
    while qid not in delivered_everywhere(nodes):
        assert time.monotonic() - start < 4, "not sent within 4 s of its acceptance"
        time.sleep(0.05)
