"""The JMAP bridge end to end: the real binary over HTTPS, driven by the real `jmapc` client
library (which only speaks `https://HOST/.well-known/jmap`; it trusts the test CA through
REQUESTS_CA_BUNDLE) and, for request-level errors it cannot produce, by plain `requests`.

Sends through the `ses` transport reach moto_server; the others use the `dir` transport.
External state (moto, the spool) is polled against a deadline; push is awaited as an event.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from jmapc import (
    Client,
    Email,
    EmailAddress,
    EmailBodyPart,
    EmailBodyValue,
    EmailHeader,
    EmailSubmission,
    Envelope,
    Address,
    EmailQueryFilterCondition,
    MailboxQueryFilterCondition,
)
from jmapc.methods import (
    EmailGet,
    EmailQuery,
    EmailSet,
    EmailSubmissionGet,
    EmailSubmissionSet,
    IdentityGet,
    IdentitySet,
    MailboxQuery,
)

from conftest import PASSWORDS, SES_ALICE

DEADLINE = 30.0
CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
CLASS = "urn:outbox:params:jmap:message-class"
USING = [CORE, MAIL, SUBMISSION]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _trust_nothing_by_default(monkeypatch):
    # Each test points REQUESTS_CA_BUNDLE at its own server's CA.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)


def host(server) -> str:
    return f"localhost:{server.https[0][1]}"


def base(server) -> str:
    return f"https://{host(server)}"


def client(server, monkeypatch, login: str = "alice", password: str | None = None) -> Client:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca)
    return Client.create_with_password(host(server), login, password or PASSWORDS[login])


def raw(server, body, login="alice", password=None, path="/jmap/api", method="POST", **kw):
    """One HTTPS request with Basic auth (or none when login is None)."""
    auth = None if login is None else (login, password or PASSWORDS[login])
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    return requests.request(method, base(server) + path, data=data, auth=auth,
                            verify=server.ca, timeout=30, **kw)


def call(server, calls, login="alice", using=USING):
    r = raw(server, {"using": using, "methodCalls": calls}, login=login)
    assert r.status_code == 200, r.text
    return r.json()["methodResponses"]


def account_id(server, login="alice") -> str:
    r = raw(server, None, login=login, path="/.well-known/jmap", method="GET")
    assert r.status_code == 200, r.text
    return r.json()["primaryAccounts"][MAIL]


def poll(fetch, done, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout}s")
        time.sleep(0.1)


def cli(server, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(server.binary), *args, "--config", str(server.config_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


def queue_record(server, queue_id: str) -> dict:
    [record] = json.loads(cli(server, "queue", "show", queue_id, "--json").stdout)["records"]
    return record


def draft_and_identity(c: Client):
    """jmapc's documented first step: the Drafts mailbox and the identity to send as."""
    results = c.request([MailboxQuery(filter=MailboxQueryFilterCondition(name="Drafts")), IdentityGet()])
    drafts = results[0].response.ids[0]
    identity = results[1].response.data[0]
    return drafts, identity


def draft(drafts: str, identity, to: list[str], subject: str, body: str, **extra) -> Email:
    return Email(
        mail_from=[EmailAddress(name=identity.name, email=identity.email)],
        to=[EmailAddress(email=t) for t in to],
        subject=subject,
        keywords={"$draft": True},
        mailbox_ids={drafts: True},
        body_values=dict(body=EmailBodyValue(value=body)),
        text_body=[EmailBodyPart(part_id="body", type="text/plain")],
        headers=[EmailHeader(name="X-Mailer", value="jmapc e2e")],
        **extra,
    )


def create_and_submit(c: Client, email: Email, identity_id: str, **submission) -> tuple[str, str]:
    """jmapc's send flow: Email/set create + EmailSubmission/set with emailId "#draft" in one
    request. Returns (email id, submission id)."""
    results = c.request([
        EmailSet(create=dict(draft=email)),
        EmailSubmissionSet(create=dict(send=EmailSubmission(
            email_id="#draft", identity_id=identity_id, **submission))),
    ])
    email_set, sub_set = results[0].response, results[1].response
    assert email_set.created and "draft" in email_set.created, email_set
    assert sub_set.created and "send" in sub_set.created, sub_set
    return email_set.created["draft"].id, sub_set.created["send"].id


def submission(c: Client, sub_id: str) -> EmailSubmission:
    [found] = c.request(EmailSubmissionGet(ids=[sub_id])).data
    return found


