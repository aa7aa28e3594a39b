//! [`Queue`] on SQS with the ledger deciding (see the module above): a copy received is
//! claimed in DynamoDB before it is handed to a sender.

use std::time::Duration;

use aws_sdk_dynamodb::types::Select;
use aws_sdk_sqs::types::QueueAttributeName;

use super::items::{state_listings, Change, LISTING};
use super::{aws_error, AwsSpool};
use crate::domain::{QueueId, State, SubmissionRecord};
use crate::spool::rules::{self, Claim};
use crate::spool::{Action, Depth, Fut, Lease, Listing, Queue, Settled, Settlement, SpoolError};

/// SQS's longest message delay (DelaySeconds).
const MAX_DELAY_SECS: u64 = 900;
/// SQS's longest visibility timeout (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// SQS's longest long poll.
const MAX_WAIT_SECS: u64 = 20;
/// Receives in one poll that may bring only copies nobody can claim before it gives up.
const MAX_STALE_ROUNDS: usize = 10;
/// SQS's largest receive batch.
const MAX_BATCH: usize = 10;
/// How long a received copy stays hidden before its record is claimed: short, so a claim that
/// fails (DynamoDB unreachable) keeps the message out of sight for seconds, not a whole
/// visibility timeout. A claimed copy is then hidden for the lease's full length.
const CLAIM_WINDOW_SECS: u64 = 30;

/// Whole seconds from `now` until `at_ms`, rounded up (SQS counts in seconds).
fn secs_until(at_ms: u64, now: u64) -> u64 {
    at_ms.saturating_sub(now).div_ceil(1000)
}

fn parse_token(token: &str) -> Option<(u64, &str)> {
    let (nonce, receipt) = token.split_once(' ')?;
    Some((u64::from_str_radix(nonce, 16).ok()?, receipt))
}

impl AwsSpool {
    /// Puts a copy of `id` in the queue, visible after `delay_secs` (at most 900).
    pub(super) async fn send_copy(&self, id: QueueId, delay_secs: u64) -> Result<(), SpoolError> {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(id.to_string())
            .delay_seconds(delay_secs.min(MAX_DELAY_SECS) as i32)
            .send()
            .await
            .map_err(|e| aws_error("SQS SendMessage", e))?;
        Ok(())
    }

