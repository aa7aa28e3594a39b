//! `outbox reputation` as text: rates per scope, holds, recent decisions.

use std::fmt::Write;

use super::{Decision, Rates, ReputationReport, Scope, Window};

fn percent(r: f64) -> String {
    format!("{:.2}%", r * 100.0)
}

fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::Account => "account".into(),
        Scope::Class { class } => format!("class {class}"),
        Scope::Identity { identity } => format!("identity {identity}"),
        Scope::IdentityClass { identity, class } => format!("{identity} / {class}"),
    }
}

/// A rate, or `-` with the reason it does not count yet.
fn rate(r: f64, counts: bool) -> String {
    if counts {
        percent(r)
    } else {
        format!("({})", percent(r))
    }
}

/// Renders the report for a terminal; `at` formats a time (ms) as the CLI does.
pub fn render(report: &ReputationReport, at: impl Fn(u64) -> String) -> String {
    let mut out = String::new();
    let t = &report.thresholds;
    let _ = writeln!(
        out,
        "guard: {} (judges the last {}; holds {})",
        if report.guard_enabled { "on" } else { "off" },
        t.window.as_str(),
        report
            .hold_classes
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", then ")
    );
    let _ = writeln!(
        out,
        "hold at: bounces {} / complaints {}; resume below {} / {}; counted from {} / {} sends",
        percent(t.bounce_hold),
        percent(t.complaint_hold),
        percent(t.bounce_resume),
        percent(t.complaint_resume),
        t.min_sends_bounce,
        t.min_sends_complaint
    );
    if let Some(e) = &report.error {
        let _ = writeln!(out, "figures unavailable: {e}");
    }
    if report.generated_ms > 0 {
        let _ = writeln!(out, "figures as of {}", at(report.generated_ms));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<32}  {:<3}  {:>8}  {:>9}  {:>7}  {:>10}  {:>9}  {:>10}",
        "SCOPE", "WIN", "SENDS", "DELIVERED", "BOUNCES", "COMPLAINTS", "BOUNCE%", "COMPLAINT%"
    );
    let rows: Vec<&Rates> = Window::ALL
        .iter()
        .flat_map(|w| report.rates.iter().filter(move |r| r.window == *w))
        // Identity × class rows only where something was sent: the table stays readable.
        .filter(|r| !matches!(r.scope, Scope::IdentityClass { .. }) || r.counts.sends > 0)
        .collect();
    for r in rows {
        let _ = writeln!(
            out,
            "{:<32}  {:<3}  {:>8}  {:>9}  {:>7}  {:>10}  {:>9}  {:>10}",
            scope_name(&r.scope),
            r.window.as_str(),
            r.counts.sends,
            r.counts.deliveries,
            r.counts.bounces,
            r.counts.complaints,
            rate(r.bounce_rate, r.bounce_counts),
            rate(r.complaint_rate, r.complaint_counts)
        );
    }
    let _ = writeln!(
        out,
        "(a rate in parentheses is below the minimum volume and does not count)"
    );
    let _ = writeln!(out);
    if report.holds.is_empty() {
        let _ = writeln!(out, "holds: none");
    } else {
        let _ = writeln!(out, "holds:");
        for h in &report.holds {
            let _ = writeln!(out, "  since {}  {}", at(h.since_ms), h.reason());
        }
    }
    if !report.decisions.is_empty() {
        let _ = writeln!(out, "recent decisions (newest first):");
        for d in &report.decisions {
            let _ = writeln!(out, "  {}", decision(d, &at));
        }
    }
    out
}

/// One decision on one line, with its figures.
pub fn decision(d: &Decision, at: impl Fn(u64) -> String) -> String {
    let f = &d.figures;
    format!(
        "{}  {:<7}  by {:<8}  {}  [{} {}: {} sends, {} bounces, {} complaints, {} rate {} vs {}]",
        at(d.at_ms),
        format!("{:?}", d.kind).to_lowercase(),
        format!("{:?}", d.by).to_lowercase(),
        d.reason,
        scope_name(&f.scope),
        f.window.as_str(),
        f.counts.sends,
        f.counts.bounces,
        f.counts.complaints,
        d.metric.as_str(),
        percent(f.rate),
        percent(f.threshold)
    )
}
