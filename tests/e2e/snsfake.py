"""A stand-in for Amazon SNS's side of HTTPS delivery, for feedback tests.

Home-made on purpose: no real peer exists here. AWS is out of reach, and moto's SNS signs each
message with a fresh self-signed certificate that no verifier can trust (FACTS.md). So the test
plays SNS: a throwaway RSA key and certificate (subject CN `sns.amazonaws.com`, as AWS's are)
sign messages exactly as SNS does (SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA over the
documented string-to-sign), and a local HTTPS server — whose own certificate chains to a test
CA — serves that certificate and answers subscription confirmations. Outbox reaches it only
through its test trust override (`feedback.test_trust_override` plus
`OUTBOX_ALLOW_TEST_TRUST_OVERRIDE=yes`), which maps `https://sns.<region>.amazonaws.com/<path>`
to this server and trusts only the test CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGION = "us-east-1"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_NAME = "SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
CERT_URL = f"https://sns.{REGION}.amazonaws.com/{CERT_NAME}"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject: str, key, issuer: str, issuer_key, *, ca=False, san=None, days=30):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Signer:
    """Signs SNS messages with a key whose certificate says CN=sns.amazonaws.com."""

    def __init__(self):
        self.key = _key()
        self.cert_pem = _pem(_cert("sns.amazonaws.com", self.key, "sns.amazonaws.com", self.key))

    @staticmethod
    def string_to_sign(msg: dict) -> bytes:
        if msg["Type"] == "Notification":
            keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        out = ""
        for k in keys:
            if k in msg:
                out += f"{k}\n{msg[k]}\n"
        return out.encode()

    def sign(self, msg: dict, version: int = 2) -> dict:
        msg = dict(msg)
        msg["SignatureVersion"] = str(version)
        algo = hashes.SHA1() if version == 1 else hashes.SHA256()
        sig = self.key.sign(self.string_to_sign(msg), padding.PKCS1v15(), algo)
        msg["Signature"] = base64.b64encode(sig).decode()
        return msg

    def notification(
        self,
        message: str | dict,
        *,
        topic: str = TOPIC,
        message_id: str | None = None,
        timestamp: dt.datetime | None = None,
        cert_url: str = CERT_URL,
        version: int = 2,
        subject: str | None = None,
    ) -> dict:
        """A signed SNS Notification carrying `message` (an SES event)."""
        ts = (timestamp or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        msg = {
            "Type": "Notification",
            "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": topic,
            "Message": message if isinstance(message, str) else json.dumps(message),
            "Timestamp": ts,
            "SigningCertURL": cert_url,
            "UnsubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic}:x",
        }
        if subject is not None:
            msg["Subject"] = subject
        return self.sign(msg, version)

    def subscription_confirmation(self, *, topic: str = TOPIC, token: str = "tok123") -> dict:
        ts = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        msg = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic,
            "Message": f"You have chosen to subscribe to the topic {topic}.",
            "SubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic}&Token={token}",
            "Timestamp": ts,
            "SigningCertURL": CERT_URL,
        }
        return self.sign(msg)


class CertServer:
    """The HTTPS server Outbox's trust override points at: serves PEM files by name, answers
    confirmations, and records every request path (so a test can prove nothing was fetched)."""

    def __init__(self, root: Path, files: dict[str, bytes]):
        ca_key = _key()
        ca = _cert("Outbox test SNS CA", ca_key, "Outbox test SNS CA", ca_key, ca=True)
        key = _key()
        cert = _cert("127.0.0.1", key, "Outbox test SNS CA", ca_key,
                     san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        root.mkdir(parents=True, exist_ok=True)
        self.ca_file = root / "sns-ca.pem"
        self.ca_file.write_bytes(_pem(ca))
        (root / "sns-server.pem").write_bytes(_pem(cert))
        (root / "sns-server.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self.files = dict(files)
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                name = self.path.lstrip("/")
                if self.path.startswith("/?Action=ConfirmSubscription"):
                    body = b"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult>ok</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
                    status = 200
                elif name in outer.files:
                    body, status = outer.files[name], 200
                else:
                    body, status = b"not found", 404
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(root / "sns-server.pem", root / "sns-server.key")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.base_url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def config(self) -> dict:
        """The Outbox config override that trusts this server."""
        return {"base_url": self.base_url, "ca_file": str(self.ca_file)}

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
