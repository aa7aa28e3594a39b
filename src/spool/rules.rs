//! What each queue operation does to a submission record, whatever stores it.
//!
//! Every backend keeps the same record ([`SubmissionRecord`]) and derives its own indexes from
//! it: a record is in the queue while it is `queued` (keyed by `due_ms`, the lease deadline
//! while leased), in the held set while `held`, in the dead-letter set while `dead` (since
//! [`dead_since`]), and its message bytes exist exactly while it is in one of those three
//! ([`keeps_blob`]). The functions here change only the record; a backend compares the record
//! before and after to update its indexes, so the rules are written (and tested) once.

use rand::Rng;

use super::{Action, Settled, Settlement, SpoolError, SpoolOptions};
use crate::domain::{
    FeedbackEvent, QueueId, RecipientStatus, State, SubmissionRecord, Suppression, Transition,
    ALL_ACCOUNTS, ALL_CLASSES,
};

/// Whether the record's message bytes are still needed (it can still be sent).
pub(crate) fn keeps_blob(record: &SubmissionRecord) -> bool {
    matches!(record.state, State::Queued | State::Held | State::Dead)
}

/// When a dead letter died: its dead-letter retention counts from then.
pub(crate) fn dead_since(record: &SubmissionRecord) -> Option<u64> {
    (record.state == State::Dead).then(|| {
        record
            .history
            .iter()
            .rev()
            .find(|t| t.state == State::Dead)
            .map_or(record.created_ms, |t| t.at_ms)
    })
}

/// What a receiver may do with a queued message it came across.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Due and nobody holds it.
    Free,
    /// Not due before this time.
    NotDue(u64),
    /// Someone else's lease runs until this time.
    Leased(u64),
    /// Not in the queue (held, finished, dead).
    Gone,
}

pub(crate) fn claim_of(record: &SubmissionRecord, now: u64) -> Claim {
    match (record.state, record.due_ms) {
        (State::Queued, Some(due)) if due > now && record.lease_token.is_some() => {
            Claim::Leased(due)
        }
        (State::Queued, Some(due)) if due > now => Claim::NotDue(due),
        (State::Queued, _) => Claim::Free,
        _ => Claim::Gone,
    }
}

/// Takes a lease: one more receive, hidden until `now + visibility_ms`.
pub(crate) fn lease(record: &mut SubmissionRecord, now: u64, visibility_ms: u64, token: u64) {
    record.receive_count += 1;
    record.due_ms = Some(now + visibility_ms);
    record.lease_token = Some(token);
}

fn holds(record: &SubmissionRecord, token: u64) -> bool {
    record.state == State::Queued && record.lease_token == Some(token)
}

/// Pushes a lease's deadline to `now + visibility_ms`; the new deadline.
pub(crate) fn extend(
    record: &mut SubmissionRecord,
    token: u64,
    now: u64,
    visibility_ms: u64,
) -> Result<u64, SpoolError> {
    if !holds(record, token) {
        return Err(SpoolError::LeaseLost(record.id()));
    }
    let deadline = now + visibility_ms;
    record.due_ms = Some(deadline);
    Ok(deadline)
}

/// Out of the queue and the held set; no lease.
/// `now`, or the submitter's release time if that is still ahead.
fn not_before_release(record: &SubmissionRecord, now: u64) -> u64 {
    record.release_ms.map_or(now, |r| r.max(now))
}

fn dequeue(record: &mut SubmissionRecord) {
    record.due_ms = None;
    record.lease_token = None;
}

/// The next retry's delay after `receive_count` receives: base doubling up to the maximum,
/// ±20 % jitter so a burst of failures does not retry in lockstep.
pub(crate) fn backoff_ms(options: &SpoolOptions, rng: &mut impl Rng, receive_count: u32) -> u64 {
    let exp = receive_count.saturating_sub(1).min(30);
    let base = options
        .retry_base_ms
        .saturating_mul(1 << exp)
        .min(options.retry_max_ms);
    let jitter = base / 5;
    if jitter == 0 {
        return base;
    }
    base - jitter + rng.random_range(0..=2 * jitter)
}

