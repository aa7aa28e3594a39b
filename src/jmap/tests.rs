//! The bridge in process: a real spool, submitter and store, API requests through
//! [`api::handle`], the sender's part played by hand (lease, complete) and feedback applied
//! to the spool as the SES path does — so Drafts → Sent and deliveryStatus from feedback are
//! checked without a network.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{api, push, Jmap, Parts, Store};
use crate::accounts::{test_account, Directory, PasswordChecker};
use crate::clock::{Clock, SystemClock};
use crate::config::{SpoolConfig, TransportConfig};
use crate::domain::{FeedbackEvent, JmapLink, MessageClass, Outcome, QueueId};
use crate::live::Live;
use crate::spool::{Lease, Settlement, SpoolOptions};
use crate::submission::Submitter;

struct Fixture {
    jmap: Arc<Jmap>,
    account: Arc<crate::accounts::Account>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    fixture_for("kind = \"dir\"\npath = \"mail\"")
}

/// `transport`: the `[sender.transport]` table, whose rules the submitter applies.
fn fixture_for(transport: &str) -> Fixture {
    let transport: TransportConfig = toml::from_str(transport).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let directory = Live::new(
        Directory::from_config(&[test_account("alice", "pw", "alice", "alice@example.com")])
            .unwrap(),
    );
    let spool = crate::spool::redb::open(
        &dir.path().join("spool"),
        SpoolOptions::from(&SpoolConfig::default()),
        clock.clone(),
    )
    .unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let jmap = Jmap::new(Parts {
        store: Arc::new(Store::open(&dir.path().join("jmap.redb")).unwrap()),
        spool: spool.clone(),
        directory: directory.clone(),
        passwords: Arc::new(PasswordChecker::new(directory.clone(), 1)),
        auth_throttle: Arc::new(crate::smtp::guard::AuthThrottle::new(
            10,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(60),
        )),
        submitter: Arc::new(
            Submitter::new(spool, "mx.test".into(), clock.clone()).for_transport(&transport),
        ),
        clock,
        max_message_size: 1 << 20,
        max_recipients: 50,
        max_hold_secs: 3600,
        max_request_size: 10_000_000,
        max_response_size: 4_000_000,
        max_upload_size: 0,
        hostname: "mx.test".into(),
        stop,
    });
    let account = directory.get().get("alice").unwrap();
    Fixture {
        jmap,
        account,
        _dir: dir,
    }
}

/// The sender's part: take the next due message.
async fn lease(f: &Fixture) -> Lease {
    let mut leases = f
        .jmap
        .spool
        .queue
        .lease(1, std::time::Duration::ZERO)
        .await
        .unwrap();
    leases.pop().expect("a due message")
}

/// The sender's part: the transport accepted it.
async fn sent(f: &Fixture, lease: &Lease, provider_id: &str) {
    sent_as(f, lease, provider_id, None).await
}

/// The same, from a transport that replaced the Message-ID with `message_id` (SES).
async fn sent_as(f: &Fixture, lease: &Lease, provider_id: &str, message_id: Option<String>) {
    let sent = Settlement::Sent {
        provider_id: provider_id.into(),
        message_id,
    };
    f.jmap.spool.queue.settle(lease, sent).await.unwrap();
}

/// Creates `draft` (an Email/set create object) and submits it in the same request as alice
/// with `submission`'s extra properties; returns (Email id, EmailSubmission id).
async fn submit_draft(f: &Fixture, draft: Value, submission: Value) -> (String, String) {
    let acct = f.account.account_id.clone();
    let mut create = json!({"emailId": "#d", "identityId": "alice"});
    for (k, v) in submission.as_object().into_iter().flatten() {
        create[k] = v.clone();
    }
    let responses = request(
        f,
        json!([
            ["Email/set", {"accountId": acct, "create": {"d": draft}}, "0"],
            ["EmailSubmission/set", {"accountId": acct, "create": {"s": create}}, "1"],
        ]),
    )
    .await;
    let id = |n: usize, key: &str| {
        responses[n][1]["created"][key]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("not created: {}", responses[n]))
            .to_string()
    };
    (id(0, "d"), id(1, "s"))
}