def email_state(c: Client, email_id: str):
    got = c.request(EmailGet(ids=[email_id], properties=["mailboxIds", "keywords"]))
    return got.data[0] if got.data else None


class Events:
    """The EventSource stream on a thread; state events land in a queue."""

    def __init__(self, server, login="alice"):
        self.events: queue.Queue = queue.Queue()
        self.resp = requests.get(
            base(server) + "/jmap/eventsource?types=*&closeafter=no&ping=1",
            auth=(login, PASSWORDS[login]), verify=server.ca, stream=True, timeout=30)
        assert self.resp.status_code == 200, self.resp.text
        assert self.resp.headers["content-type"].startswith("text/event-stream")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        kind = None
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    self.events.put((kind, json.loads(line.split(":", 1)[1])))
        except Exception:  # the test closed the stream
            pass

    def wait(self, pred, what: str, timeout: float = DEADLINE):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event {what} within {timeout}s")
            try:
                kind, data = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if pred(kind, data):
                return data

    def close(self):
        self.resp.close()


# --------------------------------------------------------------------------- session & auth


def test_session_is_complete_and_needs_auth(server, monkeypatch):
    r = raw(server, None, login=None, path="/.well-known/jmap", method="GET")
    assert r.status_code == 401
    assert "basic" in r.headers["www-authenticate"].lower()
    assert raw(server, None, password="wrong", path="/.well-known/jmap", method="GET").status_code == 401
    assert raw(server, {"using": [], "methodCalls": []}, login=None).status_code == 401
    assert raw(server, {"using": [], "methodCalls": []}, password="wrong").status_code == 401

    session = raw(server, None, path="/.well-known/jmap", method="GET").json()
    core = session["capabilities"][CORE]
    assert set(core) == {"maxSizeUpload", "maxConcurrentUpload", "maxSizeRequest",
                         "maxConcurrentRequests", "maxCallsInRequest", "maxObjectsInGet",
                         "maxObjectsInSet", "collationAlgorithms"}
    acct = session["primaryAccounts"][SUBMISSION]
    caps = session["accounts"][acct]["accountCapabilities"]
    assert caps[SUBMISSION]["maxDelayedSend"] > 0 and "submissionExtensions" in caps[SUBMISSION]
    assert caps[CLASS]["classes"] == ["transactional", "mailing_list", "bulk"]
    assert session["username"] == "alice"
    for key in ("apiUrl", "downloadUrl", "uploadUrl", "eventSourceUrl", "state"):
        assert session[key], key

    # The real client accepts it.
    c = client(server, monkeypatch)
    assert c.jmap_session.username == "alice"
    assert c.account_id == acct
    assert {CORE, MAIL, SUBMISSION} <= c.jmap_session.capabilities.urns


def test_failed_logins_cool_down_the_address(server):
    # The SMTP per-IP AUTH budget (auth_failures_per_ip = 10 in the test config) applies here too.
    statuses = [raw(server, None, password="wrong", path="/.well-known/jmap", method="GET").status_code
                for _ in range(12)]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    # While the address cools down even the right password is not checked.
    assert raw(server, None, path="/.well-known/jmap", method="GET").status_code == 429


def test_bearer_token_is_issued_used_and_revoked(server):
    r = raw(server, None, path="/jmap/token", method="POST")
    assert r.status_code == 201, r.text
    token = r.json()["accessToken"]
    headers = {"Authorization": f"Bearer {token}"}
    r = requests.get(base(server) + "/.well-known/jmap", headers=headers, verify=server.ca, timeout=10)
    assert r.status_code == 200 and r.json()["username"] == "alice"
    # A token cannot mint another token; a wrong token is refused.
    assert requests.post(base(server) + "/jmap/token", headers=headers, verify=server.ca,
                         timeout=10).status_code == 401
    assert requests.get(base(server) + "/.well-known/jmap", verify=server.ca, timeout=10,
                        headers={"Authorization": "Bearer obx_nope"}).status_code == 401
    assert requests.delete(base(server) + "/jmap/token", headers=headers, verify=server.ca,
                           timeout=10).status_code == 204
    assert requests.get(base(server) + "/.well-known/jmap", headers=headers, verify=server.ca,
                        timeout=10).status_code == 401


# --------------------------------------------------------------------------- sending through SES


