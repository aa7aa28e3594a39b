//! Push (RFC 8620 §7.3 EventSource) and the ledger watcher.
//!
//! The watcher follows the ledger's change feed from a cursor kept in the JMAP store, so a
//! restart resumes where it stopped instead of walking every submission ever made. For every
//! changed record with a JMAP link it brings the EmailSubmission's view up to date: creates it
//! if the write after `EmailSubmission/set` did not happen, bumps the EmailSubmission state
//! when undoStatus or deliveryStatus changed (so feedback is pushed), moves the Email from
//! Drafts to Sent once the transport accepted it (a new Email with the provider's Message-ID
//! when the provider replaced it, see `email_set::mark_sent`), and says Destroyed when retention removed
//! the record. Best effort: a failure is logged and the same change is read again.
//! A permanent failure leaves the Email in Drafts; the reason is in the deliveryStatus.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::Uri;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::email_set::mark_sent;
use super::store::{state_string, Kind, StateChange, T_SUBMISSION, T_UPLOAD};
use super::submission_status::{view_hash, SubmissionView};
use super::Jmap;
use crate::domain::{QueueId, SubmissionRecord};

/// The data types whose states we push.
const TYPES: [&str; 5] = ["Mailbox", "Email", "Thread", "Identity", "EmailSubmission"];
/// Bounds on the client's `ping` (seconds).
const PING_MIN_SECS: u64 = 1;
const PING_MAX_SECS: u64 = 3600;
/// The JMAP store's counter holding the ledger change-feed position applied so far.
const FEED_CURSOR: &str = "ledger_feed";
/// Changes read from the feed at a time.
const FEED_PAGE: usize = 256;

/// Brings the JMAP view of queue id `id` up to date with its ledger record.
/// Failures are logged; the watcher reads the change again.
pub async fn settle(jmap: &Jmap, id: QueueId) {
    if let Err(e) = try_settle(jmap, id).await {
        tracing::warn!(%id, error = %format!("{e:#}"), "updating the JMAP view of a submission failed (will retry)");
    }
}

async fn try_settle(jmap: &Jmap, id: QueueId) -> anyhow::Result<()> {
    let record = jmap.spool.ledger.get(id).await?;
    apply(jmap, id, record.as_ref())
}

fn apply(jmap: &Jmap, id: QueueId, record: Option<&SubmissionRecord>) -> anyhow::Result<()> {
    let sub_id = id.to_string();
    let Some(record) = record else {
        return forget(jmap, id);
    };
    let Some(link) = &record.jmap else {
        return Ok(());
    };
    let account = record.job.account_id.as_str();
    let view = view_hash(record);
    // Most changes (a lease, a retry) change nothing a client sees: skip the write then.
    let unchanged = |v: &SubmissionView| {
        v.destroyed || (v.view == view && (v.settled || !record.state.was_sent()))
    };
    let current = jmap
        .store
        .read()?
        .get::<SubmissionView>(account, T_SUBMISSION, &sub_id)?;
    if current.as_ref().is_some_and(unchanged) {
        return Ok(());
    }
    jmap.store.write(|tx| {
        let existing = tx.get::<SubmissionView>(account, T_SUBMISSION, &sub_id)?;
        let kind = match &existing {
            Some(v) if unchanged(v) => return Ok(()),
            Some(_) => Kind::Updated,
            None => Kind::Created,
        };
        let mut v = existing.unwrap_or_default();
        if record.state.was_sent() && !v.settled {
            if let Some(copy) =
                mark_sent(tx, account, &link.email_id, record.message_id.as_deref())?
            {
                tracing::info!(%id, draft = %link.email_id, sent = %copy, "sent: Email moved from Drafts to Sent");
            }
            v.settled = true;
        }
        v.view = view;
        tx.put(account, T_SUBMISSION, &sub_id, &v)?;
        tx.index_queue_id(id.0, account)?;
        tx.touch(account, "EmailSubmission", &sub_id, kind);
        Ok(())
    })
}

/// Retention removed the record: so goes its EmailSubmission.
fn forget(jmap: &Jmap, id: QueueId) -> anyhow::Result<()> {
    let sub_id = id.to_string();
    let Some(account) = jmap.store.read()?.account_of_queue_id(id.0)? else {
        return Ok(());
    };
    jmap.store.write(|tx| {
        let shown = tx
            .get::<SubmissionView>(&account, T_SUBMISSION, &sub_id)?
            .is_some_and(|v| !v.destroyed);
        tx.remove(&account, T_SUBMISSION, &sub_id)?;
        tx.unindex_queue_id(id.0)?;
        if shown {
            tx.touch(&account, "EmailSubmission", &sub_id, Kind::Destroyed);
        }
        Ok(())
    })
}

