//! SNS verification on the real signed fixtures and on forged variants.
use super::*;
use crate::clock::ManualClock;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/sns/",
            $name
        ))
    };
}

const CERT: &[u8] = fixture!("SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem");

const REAL: [(&str, &[u8]); 5] = [
    ("sigv1", fixture!("sns-real-notification-sigv1-sha1.json")),
    ("sigv2", fixture!("sns-real-notification-sigv2-sha256.json")),
    (
        "subject-sigv1",
        fixture!("sns-real-notification-with-subject-sigv1-sha1.json"),
    ),
    (
        "subject-sigv2",
        fixture!("sns-real-notification-with-subject-sigv2-sha256.json"),
    ),
    (
        "lambda-sigv1",
        fixture!("sns-real-lambda-format-sigv1.json"),
    ),
];

/// The tests' max_age: 4 hours.
const MAX_AGE: u64 = 4 * 3600;

/// 2022-07-29T00:00:00Z: inside the certificate's validity, ~1 h after the messages.
const NOW_2022: i64 = 1_659_052_800;
/// 2026-01-01T00:00:00Z: certificate expired.
const NOW_2026: i64 = 1_767_225_600;

fn topic_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["TopicArn"].as_str().unwrap().to_owned()
}

fn all_topics() -> Vec<String> {
    let mut t: Vec<String> = REAL.iter().map(|(_, b)| topic_of(b)).collect();
    t.push("arn:aws:sns:us-west-2:123456789012:MyTopic".into());
    t
}

fn verifier_at(now: i64) -> Verifier {
    Verifier::new(all_topics(), Duration::from_secs(MAX_AGE))
        .with_clock(ManualClock::new(now as u64 * 1000))
}

#[test]
fn timestamps_parse() {
    assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_timestamp("2022-07-29T00:00:00.000Z"), Some(NOW_2022));
    assert_eq!(parse_timestamp("2026-01-01T00:00:00Z"), Some(NOW_2026));
    assert_eq!(parse_timestamp("2000-02-29T12:34:56.7Z"), Some(951_827_696));
    for bad in [
        "",
        "2022-07-29",
        "2022-07-29T00:00:00",
        "2022-07-29T00:00:00+01:00",
        "2022-13-01T00:00:00Z",
        "2022-07-29T00:00:00.Z",
        "2022-07-2xT00:00:00Z",
    ] {
        assert_eq!(parse_timestamp(bad), None, "{bad}");
    }
}