def test_jmapc_sends_through_ses_and_draft_moves_to_sent(moto, start_ses_server, monkeypatch):
    moto.sesv2.create_email_identity(EmailIdentity=SES_ALICE["email"])
    server = start_ses_server(moto.url)
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    assert identity.email == SES_ALICE["email"] and identity.may_delete is False

    # The signature a client sets through Identity/set is the one the sender injects.
    marker = uuid.uuid4().hex
    signature = f"-- \nSent via JMAP {marker}"
    done = c.request(IdentitySet(update={identity.id: {"textSignature": signature}}))
    assert identity.id in done.updated, done
    [updated] = c.request(IdentityGet(ids=[identity.id])).data
    assert updated.text_signature == signature

    events = Events(server)
    try:
        events.wait(lambda k, d: k == "state", "initial state")
        email_id, sub_id = create_and_submit(
            c, draft(drafts, identity, ["rcpt@example.net"], f"JMAP {marker}", "Hello from jmapc",
                     bcc=[EmailAddress(email="hidden@example.org")]),
            identity.id)
        assert len(sub_id) == 26

        sent = moto.wait_raw_message(marker, server=server)
        assert "Hello from jmapc" in sent["raw_data"]
        assert f"Sent via JMAP {marker}" in sent["raw_data"]  # the JMAP signature
        assert "X-Mailer: jmapc e2e" in sent["raw_data"]
        # Bcc: in the envelope, not in the message.
        assert "hidden@example.org" in sent["destinations"] and "hidden@example.org" not in sent["raw_data"]

        # Drafts -> Sent, $draft gone, and the change was pushed. SES replaced the Message-ID
        # (<MessageId@email.amazonses.com>): the Sent copy carries that one, so replies thread
        # with it; an Email never changes under its id (RFC 8621 §4.1), so it is a new Email
        # and the draft's id is gone (issue 14 item 12).
        poll(lambda: email_state(c, email_id), lambda e: e is None, "draft replaced")
        in_sent = c.request(EmailQuery(filter=EmailQueryFilterCondition(in_mailbox="sent"))).ids
        [moved] = c.request(EmailGet(ids=in_sent, properties=[
            "mailboxIds", "keywords", "messageId", "subject"])).data
        assert moved.mailbox_ids == {"sent": True} and moved.subject == f"JMAP {marker}"
        assert "$draft" not in (moved.keywords or {})
        assert moved.message_id == [f"{sent['id']}@email.amazonses.com"], moved.message_id
        acct = c.account_id
        events.wait(lambda k, d: k == "state" and "EmailSubmission" in d["changed"].get(acct, {}),
                    "EmailSubmission state change")
    finally:
        events.close()

    s = poll(lambda: submission(c, sub_id), lambda s: s.undo_status.value == "final", "final")
    assert set(s.delivery_status) == {"rcpt@example.net", "hidden@example.org"}
    status = s.delivery_status["rcpt@example.net"]
    assert status.delivered.value == "unknown" and status.displayed.value == "unknown"
    assert status.smtp_reply.startswith("250")
    assert s.email_id == email_id and s.identity_id == identity.id


def test_permanent_failure_leaves_the_draft_with_the_reason(moto, start_ses_server, monkeypatch):
    # No SES identity for alice in moto: SendEmail answers MessageRejected, a permanent error.
    server = start_ses_server(moto.url)
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    events = Events(server)
    try:
        email_id, sub_id = create_and_submit(
            c, draft(drafts, identity, ["rcpt@example.net"], "refused", "x"), identity.id)
        acct = c.account_id
        s = poll(lambda: submission(c, sub_id), lambda s: s.undo_status.value == "final", "final")
        status = s.delivery_status["rcpt@example.net"]
        assert status.delivered.value == "no", status
        assert "MessageRejected" in status.smtp_reply or "rejected" in status.smtp_reply.lower(), status
        events.wait(lambda k, d: k == "state" and "EmailSubmission" in d["changed"].get(acct, {}),
                    "EmailSubmission state change")
    finally:
        events.close()
    assert email_state(c, email_id).mailbox_ids == {drafts: True}
    assert "$draft" in email_state(c, email_id).keywords
    assert moto.raw_messages() == []


# --------------------------------------------------------------------------- undo, rules