/// Every EmailSubmission not yet settled: when the feed no longer holds what the watcher
/// missed (it was stopped longer than the feed's retention).
async fn settle_all(jmap: &Jmap) {
    let pending = jmap.store.read().and_then(|rx| {
        let mut out = Vec::new();
        for (q, account) in rx.queue_ids()? {
            let view: Option<SubmissionView> =
                rx.get(&account, T_SUBMISSION, &QueueId(q).to_string())?;
            if view.is_some_and(|v| !v.settled && !v.destroyed) {
                out.push(QueueId(q));
            }
        }
        Ok(out)
    });
    match pending {
        Ok(ids) => {
            for id in ids {
                settle(jmap, id).await;
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "listing JMAP submissions failed"),
    }
}

/// Where the watcher is in the ledger's change feed. The position is saved in the JMAP store
/// when a page touched a JMAP submission, and otherwise at most every
/// [`CURSOR_SAVE_INTERVAL`]: SMTP traffic moves the feed too, and saving after each of its
/// commits would add an fsync to each. Re-reading changes after a restart is harmless (a view
/// that is up to date is not written).
pub struct FeedCursor {
    at: u64,
    saved: u64,
    saved_when: tokio::time::Instant,
}

/// Longest the saved feed position lags the applied one without JMAP work.
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(10);

impl FeedCursor {
    /// The position saved in the JMAP store.
    pub fn load(jmap: &Jmap) -> anyhow::Result<FeedCursor> {
        let at = jmap.store.read()?.counter(FEED_CURSOR)?;
        Ok(FeedCursor {
            at,
            saved: at,
            saved_when: tokio::time::Instant::now(),
        })
    }

    fn save(&mut self, jmap: &Jmap) -> anyhow::Result<()> {
        if self.at != self.saved {
            jmap.store
                .write(|tx| tx.set_counter(FEED_CURSOR, self.at))?;
            self.saved = self.at;
        }
        self.saved_when = tokio::time::Instant::now();
        Ok(())
    }
}

/// Applies one page of the ledger's change feed; false when there was nothing new.
pub async fn follow(jmap: &Jmap, cursor: &mut FeedCursor) -> anyhow::Result<bool> {
    let page = jmap.spool.ledger.changes(cursor.at, FEED_PAGE).await?;
    if page.truncated {
        tracing::warn!(cursor = cursor.at, "the ledger's change feed no longer holds what JMAP missed; re-reading every open submission");
        settle_all(jmap).await;
    }
    let mut failed = None;
    let mut touched_jmap = false;
    for change in &page.changes {
        if change.jmap {
            touched_jmap = true;
            if let Err(e) = try_settle(jmap, change.id).await {
                // Stop here: the next round starts again with this change.
                failed = Some(e.context(format!("submission {}", change.id)));
                break;
            }
        }
        cursor.at = change.seq;
    }
    if failed.is_none() {
        cursor.at = page.next;
    }
    if touched_jmap || cursor.saved_when.elapsed() >= CURSOR_SAVE_INTERVAL {
        cursor.save(jmap)?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(!page.changes.is_empty()),
    }
}

/// Runs until shutdown, following the ledger's change feed.
pub async fn watch_ledger(jmap: Arc<Jmap>) {
    let mut stop = jmap.stop.clone();
    let mut cursor = loop {
        match FeedCursor::load(&jmap) {
            Ok(cursor) => break cursor,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the JMAP feed position failed; trying again in a second");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    };
    loop {
        let more = match follow(&jmap, &mut cursor).await {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "following the ledger's changes failed; trying again in a second");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            _ = jmap.spool.ledger.wait_for_changes(cursor.at, CURSOR_SAVE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => {
                let _ = cursor.save(&jmap);
                return;
            }
        }
    }
}

/// Deletes uploads older than [`UPLOAD_TTL_MS`](super::limits::UPLOAD_TTL_MS), hourly.
pub async fn expire_uploads(jmap: Arc<Jmap>) {
    let mut stop = jmap.stop.clone();
    loop {
        let j = jmap.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = expire_uploads_now(&j) {
                tracing::warn!(error = %format!("{e:#}"), "expiring JMAP uploads failed");
            }
        })
        .await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass of [`expire_uploads`]; returns how many went.
pub fn expire_uploads_now(jmap: &Jmap) -> anyhow::Result<usize> {
    let cutoff = jmap.now_ms().saturating_sub(super::limits::UPLOAD_TTL_MS);
    let old: Vec<String> = jmap
        .store
        .read()?
        .list::<u64>("", T_UPLOAD)?
        .into_iter()
        .filter(|(_, at)| *at < cutoff)
        .map(|(key, _)| key)
        .collect();
    if old.is_empty() {
        return Ok(0);
    }
    jmap.store.write(|tx| {
        for key in &old {
            if let Some((account, blob)) = key.rsplit_once('/') {
                tx.remove_blob(account, blob)?;
            }
            tx.remove("", T_UPLOAD, key)?;
        }
        Ok(())
    })?;
    tracing::info!(count = old.len(), "expired JMAP uploads");
    Ok(old.len())
}

/// `key=value` pairs of a query string, percent-decoded.
pub fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Stream {
    changes: tokio::sync::broadcast::Receiver<StateChange>,
    ping: Option<tokio::time::Interval>,
    stop: tokio::sync::watch::Receiver<bool>,
    account: String,
    types: Option<Vec<String>>,
    close_after_state: bool,
    first: Option<String>,
    done: bool,
}

fn state_event(account: &str, changed: &BTreeMap<String, String>) -> String {
    let data = json!({"@type": "StateChange", "changed": {account: changed}});
    format!("event: state\ndata: {data}\n\n")
}

impl Stream {
    fn wanted(&self, changed: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (ty, state) in changed {
            let mut names = vec![ty.as_str()];
            if ty == "Email" {
                names.push("Thread");
            }
            for name in names {
                if self
                    .types
                    .as_ref()
                    .is_none_or(|t| t.iter().any(|x| x == name))
                {
                    out.insert(name.to_string(), state.clone());
                }
            }
        }
        out
    }

    async fn next_event(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            // RFC 8620 §7.3 closeafter=state: end the response after pushing a state event —
            // the first one included.
            self.done = self.close_after_state;
            return Some(first);
        }
        loop {
            let ping = async {
                match &mut self.ping {
                    Some(i) => {
                        i.tick().await;
                        Some(i.period().as_secs())
                    }
                    None => std::future::pending().await,
                }
            };
            let change = tokio::select! {
                change = self.changes.recv() => change,
                secs = ping => {
                    let secs = secs.unwrap_or(0);
                    return Some(format!("event: ping\ndata: {}\n\n", json!({"interval": secs})));
                }
                _ = self.stop.wait_for(|s| *s) => return None,
            };
            match change {
                Ok(c) if c.account == self.account => {
                    let wanted = self.wanted(&c.changed);
                    if wanted.is_empty() {
                        continue;
                    }
                    self.done = self.close_after_state;
                    return Some(state_event(&self.account, &wanted));
                }
                Ok(_) => continue,
                // Missed some: a state event naming nothing makes the client re-sync.
                Err(RecvError::Lagged(_)) => {
                    return Some(format!(
                        "event: state\ndata: {}\n\n",
                        json!({"@type": "StateChange", "changed": {}})
                    ));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// `GET /jmap/eventsource?types=…&closeafter=state|no&ping=N`.
pub async fn eventsource(
    State(jmap): State<Arc<Jmap>>,
    parts: axum::http::request::Parts,
) -> Response {
    let uri = &parts.uri;
    let pairs = query_pairs(uri);
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let account = match jmap
        .auth
        .authenticate(&parts.headers, &parts.extensions)
        .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let types = match param("types") {
        None | Some("*") | Some("") => None,
        Some(t) => Some(
            t.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>(),
        ),
    };
    let close_after_state = match param("closeafter") {
        None | Some("no") => false,
        Some("state") => true,
        Some(_) => {
            return super::problem(
                StatusCode::BAD_REQUEST,
                "about:blank",
                "closeafter must be state or no",
                None,
            )
        }
    };
    let ping = param("ping")
        .and_then(|p| p.parse::<u64>().ok())
        .filter(|p| *p > 0)
        .map(|p| {
            let period = Duration::from_secs(p.clamp(PING_MIN_SECS, PING_MAX_SECS));
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
    // Subscribe before reading the current states, so nothing falls between.
    let changes = jmap.store.subscribe();
    let id = account.account_id.clone();
    let current = match jmap.store.read() {
        Ok(rx) => {
            let mut m = BTreeMap::new();
            for ty in TYPES {
                let stored = if ty == "Thread" { "Email" } else { ty };
                m.insert(
                    ty.to_string(),
                    state_string(rx.state(&id, stored).unwrap_or(0)),
                );
            }
            m
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let mut stream = Stream {
        changes,
        ping,
        stop: jmap.stop.clone(),
        account: id.clone(),
        types,
        close_after_state: false,
        first: None,
        done: false,
    };
    stream.first = Some(state_event(&id, &stream.wanted(&current)));
    stream.close_after_state = close_after_state;
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let event = s.next_event().await?;
        Some((Ok::<_, Infallible>(event), s))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
