//! Sending activity per hour, identity and message class: sends, deliveries, bounces and
//! complaints, counted by the ledger as records change (see [`delta`]) and kept apart from the
//! records themselves, so retention purging old submissions does not change the figures of
//! the last seven days. The reputation module ([`crate::reputation`]) reads them back.
//!
//! What counts, per recipient (Amazon SES computes its rates per recipient too):
//! - a **send**: a recipient of a submission the provider accepted (it has a provider id),
//!   counted in the hour the send was recorded; recipients left out by the suppression list
//!   are not sent to and do not count;
//! - a **delivery**: a recipient reported delivered (or `not-spam`), or one who complained
//!   (a complaint implies the message arrived), in the hour of the report;
//! - a **bounce**: a recipient with a *permanent* (hard) bounce — SES's bounce rate counts hard
//!   bounces only; a transient bounce is SES still trying;
//! - a **complaint**: a recipient who reported the message as spam.
//!
//! A later report about the same recipient replaces the earlier one in the record (a
//! complaint after a delivery): the counts follow the record, so each recipient is counted
//! once per kind, in the hour of the report that stands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{MessageClass, Outcome, State, SubmissionRecord};

/// One hour in milliseconds: the resolution of the counts.
pub const HOUR_MS: u64 = 3_600_000;
/// How long hourly counts are kept: the longest reputation window (7 days) plus the hour in
/// progress and a day of slack for clocks and late reports.
pub const ACTIVITY_RETENTION_MS: u64 = 8 * 24 * HOUR_MS;

/// The start of the hour `at_ms` falls in.
pub fn hour_of(at_ms: u64) -> u64 {
    at_ms - at_ms % HOUR_MS
}

/// Sends, deliveries, bounces and complaints (recipients).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub sends: u64,
    pub deliveries: u64,
    pub bounces: u64,
    pub complaints: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.sends += other.sends;
        self.deliveries += other.deliveries;
        self.bounces += other.bounces;
        self.complaints += other.complaints;
    }

    /// `self - other`, never below zero.
    pub fn minus(&self, other: &Counts) -> Counts {
        Counts {
            sends: self.sends.saturating_sub(other.sends),
            deliveries: self.deliveries.saturating_sub(other.deliveries),
            bounces: self.bounces.saturating_sub(other.bounces),
            complaints: self.complaints.saturating_sub(other.complaints),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    /// Applies a signed change, never going below zero.
    pub fn apply(&mut self, change: &Change) {
        fn step(v: &mut u64, d: i64) {
            *v = v.saturating_add_signed(d);
        }
        step(&mut self.sends, change.sends);
        step(&mut self.deliveries, change.deliveries);
        step(&mut self.bounces, change.bounces);
        step(&mut self.complaints, change.complaints);
    }
}

/// A signed change to one hour's [`Counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    pub sends: i64,
    pub deliveries: i64,
    pub bounces: i64,
    pub complaints: i64,
}

impl Change {
    pub fn is_zero(&self) -> bool {
        *self == Change::default()
    }
}

/// One stored row: an hour's counts for one identity and class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityRow {
    /// Start of the hour (ms since the Unix epoch).
    pub hour_ms: u64,
    pub identity_id: String,
    pub class: MessageClass,
    #[serde(flatten)]
    pub counts: Counts,
}

/// What one record contributes, per hour.
pub fn contribution(record: &SubmissionRecord) -> BTreeMap<u64, Counts> {
    let mut out: BTreeMap<u64, Counts> = BTreeMap::new();
    if record.provider_id.is_none() || !record.state.was_sent() {
        return out;
    }
    let sent_ms = record
        .history
        .iter()
        .find(|t| t.state == State::Sent)
        .map_or(record.created_ms, |t| t.at_ms);
    let suppressed = record
        .job
        .recipients
        .iter()
        .filter(|r| {
            record
                .delivery
                .get(&r.to_lowercase())
                .is_some_and(|s| s.outcome == Outcome::Suppressed)
        })
        .count();
    out.entry(hour_of(sent_ms)).or_default().sends =
        (record.job.recipients.len() - suppressed) as u64;
    for status in record.delivery.values() {
        let hour = out.entry(hour_of(status.at_ms)).or_default();
        match status.outcome {
            Outcome::Delivered | Outcome::NotSpam => hour.deliveries += 1,
            Outcome::Complained => {
                hour.deliveries += 1;
                hour.complaints += 1;
            }
            Outcome::Bounced if is_hard_bounce(status.detail.as_deref()) => hour.bounces += 1,
            Outcome::Bounced | Outcome::Delayed | Outcome::Suppressed | Outcome::Rejected => {}
        }
    }
    out.retain(|_, c| !c.is_zero());
    out
}

/// Whether a bounce's recorded detail (`Type/Subtype: diagnostic`, see
/// [`crate::feedback::ses`]) says it is permanent. SES's `Undetermined` type is counted as
/// hard too: SES suppresses on it and an operator would rather see it than not.
fn is_hard_bounce(detail: Option<&str>) -> bool {
    match detail {
        Some(d) => !d.starts_with("Transient"),
        None => true,
    }
}