/// Ends the lease `token` on `record`. `Sent` is recorded even when the lease is stale: sent
/// is what really happened, whatever another attempt did meanwhile (failed, dead-lettered).
/// The provider id, when one is given, is in `record.provider_id` afterwards.
pub(crate) fn settle(
    record: &mut SubmissionRecord,
    token: u64,
    now: u64,
    settlement: Settlement,
    options: &SpoolOptions,
    rng: &mut impl Rng,
) -> Settled {
    let held = holds(record, token);
    match settlement {
        Settlement::Sent {
            provider_id,
            message_id,
        } => {
            if record.state.was_sent() {
                return Settled::Stale;
            }
            dequeue(record);
            record.provider_id = Some(provider_id.clone());
            record.message_id = message_id;
            record.transition(now, State::Sent, Some(provider_id));
            // Feedback that overtook the send record (a crash window) applies now.
            let derived = record.derive_state();
            if derived != State::Sent {
                record.transition(now, derived, None);
            }
            Settled::Applied
        }
        _ if !held => Settled::Stale,
        Settlement::Failed { reason } => {
            dequeue(record);
            record.last_error = Some(reason.clone());
            record.transition(now, State::Failed, Some(reason));
            Settled::Applied
        }
        Settlement::Retry { reason, after_ms } => {
            record.last_error = Some(reason.clone());
            dequeue(record);
            if record.receive_count >= options.max_attempts {
                record.transition(now, State::Dead, Some(reason));
                Settled::DeadLettered
            } else {
                let due = now
                    + after_ms.unwrap_or_else(|| backoff_ms(options, rng, record.receive_count));
                record.due_ms = Some(due);
                record
                    .history
                    .push(Transition::new(now, State::Queued, Some(reason)));
                Settled::Requeued { due_ms: due }
            }
        }
        Settlement::Release { reason } => {
            record.lease_token = None;
            record.due_ms = Some(now);
            record.receive_count = record.receive_count.saturating_sub(1);
            record.last_error = Some(reason);
            Settled::Requeued { due_ms: now }
        }
    }
}

/// What an operator or submitter does by id. `NotFound` when the action does not apply to
/// the record's state; `Ok(false)` when it applies but changes nothing.
pub(crate) fn act(
    record: &mut SubmissionRecord,
    now: u64,
    action: Action,
) -> Result<bool, SpoolError> {
    let refuse = Err(SpoolError::NotFound(record.id()));
    match action {
        Action::Hold | Action::Park { .. } => {
            if record.state != State::Queued {
                return refuse;
            }
            let why = match action {
                Action::Park { reason } => reason,
                _ => "held by the operator".into(),
            };
            // Out of the queue (a lease in progress finds it changed), bytes kept.
            dequeue(record);
            record.transition(now, State::Held, Some(why));
        }
        Action::Release | Action::Unpark { .. } => {
            if record.state != State::Held {
                return refuse;
            }
            let why = match action {
                Action::Unpark { reason } => reason,
                _ => "released by the operator".into(),
            };
            dequeue(record);
            // A hold its submitter asked for (HOLDFOR, sendAt) outlives the operator's.
            record.due_ms = Some(not_before_release(record, now));
            record.transition(now, State::Queued, Some(why));
        }
        Action::RetryNow => {
            let Some(due) = record.due_ms.filter(|_| record.state == State::Queued) else {
                return refuse;
            };
            // A lease in force stays: making it due would hand it to a second sender.
            if record.lease_token.is_some() && due > now {
                return Ok(false);
            }
            let due_now = not_before_release(record, now);
            if due_now == due {
                return Ok(false);
            }
            record.due_ms = Some(due_now);
        }
        Action::SendNow => {
            match (record.state, record.due_ms) {
                (State::Held, _) => dequeue(record),
                // A lease in force stays (see RetryNow).
                (State::Queued, Some(due)) if record.lease_token.is_some() && due > now => {
                    return Ok(false)
                }
                (State::Queued, Some(_)) => {}
                _ => return refuse,
            }
            record.due_ms = Some(now);
            record.release_ms = None;
            record.transition(now, State::Queued, Some("sent now by the operator".into()));
        }
        Action::Delete => {
            if !matches!(record.state, State::Queued | State::Held | State::Dead) {
                return refuse;
            }
            dequeue(record);
            let reason = "deleted by the operator".to_string();
            record.last_error = Some(reason.clone());
            record.transition(now, State::Failed, Some(reason));
        }
        Action::Cancel { reason } => {
            if !matches!(record.state, State::Queued | State::Held) {
                return refuse;
            }
            dequeue(record);
            record.canceled = true;
            record.last_error = Some(reason.clone());
            record.transition(now, State::Failed, Some(reason));
        }
        Action::Redrive => {
            if record.state != State::Dead {
                return refuse;
            }
            record.due_ms = Some(now);
            record.lease_token = None;
            record.receive_count = 0;
            record.transition(now, State::Queued, Some("redriven".into()));
        }
    }
    Ok(true)
}

