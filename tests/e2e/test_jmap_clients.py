"""JMAP as clients nobody here wrote use it (issue 14): the npm library `jmap-client-ts` 1.0
driven by Node (tests/e2e/node, installed by scripts/test with `npm ci`), and RFC 8620/8621's
own request shapes sent literally. The server is the real binary with the `dir` transport.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from conftest import PASSWORDS

NODE_DIR = Path(__file__).resolve().parent / "node"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]
MAX_HOLD = 30 * 86_400  # smtp.max_hold_secs default


def base(server) -> str:
    return f"https://localhost:{server.https[0][1]}"


def call(server, calls) -> list:
    r = requests.post(base(server) + "/jmap/api", json={"using": USING, "methodCalls": calls},
                      auth=("alice", PASSWORDS["alice"]), verify=server.ca, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["methodResponses"]


def queue_record(server, queue_id: str) -> dict:
    proc = subprocess.run([str(server.binary), "queue", "show", queue_id, "--json",
                           "--config", str(server.config_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    [record] = json.loads(proc.stdout)["records"]
    return record


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def node_client(server, script: str, *args: str) -> dict:
    node = shutil.which("node")
    assert node, "node is missing: scripts/test installs the nodejs package"
    assert (NODE_DIR / "node_modules" / "jmap-client-ts").is_dir(), \
        "tests/e2e/node/node_modules is missing: run scripts/test (npm ci --prefix tests/e2e/node)"
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(server.ca)}
    proc = subprocess.run([node, str(NODE_DIR / script), base(server) + "/.well-known/jmap", *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=NODE_DIR)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- item 6: FUTURERELEASE


def test_jmap_client_ts_holds_a_submission_with_holdfor(server):
    """RFC 8621 §7: SMTP parameters ride in envelope.mailFrom.parameters; §1.3.2: the
    submissionExtensions advertised are what a client may use. FUTURERELEASE is advertised, so
    HOLDFOR is accepted and sendAt (server-set) is when the message will be released."""
    before = int(time.time() * 1000)
    out = node_client(server, "hold_submission.mjs", "alice", PASSWORDS["alice"], "alice",
                      "alice@example.com", "later@example.net", "3600")
    # RFC 4865 §3: both arguments, as on the EHLO line.
    max_secs, latest = out["capability"]["submissionExtensions"]["FUTURERELEASE"]
    assert max_secs == str(MAX_HOLD)
    assert abs(utc_ms(latest) - (before + MAX_HOLD * 1000)) < 120_000, latest
    assert "s" in (out["set"].get("created") or {}), out["set"]
    [sub] = out["get"]["list"]
    assert sub["undoStatus"] == "pending", sub
    assert abs(utc_ms(sub["sendAt"]) - (before + 3_600_000)) < 60_000, sub["sendAt"]
    assert sub["envelope"]["mailFrom"]["parameters"] == {"HOLDFOR": "3600"}, sub["envelope"]
    record = queue_record(server, sub["id"])
    assert record["state"] == "queued" and abs(record["due_ms"] - utc_ms(sub["sendAt"])) < 1000, record


def test_rfc8621_envelope_with_holduntil_sent_literally(server):
    """RFC 8621 §7.5.2's Email/set + EmailSubmission/set request shape, with the envelope's
    mailFrom carrying RFC 4865 HOLDUNTIL; a parameter not advertised is refused by name."""
    [acct] = [a for a in requests.get(base(server) + "/.well-known/jmap", auth=("alice", PASSWORDS["alice"]),
                                      verify=server.ca, timeout=30).json()["accounts"]]
    until = datetime.fromtimestamp(time.time() + 7200, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def request(params):
        return call(server, [
            ["Email/set", {"accountId": acct, "create": {"k1490": {
                "mailboxIds": {"drafts": True}, "keywords": {"$draft": True},
                "from": [{"name": "Alice", "email": "alice@example.com"}],
                "to": [{"name": "Jane", "email": "jane@example.net"}],
                "subject": "Hello", "bodyValues": {"body": {"value": "Hi Jane", "charset": "utf-8"}},
                "textBody": [{"partId": "body", "type": "text/plain"}]}}}, "0"],
            ["EmailSubmission/set", {"accountId": acct, "create": {"k1491": {
                "identityId": "alice", "emailId": "#k1490",
                "envelope": {"mailFrom": {"email": "alice@example.com", "parameters": params},
                             "rcptTo": [{"email": "jane@example.net", "parameters": None}]}}}}, "1"],
        ])[1][1]

    held = request({"HOLDUNTIL": until})
    created = held.get("created", {}).get("k1491")
    assert created, held
    [sub] = call(server, [["EmailSubmission/get", {"accountId": acct, "ids": [created["id"]]}, "g"]])[0][1]["list"]
    assert sub["sendAt"] == until and sub["undoStatus"] == "pending", sub

    refused = request({"NOTIFY": "NEVER"})
    err = refused["notCreated"]["k1491"]
    assert err["type"] == "invalidProperties" and "NOTIFY" in err["description"], err


# --------------------------------------------------------------------------- item 11


def _draft(acct: str, cid: str, **extra) -> list:
    return ["Email/set", {"accountId": acct, "create": {cid: {
        "mailboxIds": {"drafts": True}, "keywords": {"$draft": True},
        "from": [{"email": "alice@example.com"}], "to": [{"email": "jane@example.net"}],
        "subject": "Hello", "bodyValues": {"b": {"value": "Hi"}},
        "textBody": [{"partId": "b", "type": "text/plain"}], **extra}}}, "0"]


def test_created_submission_carries_the_server_set_properties(server):
    """RFC 8620 §5.3: `created` holds every property the client did not send — the server-set
    ones (RFC 8621 §7: deliveryStatus, dsnBlobIds, mdnBlobIds, sendAt, undoStatus, threadId)
    and the envelope the server derived."""
    acct = "alice"
    responses = call(server, [
        _draft(acct, "d"),
        ["EmailSubmission/set", {"accountId": acct, "create": {"s": {
            "emailId": "#d", "identityId": "alice"}}}, "1"],
    ])
    created = responses[1][1]["created"]["s"]
    for prop in ["id", "threadId", "sendAt", "undoStatus", "deliveryStatus", "dsnBlobIds",
                 "mdnBlobIds", "envelope"]:
        assert prop in created, (prop, created)
    assert "identityId" not in created, created  # sent as is: not repeated
    # Sent as the reference "#d": what it resolved to is returned.
    assert created["emailId"] == responses[0][1]["created"]["d"]["id"], created
    assert created["envelope"]["rcptTo"] == [{"email": "jane@example.net", "parameters": None}]
    assert set(created["deliveryStatus"]) == {"jane@example.net"}, created
    [got] = call(server, [["EmailSubmission/get", {"accountId": acct, "ids": [created["id"]]}, "g"]])
    full = got[1]["list"][0]
    assert {k: full[k] for k in ["threadId", "envelope", "dsnBlobIds", "mdnBlobIds"]} == \
        {k: created[k] for k in ["threadId", "envelope", "dsnBlobIds", "mdnBlobIds"]}


def test_eventsource_closeafter_state_ends_after_the_first_state_event(server):
    """RFC 8620 §7.3: with closeafter=state the server MUST end the response after pushing a
    state event — the initial one counts. A read timeout here means the stream stayed open."""
    r = requests.get(base(server) + "/jmap/eventsource?types=*&closeafter=state&ping=0",
                     auth=("alice", PASSWORDS["alice"]), verify=server.ca, timeout=10)
    assert r.status_code == 200, r.text
    events = [line for line in r.text.splitlines() if line.startswith("event:")]
    assert events == ["event: state"], r.text


def test_download_answers_the_requested_type_with_parameters(server):
    """RFC 8620 §6.2: the download `type` is what the server sets as Content-Type — with its
    parameters (accept=text/plain; charset=utf-8), not octet-stream."""
    up = requests.post(base(server) + "/jmap/upload/alice/", data="héllo".encode(),
                       headers={"Content-Type": "text/plain"}, auth=("alice", PASSWORDS["alice"]),
                       verify=server.ca, timeout=30)
    assert up.status_code in (200, 201), up.text
    blob = up.json()["blobId"]
    r = requests.get(base(server) + f"/jmap/download/alice/{blob}/hello.txt?accept=text/plain;%20charset=utf-8",
                     auth=("alice", PASSWORDS["alice"]), verify=server.ca, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; charset=utf-8", r.headers
    assert r.content == "héllo".encode()


def test_draft_message_id_uses_the_configured_hostname(server):
    """A draft without messageId gets one whose right-hand side is the configured hostname
    (config `hostname`, mx.test here), not the machine's name (RFC 5322 §3.6.4)."""
    created = call(server, [_draft("alice", "d")])[0][1]["created"]["d"]
    [got] = call(server, [["Email/get", {"accountId": "alice", "ids": [created["id"]],
                                         "properties": ["messageId"]}, "g"]])
    [message_id] = got[1]["list"][0]["messageId"]
    assert message_id.endswith("@mx.test"), message_id