    async fn delete_copy(&self, receipt: &str) {
        if let Err(e) = self
            .sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            // The copy comes back and is dropped then: the record no longer matches it.
            let _ = aws_error("SQS DeleteMessage", e);
        }
    }

    async fn hide_copy(&self, receipt: &str, secs: u64) -> Result<(), SpoolError> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(secs.min(MAX_VISIBILITY_SECS) as i32)
            .send()
            .await
            .map_err(|e| aws_error("SQS ChangeMessageVisibility", e))?;
        Ok(())
    }

    /// A copy received at `now` (visibility counted from before the receive): claim its
    /// record, or put the copy where it belongs.
    async fn claim(
        &self,
        id: QueueId,
        receipt: &str,
        now: u64,
    ) -> Result<Option<Lease>, SpoolError> {
        let token = self.random().await;
        let visibility = self.options.visibility_timeout_ms;
        let claim = self
            .mutate(id, false, |record| {
                let Some(mut record) = record else {
                    return Ok(Change::Keep(Err(Claim::Gone)));
                };
                match rules::claim_of(&record, now) {
                    Claim::Free => {
                        rules::lease(&mut record, now, visibility, token);
                        let lease = Lease {
                            job: record.job.clone(),
                            token: format!("{token:016x} {receipt}"),
                            deadline_ms: now + visibility,
                            attempt: record.receive_count,
                        };
                        Ok(Change::Write(record, Ok(lease)))
                    }
                    other => Ok(Change::Keep(Err(other))),
                }
            })
            .await?;
        tracing::debug!(%id, claim = ?claim.as_ref().map(|l| l.attempt), "copy received");
        match claim {
            Ok(lease) => {
                // Hidden for the whole lease, counted from after the claim, so SQS does not
                // show the copy again before the ledger's deadline. (If this fails, the copy
                // shows up after the claim window and whoever gets it finds the lease in force
                // and hides it again.)
                let _ = self.hide_copy(receipt, visibility.div_ceil(1000)).await;
                Ok(Some(lease))
            }
            Err(Claim::Gone) | Err(Claim::Free) => {
                self.delete_copy(receipt).await;
                Ok(None)
            }
            // A node whose clock is behind, or an expired SQS visibility while the lease
            // was extended in the ledger: back out of sight until the lease runs out.
            Err(Claim::Leased(deadline)) => {
                // (If this fails the copy shows up again sooner and is looked at again.)
                let _ = self
                    .hide_copy(receipt, secs_until(deadline, now).max(1))
                    .await;
                Ok(None)
            }
            // Not due: a fresh copy with the remaining delay replaces this one, so waiting
            // spends no SQS receives (the redrive policy counts them).
            Err(Claim::NotDue(due)) => {
                self.send_copy(id, secs_until(due, now)).await?;
                self.delete_copy(receipt).await;
                Ok(None)
            }
        }
    }

    async fn count(&self, state: State) -> Result<u64, SpoolError> {
        let mut total = 0u64;
        for lst in state_listings(state) {
            let mut start = None;
            loop {
                let out = self
                    .ddb
                    .query()
                    .table_name(&self.table)
                    .index_name(LISTING)
                    .key_condition_expression("lst = :l")
                    .expression_attribute_values(":l", super::items::s(lst.clone()))
                    .select(Select::Count)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| aws_error("DynamoDB Query", e))?;
                total += out.count.max(0) as u64;
                start = out.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Ids of records in `state`, in listing order.
    pub(super) async fn ids_in(
        &self,
        state: State,
        limit: usize,
    ) -> Result<Vec<QueueId>, SpoolError> {
        let keys = self.list_keys(&state_listings(state), None, limit).await?;
        Ok(keys
            .iter()
            .filter_map(|(_, item)| super::items::get_s(item, "pk"))
            .filter_map(|pk| pk.strip_prefix("sub#")?.parse().ok())
            .collect())
    }
}

impl Queue for AwsSpool {
    fn enqueue(&self, record: SubmissionRecord) -> Fut<'_, ()> {
        Box::pin(async move {
            let id = record.job.id;
            let now = self.clock.now_ms();
            let due = record.due_ms.unwrap_or(now);
            self.create(record, true).await?;
            if let Err(e) = self.send_copy(id, secs_until(due, now)).await {
                // Not acknowledged: the record must not stay as a queued submission nobody
                // will ever receive. (If this also fails, the record is an orphan the
                // operator sees as queued; nothing was promised to the client.)
                let reason = "not accepted: the queue was unreachable".to_string();
                let _ = self
                    .mutate(id, true, |r| {
                        Ok(match r {
                            Some(mut r) if r.state == State::Queued => {
                                r.due_ms = None;
                                r.last_error = Some(reason.clone());
                                r.transition(now, State::Failed, Some(reason.clone()));
                                Change::Write(r, ())
                            }
                            _ => Change::Keep(()),
                        })
                    })
                    .await;
                return Err(e);
            }
            Ok(())
        })
    }

    fn lease(&self, max: usize, wait: Duration) -> Fut<'_, Vec<Lease>> {
        Box::pin(async move {
            let until = tokio::time::Instant::now() + wait;
            let mut rounds = 0;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                let out = self
                    .sqs
                    .receive_message()
                    .queue_url(&self.queue_url)
                    .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
                    .visibility_timeout(
                        self.options
                            .visibility_timeout_ms
                            .div_ceil(1000)
                            .min(CLAIM_WINDOW_SECS) as i32,
                    )
                    .wait_time_seconds(left.as_secs().min(MAX_WAIT_SECS) as i32)
                    .send()
                    .await
                    .map_err(|e| aws_error("SQS ReceiveMessage", e))?;
                let mut leases = Vec::new();
                let messages = out.messages.unwrap_or_default();
                let received = !messages.is_empty();
                for message in messages {
                    let (Some(body), Some(receipt)) = (message.body(), message.receipt_handle())
                    else {
                        continue;
                    };
                    let Ok(id) = body.trim().parse::<QueueId>() else {
                        tracing::warn!(body, "dropping a queue message that names no submission");
                        self.delete_copy(receipt).await;
                        continue;
                    };
                    // The time the copy arrived (a long poll may have waited seconds): what
                    // is due and the lease's deadline count from now.
                    let now = self.clock.now_ms();
                    if let Some(lease) = self.claim(id, receipt, now).await? {
                        leases.push(lease);
                    }
                }
                // Copies that were not claimable (stale, held, someone else's lease) do not
                // end even a zero-wait poll: what is due behind them is looked for too.
                let stale_only = received && rounds < MAX_STALE_ROUNDS;
                rounds += 1;
                if !leases.is_empty()
                    || (!stale_only && (tokio::time::Instant::now() >= until || left.is_zero()))
                {
                    return Ok(leases);
                }
            }
        })
    }

    fn extend<'a>(&'a self, lease: &'a Lease, visibility_ms: u64) -> Fut<'a, u64> {
        Box::pin(async move {
            let id = lease.job.id;
            let (token, receipt) = parse_token(&lease.token).ok_or(SpoolError::LeaseLost(id))?;
            let now = self.clock.now_ms();
            let deadline = self
                .mutate(id, false, |record| {
                    let mut record = record.ok_or(SpoolError::NotFound(id))?;
                    let deadline = rules::extend(&mut record, token, now, visibility_ms)?;
                    Ok(Change::Write(record, deadline))
                })
                .await?;
            // The ledger's lease is what keeps others out; the copy's visibility only saves
            // them a receive.
            if let Err(e) = self.hide_copy(receipt, visibility_ms.div_ceil(1000)).await {
                tracing::debug!(%id, error = %e, "extending the copy's visibility failed");
            }
            Ok(deadline)
        })
    }

    fn settle<'a>(&'a self, lease: &'a Lease, settlement: Settlement) -> Fut<'a, Settled> {
        Box::pin(async move {
            let id = lease.job.id;
            let (token, receipt) = parse_token(&lease.token).ok_or(SpoolError::LeaseLost(id))?;
            let now = self.clock.now_ms();
            let options = self.options.clone();
            let seed = self.random().await;
            // The provider id first: feedback can name it as soon as the provider answered,
            // and an id item for a record that did not change is harmless.
            if let Settlement::Sent { provider_id, .. } = &settlement {
                if !provider_id.is_empty() {
                    self.put_provider_id(provider_id, id, now).await?;
                }
            }
            let (settled, before, after) = self
                .mutate(id, true, |record| {
                    let mut record = record.ok_or(SpoolError::NotFound(id))?;
                    let before = record.clone();
                    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
                    let settled = rules::settle(
                        &mut record,
                        token,
                        now,
                        settlement.clone(),
                        &options,
                        &mut rng,
                    );
                    Ok(match settled {
                        Settled::Stale => Change::Keep((settled, before, None)),
                        _ => Change::Write(record.clone(), (settled, before, Some(record))),
                    })
                })
                .await?;
            let Some(after) = after else {
                return Ok(settled);
            };
            self.after_change(&before, &after).await?;
            match settled {
                Settled::Requeued { due_ms } if due_ms <= now => {
                    // Released: a fresh copy, so the release spends no SQS receive.
                    self.send_copy(id, 0).await?;
                    self.delete_copy(receipt).await;
                }
                Settled::Requeued { due_ms } => {
                    // Backoff: the same copy, out of sight until due (re-delayed on receipt
                    // if that is beyond SQS's 12 hours). If the copy is gone (SQS moved it to
                    // the dead-letter queue meanwhile), a new one.
                    let delay = secs_until(due_ms, now);
                    if self.hide_copy(receipt, delay).await.is_err() {
                        self.send_copy(id, delay).await?;
                    }
                }
                _ => self.delete_copy(receipt).await,
            }
            Ok(settled)
        })
    }

    fn act(&self, id: QueueId, action: Action) -> Fut<'_, ()> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let (before, after) = self
                .mutate(id, true, |record| {
                    let mut record = record.ok_or(SpoolError::NotFound(id))?;
                    let before = record.clone();
                    Ok(if rules::act(&mut record, now, action.clone())? {
                        Change::Write(record.clone(), (before, Some(record)))
                    } else {
                        Change::Keep((before, None))
                    })
                })
                .await?;
            let Some(after) = after else { return Ok(()) };
            self.after_change(&before, &after).await?;
            // Released, retried now, sent now or redriven: a copy that is due then (a release
            // before the submitter's release time waits for it). An older copy, if any, is
            // dropped or re-hidden when it is received.
            let queued = |r: &SubmissionRecord| r.due_ms.filter(|_| r.state == State::Queued);
            if let Some(due) = queued(&after).filter(|_| queued(&before) != queued(&after)) {
                self.send_copy(id, secs_until(due, now)).await?;
            }
            Ok(())
        })
    }

    fn list(&self, which: Listing, limit: usize) -> Fut<'_, Vec<QueueId>> {
        Box::pin(async move {
            let state = match which {
                Listing::Queued => State::Queued,
                Listing::Held => State::Held,
                Listing::Dead => State::Dead,
            };
            self.ids_in(state, limit).await
        })
    }

    fn depth(&self) -> Fut<'_, crate::spool::Depth> {
        Box::pin(async move {
            let out = self
                .sqs
                .get_queue_attributes()
                .queue_url(&self.queue_url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
                .map_err(|e| aws_error("SQS GetQueueAttributes", e))?;
            let queued: u64 = out
                .attributes
                .unwrap_or_default()
                .values()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum();
            let held = self.count(State::Held).await?;
            let dead = self.count(State::Dead).await?;
            Ok(Depth {
                queued,
                held,
                dead,
                stored_messages: queued + held + dead,
                stored_bytes: 0,
            })
        })
    }

    /// No local bound: SQS, S3 and DynamoDB scale with the account's limits.
    fn has_room(&self, _size: u64) -> bool {
        true
    }

    fn visibility_timeout_ms(&self) -> u64 {
        self.options.visibility_timeout_ms
    }
}