def test_send_at_is_pending_and_cancel_removes_it_from_the_spool(server, monkeypatch):
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    email_id, sub_id = create_and_submit(
        c, draft(drafts, identity, ["later@example.net"], "later", "not yet"), identity.id,
        send_at=later)
    s = submission(c, sub_id)
    assert s.undo_status.value == "pending"
    assert s.delivery_status["later@example.net"].delivered.value == "queued"
    assert queue_record(server, sub_id)["state"] == "queued"

    done = c.request(EmailSubmissionSet(update={sub_id: {"undoStatus": "canceled"}}))
    assert sub_id in done.updated, done
    assert submission(c, sub_id).undo_status.value == "canceled"
    record = queue_record(server, sub_id)
    assert record["state"] == "failed" and "canceled" in record["last_error"]
    # The draft stays a draft.
    assert email_state(c, email_id).mailbox_ids == {drafts: True}

    # The query and its changes see the cancel.
    acct = c.account_id
    [q] = call(server, [["EmailSubmission/query", {"accountId": acct,
                                                   "filter": {"undoStatus": "canceled"}}, "q"]])
    assert q[1]["ids"] == [sub_id]
    [qc] = call(server, [["EmailSubmission/queryChanges", {"accountId": acct, "sinceQueryState": "s1",
                                                           "filter": {"undoStatus": "canceled"}}, "c"]])
    assert qc[1]["removed"] == [sub_id] and qc[1]["added"] == [{"id": sub_id, "index": 0}], qc
    [ch] = call(server, [["EmailSubmission/changes", {"accountId": acct, "sinceState": "s1"}, "c"]])
    assert ch[1]["updated"] == [sub_id] and ch[1]["created"] == [], ch

    # A message already sent cannot be unsent.
    _, sent_id = create_and_submit(c, draft(drafts, identity, ["now@example.net"], "now", "x"), identity.id)
    server.wait_delivered([sent_id])
    poll(lambda: submission(c, sent_id), lambda s: s.undo_status.value == "final", "final")
    done = c.request(EmailSubmissionSet(update={sent_id: {"undoStatus": "canceled"}}))
    assert done.not_updated[sent_id].type == "cannotUnsend"


def test_submission_rules_give_set_errors(server, monkeypatch):
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    cli(server, "suppression", "add", "gone@example.net", "--reason", "bounced")

    def try_send(email: Email, **sub):
        results = c.request([
            EmailSet(create=dict(draft=email)),
            EmailSubmissionSet(create=dict(send=EmailSubmission(
                email_id="#draft", identity_id=sub.pop("identity_id", identity.id), **sub))),
        ])
        return results[1].response.not_created["send"]

    err = try_send(draft(drafts, identity, ["gone@example.net"], "s", "x"))
    assert err.type == "forbiddenToSend" and "gone@example.net" in err.description
    # Per recipient (issue 16): with others to send to, the suppressed one is left out and its
    # deliveryStatus says why (RFC 8621 §7: delivered "no", the reply in smtpReply).
    _, sub_id = create_and_submit(c, draft(drafts, identity, ["ok@example.net", "gone@example.net"],
                                           "to the others", "x"), identity.id)
    server.wait_delivered([sub_id])
    status = submission(c, sub_id).delivery_status
    assert status["gone@example.net"].delivered.value == "no", status
    assert status["gone@example.net"].smtp_reply.startswith("550 5.7.1 not sent:"), status
    assert "suppression list" in status["gone@example.net"].smtp_reply, status
    assert status["ok@example.net"].delivered.value != "no", status
    bad_from = draft(drafts, identity, ["a@example.net"], "s", "x")
    bad_from.mail_from = [EmailAddress(email="mallory@example.com")]
    assert try_send(bad_from).type == "forbiddenFrom"
    assert try_send(draft(drafts, identity, ["a@example.net"], "s", "x"),
                    identity_id="bob").type == "forbiddenFrom"
    assert try_send(draft(drafts, identity, [], "s", "x")).type == "noRecipients"
    many = [f"r{i}@example.net" for i in range(51)]
    assert try_send(draft(drafts, identity, many, "s", "x")).type == "tooManyRecipients"
    # An envelope override may not use somebody else's address either.
    env = Envelope(mail_from=Address(email="bob@example.org"), rcpt_to=[Address(email="a@example.net")])
    assert try_send(draft(drafts, identity, ["a@example.net"], "s", "x"), envelope=env).type == "forbiddenFrom"
    # An Email that does not exist.
    results = c.request(EmailSubmissionSet(create=dict(send=EmailSubmission(
        email_id="Mnope", identity_id=identity.id))))
    assert results.not_created["send"].type == "invalidEmail"