# --------------------------------------------------------------------------- item 9


def test_advertised_attachment_size_is_accepted_after_base64(start_server):
    """RFC 8621 §1.3.1: maxSizeAttachmentsPerEmail counts the attachments' unencoded octets.
    An attachment of exactly that size must be accepted as a draft and submitted, although
    base64 makes it a third larger in the message."""
    server = start_server({"smtp.max_message_size": 1_000_000})
    session = requests.get(base(server) + "/.well-known/jmap", auth=("alice", PASSWORDS["alice"]),
                           verify=server.ca, timeout=30).json()
    advertised = session["accounts"]["alice"]["accountCapabilities"]["urn:ietf:params:jmap:mail"][
        "maxSizeAttachmentsPerEmail"]
    data = os.urandom(advertised)
    up = requests.post(base(server) + "/jmap/upload/alice/", data=data,
                       headers={"Content-Type": "application/octet-stream"},
                       auth=("alice", PASSWORDS["alice"]), verify=server.ca, timeout=30)
    assert up.status_code in (200, 201), up.text
    responses = call(server, [
        _draft("alice", "d", attachments=[{"blobId": up.json()["blobId"],
                                           "type": "application/octet-stream", "name": "data.bin"}]),
        ["EmailSubmission/set", {"accountId": "alice", "create": {"s": {
            "emailId": "#d", "identityId": "alice"}}}, "1"],
    ])
    assert "d" in responses[0][1].get("created", {}), responses[0][1]
    assert "s" in responses[1][1].get("created", {}), responses[1][1]
    assert advertised < 1_000_000 * 3 // 4, advertised


