//! The read-only pages. Listings come from [`admin::handle`](crate::admin::handle), as the
//! CLI's do; each action button posts to `/console/action` (admins only).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::html::{self, action, age, esc};
use super::{chart, see_other, Console, Session};
use crate::admin::{AdminError, Request};
use crate::clock::rfc3339;
use crate::domain::{QueueId, State as MailState, SubmissionRecord};
use crate::spool::Listing;

/// Rows shown per listing (the admin socket's own bound is larger).
const MAX_ROWS: usize = 200;
/// Hours the overview's chart covers.
const CHART_HOURS: usize = 48;

fn query(raw: &Option<String>) -> std::collections::HashMap<String, String> {
    super::form_fields(raw.as_deref().unwrap_or("").as_bytes())
}

/// The result of the action just done (`?done=hold&changed=1`), for the page to say.
fn notice(q: &std::collections::HashMap<String, String>) -> String {
    let known = [
        "retry",
        "hold",
        "release",
        "send_now",
        "delete",
        "redrive",
        "unsuppress",
        "reputation_release",
    ];
    match (
        q.get("done"),
        q.get("changed").and_then(|n| n.parse::<u64>().ok()),
    ) {
        (Some(op), Some(n)) if known.contains(&op.as_str()) => {
            // As its button says it: "send now", "reputation release".
            let op = op.replace('_', " ");
            format!("<p class=\"notice\" id=\"notice\">{op}: {n} changed</p>")
        }
        _ => String::new(),
    }
}

/// Runs `f` for a signed-in operator; others are sent to the sign-in page.
macro_rules! signed_in {
    ($console:expr, $headers:expr) => {
        match $console.session(&$headers) {
            Some(session) => session,
            None => return see_other("/console/login"),
        }
    };
}

fn ok(title: &str, session: &Session, body: &str) -> Response {
    super::html(StatusCode::OK, html::page(title, Some(session), body))
}

fn failed(session: &Session, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "console page failed");
    super::html(
        StatusCode::SERVICE_UNAVAILABLE,
        html::page(
            "Unavailable",
            Some(session),
            &format!("<p class=\"error\">{}</p>", esc(&e.to_string())),
        ),
    )
}

pub async fn overview(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = signed_in!(console, headers);
    let now = console.clock.now_ms();
    let depth = match console.spool.queue.depth().await {
        Ok(depth) => depth,
        Err(e) => return failed(&session, e),
    };
    let mut body = notice(&query(&raw));
    let _ = write!(
        body,
        "<section class=\"cards\">\
         <div class=\"card\"><span>Queued</span><strong id=\"depth-queued\">{}</strong></div>\
         <div class=\"card\"><span>Held</span><strong id=\"depth-held\">{}</strong></div>\
         <div class=\"card\"><span>Dead letters</span><strong id=\"depth-dead\">{}</strong></div>\
         <div class=\"card\"><span>Stored</span><strong>{} msgs, {} KiB</strong></div>",
        depth.queued,
        depth.held,
        depth.dead,
        depth.stored_messages,
        depth.stored_bytes / 1024
    );
    // The oldest by queue id alone (an id starts with its creation time): the queue's index
    // is read, not every record.
    for (which, label) in [
        (Listing::Queued, "Oldest queued"),
        (Listing::Held, "Oldest held"),
    ] {
        let oldest = match console.spool.queue.list(which, usize::MAX).await {
            Ok(ids) => ids.into_iter().map(QueueId::created_ms).min(),
            Err(e) => return failed(&session, e),
        };
        let _ = write!(
            body,
            "<div class=\"card\"><span>{label}</span><strong>{}</strong></div>",
            oldest.map_or("—".to_string(), |ms| age(now, ms))
        );
    }
    body.push_str("</section>");
    let report = console.reputation.report();
    let _ = write!(
        body,
        "<section><h2>Mail flow, last {CHART_HOURS} hours (UTC)</h2>{}</section>{}",
        chart::svg(&chart::HourlySeries::from_points(
            &report.series,
            CHART_HOURS
        )),
        super::reputation::panel(&session, &report, now)
    );
    ok("Overview", &session, &body)
}

async fn listing(
    console: &Console,
    state: MailState,
) -> Result<Vec<SubmissionRecord>, crate::admin::AdminError> {
    let request = if state == MailState::Dead {
        Request::DlqList
    } else {
        Request::QueueList {
            state: Some(state),
            account: None,
            recipient: None,
        }
    };
    Ok(crate::admin::handle(&console.spool, request).await?.records)
}

fn state_name(state: MailState) -> String {
    format!("{state:?}").to_lowercase()
}