async fn request(f: &Fixture, calls: Value) -> Vec<Value> {
    let body = json!({
        "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail",
                  "urn:ietf:params:jmap:submission"],
        "methodCalls": calls,
    });
    let out = api::handle(&f.jmap, &f.account, None, body.to_string().as_bytes())
        .await
        .unwrap_or_else(|_| panic!("request refused"));
    out["methodResponses"].as_array().unwrap().clone()
}

/// Issue 14 item 12: SES replaces the Message-ID ("If you provide a Message-ID header, Amazon
/// SES overrides the header with its own value", SES Developer Guide, header fields). The Sent
/// copy carries the one recipients see, so their replies thread with it; Emails are immutable
/// (RFC 8621 §4.1), so it is a new Email in Sent and the draft's id is destroyed.
#[tokio::test]
async fn the_sent_copy_carries_the_message_id_ses_gave_it() {
    let f = fixture();
    let acct = f.account.account_id.clone();
    let (draft, sub_id) = submit_draft(
        &f,
        json!({
            "mailboxIds": {"drafts": true}, "keywords": {"$draft": true, "$seen": true},
            "from": [{"email": "alice@example.com"}], "to": [{"email": "ok@example.net"}],
            "messageId": ["client-chosen@example.com"],
            "subject": "thread me", "bodyValues": {"b": {"value": "body"}},
            "textBody": [{"partId": "b", "type": "text/plain"}]}),
        json!({}),
    )
    .await;
    let before = request(
        &f,
        json!([["Email/get", {"accountId": acct, "ids": [], "properties": ["id"]}, "0"]]),
    )
    .await;
    let state = before[0][1]["state"].as_str().unwrap().to_string();
    let lease = lease(&f).await;
    let ses = "0100019a1b2c3d4e-5f6a7b8c-0000-0000-0000-000000000000-000000";
    let visible = format!("<{ses}@email.amazonses.com>");
    sent_as(&f, &lease, ses, Some(visible)).await;
    push::settle(&f.jmap, lease.job.id).await;

    let got = request(
        &f,
        json!([
            ["Email/changes", {"accountId": acct, "sinceState": state}, "c"],
            ["Email/query", {"accountId": acct, "filter": {"inMailbox": "sent"}}, "q"],
            ["Email/get", {"accountId": acct, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                "properties": ["messageId", "subject", "mailboxIds", "keywords"]}, "g"],
            ["Email/get", {"accountId": acct, "ids": [draft], "properties": ["id"]}, "d"],
            ["EmailSubmission/get", {"accountId": acct, "ids": [sub_id]}, "s"],
        ]),
    )
    .await;
    let sent = &got[2][1]["list"][0];
    let copy = sent["id"].as_str().unwrap();
    assert_ne!(copy, draft, "an Email's content never changes under its id");
    assert_eq!(
        sent["messageId"],
        json!([format!("{ses}@email.amazonses.com")])
    );
    assert_eq!(sent["subject"], "thread me");
    assert_eq!(sent["mailboxIds"], json!({"sent": true}));
    assert_eq!(sent["keywords"], json!({"$seen": true}));
    assert_eq!(got[3][1]["notFound"], json!([draft]));
    assert_eq!(got[0][1]["destroyed"], json!([draft]));
    assert!(got[0][1]["created"]
        .as_array()
        .unwrap()
        .contains(&json!(copy)));
    assert_eq!(got[4][1]["list"][0]["emailId"], json!(draft));
    let record = f
        .jmap
        .spool
        .ledger
        .get(lease.job.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.message_id.as_deref(),
        Some(format!("<{ses}@email.amazonses.com>").as_str())
    );
}