# --------------------------------------------------------------------------- item 10


def test_request_and_upload_limits_are_configurable(start_server):
    """Issue 14 item 10: maxSizeRequest and maxSizeUpload (RFC 8620 §2) come from the config
    (http.max_request_size, http.max_upload_size) and are enforced as advertised."""
    server = start_server({"http.max_request_size": 5000, "http.max_upload_size": 3000})
    session = requests.get(base(server) + "/.well-known/jmap", auth=("alice", PASSWORDS["alice"]),
                           verify=server.ca, timeout=30).json()
    core = session["capabilities"]["urn:ietf:params:jmap:core"]
    assert (core["maxSizeRequest"], core["maxSizeUpload"]) == (5000, 3000), core

    def upload(n):
        return requests.post(base(server) + "/jmap/upload/alice/", data=b"x" * n,
                             auth=("alice", PASSWORDS["alice"]), verify=server.ca, timeout=30)

    assert upload(3000).status_code in (200, 201)
    assert upload(3001).status_code == 413
    big = {"using": USING, "methodCalls": [["Mailbox/get", {"accountId": "alice", "ids": None,
                                                             "padding": "x" * 5000}, "0"]]}
    r = requests.post(base(server) + "/jmap/api", json=big, auth=("alice", PASSWORDS["alice"]),
                      verify=server.ca, timeout=30)
    assert r.status_code == 413 and r.json().get("limit") == "maxSizeRequest", r.text


# --------------------------------------------------------------------------- item 8