#[test]
fn all_real_messages_verify() {
    let v = verifier_at(NOW_2022);
    for (name, body) in REAL {
        let msg = v.parse(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.kind, Kind::Notification, "{name}");
        assert_eq!(msg.message, "Hello world", "{name}");
        assert!(msg
            .signing_cert_url
            .ends_with("-7ff5318490ec183fbaddaa2a969abfda.pem"));
        v.verify(&msg, CERT, NOW_2022)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn lambda_spelling_parses_like_the_standard_one() {
    let v = verifier_at(NOW_2022);
    let a = v.parse(REAL[0].1).unwrap();
    let b = v.parse(REAL[4].1).unwrap();
    assert_eq!(a, b);
    assert!(b.unsubscribe_url.is_some());
}

#[test]
fn subject_is_signed_and_parsed() {
    let v = verifier_at(NOW_2022);
    let msg = v.parse(REAL[2].1).unwrap();
    assert_eq!(msg.subject.as_deref(), Some("Hello world"));
    assert!(msg.string_to_sign().contains("\nSubject\nHello world\n"));
    assert_eq!(msg.signature_version, 1);
    assert_eq!(v.parse(REAL[3].1).unwrap().signature_version, 2);
}

#[test]
fn one_character_change_to_message_fails() {
    let v = verifier_at(NOW_2022);
    for (name, body) in REAL {
        let mut msg = v.parse(body).unwrap();
        msg.message = "Hello worle".into();
        assert_eq!(
            v.verify(&msg, CERT, NOW_2022),
            Err(SnsError::BadSignature),
            "{name}"
        );
        // The same change made in the body itself.
        let text = std::str::from_utf8(body).unwrap().replace(
            "\"Hello world\",\n  \"Timestamp",
            "\"Hello World\",\n  \"Timestamp",
        );
        assert_ne!(text.as_bytes(), body, "{name}");
        let msg = v.parse(text.as_bytes()).unwrap();
        assert_eq!(
            v.verify(&msg, CERT, NOW_2022),
            Err(SnsError::BadSignature),
            "{name}"
        );
    }
}

#[test]
fn one_character_change_to_subject_fails() {
    let v = verifier_at(NOW_2022);
    for body in [REAL[2].1, REAL[3].1] {
        let mut msg = v.parse(body).unwrap();
        msg.subject = Some("Hello World".into());
        assert_eq!(v.verify(&msg, CERT, NOW_2022), Err(SnsError::BadSignature));
        // Dropping the subject also breaks the signature.
        msg.subject = None;
        assert_eq!(v.verify(&msg, CERT, NOW_2022), Err(SnsError::BadSignature));
    }
    // Adding a subject to a message signed without one.
    let mut msg = v.parse(REAL[0].1).unwrap();
    msg.subject = Some("Hello world".into());
    assert_eq!(v.verify(&msg, CERT, NOW_2022), Err(SnsError::BadSignature));
}

#[test]
fn one_character_change_to_signature_fails() {
    let v = verifier_at(NOW_2022);
    for (name, body) in REAL {
        let text = std::str::from_utf8(body).unwrap();
        let v0: Value = serde_json::from_slice(body).unwrap();
        let sig = v0["Signature"].as_str().unwrap();
        // Change the 11th base64 character (stays valid base64).
        let mut chars: Vec<char> = sig.chars().collect();
        chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        let text = text.replace(sig, &tampered);
        let msg = v.parse(text.as_bytes()).unwrap();
        assert_eq!(
            v.verify(&msg, CERT, NOW_2022),
            Err(SnsError::BadSignature),
            "{name}"
        );
    }
}

#[test]
fn signature_version_swap_fails() {
    let v = verifier_at(NOW_2022);
    let mut msg = v.parse(REAL[0].1).unwrap();
    msg.signature_version = 2;
    assert_eq!(v.verify(&msg, CERT, NOW_2022), Err(SnsError::BadSignature));
}

#[test]
fn expired_certificate_fails() {
    let v = verifier_at(NOW_2022);
    for (name, body) in REAL {
        let msg = v.parse(body).unwrap();
        assert!(
            matches!(
                v.verify(&msg, CERT, NOW_2026),
                Err(SnsError::BadCertificate(_))
            ),
            "{name}"
        );
        // Before notBefore (2021-09-07) too.
        assert!(matches!(
            v.verify(&msg, CERT, 1_600_000_000),
            Err(SnsError::BadCertificate(_))
        ));
    }
}

#[test]
fn garbage_certificate_fails() {
    let v = verifier_at(NOW_2022);
    let msg = v.parse(REAL[0].1).unwrap();
    for pem in [
        &b""[..],
        b"not a pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        assert!(matches!(
            v.verify(&msg, pem, NOW_2022),
            Err(SnsError::BadCertificate(_))
        ));
    }
}

#[test]
fn stale_and_future_messages_fail() {
    // Message at 2022-07-28T21:23:58Z; max_age 4 h.
    let ts = parse_timestamp("2022-07-28T21:23:58.317Z").unwrap();
    let late = ts + MAX_AGE as i64 + 1;
    let early = ts - MAX_FUTURE_SKEW_SECS - 1;
    for (now, want) in [(late, SnsError::Stale), (early, SnsError::Early)] {
        assert_eq!(verifier_at(now).parse(REAL[0].1), Err(want.clone()));
        // verify applies the same check with its own `now` (certificate still valid then).
        let msg = verifier_at(NOW_2022).parse(REAL[0].1).unwrap();
        assert_eq!(verifier_at(NOW_2022).verify(&msg, CERT, now), Err(want));
    }
    assert!(verifier_at(ts + MAX_AGE as i64).parse(REAL[0].1).is_ok());
    assert!(verifier_at(ts - MAX_FUTURE_SKEW_SECS)
        .parse(REAL[0].1)
        .is_ok());
}

