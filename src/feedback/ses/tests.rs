//! SES payloads from the AWS documentation (`../shared/fixtures/ses/`), both shapes.

use super::*;

const POLICY: SuppressionPolicy = SuppressionPolicy {
    bounce_ms: Some(14 * 86_400_000),
    complaint_ms: None,
};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/ses")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(name: &str) -> Vec<FeedbackEvent> {
    events(&fixture(name), POLICY).unwrap()
}

#[test]
fn configuration_set_bounce_is_permanent_and_suppresses_for_the_policy_period() {
    let e = parse("ses-event-bounce-record.json");
    assert_eq!(e.len(), 1);
    let e = &e[0];
    assert_eq!(e.outcome, Outcome::Bounced);
    assert_eq!(e.recipients, vec!["recipient@example.com"]);
    assert_eq!(
        e.provider_id.as_deref(),
        Some("EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000")
    );
    assert_eq!(
        e.detail.as_deref(),
        Some("Permanent/General: smtp; 550 5.1.1 user unknown")
    );
    // 2017-08-05T00:41:02.669Z
    assert_eq!(e.at_ms, 1_501_893_662_669);
    let (reason, lasts) = e.suppress.clone().expect("a hard bounce suppresses");
    assert!(reason.contains("550 5.1.1"), "{reason}");
    assert_eq!(
        lasts,
        Some(14 * 86_400_000),
        "counted from when it is applied"
    );
    assert_eq!(e.submission_id, None, "the AWS sample has no tags of ours");
}

#[test]
fn identity_notification_bounce_has_no_tags_and_names_each_recipient() {
    let e = parse("ses-notification-bounce-notification-with-a-dsn.json");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].recipients, vec!["jane@example.com"]);
    assert_eq!(e[0].tag_class, None);
    assert!(e[0].suppress.is_some());
    let e = parse("ses-notification-bounce-notification-without-a-dsn.json");
    assert!(!e.is_empty());
    assert!(e.iter().all(|e| e.outcome == Outcome::Bounced));
}

#[test]
fn transient_bounce_is_recorded_but_not_suppressed() {
    let mut v: Value = serde_json::from_str(&fixture("ses-event-bounce-record.json")).unwrap();
    v["bounce"]["bounceType"] = "Transient".into();
    v["bounce"]["bounceSubType"] = "MailboxFull".into();
    let e = events(&v.to_string(), POLICY).unwrap();
    assert_eq!(e[0].outcome, Outcome::Bounced);
    assert!(e[0]
        .detail
        .as_deref()
        .unwrap()
        .starts_with("Transient/MailboxFull"));
    assert_eq!(e[0].suppress, None);
}

#[test]
fn complaints_suppress_without_expiry_unless_not_spam() {
    for name in [
        "ses-event-complaint-record.json",
        "ses-notification-complaint-notification-with-a-feedback-report.json",
        "ses-notification-complaint-notification-without-a-feedback-report.json",
    ] {
        let e = parse(name);
        assert_eq!(e.len(), 1, "{name}");
        assert_eq!(e[0].outcome, Outcome::Complained, "{name}");
        assert!(!e[0].recipients.is_empty(), "{name}");
        let (_, expires) = e[0].suppress.clone().expect("suppresses");
        assert_eq!(expires, None, "policy: complaints never expire");
    }
    let mut v: Value = serde_json::from_str(&fixture("ses-event-complaint-record.json")).unwrap();
    v["complaint"]["complaintFeedbackType"] = "not-spam".into();
    let e = events(&v.to_string(), POLICY).unwrap();
    // RFC 5965 §7.3: not-spam is the opposite of a complaint (issue 14 item 14).
    assert_eq!(e[0].outcome, Outcome::NotSpam);
    assert_eq!(e[0].suppress, None, "not-spam is no reason to suppress");
    assert!(e[0].detail.as_deref().unwrap().contains("not-spam"));
}

#[test]
fn deliveries_delays_and_rejects() {
    let e = parse("ses-event-delivery-record.json");
    assert_eq!(e[0].outcome, Outcome::Delivered);
    assert_eq!(e[0].detail.as_deref(), Some("250 2.6.0 Message received"));
    assert_eq!(e[0].suppress, None);
    let e = parse("ses-notification-amazon-sns-delivery-notification-example.json");
    assert_eq!(e[0].recipients, vec!["jane@example.com"]);
    let e = parse("ses-event-deliverydelay-record.json");
    assert_eq!(e[0].outcome, Outcome::Delayed);
    assert!(e[0].detail.as_deref().unwrap().contains("421 4.4.1"));
    let e = parse("ses-event-reject-record.json");
    assert_eq!(e[0].outcome, Outcome::Rejected);
    assert!(
        e[0].recipients.is_empty(),
        "a reject concerns every recipient"
    );
    assert!(e[0].detail.as_deref().unwrap().contains("Bad content"));
}

#[test]
fn engagement_events_are_acknowledged_not_applied() {
    for name in [
        "ses-event-send-record.json",
        "ses-event-open-record.json",
        "ses-event-click-record.json",
        "ses-event-rendering-failure-record.json",
        "ses-event-subscription-record.json",
    ] {
        assert_eq!(parse(name), vec![], "{name}");
    }
}

#[test]
fn our_tags_name_the_submission_account_and_class() {
    let mut v: Value = serde_json::from_str(&fixture("ses-event-delivery-record.json")).unwrap();
    v["mail"]["tags"]["submission_id"] = serde_json::json!(["01KBA0XYZ00000000000000004"]);
    v["mail"]["tags"]["account_id"] = serde_json::json!(["alice"]);
    v["mail"]["tags"]["message_class"] = serde_json::json!(["bulk"]);
    let e = events(&v.to_string(), POLICY).unwrap();
    assert_eq!(
        e[0].submission_id,
        Some("01KBA0XYZ00000000000000004".parse::<QueueId>().unwrap())
    );
    assert_eq!(e[0].tag_account.as_deref(), Some("alice"));
    assert_eq!(e[0].tag_class.as_deref(), Some("bulk"));
}

#[test]
fn malformed_payloads_are_refused() {
    for bad in [
        "",
        "not json",
        "[]",
        r#"{"eventType":"Bounce"}"#,
        r#"{"eventType":"Bounce","mail":{}}"#,
        r#"{"eventType":"Bounce","mail":{"messageId":"x"}}"#,
        r#"{"eventType":"Bounce","mail":{"messageId":"x"},"bounce":{"bouncedRecipients":[]}}"#,
        r#"{"eventType":"Complaint","mail":{"messageId":"x"},"complaint":{}}"#,
        r#"{"eventType":"Surprise","mail":{"messageId":"x"}}"#,
        r#"{"mail":{"messageId":"x"}}"#,
    ] {
        assert!(events(bad, POLICY).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn timestamps_to_milliseconds() {
    assert_eq!(ms("1970-01-01T00:00:01.5Z"), Some(1_500));
    assert_eq!(ms("1970-01-01T00:00:01Z"), Some(1_000));
    assert_eq!(ms("2016-01-27T14:59:38.237Z"), Some(1_453_906_778_237));
    assert_eq!(ms("yesterday"), None);
}