def test_signature_inserted_by_the_client_is_not_added_again(moto, start_ses_server):
    """Issue 14 item 8. RFC 8621 §6: the client SHOULD insert the identity's textSignature /
    htmlSignature itself. One that does (as here, from Identity/get) must not get them twice."""
    from conftest import SES_ALICE

    moto.sesv2.create_email_identity(EmailIdentity=SES_ALICE["email"])
    server = start_ses_server(moto.url)
    session = requests.get(base(server) + "/.well-known/jmap", auth=("alice", PASSWORDS["alice"]),
                           verify=server.ca, timeout=30).json()
    acct = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
    [identity] = call(server, [["Identity/get", {"accountId": acct}, "i"]])[0][1]["list"]
    text_sig, html_sig = identity["textSignature"], identity["htmlSignature"]
    assert text_sig and html_sig, identity
    marker = os.urandom(8).hex()
    responses = call(server, [
        ["Email/set", {"accountId": acct, "create": {"d": {
            "mailboxIds": {"drafts": True}, "keywords": {"$draft": True},
            "from": [{"email": identity["email"]}], "to": [{"email": "jane@example.net"}],
            "subject": f"signed by the client {marker}",
            "bodyValues": {"t": {"value": f"Hi {marker}\n\n{text_sig}\n"},
                           "h": {"value": f"<html><body><p>Hi {marker}</p>"
                                          f"<div class=\"signature\">{html_sig}</div></body></html>"}},
            "textBody": [{"partId": "t", "type": "text/plain"}],
            "htmlBody": [{"partId": "h", "type": "text/html"}]}}}, "0"],
        ["EmailSubmission/set", {"accountId": acct, "create": {"s": {
            "emailId": "#d", "identityId": identity["id"]}}}, "1"],
    ])
    assert "s" in responses[1][1].get("created", {}), responses
    sent = moto.wait_raw_message(marker, server=server)
    import email
    import email.policy
    parsed = email.message_from_bytes(sent["raw_data"].encode(), policy=email.policy.default)
    parts = {p.get_content_type(): p.get_content().replace("\r\n", "\n") for p in parsed.walk()
             if p.get_content_type() in ("text/plain", "text/html")}
    assert parts["text/plain"].count(text_sig) == 1, parts["text/plain"]
    assert parts["text/html"].count(html_sig) == 1, parts["text/html"]


# --------------------------------------------------------------------------- item 7


def _parts(raw: bytes) -> list[tuple[str, str | None, str | None]]:
    import email
    import email.policy
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return [(p.get_content_type(), p.get_content_disposition(), p.get("Content-ID")) for p in msg.walk()]


def test_jmap_client_ts_draft_with_body_structure_is_sent(server):
    """RFC 8621 §4.6 allows bodyStructure on create (and §7.5.2's example uses it); jmap-client-ts
    models drafts that way. Nested multiparts, blobId parts and an inline cid part are built."""
    marker = os.urandom(6).hex()
    out = node_client(server, "body_structure.mjs", "alice", PASSWORDS["alice"], "alice",
                      "alice@example.com", "jane@example.net", marker)
    assert "d" in (out["emailSet"].get("created") or {}), out["emailSet"]
    sub = (out["submissionSet"] or {}).get("created", {}).get("s")
    assert sub, out["submissionSet"]
    server.wait_delivered([sub["id"]])
    raw = (server.mail_dir / f"{sub['id']}.eml").read_bytes()
    assert _parts(raw) == [
        ("multipart/mixed", None, None),
        ("multipart/related", None, None),
        ("multipart/alternative", None, None),
        ("text/plain", None, None),
        ("text/html", None, None),
        ("image/png", "inline", "<logo@example>"),
        ("application/pdf", "attachment", None),
    ], raw[:2000]
    assert f"Plain {marker}".encode() in raw and f"Rich {marker}".encode() in raw


def test_rfc8621_body_structure_request_sent_literally(server):
    """The §4.6 create shape with bodyStructure (multipart/alternative of two bodyValues) as an
    RFC 8621 client would send it; the Email reads back with both bodies."""
    responses = call(server, [["Email/set", {"accountId": "alice", "create": {"k1": {
        "mailboxIds": {"drafts": True}, "keywords": {"$draft": True},
        "from": [{"email": "alice@example.com"}], "to": [{"email": "jane@example.net"}],
        "subject": "Hello",
        "bodyStructure": {"type": "multipart/alternative", "subParts": [
            {"partId": "1", "type": "text/plain"}, {"partId": "2", "type": "text/html"}]},
        "bodyValues": {"1": {"value": "Hi Jane", "isTruncated": False},
                       "2": {"value": "<p>Hi Jane</p>", "isTruncated": False}}}}}, "0"]])
    created = responses[0][1].get("created", {}).get("k1")
    assert created, responses
    [got] = call(server, [["Email/get", {"accountId": "alice", "ids": [created["id"]],
                                         "properties": ["textBody", "htmlBody", "bodyValues"], "fetchTextBodyValues": True,
                                         "fetchHTMLBodyValues": True}, "g"]])
    email = got[1]["list"][0]
    values = {v["value"].strip() for v in got[1]["list"][0].get("bodyValues", {}).values()}
    assert [p["type"] for p in email["textBody"]] == ["text/plain"], email
    assert [p["type"] for p in email["htmlBody"]] == ["text/html"], email
    assert values == {"Hi Jane", "<p>Hi Jane</p>"}, values