#[test]
fn topic_not_in_list_fails_before_anything_else() {
    let v = Verifier::new(
        vec!["arn:aws:sns:us-east-2:295079676684:other".into()],
        Duration::from_secs(60),
    )
    .with_clock(ManualClock::new(NOW_2026 as u64 * 1000));
    for (name, body) in REAL {
        // Stale at 2026 and its certificate expired, yet the topic is what is reported.
        assert!(
            matches!(v.parse(body), Err(SnsError::TopicNotAllowed(_))),
            "{name}"
        );
    }
    // Even with a bad cert URL, the topic check comes first.
    let text = std::str::from_utf8(REAL[0].1)
        .unwrap()
        .replace("https://sns.us-east-2", "http://evil.com");
    assert!(matches!(
        v.parse(text.as_bytes()),
        Err(SnsError::TopicNotAllowed(_))
    ));
    // And verify refuses a hand-made message for a foreign topic.
    let msg = verifier_at(NOW_2022).parse(REAL[0].1).unwrap();
    assert!(matches!(
        v.verify(&msg, CERT, NOW_2022),
        Err(SnsError::TopicNotAllowed(_))
    ));
}

#[test]
fn bad_cert_url_in_body_fails_in_parse() {
    let v = verifier_at(NOW_2022);
    let body = std::str::from_utf8(REAL[0].1).unwrap();
    for evil in [
        "http://sns.us-east-2.amazonaws.com/",
        "https://sns.us-east-2.amazonaws.com.evil.com/",
        "https://169.254.169.254/",
    ] {
        let text = body.replace(
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService",
            &format!("{evil}SimpleNotificationService"),
        );
        assert!(
            matches!(v.parse(text.as_bytes()), Err(SnsError::BadCertUrl(_))),
            "{evil}"
        );
    }
    // Also in the Lambda spelling.
    let text = std::str::from_utf8(REAL[4].1).unwrap().replace(
        "https://sns.us-east-2.amazonaws.com/Simple",
        "https://evil.com/Simple",
    );
    assert!(matches!(
        v.parse(text.as_bytes()),
        Err(SnsError::BadCertUrl(_))
    ));
}

#[test]
fn cert_url_table() {
    let good = [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-xyz.pem",
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-xyz.pem",
    ];
    let bad = [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem",
        "HTTPS://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem",
        "ftp://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem",
        "//sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-1.amazonaws.com.cn.evil.com/x.pem",
        "https://evil.com/sns.amazonaws.com/SimpleNotificationService-xyz.pem",
        "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
        "https://evilsns.us-east-1.amazonaws.com/x.pem",
        "https://sns.evil.com/x.pem",
        "https://sns..amazonaws.com/x.pem",
        "https://sns.amazonaws.com/x.pem",
        "https://sns.us-east-1.evil.amazonaws.com/x.pem",
        "https://s3.us-east-1.amazonaws.com/x.pem",
        "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-1.amazonaws.com@evil.com/SimpleNotificationService-xyz.pem",
        "https://evil.com#@sns.us-east-1.amazonaws.com/x.pem",
        "https://evil.com\\@sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.crt",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem.txt",
        "https://sns.us-east-1.amazonaws.com/x.pem?x=1",
        "https://sns.us-east-1.amazonaws.com/?a=x.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem#frag",
        "https://sns.us-east-1.amazonaws.com/a/../x.pem",
        "https://sns.us-east-1.amazonaws.com/a%2Fb.pem",
        "https://sns.us-east-1.amazonaws.com/.pem",
        "https://sns.us-east-1.amazonaws.com",
        "https://sns.us-east-1.amazonaws.com/",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-xyz.pem",
        "https://SNS.US-EAST-1.AMAZONAWS.COM/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-1.amazonaws.com%2eevil.com/x.pem",
        "https://169.254.169.254/SimpleNotificationService-xyz.pem",
        "https://127.0.0.1/x.pem",
        "https://[::1]/x.pem",
        "https://sns.1.2.3.amazonaws.com/x.pem",
        "https://sns.123.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com /x.pem",
        " https://sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem\n",
        "",
    ];
    for url in good {
        assert!(cert_url_allowed(url), "should allow {url}");
    }
    for url in bad {
        assert!(!cert_url_allowed(url), "should refuse {url:?}");
    }
}