def test_envelope_override_and_class(server, monkeypatch):
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    env = Envelope(mail_from=Address(email="alice@example.com"),
                   rcpt_to=[Address(email="only@example.net")])
    acct = c.account_id
    resp = call(server, [
        ["Email/set", {"accountId": acct, "create": {"d": {
            "mailboxIds": {drafts: True}, "from": [{"email": "alice@example.com"}],
            "to": [{"email": "header-only@example.net"}], "subject": "env",
            "bodyValues": {"b": {"value": "hi"}}, "textBody": [{"partId": "b", "type": "text/plain"}]}}}, "0"],
        ["EmailSubmission/set", {"accountId": acct, "create": {"s": {
            "emailId": "#d", "identityId": identity.id, "messageClass": "bulk",
            "envelope": {"mailFrom": {"email": "alice@example.com"},
                         "rcptTo": [{"email": "only@example.net"}]}}},
            "onSuccessUpdateEmail": {"#s": {"keywords/$seen": True}}}, "1"],
    ], using=USING + [CLASS])
    assert [r[0] for r in resp] == ["Email/set", "EmailSubmission/set", "Email/set"], resp
    sub_id = resp[1][1]["created"]["s"]["id"]
    email_id = resp[0][1]["created"]["d"]["id"]
    assert email_id in resp[2][1]["updated"]
    envelope, mime = server.delivery(sub_id)
    assert envelope["recipients"] == ["only@example.net"] and envelope["message_class"] == "bulk"
    assert b"header-only@example.net" in mime  # the header is kept, the envelope decides
    record = queue_record(server, sub_id)
    assert record["recipients"] == ["only@example.net"] and record["message_class"] == "bulk"
    got = call(server, [["EmailSubmission/get", {"accountId": acct, "ids": [sub_id]}, "g"]],
               using=USING + [CLASS])
    assert got[0][1]["list"][0]["messageClass"] == "bulk"


def test_jmapc_documented_flow_with_on_success_destroy(server, monkeypatch):
    """jmapc's README example verbatim in shape: envelope given, and the draft destroyed by
    onSuccessDestroyEmail once the submission is created (RFC 8621 §7.5 implicit Email/set)."""
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    results = c.request([
        EmailSet(create=dict(draft=draft(drafts, identity, ["dest@example.net"], "destroy me", "x"))),
        EmailSubmissionSet(
            on_success_destroy_email=["#emailToSend"],
            create=dict(emailToSend=EmailSubmission(
                email_id="#draft", identity_id=identity.id,
                envelope=Envelope(mail_from=Address(email=identity.email),
                                  rcpt_to=[Address(email="dest@example.net")])))),
    ])
    assert [type(r.response).__name__ for r in results] == [
        "EmailSetResponse", "EmailSubmissionSetResponse", "EmailSetResponse"], results
    email_id = results[0].response.created["draft"].id
    assert results[2].response.destroyed == [email_id]
    sub_id = results[1].response.created["emailToSend"].id
    envelope, mime = server.delivery(sub_id)
    assert envelope["recipients"] == ["dest@example.net"] and b"destroy me" in mime
    assert email_state(c, email_id) is None
    # The submission outlives its Email.
    assert poll(lambda: submission(c, sub_id), lambda s: s.undo_status.value == "final", "final")


# --------------------------------------------------------------------------- isolation


def test_other_accounts_objects_are_invisible(server, monkeypatch):
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    email_id, sub_id = create_and_submit(
        c, draft(drafts, identity, ["x@example.net"], "private", "secret"), identity.id)
    alice = account_id(server)
    bob = account_id(server, "bob")
    assert alice != bob

    # Bob naming Alice's account: accountNotFound, for every method.
    for method in ("Email/get", "Mailbox/get", "EmailSubmission/get", "Identity/get"):
        [resp] = call(server, [[method, {"accountId": alice, "ids": None}, "0"]], login="bob")
        assert resp[0] == "error" and resp[1]["type"] == "accountNotFound", resp
    # Bob in his own account: Alice's ids do not exist.
    [resp] = call(server, [["Email/get", {"accountId": bob, "ids": [email_id]}, "0"]], login="bob")
    assert resp[1]["notFound"] == [email_id] and resp[1]["list"] == []
    [resp] = call(server, [["EmailSubmission/get", {"accountId": bob, "ids": [sub_id]}, "0"]], login="bob")
    assert resp[1]["notFound"] == [sub_id]
    [resp] = call(server, [["EmailSubmission/set", {"accountId": bob,
                                                    "update": {sub_id: {"undoStatus": "canceled"}}}, "0"]],
                  login="bob")
    assert resp[1]["notUpdated"][sub_id]["type"] == "notFound"
    [resp] = call(server, [["Email/set", {"accountId": bob, "destroy": [email_id]}, "0"]], login="bob")
    assert resp[1]["notDestroyed"][email_id]["type"] == "notFound"
    # Blobs: neither through Alice's account path nor his own.
    [got] = call(server, [["Email/get", {"accountId": alice, "ids": [email_id], "properties": ["blobId"]}, "0"]])
    blob = got[1]["list"][0]["blobId"]
    assert raw(server, None, login="bob", method="GET", path=f"/jmap/download/{alice}/{blob}/x").status_code == 404
    assert raw(server, None, login="bob", method="GET", path=f"/jmap/download/{bob}/{blob}/x").status_code == 404
    assert raw(server, b"x", login="bob", path=f"/jmap/upload/{alice}/").status_code == 404
    assert raw(server, None, method="GET", path=f"/jmap/download/{alice}/{blob}/x").status_code == 200