#[tokio::test]
async fn sent_moves_the_draft_and_feedback_updates_delivery_status() {
    let f = fixture();
    let acct = f.account.account_id.clone();
    let (email_id, sub_id) = submit_draft(
        &f,
        json!({
            "mailboxIds": {"drafts": true}, "keywords": {"$draft": true},
            "from": [{"email": "alice@example.com"}],
            "to": [{"email": "ok@example.net"}, {"email": "gone@example.net"}],
            "subject": "hi", "bodyValues": {"b": {"value": "body"}},
            "textBody": [{"partId": "b", "type": "text/plain"}]}),
        json!({}),
    )
    .await;
    let queue_id: QueueId = sub_id.parse().unwrap();
    let mut pushes = f.jmap.store.subscribe();

    // The sender's part: lease and report the transport's acceptance.
    let lease = lease(&f).await;
    assert_eq!(lease.job.id, queue_id);
    sent(&f, &lease, "ses-42").await;
    push::settle(&f.jmap, queue_id).await;
    let pushed = pushes.try_recv().unwrap();
    assert!(pushed.changed.contains_key("EmailSubmission") && pushed.changed.contains_key("Email"));

    let got = request(
        &f,
        json!([
            ["Email/get", {"accountId": acct, "ids": [email_id], "properties": ["mailboxIds", "keywords"]}, "e"],
            ["EmailSubmission/get", {"accountId": acct, "ids": [sub_id]}, "s"],
        ]),
    )
    .await;
    assert_eq!(got[0][1]["list"][0]["mailboxIds"], json!({"sent": true}));
    assert_eq!(got[0][1]["list"][0]["keywords"], json!({}));
    let sub = &got[1][1]["list"][0];
    assert_eq!(sub["undoStatus"], "final");
    assert_eq!(
        sub["deliveryStatus"]["ok@example.net"]["delivered"],
        "unknown"
    );

    // Feedback, as the SES path applies it: one delivery, one bounce.
    let event = |rcpt: &str, outcome, detail: &str| FeedbackEvent {
        provider_id: Some("ses-42".into()),
        submission_id: None,
        outcome,
        recipients: vec![rcpt.into()],
        detail: Some(detail.into()),
        at_ms: 1,
        tag_account: None,
        tag_class: None,
        suppress: None,
    };
    f.jmap
        .spool
        .ledger
        .apply_feedback(
            Some("sns-1".into()),
            vec![
                event("ok@example.net", Outcome::Delivered, "250 2.0.0 OK"),
                event(
                    "gone@example.net",
                    Outcome::Bounced,
                    "550 5.1.1 user unknown",
                ),
            ],
        )
        .await
        .unwrap();
    push::settle(&f.jmap, queue_id).await;
    let pushed = pushes.try_recv().unwrap();
    assert!(pushed.changed.contains_key("EmailSubmission"));
    assert!(
        !pushed.changed.contains_key("Email"),
        "the Email did not change again"
    );
    // Settling again without a change publishes nothing.
    push::settle(&f.jmap, queue_id).await;
    assert!(pushes.try_recv().is_err());

    let got = request(
        &f,
        json!([["EmailSubmission/get", {"accountId": acct, "ids": [sub_id]}, "s"]]),
    )
    .await;
    let status = &got[0][1]["list"][0]["deliveryStatus"];
    assert_eq!(status["ok@example.net"]["delivered"], "yes");
    assert_eq!(status["gone@example.net"]["delivered"], "no");
    assert!(status["gone@example.net"]["smtpReply"]
        .as_str()
        .unwrap()
        .contains("user unknown"));
}