#[test]
fn cert_cn_rules() {
    assert!(sns_cert_cn_allowed("sns.amazonaws.com"));
    assert!(sns_cert_cn_allowed("sns.eu-west-1.amazonaws.com"));
    assert!(sns_cert_cn_allowed("sns.cn-north-1.amazonaws.com.cn"));
    for bad in [
        "evil.com",
        "sns.amazonaws.com.evil.com",
        "*.amazonaws.com",
        "sqs.amazonaws.com",
        "",
    ] {
        assert!(!sns_cert_cn_allowed(bad), "{bad}");
    }
}

#[test]
fn doc_confirmations_parse_with_url_and_token() {
    // The AWS doc examples carry placeholder signatures; only parsing is checked. Their
    // timestamps are from 2012.
    let at = |ts: &str| verifier_at(parse_timestamp(ts).unwrap());
    let sub = at("2012-04-26T20:45:04.751Z")
        .parse(fixture!("sns-doc-example-subscription-confirmation.json"))
        .unwrap();
    assert_eq!(sub.kind, Kind::SubscriptionConfirmation);
    assert_eq!(sub.token.as_deref(), Some("2336412f37..."));
    assert!(sub
        .subscribe_url
        .as_deref()
        .unwrap()
        .starts_with("https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription"));
    let s = sub.string_to_sign();
    assert!(s.starts_with("Message\nYou have chosen"));
    assert!(s.contains("\nSubscribeURL\nhttps://sns.us-west-2"));
    assert!(s.ends_with("\nToken\n2336412f37...\nTopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nSubscriptionConfirmation\n"));

    // A SubscribeURL pointing elsewhere is refused (the caller would GET it).
    let text = std::str::from_utf8(fixture!("sns-doc-example-subscription-confirmation.json"))
        .unwrap()
        .replace(
            "\"SubscribeURL\": \"https://sns.us-west-2.amazonaws.com/",
            "\"SubscribeURL\": \"https://evil.com/",
        );
    assert!(matches!(
        at("2012-04-26T20:45:04.751Z").parse(text.as_bytes()),
        Err(SnsError::BadCertUrl(_))
    ));
}

#[test]
fn malformed_bodies_fail() {
    let v = verifier_at(NOW_2022);
    let body = std::str::from_utf8(REAL[0].1).unwrap();
    let cases = [
        "".to_owned(),
        "[]".to_owned(),
        "{}".to_owned(),
        body.replace("\"Type\" : \"Notification\"", "\"Type\" : \"Other\""),
        body.replace("\"SignatureVersion\" : \"1\"", "\"SignatureVersion\" : \"3\""),
        body.replace("\"SignatureVersion\" : \"1\"", "\"SignatureVersion\" : 1"),
        body.replace("\"Message\" : \"Hello world\",", ""),
        body.replace("2022-07-28T21:23:58.317Z", "yesterday"),
        body.replace("\"Signature\" : \"ghtf", "\"Signature\" : \"!!!!"),
        // Both spellings of the certificate URL at once.
        body.replace("\"SigningCertURL\"", "\"SigningCertUrl\" : \"https://sns.us-east-2.amazonaws.com/x.pem\",\n  \"SigningCertURL\""),
    ];
    for (i, c) in cases.iter().enumerate() {
        assert_ne!(c.as_str(), body, "case {i} did not change the body");
        assert!(
            matches!(v.parse(c.as_bytes()), Err(SnsError::Malformed(_))),
            "case {i}: {:?}",
            v.parse(c.as_bytes())
        );
    }
}

