//! SES feedback as it arrives: the SNS envelope, then the SES event inside it.

use std::sync::OnceLock;
use std::time::Duration;

use crate::clock::ManualClock;
use crate::feedback::ses::{events, SuppressionPolicy};
use crate::feedback::sns::{cert_url_allowed, subscribe_url_allowed, Kind, Verifier};

/// A real SNS signing certificate (valid 2022), so signed fixtures in the corpus verify.
const SNS_CERT: &[u8] = include_bytes!("../../fuzz/fixtures/sns-signing-cert.pem");
/// 2022-07-29T00:00:00Z, when SNS_CERT is valid.
const NOW_2022: i64 = 1_659_052_800;
/// The topics of the signed fixtures (2012 documentation examples and 2022 real messages).
const TOPICS: [&str; 5] = [
    "arn:aws:sns:us-west-2:123456789012:MyTopic",
    "arn:aws:sns:us-east-2:295079676684:publish-and-verify-892f85fe-4836-424d-8188-ab85bef0f362",
    "arn:aws:sns:us-east-2:295079676684:publish-and-verify-62674b1d-4295-426b-88e7-5fb75652a04e",
    "arn:aws:sns:us-east-2:295079676684:publish-and-verify-6e11fed2-fcdf-4c52-9dc4-36ef43f37f84",
    "arn:aws:sns:us-east-2:295079676684:publish-and-verify-530b26da-0687-4fe4-9f71-780bad3181e2",
];

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        // Old enough to admit the 2012 examples.
        let max_age = Duration::from_secs(11 * 366 * 24 * 3600);
        Verifier::new(TOPICS.map(String::from).to_vec(), max_age)
            .with_clock(ManualClock::new(NOW_2022 as u64 * 1000))
    })
}

/// The input is a `POST /sns` body. Whatever `parse` accepts is for an allowed topic, with an
/// allowed certificate URL (no SSRF) and, for (un)subscriptions, an allowed SubscribeURL; its
/// string-to-sign carries every signed field. `verify` against the real certificate never
/// panics, and a message that verifies still parses the same.
pub fn sns_message(data: &[u8]) {
    let v = verifier();
    let Ok(message) = v.parse(data) else {
        return;
    };
    assert!(TOPICS.contains(&message.topic_arn.as_str()));
    assert!(cert_url_allowed(&message.signing_cert_url));
    let to_sign = message.string_to_sign();
    for value in [
        &message.message,
        &message.message_id,
        &message.timestamp_raw,
    ] {
        assert!(to_sign.contains(value.as_str()), "{value:?} is not signed");
    }
    match message.kind {
        Kind::Notification => assert!(message.subscribe_url.is_none()),
        Kind::SubscriptionConfirmation | Kind::UnsubscribeConfirmation => {
            let url = message.subscribe_url.as_deref().expect("SubscribeURL");
            assert!(subscribe_url_allowed(url), "SubscribeURL {url:?} passed");
            assert!(message.token.is_some());
        }
    }
    if v.verify(&message, SNS_CERT, NOW_2022).is_ok() {
        assert_eq!(v.parse(data).as_ref(), Ok(&message));
    }
}

/// The input is an SES event (the SNS `Message`, or an SQS body). Parsing never panics, and
/// every event it yields names the provider message id the payload carries.
pub fn ses_event(data: &[u8]) {
    let Ok(payload) = std::str::from_utf8(data) else {
        return;
    };
    let policy = SuppressionPolicy {
        bounce_ms: Some(86_400_000),
        complaint_ms: None,
    };
    let Ok(parsed) = events(payload, policy) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_str(payload).expect("parsed once already");
    let id = value["mail"]["messageId"].as_str();
    for event in &parsed {
        assert_eq!(event.provider_id.as_deref(), id);
        if event.suppress.is_some() {
            assert!(!event.recipients.is_empty(), "a suppression for nobody");
        }
    }
}
