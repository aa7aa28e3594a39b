//! Push (RFC 8620 §7.3 EventSource) and the spool watcher.
//!
//! The watcher follows `Spool::subscribe()`: for every changed record that belongs to a JMAP
//! submission it bumps the EmailSubmission state (so deliveryStatus changes from feedback are
//! pushed) and, once the transport has accepted the message, moves its Email from Drafts to
//! Sent and drops `$draft` — best effort: a failure is logged and retried on the next change
//! or restart, never propagated. A permanent failure leaves the Email in Drafts; the reason
//! is in the submission's deliveryStatus.

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
use super::submission_status::{view_hash, SubmissionMeta};
use super::Jmap;
use crate::spool::QueueId;

/// The data types whose states we push.
const TYPES: [&str; 5] = ["Mailbox", "Email", "Thread", "Identity", "EmailSubmission"];
/// Bounds on the client's `ping` (seconds).
const PING_MIN_SECS: u64 = 1;
const PING_MAX_SECS: u64 = 3600;

/// Brings the JMAP view of queue id `id` up to date with its spool record.
pub fn settle(jmap: &Jmap, id: QueueId) {
    if let Err(e) = try_settle(jmap, id) {
        tracing::warn!(%id, error = %format!("{e:#}"), "updating the JMAP view of a submission failed (will retry on the next change)");
    }
}

fn try_settle(jmap: &Jmap, id: QueueId) -> anyhow::Result<()> {
    let Some(account) = jmap.store.read()?.account_of_queue_id(id.0)? else {
        return Ok(());
    };
    let Some(record) = jmap.spool.get(id)? else {
        return Ok(());
    };
    let sub_id = id.to_string();
    // Most changes (enqueue, lease) change nothing a client sees: skip the write then.
    let unchanged = |meta: &SubmissionMeta| {
        meta.view == view_hash(meta, Some(&record)) && (meta.settled || !record.state.was_sent())
    };
    match jmap
        .store
        .read()?
        .get::<SubmissionMeta>(&account, T_SUBMISSION, &sub_id)?
    {
        Some(meta) if !unchanged(&meta) => {}
        _ => return Ok(()),
    }
    jmap.store.write(|tx| {
        let Some(mut meta) = tx.get::<SubmissionMeta>(&account, T_SUBMISSION, &sub_id)? else {
            return Ok(());
        };
        if unchanged(&meta) {
            return Ok(());
        }
        tx.touch(&account, "EmailSubmission", &sub_id, Kind::Updated);
        if record.state.was_sent() && !meta.settled {
            if mark_sent(tx, &account, &meta.email_id)? {
                tracing::info!(%id, email = %meta.email_id, "sent: Email moved from Drafts to Sent");
            }
            meta.settled = true;
        }
        meta.view = view_hash(&meta, Some(&record));
        tx.put(&account, T_SUBMISSION, &sub_id, &meta)?;
        Ok(())
    })
}

/// Every JMAP submission not yet settled (after a restart, or when the watcher lagged).
fn settle_all(jmap: &Jmap) {
    let pending = jmap.store.read().and_then(|rx| {
        let mut out = Vec::new();
        for (q, account) in rx.queue_ids()? {
            let meta: Option<SubmissionMeta> =
                rx.get(&account, T_SUBMISSION, &QueueId(q).to_string())?;
            // Canceled ones too: a cancel can race a send already in progress.
            if meta.is_some_and(|m| !m.settled) {
                out.push(QueueId(q));
            }
        }
        Ok(out)
    });
    match pending {
        Ok(ids) => ids.into_iter().for_each(|id| settle(jmap, id)),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "listing JMAP submissions failed"),
    }
}

/// Runs until shutdown, following the spool's change broadcast.
pub async fn watch_spool(jmap: Arc<Jmap>) {
    let mut changes = jmap.spool.subscribe();
    let mut stop = jmap.stop.clone();
    {
        let j = jmap.clone();
        let _ = tokio::task::spawn_blocking(move || settle_all(&j)).await;
    }
    loop {
        let next = tokio::select! {
            next = changes.recv() => next,
            _ = stop.wait_for(|s| *s) => return,
        };
        let j = jmap.clone();
        let work = match next {
            Ok(id) => tokio::task::spawn_blocking(move || settle(&j, id)),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "JMAP spool watcher lagged; re-reading every open submission"
                );
                tokio::task::spawn_blocking(move || settle_all(&j))
            }
            Err(RecvError::Closed) => return,
        };
        let _ = work.await;
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