/// Issue 14 item 4: the SQS path's verifier (window: SQS's 14-day retention) accepts an
/// authentic message hours old that the HTTPS window refuses; older than any queue keeps it
/// is still stale.
#[test]
fn queue_retention_window_accepts_hours_old_messages() {
    let ts = parse_timestamp("2022-07-28T21:23:58.317Z").unwrap();
    let queued = |now: i64| {
        Verifier::new(all_topics(), crate::feedback::service::SQS_MAX_RETENTION)
            .with_clock(ManualClock::new(now as u64 * 1000))
    };
    let three_hours_after_http_window = ts + MAX_AGE as i64 + 3 * 3600;
    assert_eq!(
        verifier_at(three_hours_after_http_window).parse(REAL[0].1),
        Err(SnsError::Stale)
    );
    assert!(queued(three_hours_after_http_window)
        .parse(REAL[0].1)
        .is_ok());
    assert_eq!(
        queued(ts + 14 * 86_400 + 1).parse(REAL[0].1),
        Err(SnsError::Stale)
    );
}

/// Rule: no field but `Message` may hold a line break (the string-to-sign joins fields with
/// `\n`), so an authentic message cannot be re-sent under a new `MessageId` by splicing its
/// `Subject` into the id.
#[test]
fn subject_spliced_into_message_id_is_refused() {
    let v = verifier_at(NOW_2022);
    for body in [REAL[2].1, REAL[3].1] {
        let mut forged: Map<String, Value> = serde_json::from_slice(body).unwrap();
        let subject = forged.remove("Subject").unwrap();
        let id = forged["MessageId"].as_str().unwrap().to_owned();
        let spliced = format!("{id}\nSubject\n{}", subject.as_str().unwrap());
        forged.insert("MessageId".into(), Value::String(spliced));
        let forged = serde_json::to_vec(&forged).unwrap();
        // The signature alone does not tell them apart: the signed strings are equal.
        let original = v.parse(body).unwrap();
        assert!(
            matches!(v.parse(&forged), Err(SnsError::Malformed(ref m)) if m.contains("line break")),
            "{:?}",
            v.parse(&forged).map(|m| v.verify(&m, CERT, NOW_2022))
        );
        assert!(original.string_to_sign().contains("\nSubject\n"));
    }
    // Every other signed field is refused with a line break too; Message keeps its own.
    let good: Map<String, Value> = serde_json::from_slice(REAL[1].1).unwrap();
    for key in [
        "MessageId",
        "Timestamp",
        "TopicArn",
        "Type",
        "SignatureVersion",
        "SigningCertURL",
        "UnsubscribeURL",
    ] {
        let mut m = good.clone();
        let value = format!("{}\n", m[key].as_str().unwrap());
        m.insert(key.into(), Value::String(value));
        assert!(v.parse(&serde_json::to_vec(&m).unwrap()).is_err(), "{key}");
    }
    let mut m = good.clone();
    m.insert("Message".into(), Value::String("line one\nline two".into()));
    assert!(v.parse(&serde_json::to_vec(&m).unwrap()).is_ok());
}

/// Rule: a notification is deduplicated on its signed content; the same content read from either
/// JSON spelling gives the same key, a different message a different one.
#[test]
fn dedupe_key_is_the_signed_content() {
    let v = verifier_at(NOW_2022);
    let a = v.parse(REAL[0].1).unwrap();
    let b = v.parse(REAL[4].1).unwrap();
    assert_eq!(a.dedupe_key(), b.dedupe_key());
    let mut c = a.clone();
    c.message.push(' ');
    assert_ne!(a.dedupe_key(), c.dedupe_key());
    let mut d = a.clone();
    d.message_id = v.parse(REAL[1].1).unwrap().message_id;
    assert_ne!(a.dedupe_key(), d.dedupe_key());
}