# --------------------------------------------------------------------------- bad requests


def test_bad_requests_get_rfc_errors(server):
    def problem(body, status=400):
        r = raw(server, body)
        assert r.status_code == status, (body if len(str(body)) < 200 else "...", r.status_code, r.text)
        return r.json()

    assert problem("{not json")["type"] == "urn:ietf:params:jmap:error:notJSON"
    assert problem("[" * 100000)["type"] == "urn:ietf:params:jmap:error:notJSON"
    assert problem({"using": USING})["type"] == "urn:ietf:params:jmap:error:notRequest"
    assert problem({"using": ["urn:x"], "methodCalls": []})["type"] == \
        "urn:ietf:params:jmap:error:unknownCapability"
    many = [["Core/echo", {}, str(i)] for i in range(17)]
    p = problem({"using": USING, "methodCalls": many})
    assert p["type"] == "urn:ietf:params:jmap:error:limit" and p["limit"] == "maxCallsInRequest"
    p = problem(b'{"using": [], "methodCalls": [], "x": "' + b"a" * 11_000_000 + b'"}', status=413)
    assert p["limit"] == "maxSizeRequest"

    acct = account_id(server)
    responses = call(server, [
        ["Nope/get", {"accountId": acct}, "a"],
        ["Email/get", {"accountId": acct, "ids": "M1"}, "b"],
        ["Email/get", {"accountId": acct, "ids": [f"M{i}" for i in range(501)]}, "c"],
        ["Email/get", {"accountId": acct, "#ids": {"resultOf": "zz", "name": "Email/query", "path": "/ids"}}, "d"],
        ["Email/get", {"accountId": acct, "bogus": 1}, "e"],
        ["Email/changes", {"accountId": acct, "sinceState": "s999"}, "f"],
        ["Core/echo", {"hello": [1, 2]}, "g"],
    ])
    kinds = {r[2]: (r[0], r[1].get("type")) for r in responses}
    assert kinds["a"] == ("error", "unknownMethod")
    assert kinds["b"] == ("error", "invalidArguments")
    assert kinds["c"] == ("error", "requestTooLarge")
    assert kinds["d"] == ("error", "invalidResultReference")
    assert kinds["e"] == ("error", "invalidArguments")
    assert kinds["f"] == ("error", "cannotCalculateChanges")
    [big] = call(server, [["Email/set", {"accountId": acct, "destroy": [f"M{i}" for i in range(501)]}, "0"]])
    assert big[0] == "error" and big[1]["type"] == "requestTooLarge"
    [both] = call(server, [["Email/get", {"accountId": acct, "ids": [], "#ids": {
        "resultOf": "x", "name": "Email/query", "path": "/ids"}}, "0"]])
    assert both[1]["type"] == "invalidArguments"
    assert responses[-1] == ["Core/echo", {"hello": [1, 2]}, "g"]
    # A method whose capability is not in "using".
    [resp] = call(server, [["Email/get", {"accountId": acct}, "0"]], using=[CORE])
    assert resp[1]["type"] == "unknownMethod"
    assert server.alive()


def test_result_references_and_changes(server):
    acct = account_id(server)
    responses = call(server, [
        ["Mailbox/query", {"accountId": acct, "filter": {"role": "drafts"}}, "q"],
        ["Email/set", {"accountId": acct, "create": {"a": {
            "mailboxIds": {"drafts": True}, "subject": "one",
            "from": [{"email": "alice@example.com"}]}}}, "s"],
        ["Mailbox/get", {"accountId": acct, "#ids": {"resultOf": "q", "name": "Mailbox/query", "path": "/ids"}}, "g"],
        ["Email/query", {"accountId": acct, "filter": {"inMailbox": "drafts"}}, "eq"],
        ["Email/get", {"accountId": acct, "#ids": {"resultOf": "eq", "name": "Email/query", "path": "/ids"},
                       "properties": ["subject", "mailboxIds"]}, "eg"],
    ])
    by_id = {r[2]: r for r in responses}
    assert by_id["g"][1]["list"][0]["role"] == "drafts"
    assert by_id["g"][1]["list"][0]["totalEmails"] == 1
    assert [e["subject"] for e in by_id["eg"][1]["list"]] == ["one"]
    old = by_id["s"][1]["oldState"]
    new = by_id["s"][1]["newState"]
    [changes] = call(server, [["Email/changes", {"accountId": acct, "sinceState": old}, "c"]])
    assert changes[1]["newState"] == new and len(changes[1]["created"]) == 1