#[tokio::test]
async fn wrong_account_and_missing_objects() {
    let f = fixture();
    let responses = request(
        &f,
        json!([
            ["Email/get", {"accountId": "someone-else", "ids": ["M1"]}, "0"],
            ["Email/get", {"accountId": f.account.account_id, "ids": ["M1"]}, "1"],
            ["Identity/get", {"accountId": f.account.account_id}, "2"],
        ]),
    )
    .await;
    assert_eq!(responses[0][1]["type"], "accountNotFound");
    assert_eq!(responses[1][1]["notFound"], json!(["M1"]));
    let identity = &responses[2][1]["list"][0];
    for key in [
        "id",
        "name",
        "email",
        "replyTo",
        "bcc",
        "textSignature",
        "htmlSignature",
        "mayDelete",
    ] {
        assert!(identity.get(key).is_some(), "Identity lacks {key}");
    }
}

#[tokio::test]
async fn old_uploads_expire_and_imports_keep_their_copy() {
    let f = fixture();
    let acct = f.account.account_id.clone();
    let mime = b"From: alice@example.com\r\nTo: b@example.net\r\nSubject: up\r\n\r\nbody\r\n";
    let now = f.jmap.now_ms();
    f.jmap
        .store
        .write(|tx| {
            tx.put_blob(&acct, "Bold", mime)?;
            tx.put("", super::store::T_UPLOAD, &format!("{acct}/Bold"), &0u64)?;
            tx.put_blob(&acct, "Bnew", mime)?;
            tx.put("", super::store::T_UPLOAD, &format!("{acct}/Bnew"), &now)?;
            Ok(())
        })
        .unwrap();
    let imported = request(
        &f,
        json!([["Email/import", {"accountId": acct, "emails": {
            "i": {"blobId": "Bold", "mailboxIds": {"drafts": true}}}}, "0"]]),
    )
    .await;
    let email_id = imported[0][1]["created"]["i"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    assert_eq!(push::expire_uploads_now(&f.jmap).unwrap(), 1);
    let rx = f.jmap.store.read().unwrap();
    assert!(rx.blob(&acct, "Bold").unwrap().is_none());
    assert!(rx.blob(&acct, "Bnew").unwrap().is_some());
    let got = request(
        &f,
        json!([["Email/get", {"accountId": acct, "ids": [email_id], "properties": ["subject"]}, "0"]]),
    )
    .await;
    assert_eq!(got[0][1]["list"][0]["subject"], "up");
}

async fn draft_and_submit(f: &Fixture, send_at: Option<&str>) -> (String, QueueId) {
    let submission = match send_at {
        Some(t) => json!({"sendAt": t}),
        None => json!({}),
    };
    let draft = json!({"mailboxIds": {"drafts": true}, "from": [{"email": "alice@example.com"}],
        "to": [{"email": "x@example.net"}], "subject": "s"});
    let (email, sub) = submit_draft(f, draft, submission).await;
    (email, sub.parse().unwrap())
}

async fn cancel(f: &Fixture, id: QueueId) -> Value {
    let r = request(
        f,
        json!([["EmailSubmission/set", {"accountId": f.account.account_id,
            "update": {id.to_string(): {"undoStatus": "canceled"}}}, "0"]]),
    )
    .await;
    r[0][1].clone()
}

async fn undo_status(f: &Fixture, id: QueueId) -> Value {
    let r = request(
        f,
        json!([["EmailSubmission/get", {"accountId": f.account.account_id,
            "ids": [id.to_string()], "properties": ["undoStatus"]}, "0"]]),
    )
    .await;
    r[0][1]["list"][0]["undoStatus"].clone()
}

#[tokio::test]
async fn cancel_takes_a_queued_message_out_and_a_racing_send_wins() {
    let f = fixture();
    // Delayed: canceled, the spool record fails with the client's reason, the MIME is gone.
    // Further ahead than maxDelayedSend: refused.
    let far = request(
        &f,
        json!([
            ["Email/set", {"accountId": f.account.account_id, "create": {"d": {
                "mailboxIds": {"drafts": true}, "from": [{"email": "alice@example.com"}],
                "to": [{"email": "x@example.net"}]}}}, "0"],
            ["EmailSubmission/set", {"accountId": f.account.account_id, "create": {"s": {
                "emailId": "#d", "identityId": "alice", "sendAt": "2999-01-01T00:00:00Z"}}}, "1"],
        ]),
    )
    .await;
    assert_eq!(far[1][1]["notCreated"]["s"]["type"], "invalidProperties");
    let (_, later) =
        draft_and_submit(&f, Some(&crate::clock::rfc3339(f.jmap.now_ms() + 600_000))).await;
    assert!(cancel(&f, later).await["updated"]
        .get(later.to_string())
        .is_some());
    assert_eq!(undo_status(&f, later).await, "canceled");
    let record = f.jmap.spool.ledger.get(later).await.unwrap().unwrap();
    assert_eq!(record.state, crate::domain::State::Failed);
    assert!(record.canceled);
    assert!(record.last_error.unwrap().contains("canceled"));
    assert!(f.jmap.spool.blobs.get(later).await.is_err());

    // Being sent while the client cancels: the send completes and wins.
    let (email, now) = draft_and_submit(&f, None).await;
    let lease = lease(&f).await;
    assert_eq!(lease.job.id, now);
    let canceled = cancel(&f, now).await;
    assert!(
        canceled["updated"].get(now.to_string()).is_some(),
        "{canceled}"
    );
    sent(&f, &lease, "ses-1").await;
    push::settle(&f.jmap, now).await;
    assert_eq!(undo_status(&f, now).await, "final");
    let got = request(
        &f,
        json!([["Email/get", {"accountId": f.account.account_id, "ids": [email],
            "properties": ["mailboxIds"]}, "0"]]),
    )
    .await;
    assert_eq!(got[0][1]["list"][0]["mailboxIds"], json!({"sent": true}));
    // Now it is gone for good.
    assert_eq!(
        cancel(&f, now).await["notUpdated"][now.to_string()]["type"],
        "cannotUnsend"
    );
}

#[tokio::test]
async fn header_properties_on_get() {
    let f = fixture();
    let acct = f.account.account_id.clone();
    let created = request(
        &f,
        json!([["Email/set", {"accountId": acct, "create": {"d": {
            "mailboxIds": {"drafts": true}, "from": [{"email": "alice@example.com"}],
            "subject": "Hello there", "header:X-Tag:asText": "one",
            "bodyValues": {"b": {"value": "body"}}, "textBody": [{"partId": "b"}]}}}, "0"]]),
    )
    .await;
    let id = created[0][1]["created"]["d"]["id"].clone();
    let got = request(
        &f,
        json!([
            ["Email/get", {"accountId": acct, "ids": [id],
                "properties": ["header:Subject:asText", "header:X-Tag:all", "header:X-None", "headers"]}, "0"],
            ["Mailbox/get", {"accountId": acct, "properties": ["header:Subject"]}, "1"],
        ]),
    )
    .await;
    let email = &got[0][1]["list"][0];
    assert_eq!(email["header:Subject:asText"], "Hello there");
    assert_eq!(email["header:X-Tag:all"], json!([" one"]));
    assert_eq!(email["header:X-None"], Value::Null);
    let subject = email["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "Subject")
        .unwrap();
    assert_eq!(subject["value"], " Hello there");
    assert_eq!(got[1][1]["type"], "invalidArguments");
}

/// The EmailSubmission is the ledger record: even if nothing but the submission's one write
/// happened (the JMAP store's write after it failed, or the process died in between), the
/// client finds it by id at once, and the ledger watcher gives it its state, its place in
/// /query and /changes, and Drafts → Sent.
#[tokio::test]
async fn a_submission_exists_by_its_one_write_and_the_watcher_catches_up() {
    let f = fixture();
    let acct = f.account.account_id.clone();
    let created = request(
        &f,
        json!([["Email/set", {"accountId": acct, "create": {"d": {
            "mailboxIds": {"drafts": true}, "from": [{"email": "alice@example.com"}],
            "to": [{"email": "x@example.net"}], "subject": "s"}}}, "0"]]),
    )
    .await;
    let email_id = created[0][1]["created"]["d"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = request(
        &f,
        json!([["EmailSubmission/get", {"accountId": acct, "ids": []}, "0"]]),
    )
    .await;
    let old_state = before[0][1]["state"].as_str().unwrap().to_string();

    // The submission service alone, as `EmailSubmission/set` calls it, without the view.
    let mime = b"From: alice@example.com\r\nTo: x@example.net\r\nSubject: s\r\n\r\nbody\r\n";
    let link = JmapLink {
        email_id: email_id.clone(),
        identity_id: "alice".into(),
        envelope: json!({"mailFrom": {"email": "alice@example.com", "parameters": null},
                         "rcptTo": [{"email": "x@example.net", "parameters": null}]}),
        send_at: f.jmap.now_ms(),
    };
    let request_ = crate::submission::SubmitRequest {
        account: f.account.clone(),
        mail_from: "alice@example.com".into(),
        recipients: vec!["x@example.net".into()],
        mime: mime.to_vec(),
        release_at: None,
        trace: crate::submission::Trace {
            helo: "test".into(),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            protocol: "HTTPS",
            tls: None,
        },
    };
    let id = f
        .jmap
        .submitter
        .submit_with(request_, Some(MessageClass::Transactional), Some(link))
        .await
        .unwrap();
    let got = request(
        &f,
        json!([["EmailSubmission/get", {"accountId": acct, "ids": [id.to_string()]}, "0"]]),
    )
    .await;
    assert_eq!(got[0][1]["list"][0]["emailId"], email_id.as_str());
    assert_eq!(got[0][1]["list"][0]["undoStatus"], "pending");

    // The sender sends it before the watcher ran.
    let lease = lease(&f).await;
    sent(&f, &lease, "ses-7").await;
    let mut cursor = push::FeedCursor::load(&f.jmap).unwrap();
    assert!(
        push::follow(&f.jmap, &mut cursor).await.unwrap(),
        "there were changes to read"
    );
    while push::follow(&f.jmap, &mut cursor).await.unwrap() {}
    let after = request(
        &f,
        json!([
            ["EmailSubmission/changes", {"accountId": acct, "sinceState": old_state}, "0"],
            ["EmailSubmission/query", {"accountId": acct}, "1"],
            ["Email/get", {"accountId": acct, "ids": [email_id], "properties": ["mailboxIds"]}, "2"],
        ]),
    )
    .await;
    assert_eq!(
        after[0][1]["created"],
        json!([id.to_string()]),
        "{}",
        after[0][1]
    );
    assert_eq!(after[1][1]["ids"], json!([id.to_string()]));
    assert_eq!(after[2][1]["list"][0]["mailboxIds"], json!({"sent": true}));
    // The position is kept (saved, since JMAP submissions changed): nothing is read twice.
    assert!(!push::follow(&f.jmap, &mut cursor).await.unwrap());
    let mut reloaded = push::FeedCursor::load(&f.jmap).unwrap();
    assert!(!push::follow(&f.jmap, &mut reloaded).await.unwrap());
}

const SES: &str = "kind = \"ses\"";

/// With an SES transport (no SMTPUTF8): a non-ASCII local part is refused up front as RFC 8621
/// §7.5 `invalidRecipients` (listing it), not accepted and failed later; an IDN domain goes
/// into the envelope as A-labels (RFC 5890 §2.3.2.1).
#[tokio::test]
async fn ses_envelope_is_ascii_with_a_labels() {
    let f = fixture_for(SES);
    let acct = f.account.account_id.clone();
    let submit = |to: Vec<&str>| {
        let to: Vec<Value> = to.iter().map(|a| json!({"email": a})).collect();
        json!([
            ["Email/set", {"accountId": acct, "create": {"d": {
                "mailboxIds": {"drafts": true}, "keywords": {"$draft": true},
                "from": [{"email": "alice@example.com"}], "to": to,
                "subject": "idn", "bodyValues": {"b": {"value": "body"}},
                "textBody": [{"partId": "b", "type": "text/plain"}]}}}, "0"],
            ["EmailSubmission/set", {"accountId": acct,
                "create": {"s": {"emailId": "#d", "identityId": "alice"}}}, "1"],
        ])
    };
    let refused = request(&f, submit(vec!["pelé@example.net", "info@bücher.example"])).await;
    let err = &refused[1][1]["notCreated"]["s"];
    assert_eq!(err["type"], "invalidRecipients", "{refused:?}");
    assert_eq!(
        err["invalidRecipients"],
        json!(["pelé@example.net"]),
        "{err}"
    );

    let ok = request(&f, submit(vec!["info@bücher.example"])).await;
    let created = &ok[1][1]["created"]["s"];
    let id: QueueId = created["id"].as_str().expect("created").parse().unwrap();
    let lease = lease(&f).await;
    assert_eq!(lease.job.id, id);
    assert_eq!(lease.job.recipients, ["info@xn--bcher-kva.example"]);
    let got = request(
        &f,
        json!([["EmailSubmission/get", {"accountId": acct, "ids": [id.to_string()]}, "g"]]),
    )
    .await;
    assert_eq!(
        got[0][1]["list"][0]["envelope"]["rcptTo"][0]["email"],
        "info@xn--bcher-kva.example"
    );
}

/// With an SES transport an attachment type SES refuses is refused at EmailSubmission/set as
/// RFC 8621 §7.5 `invalidEmail`, naming the file, rather than queued and failed by SES.
#[tokio::test]
async fn ses_refused_attachment_type_is_invalid_email() {
    let f = fixture_for(SES);
    let acct = f.account.account_id.clone();
    let mime = b"From: alice@example.com\r\nTo: b@example.net\r\nSubject: tool\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
        --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
        --b\r\nContent-Type: application/octet-stream\r\n\
        Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--b--\r\n";
    let now = f.jmap.now_ms();
    f.jmap
        .store
        .write(|tx| {
            tx.put_blob(&acct, "Bexe", mime)?;
            tx.put("", super::store::T_UPLOAD, &format!("{acct}/Bexe"), &now)?;
            Ok(())
        })
        .unwrap();
    let out = request(
        &f,
        json!([
            ["Email/import", {"accountId": acct, "emails": {
                "i": {"blobId": "Bexe", "mailboxIds": {"drafts": true}}}}, "0"],
            ["EmailSubmission/set", {"accountId": acct,
                "create": {"s": {"emailId": "#i", "identityId": "alice"}}}, "1"],
        ]),
    )
    .await;
    let err = &out[1][1]["notCreated"]["s"];
    assert_eq!(err["type"], "invalidEmail", "{out:?}");
    let text = err["description"].as_str().unwrap();
    assert!(
        text.contains("setup.exe") && text.contains(".exe"),
        "{text}"
    );
}

/// Rule (issue 15): Email/import applies SMTP's text rules before any header check. A blob
/// with LF line endings is made CRLF, so `From: bob\nFrom: alice` is two From fields and the
/// submission is refused; a lone CR or NUL is refused at import.
#[tokio::test]
async fn imported_bare_lf_blob_cannot_forge_from() {
    let f = fixture();
    let acct = f.account.account_id.clone();
    let forged =
        b"From: bob@evil.example\nFrom: alice@example.com\nTo: b@example.net\nSubject: x\n\nbody\n";
    let plain_lf = b"From: alice@example.com\nTo: b@example.net\nSubject: x\n\nbody\n";
    f.jmap
        .store
        .write(|tx| {
            tx.put_blob(&acct, "Bforged", forged)?;
            tx.put_blob(&acct, "Blf", plain_lf)?;
            tx.put_blob(
                &acct,
                "Bcr",
                b"From: alice@example.com\rX: y\r\n\r\nbody\r\n",
            )?;
            tx.put_blob(&acct, "Bnul", b"From: alice@example.com\r\n\r\nb\0dy\r\n")?;
            Ok(())
        })
        .unwrap();
    let responses = request(
        &f,
        json!([
            ["Email/import", {"accountId": acct, "emails": {
                "forged": {"blobId": "Bforged", "mailboxIds": {"drafts": true}},
                "lf": {"blobId": "Blf", "mailboxIds": {"drafts": true}},
                "cr": {"blobId": "Bcr", "mailboxIds": {"drafts": true}},
                "nul": {"blobId": "Bnul", "mailboxIds": {"drafts": true}}}}, "0"],
            ["EmailSubmission/set", {"accountId": acct, "create": {
                "s1": {"emailId": "#forged", "identityId": "alice"},
                "s2": {"emailId": "#lf", "identityId": "alice"}}}, "1"],
        ]),
    )
    .await;
    let imported = &responses[0][1];
    assert_eq!(
        imported["notCreated"]["cr"]["type"], "invalidEmail",
        "{imported}"
    );
    assert_eq!(
        imported["notCreated"]["nul"]["type"], "invalidEmail",
        "{imported}"
    );
    let submitted = &responses[1][1];
    assert_eq!(
        submitted["notCreated"]["s1"]["type"], "invalidEmail",
        "{submitted}"
    );
    assert!(submitted["created"]["s2"]["id"].is_string(), "{submitted}");
    // What is queued is CRLF throughout.
    let lease = lease(&f).await;
    let stored = f.jmap.spool.blobs.get(lease.job.id).await.unwrap();
    assert!(crate::submission::check_text(&stored).is_ok());
}

/// Rule (issue 15): result references cannot multiply a large value. A Core/echo and 15
/// back-references to it stay under the response limit (4 MB here, `MAX_RESPONSE_SIZE` when
/// serving; the calls past it get `requestTooLarge`), and one call's references may copy in at
/// most `maxSizeRequest` (10 MB here).
#[tokio::test]
async fn echo_with_back_references_is_bounded() {
    let f = fixture();
    let big = "x".repeat(400_000);
    let mut calls = vec![json!(["Core/echo", {"v": big}, "c0"])];
    for n in 1..16 {
        calls.push(json!(["Core/echo",
            {"#v": {"resultOf": format!("c{}", n - 1), "name": "Core/echo", "path": "/v"}},
            format!("c{n}")]));
    }
    let responses = request(&f, Value::Array(calls)).await;
    let size = serde_json::to_vec(&responses).unwrap().len();
    assert!(
        size <= f.jmap.max_response_size + 64 * 1024,
        "{size} octets of responses"
    );
    assert_eq!(responses.len(), 16);
    assert_eq!(responses[0][0], "Core/echo");
    let refused: Vec<&str> = responses
        .iter()
        .filter(|r| r[0] == "error")
        .map(|r| r[1]["type"].as_str().unwrap())
        .collect();
    assert!(refused.contains(&"requestTooLarge"), "{refused:?}");

    // Many references in one call to one result: 30 × 400 KB is past maxSizeRequest.
    let mut args = serde_json::Map::new();
    for n in 0..30 {
        args.insert(
            format!("#v{n}"),
            json!({"resultOf": "c0", "name": "Core/echo", "path": "/v"}),
        );
    }
    let responses = request(
        &f,
        json!([["Core/echo", {"v": big}, "c0"], ["Core/echo", args, "c1"]]),
    )
    .await;
    assert_eq!(responses[1][0], "error");
    assert_eq!(responses[1][1]["type"], "requestTooLarge");
}