const LISTED_STATES: [MailState; 7] = [
    MailState::Queued,
    MailState::Held,
    MailState::Sent,
    MailState::Delivered,
    MailState::Bounced,
    MailState::Complained,
    MailState::Failed,
];

/// The buttons a record in `state` offers (admins only).
fn actions_for(session: &Session, record: &SubmissionRecord, back: &str) -> String {
    let id = record.id().to_string();
    let ops: &[&str] = match record.state {
        MailState::Queued => &["retry", "send_now", "hold", "delete"],
        MailState::Held => &["release", "send_now", "delete"],
        MailState::Dead => &["redrive", "delete"],
        _ => &[],
    };
    ops.iter()
        .map(|op| action(session, op, &[("id", &id)], back))
        .collect()
}

fn records_table(session: &Session, records: &[SubmissionRecord], now: u64, back: &str) -> String {
    let mut out = String::from(
        "<table class=\"records\"><thead><tr><th>Id</th><th>State</th><th>Age</th><th>Class</th>\
         <th>From</th><th>To</th><th>Attempts</th><th>Last error</th><th></th></tr></thead><tbody>",
    );
    for r in records.iter().take(MAX_ROWS) {
        let id = r.id().to_string();
        let mut to = r
            .job
            .recipients
            .iter()
            .take(3)
            .map(|a| esc(a))
            .collect::<Vec<_>>()
            .join(", ");
        if r.job.recipients.len() > 3 {
            let _ = write!(to, " +{}", r.job.recipients.len() - 3);
        }
        let _ = write!(
            out,
            "<tr data-id=\"{id}\"><td><a href=\"/console/submission/{id}\">{id}</a></td>\
             <td class=\"state\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{to}</td><td>{}</td>\
             <td class=\"err\">{}</td><td class=\"actions\">{}</td></tr>",
            state_name(r.state),
            age(now, r.created_ms),
            r.job.message_class.as_str(),
            esc(&r.job.mail_from),
            r.receive_count,
            esc(r.last_error.as_deref().unwrap_or("")),
            actions_for(session, r, back)
        );
    }
    out.push_str("</tbody></table>");
    if records.len() > MAX_ROWS {
        let _ = write!(
            out,
            "<p>Showing the first {MAX_ROWS} of {}; `outbox queue list` shows all.</p>",
            records.len()
        );
    }
    if records.is_empty() {
        out.push_str("<p class=\"empty\">None.</p>");
    }
    out
}

pub async fn queue(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = signed_in!(console, headers);
    let q = query(&raw);
    let state = q
        .get("state")
        .and_then(|s| LISTED_STATES.into_iter().find(|st| state_name(*st) == *s))
        .unwrap_or(MailState::Queued);
    let records = match listing(&console, state).await {
        Ok(records) => records,
        Err(e) => return failed(&session, e),
    };
    let name = state_name(state);
    let mut body = notice(&q);
    body.push_str("<nav class=\"states\">");
    for st in LISTED_STATES {
        let n = state_name(st);
        let _ = write!(body, "<a href=\"/console/queue?state={n}\">{n}</a>");
    }
    let back = format!("/console/queue?state={name}");
    let _ = write!(body, "</nav><h2>{} ({})</h2>", esc(&name), records.len());
    match state {
        MailState::Queued => {
            body.push_str(&action(&session, "retry", &[("all", "1")], &back));
            body.push_str(&action(&session, "hold", &[("all", "1")], &back));
        }
        MailState::Held => body.push_str(&action(&session, "release", &[("all", "1")], &back)),
        _ => {}
    }
    body.push_str(&records_table(
        &session,
        &records,
        console.clock.now_ms(),
        &back,
    ));
    ok("Queue", &session, &body)
}

pub async fn dead_letters(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = signed_in!(console, headers);
    let records = match listing(&console, MailState::Dead).await {
        Ok(records) => records,
        Err(e) => return failed(&session, e),
    };
    let back = "/console/dlq";
    let mut body = notice(&query(&raw));
    let _ = write!(body, "<h2>Dead letters ({})</h2>", records.len());
    if !records.is_empty() {
        body.push_str(&action(&session, "redrive", &[("all", "1")], back));
    }
    body.push_str(&records_table(
        &session,
        &records,
        console.clock.now_ms(),
        back,
    ));
    ok("Dead letters", &session, &body)
}