/// The submission one feedback event names: by our tag, else by the provider's id.
pub(crate) fn event_target(event: &FeedbackEvent) -> Target<'_> {
    match (event.submission_id, &event.provider_id) {
        (Some(id), _) => Target::Id(id),
        (None, Some(pid)) => Target::ProviderId(pid),
        (None, None) => Target::None,
    }
}

pub(crate) enum Target<'a> {
    Id(QueueId),
    ProviderId(&'a str),
    None,
}

/// Whether `record` (found through the event's target) is really the event's submission: a
/// tag can name a submission that is not ours (another Outbox sharing the configuration set),
/// and then the provider id must agree.
pub(crate) fn event_matches(event: &FeedbackEvent, record: &SubmissionRecord) -> bool {
    match (&event.provider_id, &record.provider_id) {
        (Some(event_pid), Some(ours)) => event_pid == ours,
        _ => true,
    }
}

/// The account, class and recipients an event applies to: the record's when it was matched,
/// else the event's tags (or every account and class).
pub(crate) fn event_scope(
    event: &FeedbackEvent,
    record: Option<&SubmissionRecord>,
) -> (String, String, Vec<String>) {
    let (account, class) = match record {
        Some(r) => (
            r.job.account_id.clone(),
            r.job.message_class.as_str().to_string(),
        ),
        None => (
            event
                .tag_account
                .clone()
                .unwrap_or_else(|| ALL_ACCOUNTS.into()),
            event
                .tag_class
                .clone()
                .unwrap_or_else(|| ALL_CLASSES.into()),
        ),
    };
    let recipients = if event.recipients.is_empty() {
        record.map(|r| r.job.recipients.clone()).unwrap_or_default()
    } else {
        event.recipients.clone()
    };
    (account, class, recipients)
}

/// The suppressions an event asks for (a hard bounce, a complaint), one per recipient, in the
/// event's scope.
pub(crate) fn event_suppressions(
    event: &FeedbackEvent,
    account: &str,
    class: &str,
    recipients: &[String],
    now: u64,
) -> Vec<Suppression> {
    let Some((reason, lasts_ms)) = &event.suppress else {
        return Vec::new();
    };
    recipients
        .iter()
        .map(|rcpt| {
            Suppression::new(
                rcpt,
                account,
                class,
                reason.clone(),
                now,
                lasts_ms.map(|d| now.saturating_add(d)),
            )
        })
        .collect()
}

/// Records the event's outcome for each recipient and moves the submission to the state they
/// imply; true if the record changed.
pub(crate) fn apply_event(
    record: &mut SubmissionRecord,
    event: &FeedbackEvent,
    recipients: &[String],
    now: u64,
) -> bool {
    let mut changed = false;
    for rcpt in recipients {
        changed |= record.report(
            rcpt,
            RecipientStatus {
                outcome: event.outcome,
                detail: event.detail.clone(),
                at_ms: event.at_ms,
            },
        );
    }
    if changed {
        let derived = record.derive_state();
        if derived != record.state {
            let detail = format!(
                "{} {}",
                event.outcome.as_str(),
                event.detail.as_deref().unwrap_or("")
            );
            record.transition(now, derived, Some(detail.trim_end().to_string()));
        }
    }
    changed
}