# --------------------------------------------------------------------------- upload + import


def test_upload_import_download_and_send(server, monkeypatch, tmp_path):
    c = client(server, monkeypatch)
    marker = uuid.uuid4().hex
    eml = tmp_path / "message.eml"
    eml.write_bytes(
        f"From: Alice <alice@example.com>\r\nTo: imported@example.net\r\nSubject: imported {marker}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nImported body\r\n".encode())
    blob = c.upload_blob(eml)
    assert blob.size == eml.stat().st_size

    acct = c.account_id
    # jmapc has no Email/import helper: send it as a raw call (accountId added by hand).
    [imp] = call(server, [["Email/import", {"accountId": acct, "emails": {
        "i": {"blobId": blob.id, "mailboxIds": {"drafts": True}, "keywords": {"$draft": True}}}}, "0"]])
    assert imp[0] == "Email/import", imp
    email_id = imp[1]["created"]["i"]["id"]
    got = c.request(EmailGet(ids=[email_id], fetch_text_body_values=True))
    [email] = got.data
    assert email.subject == f"imported {marker}"
    assert "Imported body" in list(email.body_values.values())[0].value

    # Download the uploaded blob back, byte for byte.
    r = raw(server, None, method="GET", path=f"/jmap/download/{acct}/{blob.id}/m.eml?accept=message/rfc822")
    assert r.status_code == 200 and r.content == eml.read_bytes()
    assert r.headers["content-type"] == "message/rfc822"
    # A hostile accept type or file name is neutralised, never a 500.
    r = raw(server, None, method="GET", path=f"/jmap/download/{acct}/{blob.id}/a%00b%0D%0A.eml?accept=text/x%00y")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"

    # An import of a blob that does not exist, and of one that is not a message.
    [bad] = call(server, [["Email/import", {"accountId": acct, "emails": {
        "x": {"blobId": "Bnope", "mailboxIds": {"drafts": True}}}}, "0"]])
    assert bad[1]["notCreated"]["x"]["type"] == "blobNotFound"

    _, identity = draft_and_identity(c)
    results = c.request(EmailSubmissionSet(create=dict(s=EmailSubmission(
        email_id=email_id, identity_id=identity.id))))
    sub_id = results.created["s"].id
    _, mime = server.delivery(sub_id)
    assert f"imported {marker}".encode() in mime
    poll(lambda: email_state(c, email_id), lambda e: e.mailbox_ids == {"sent": True}, "Email in Sent")


def test_upload_limit(start_server):
    server = start_server({"smtp.max_message_size": 1000})
    acct = account_id(server)
    r = raw(server, b"x" * 2000, path=f"/jmap/upload/{acct}/")
    assert r.status_code == 413 and r.json()["limit"] == "maxSizeUpload"
    r = raw(server, b"x" * 10, path=f"/jmap/upload/{acct}/")
    assert r.status_code == 201


# --------------------------------------------------------------------------- feedback