pub async fn suppressions(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = signed_in!(console, headers);
    let entries = match crate::admin::handle(&console.spool, Request::SuppressionList).await {
        Ok(response) => response.suppressions,
        Err(e) => return failed(&session, e),
    };
    let now = console.clock.now_ms();
    let mut body = notice(&query(&raw));
    let _ = write!(
        body,
        "<h2>Suppressions ({})</h2><table class=\"records\" id=\"suppressions\"><thead><tr>\
         <th>Address</th><th>Account</th><th>Class</th><th>Reason</th><th>Since</th>\
         <th>Expires</th><th></th></tr></thead><tbody>",
        entries.len()
    );
    for s in entries.iter().take(MAX_ROWS) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.address),
            esc(&s.account),
            esc(&s.class),
            esc(&s.reason),
            age(now, s.at_ms),
            s.expires_ms.map_or("never".into(), rfc3339),
            action(
                &session,
                "unsuppress",
                &[
                    ("address", &s.address),
                    ("class", &s.class),
                    ("account", &s.account)
                ],
                "/console/suppressions"
            )
        );
    }
    body.push_str("</tbody></table>");
    ok("Suppressions", &session, &body)
}

pub async fn submission(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = signed_in!(console, headers);
    let record = match crate::admin::handle(&console.spool, Request::QueueShow { id }).await {
        Ok(response) => response.records.into_iter().next(),
        Err(AdminError::NoSuch(_) | AdminError::Usage(_)) => None,
        Err(AdminError::Spool(crate::spool::SpoolError::NotFound(_))) => None,
        Err(e) => return failed(&session, e),
    };
    let Some(r) = record else {
        return super::html(
            StatusCode::NOT_FOUND,
            html::page(
                "Not found",
                Some(&session),
                "<p class=\"error\">No such submission.</p>",
            ),
        );
    };
    let id = r.id().to_string();
    let back = format!("/console/submission/{id}");
    let mut body = notice(&query(&raw));
    let job = &r.job;
    let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or("—"));
    let _ = write!(
        body,
        "<h2>Submission {id}</h2><div class=\"actions\">{}</div>\
         <table class=\"facts\" id=\"submission\">\
         <tr><th>State</th><td id=\"state\">{}</td></tr>\
         <tr><th>Created</th><td>{}</td></tr>\
         <tr><th>Due</th><td>{}</td></tr>\
         <tr><th>Attempts</th><td>{}</td></tr>\
         <tr><th>Last error</th><td class=\"err\">{}</td></tr>\
         <tr><th>SES message id</th><td id=\"provider-id\">{}</td></tr>\
         <tr><th>Message-ID</th><td>{}</td></tr>\
         <tr><th>Account</th><td>{} (login {}, tenant {}, user {})</td></tr>\
         <tr><th>Identity</th><td>{}</td></tr>\
         <tr><th>Class</th><td>{}</td></tr>\
         <tr><th>MAIL FROM</th><td>{}</td></tr>\
         <tr><th>Size</th><td>{} octets</td></tr>{}</table>",
        actions_for(&session, &r, &back),
        state_name(r.state),
        rfc3339(r.created_ms),
        r.due_ms.map_or("—".into(), rfc3339),
        r.receive_count,
        opt(&r.last_error),
        opt(&r.provider_id),
        opt(&r.message_id),
        esc(&job.account_id),
        esc(&job.login),
        esc(&job.tenant_id),
        esc(&job.user_id),
        esc(&job.identity_id),
        job.message_class.as_str(),
        esc(&job.mail_from),
        job.size,
        if r.canceled {
            "<tr><th>Canceled</th><td>by its submitter</td></tr>"
        } else {
            ""
        }
    );
    body.push_str(
        "<h3>Recipients</h3><table class=\"records\" id=\"recipients\"><thead><tr>\
         <th>Recipient</th><th>Outcome</th><th>When</th><th>Detail</th></tr></thead><tbody>",
    );
    for rcpt in &job.recipients {
        match r.delivery.get(&rcpt.to_lowercase()) {
            Some(status) => {
                let _ = write!(
                    body,
                    "<tr><td>{rcpt}</td><td class=\"outcome {outcome}\">{outcome}</td>\
                     <td>{at}</td><td>{detail}</td></tr>",
                    rcpt = esc(rcpt),
                    outcome = status.outcome.as_str(),
                    at = rfc3339(status.at_ms),
                    detail = esc(status.detail.as_deref().unwrap_or(""))
                );
            }
            None => {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td class=\"outcome\">no report yet</td><td></td><td></td></tr>",
                    esc(rcpt)
                );
            }
        }
    }
    body.push_str(
        "</tbody></table><h3>History</h3><table class=\"records\" id=\"history\"><thead><tr>\
         <th>When</th><th>State</th><th>Detail</th></tr></thead><tbody>",
    );
    for t in &r.history {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            rfc3339(t.at_ms),
            state_name(t.state),
            esc(t.detail.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</tbody></table>");
    ok(&format!("Submission {id}"), &session, &body)
}
