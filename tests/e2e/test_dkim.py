"""DKIM signing at send time, checked by an independent verifier (dkimpy) against the public
keys it would find in DNS: RSA-SHA256 for one domain, Ed25519-SHA256 (RFC 8463) for another,
and no signature for a domain without a key."""

from __future__ import annotations

import base64
import smtplib
import subprocess
from pathlib import Path

import dkim

from conftest import PASSWORDS, make_message, queue_id_of


def openssl(*args) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def make_key(folder: Path, name: str, algorithm: str) -> tuple[Path, bytes]:
    """A PKCS#8 private key file and the p= value of its DNS record."""
    key = folder / f"{name}.pem"
    if algorithm == "rsa":
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
        public = openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")
    else:
        openssl("genpkey", "-algorithm", "ed25519", "-out", str(key))
        public = openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")[-32:]  # raw key
    return key, base64.b64encode(public)


class RecordingSMTP(smtplib.SMTP):
    def data(self, msg):
        code, reply = super().data(msg)
        self.last_data_reply = reply.decode()
        return code, reply


def submit(server, sender: str, subject: str) -> str:
    with RecordingSMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        assert client.sendmail(sender, ["rcpt@example.net"], make_message(subject, sender=sender)) == {}
        return queue_id_of(client.last_data_reply)


def test_rsa_and_ed25519_signatures_verify(start_server, tmp_path):
    rsa_key, rsa_public = make_key(tmp_path, "rsa", "rsa")
    ed_key, ed_public = make_key(tmp_path, "ed", "ed25519")
    records = {
        b"rsa1._domainkey.example.com.": b"v=DKIM1; k=rsa; p=" + rsa_public,
        b"ed1._domainkey.alice.test.": b"v=DKIM1; k=ed25519; p=" + ed_public,
    }
    server = start_server({"dkim": [
        {"domain": "example.com", "selector": "rsa1", "private_key_file": str(rsa_key)},
        {"domain": "alice.test", "selector": "ed1", "private_key_file": str(ed_key)},
    ]})
    dns = lambda name, timeout=5: records.get(name)

    rsa_id = submit(server, "alice@example.com", "signed with rsa")
    _, eml = server.delivery(rsa_id)
    assert eml.startswith(b"DKIM-Signature:"), eml[:200]
    assert b"a=rsa-sha256" in eml.split(b"\r\n\r\n")[0]
    assert dkim.verify(eml, dnsfunc=dns), "RSA signature must verify"
    tampered = eml.replace(b"Hello.", b"Hellp.")
    assert not dkim.verify(tampered, dnsfunc=dns), "a changed body must not verify"

    ed_id = submit(server, "news@alice.test", "signed with ed25519")
    _, eml = server.delivery(ed_id)
    assert b"a=ed25519-sha256" in eml.split(b"\r\n\r\n")[0]
    assert dkim.verify(eml, dnsfunc=dns), "Ed25519 signature must verify"


def test_no_key_no_signature(start_server, tmp_path):
    rsa_key, _ = make_key(tmp_path, "rsa", "rsa")
    server = start_server({"dkim": [
        {"domain": "alice.test", "selector": "s", "private_key_file": str(rsa_key)},
    ]})
    qid = submit(server, "alice@example.com", "unsigned")
    _, eml = server.delivery(qid)
    assert b"DKIM-Signature" not in eml