/// How the counts change, per hour, when `old` (absent for a new record) becomes `new`.
pub fn delta(old: Option<&SubmissionRecord>, new: &SubmissionRecord) -> Vec<(u64, Change)> {
    let before = old.map(contribution).unwrap_or_default();
    let after = contribution(new);
    let mut hours: Vec<u64> = before.keys().chain(after.keys()).copied().collect();
    hours.sort_unstable();
    hours.dedup();
    let zero = Counts::default();
    hours
        .into_iter()
        .filter_map(|h| {
            let (b, a) = (
                before.get(&h).unwrap_or(&zero),
                after.get(&h).unwrap_or(&zero),
            );
            let d = |a: u64, b: u64| a as i64 - b as i64;
            let change = Change {
                sends: d(a.sends, b.sends),
                deliveries: d(a.deliveries, b.deliveries),
                bounces: d(a.bounces, b.bounces),
                complaints: d(a.complaints, b.complaints),
            };
            (!change.is_zero()).then_some((h, change))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Job, QueueId, RecipientStatus};

    const T0: u64 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;

    fn record(recipients: &[&str]) -> SubmissionRecord {
        let job = Job {
            id: QueueId::generate(T0),
            login: "l".into(),
            tenant_id: "t".into(),
            account_id: "a".into(),
            user_id: "u".into(),
            identity_id: "news".into(),
            mail_from: "n@example.com".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            message_class: MessageClass::Bulk,
            size: 10,
        };
        SubmissionRecord::queued(job, T0, T0, None)
    }

    fn sent(mut r: SubmissionRecord, at: u64) -> SubmissionRecord {
        r.transition(at, State::Sent, None);
        r.provider_id = Some("ses-1".into());
        r
    }

    fn report(r: &mut SubmissionRecord, who: &str, outcome: Outcome, detail: &str, at: u64) {
        r.report(
            who,
            RecipientStatus {
                outcome,
                detail: Some(detail.into()),
                at_ms: at,
            },
        );
        r.state = r.derive_state();
    }

    #[test]
    fn queued_and_failed_records_count_nothing() {
        let mut r = record(&["a@x.org"]);
        assert!(contribution(&r).is_empty());
        r.transition(T0, State::Failed, Some("no".into()));
        assert!(contribution(&r).is_empty());
    }

    #[test]
    fn a_send_counts_its_recipients_but_not_suppressed_ones() {
        let mut r = sent(record(&["a@x.org", "B@x.org", "c@x.org"]), T0 + 5);
        report(&mut r, "b@x.org", Outcome::Suppressed, "list", T0 + 5);
        let c = contribution(&r);
        assert_eq!(c.len(), 1);
        assert_eq!(c[&T0].sends, 2);
    }

    #[test]
    fn reports_count_in_their_own_hour_and_only_hard_bounces() {
        let mut r = sent(record(&["a@x.org", "b@x.org", "c@x.org", "d@x.org"]), T0);
        report(
            &mut r,
            "a@x.org",
            Outcome::Bounced,
            "Permanent/General",
            T0 + HOUR_MS,
        );
        report(
            &mut r,
            "b@x.org",
            Outcome::Bounced,
            "Transient/MailboxFull",
            T0 + HOUR_MS,
        );
        report(
            &mut r,
            "c@x.org",
            Outcome::Delivered,
            "250 ok",
            T0 + 2 * HOUR_MS,
        );
        report(
            &mut r,
            "d@x.org",
            Outcome::Complained,
            "abuse",
            T0 + 2 * HOUR_MS + 1,
        );
        let c = contribution(&r);
        assert_eq!(c[&T0].sends, 4);
        assert_eq!(c[&(T0 + HOUR_MS)].bounces, 1);
        assert_eq!(
            c[&(T0 + 2 * HOUR_MS)],
            Counts {
                sends: 0,
                deliveries: 2,
                bounces: 0,
                complaints: 1
            }
        );
    }

    #[test]
    fn delta_counts_each_change_once_and_moves_a_superseded_report() {
        let queued = record(&["a@x.org"]);
        let s = sent(queued.clone(), T0);
        assert!(delta(Some(&queued), &queued).is_empty());
        let d = delta(Some(&queued), &s);
        assert_eq!(
            d,
            vec![(
                T0,
                Change {
                    sends: 1,
                    ..Change::default()
                }
            )]
        );
        // Rewriting the same record (a lease, a duplicate event) changes nothing.
        assert!(delta(Some(&s), &s.clone()).is_empty());
        let mut delivered = s.clone();
        report(
            &mut delivered,
            "a@x.org",
            Outcome::Delivered,
            "250",
            T0 + 10,
        );
        assert_eq!(
            delta(Some(&s), &delivered),
            vec![(
                T0,
                Change {
                    deliveries: 1,
                    ..Change::default()
                }
            )]
        );
        let mut complained = delivered.clone();
        report(
            &mut complained,
            "a@x.org",
            Outcome::Complained,
            "abuse",
            T0 + 3 * HOUR_MS,
        );
        assert_eq!(
            delta(Some(&delivered), &complained),
            vec![
                (
                    T0,
                    Change {
                        deliveries: -1,
                        ..Change::default()
                    }
                ),
                (
                    T0 + 3 * HOUR_MS,
                    Change {
                        deliveries: 1,
                        complaints: 1,
                        ..Change::default()
                    }
                )
            ]
        );
        // A record stored for the first time already sent (a backend that writes once).
        assert_eq!(
            delta(None, &s),
            vec![(
                T0,
                Change {
                    sends: 1,
                    ..Change::default()
                }
            )]
        );
    }

    #[test]
    fn counts_never_go_below_zero() {
        let mut c = Counts::default();
        c.apply(&Change {
            bounces: -3,
            sends: 2,
            ..Change::default()
        });
        assert_eq!(c.bounces, 0);
        assert_eq!(c.sends, 2);
    }
}
