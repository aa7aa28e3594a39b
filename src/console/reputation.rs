//! The reputation panel: rates per scope and window against the guard's thresholds, what is
//! held, and the guard's recent decisions — all from one [`ReputationReport`].

use std::fmt::Write;

use super::html::{action, age, esc};
use super::Session;
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

pub fn panel(session: &Session, report: &ReputationReport, now_ms: u64) -> String {
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
                "<li class=\"error\">{} (since {} ago) {}</li>",
                esc(&hold.reason()),
                age(now_ms, hold.since_ms),
                action(
                    session,
                    "reputation_release",
                    &[
                        ("class", hold.target.class.as_str()),
                        ("identity", hold.target.identity.as_deref().unwrap_or(""))
                    ],
                    "/console"
                )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Counts;
    use crate::domain::MessageClass;
    use crate::reputation::{Figures, Hold, HoldTarget, Metric, Rates, ReputationConfig, Window};

    fn report() -> ReputationReport {
        let t = ReputationConfig::default().thresholds();
        let busy = Counts {
            sends: 300,
            deliveries: 291,
            bounces: 9,
            complaints: 0,
        };
        let quiet = Counts {
            sends: 10,
            bounces: 5,
            ..Counts::default()
        };
        let bulk = Scope::Class {
            class: MessageClass::Bulk,
        };
        ReputationReport {
            generated_ms: 10_000,
            guard_enabled: true,
            hold_classes: vec![MessageClass::Bulk, MessageClass::MailingList],
            thresholds: t,
            rates: vec![
                Rates::of(Scope::Account, Window::Day, busy, &t),
                Rates::of(bulk.clone(), Window::Day, quiet, &t),
            ],
            holds: vec![Hold {
                target: HoldTarget {
                    identity: None,
                    class: MessageClass::Bulk,
                },
                metric: Metric::Bounce,
                figures: Figures {
                    scope: bulk,
                    window: Window::Day,
                    counts: busy,
                    rate: 0.03,
                    threshold: t.bounce_hold,
                },
                since_ms: 5_000,
            }],
            decisions: vec![],
            series: vec![],
            error: None,
        }
    }

    /// Rule: a rate that counts and reaches the hold level is marked; one on too few sends is
    /// said to be so, however high; holds are listed, with a release button for admins only.
    #[test]
    fn rates_are_judged_against_the_thresholds_and_holds_offer_a_release() {
        let mut session = Session {
            login: "ops".into(),
            role: super::super::Role::Admin,
            csrf: "tok".into(),
        };
        let html = panel(&session, &report(), 10_000);
        assert!(html.contains("<td class=\"over\">3.00 %</td>"), "{html}");
        assert!(
            html.contains("50.00 % <small>(too few sends)</small>"),
            "{html}"
        );
        assert!(
            html.contains("bulk mail is held: bounce rate 3.00%"),
            "{html}"
        );
        assert!(html.contains("data-action=\"reputation_release\""));
        session.role = super::super::Role::Viewer;
        let html = panel(&session, &report(), 10_000);
        assert!(!html.contains("data-action="), "{html}");
    }
}
