//! The reputation panel: rates per scope and window against the guard's thresholds, what is
//! held, and the guard's recent decisions — all from one [`ReputationReport`].

use std::fmt::Write;

use super::html::{age, esc};
use crate::reputation::{ReputationReport, Scope};

/// Decisions listed on the overview (the report carries more).
const SHOWN_DECISIONS: usize = 10;

fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::Account => "account".into(),
        Scope::Class { class } => format!("class {class}"),
        Scope::Identity { identity } => format!("identity {identity}"),
        Scope::IdentityClass { identity, class } => format!("{identity} · {class}"),
    }
}

fn percent(rate: f64) -> String {
    format!("{:.2} %", rate * 100.0)
}

/// A rate cell: `over` when it counts (enough sends) and reaches the hold level.
fn rate_cell(rate: f64, hold: f64, counts: bool) -> String {
    let class = if counts && rate >= hold { "over" } else { "" };
    let note = if counts {
        ""
    } else {
        " <small>(too few sends)</small>"
    };
    format!("<td class=\"{class}\">{}{note}</td>", percent(rate))
}

pub fn panel(report: &ReputationReport, now_ms: u64) -> String {
    let t = &report.thresholds;
    let mut out = format!(
        "<section id=\"reputation\"><h2>Reputation</h2><p>Guard {}: holds {} at {} bounces or \
         {} complaints over {} (after {} / {} sends), resumes below {} / {}.{}</p>",
        if report.guard_enabled { "on" } else { "off" },
        report
            .hold_classes
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", then "),
        percent(t.bounce_hold),
        percent(t.complaint_hold),
        t.window.as_str(),
        t.min_sends_bounce,
        t.min_sends_complaint,
        percent(t.bounce_resume),
        percent(t.complaint_resume),
        report
            .error
            .as_deref()
            .map(|e| format!(
                " <span class=\"error\">Figures unavailable: {}</span>",
                esc(e)
            ))
            .unwrap_or_default(),
    );
    if report.holds.is_empty() {
        out.push_str("<p id=\"holds\">Nothing is held.</p>");
    } else {
        out.push_str("<ul id=\"holds\" class=\"holds\">");
        for hold in &report.holds {
            let _ = write!(
                out,
                "<li class=\"error\">{} (since {} ago)</li>",
                esc(&hold.reason()),
                age(now_ms, hold.since_ms)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str(
        "<table class=\"records reputation\"><thead><tr><th>Scope</th><th>Window</th>\
         <th>Sent</th><th>Delivered</th><th>Bounced</th><th>Bounce rate</th><th>Complaints</th>\
         <th>Complaint rate</th></tr></thead><tbody>",
    );
    // Scopes that sent nothing in the week are left out (every configured identity is listed
    // in the report, mail or not).
    let active = |scope: &Scope| {
        report
            .rates
            .iter()
            .any(|r| &r.scope == scope && r.counts.sends + r.counts.bounces > 0)
    };
    for r in &report.rates {
        if !active(&r.scope) && r.scope != Scope::Account {
            continue;
        }
        let _ = write!(
            out,
            "<tr data-scope=\"{}\" data-window=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td>{}<td>{}</td>{}</tr>",
            esc(&scope_name(&r.scope)),
            r.window.as_str(),
            esc(&scope_name(&r.scope)),
            r.window.as_str(),
            r.counts.sends,
            r.counts.deliveries,
            r.counts.bounces,
            rate_cell(r.bounce_rate, t.bounce_hold, r.bounce_counts),
            r.counts.complaints,
            rate_cell(r.complaint_rate, t.complaint_hold, r.complaint_counts),
        );
    }
    out.push_str("</tbody></table>");
    if !report.decisions.is_empty() {
        out.push_str("<h3>Guard decisions</h3><ul class=\"decisions\">");
        for d in report.decisions.iter().take(SHOWN_DECISIONS) {
            let _ = write!(
                out,
                "<li>{} ago: {}</li>",
                age(now_ms, d.at_ms),
                esc(&d.reason)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    out
}