def test_delivery_status_follows_ses_feedback_with_push(server, monkeypatch):
    """queued -> sent -> delivered / bounced, seen through JMAP: the offline SES mailbox
    simulator (dir transport) publishes SES events that take the real feedback path; each
    change of deliveryStatus is pushed as an EmailSubmission state change."""
    sim = "simulator.amazonses.com"
    c = client(server, monkeypatch)
    drafts, identity = draft_and_identity(c)
    acct = c.account_id
    events = Events(server)
    try:
        events.wait(lambda k, d: k == "state", "initial state")
        _, sub_id = create_and_submit(
            c, draft(drafts, identity, [f"success@{sim}", f"bounce@{sim}"], "feedback", "x"),
            identity.id)
        done = lambda s: (s.delivery_status[f"success@{sim}"].delivered.value == "yes"
                          and s.delivery_status[f"bounce@{sim}"].delivered.value == "no")
        s = poll(lambda: submission(c, sub_id), done, "delivered yes / bounced no")
        # At least two pushes: sent (final, unknown), then the feedback (yes / no).
        for n in range(2):
            events.wait(lambda k, d: k == "state" and "EmailSubmission" in d["changed"].get(acct, {}),
                        f"EmailSubmission state change #{n + 1}")
    finally:
        events.close()
    assert s.undo_status.value == "final"
    bounce = s.delivery_status[f"bounce@{sim}"]
    assert bounce.smtp_reply.startswith("5"), bounce
    assert s.delivery_status[f"success@{sim}"].smtp_reply.startswith("250")
    # The bounce put the address on the suppression list: a new submission is refused, naming it.
    results = c.request([
        EmailSet(create=dict(d=draft(drafts, identity, [f"bounce@{sim}"], "again", "x"))),
        EmailSubmissionSet(create=dict(s=EmailSubmission(email_id="#d", identity_id=identity.id))),
    ])
    err = results[1].response.not_created["s"]
    assert err.type == "forbiddenToSend" and f"bounce@{sim}" in err.description


METHODS = [
    "Core/echo", "Mailbox/get", "Mailbox/query", "Mailbox/changes", "Email/get", "Email/query",
    "Email/changes", "Email/set", "Email/import", "Thread/get", "Thread/changes", "Identity/get",
    "Identity/set", "Identity/changes", "EmailSubmission/get", "EmailSubmission/set",
    "EmailSubmission/query", "EmailSubmission/queryChanges", "EmailSubmission/changes",
]
GARBAGE = [None, 0, -1, 1.5, "", "x", [], [None], [1, "a"], {}, {"a": None}, {"a": [1]}, True,
           "#x", {"operator": "XOR", "conditions": 3}, [{"property": 5}]]
ARGUMENT_NAMES = ["ids", "properties", "create", "update", "destroy", "filter", "sort", "position",
                  "anchor", "limit", "sinceState", "sinceQueryState", "maxChanges", "emails",
                  "ifInState", "onSuccessUpdateEmail", "onSuccessDestroyEmail", "maxBodyValueBytes",
                  "fetchAllBodyValues", "calculateTotal", "anchorOffset"]


def test_methods_survive_garbage_arguments(server):
    """Every method, every argument name, values of every wrong type: a JSON answer each time
    (a result or a method error), never an HTTP error or a dead server."""
    acct = account_id(server)
    for method in METHODS:
        for name in ARGUMENT_NAMES:
            calls = [[method, {"accountId": acct, name: value}, str(i)] for i, value in enumerate(GARBAGE)]
            for chunk in range(0, len(calls), 16):
                r = raw(server, {"using": USING, "methodCalls": calls[chunk:chunk + 16]})
                assert r.status_code == 200, (method, name, r.status_code, r.text[:300])
                for resp in r.json()["methodResponses"]:
                    if resp[0] == "error":
                        assert resp[1]["type"] != "serverFail", (method, name, resp)
    assert server.alive()


def test_set_objects_survive_garbage_properties(server):
    acct = account_id(server)
    email_props = ["mailboxIds", "keywords", "from", "to", "cc", "bcc", "replyTo", "sender", "subject",
                   "sentAt", "messageId", "inReplyTo", "references", "textBody", "htmlBody",
                   "attachments", "bodyValues", "header:X-A", "header:X-A:asText", "header:X-A:asBogus",
                   "receivedAt", "bodyStructure", "id"]
    submission_props = ["emailId", "identityId", "envelope", "sendAt", "messageClass", "undoStatus"]
    for method, props, base_obj in (
        ("Email/set", email_props, {"mailboxIds": {"drafts": True}}),
        ("EmailSubmission/set", submission_props, {"emailId": "Mx", "identityId": "alice"}),
        ("Email/import", ["blobId", "mailboxIds", "keywords", "receivedAt"], {"blobId": "Bx"}),
    ):
        for prop in props:
            objects = {f"c{i}": {**base_obj, prop: value} for i, value in enumerate(GARBAGE)}
            key = "emails" if method == "Email/import" else "create"
            r = raw(server, {"using": USING, "methodCalls": [[method, {"accountId": acct, key: objects}, "0"]]})
            assert r.status_code == 200, (method, prop, r.status_code, r.text[:300])
            [resp] = r.json()["methodResponses"]
            assert resp[0] != "error", (method, prop, resp)
            for cid, err in resp[1].get("notCreated", {}).items():
                assert err["type"] != "serverFail", (method, prop, cid, err)
    assert server.alive()