impl AwsSpool {
    /// What follows a record's change outside the record: once it can no longer be sent, its
    /// message bytes go.
    pub(super) async fn after_change(
        &self,
        before: &SubmissionRecord,
        after: &SubmissionRecord,
    ) -> Result<(), SpoolError> {
        if rules::keeps_blob(before) && !rules::keeps_blob(after) {
            // A failure leaves an object the bucket's lifecycle rule expires.
            use crate::spool::Blobs;
            if let Err(e) = self.delete(after.job.id).await {
                tracing::warn!(id = %after.job.id, error = %e, "deleting sent message bytes failed");
            }
        }
        Ok(())
    }
}

impl AwsSpool {
    /// Copies SQS's redrive policy moved to the dead-letter queue (received
    /// `MAX_RECEIVE_COUNT` times without an outcome: a node dying on them) become dead
    /// letters in the ledger, where they are listed, redriven and purged like any other.
    pub(super) async fn fold_dead_letters(&self) -> Result<u64, SpoolError> {
        let mut folded = 0;
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.dead_letter_url)
                .max_number_of_messages(MAX_BATCH as i32)
                .visibility_timeout(60)
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(|e| aws_error("SQS ReceiveMessage (dead letters)", e))?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(folded);
            }
            for message in messages {
                let Some(receipt) = message.receipt_handle() else {
                    continue;
                };
                if let Some(id) = message
                    .body()
                    .and_then(|b| b.trim().parse::<QueueId>().ok())
                {
                    let now = self.clock.now_ms();
                    let reason = format!(
                        "received {} times without an outcome (moved by the queue's redrive policy)",
                        super::setup::MAX_RECEIVE_COUNT
                    );
                    let changed = self
                        .mutate(id, true, |record| {
                            Ok(match record {
                                Some(mut r) if rules::claim_of(&r, now) != Claim::Gone => {
                                    r.due_ms = None;
                                    r.lease_token = None;
                                    r.last_error = Some(reason.clone());
                                    r.transition(now, State::Dead, Some(reason.clone()));
                                    Change::Write(r, true)
                                }
                                _ => Change::Keep(false),
                            })
                        })
                        .await?;
                    folded += u64::from(changed);
                }
                if let Err(e) = self
                    .sqs
                    .delete_message()
                    .queue_url(&self.dead_letter_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                {
                    let _ = aws_error("SQS DeleteMessage (dead letters)", e);
                }
            }
        }
    }
}
