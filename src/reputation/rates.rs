//! The rate maths: hourly activity rows summed over a window, per scope.
//!
//! A window is whole hours: "24h" is the hour in progress and the 23 before it, so it covers
//! between 23 and 24 hours of the past (the figures move once an hour, not every second).
//! The denominator is recipients sent to (accepted by the provider) in the window; a bounce
//! or complaint counts in the hour it was reported. Sends still without an outcome count in
//! the denominator, as SES counts them: SES's own rates are over everything sent, and most
//! bounces arrive within minutes, most complaints within a day or two.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::Thresholds;
use crate::activity::{hour_of, ActivityRow, Counts, HOUR_MS};
use crate::domain::MessageClass;

/// A rolling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Window {
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
}

impl Window {
    pub const ALL: [Window; 2] = [Window::Day, Window::Week];

    pub fn hours(self) -> u64 {
        match self {
            Window::Day => 24,
            Window::Week => 7 * 24,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }

    /// The first hour (start, ms) inside the window at `now_ms`.
    pub fn start(self, now_ms: u64) -> u64 {
        hour_of(now_ms).saturating_sub((self.hours() - 1) * HOUR_MS)
    }
}

/// What a rate is about. Identity ids come from the configuration, so the set is bounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// Everything this Outbox sends: the SES account as a whole.
    Account,
    Class {
        class: MessageClass,
    },
    Identity {
        identity: String,
    },
    IdentityClass {
        identity: String,
        class: MessageClass,
    },
}

impl Scope {
    /// The scope's (identity, class) labels; None where the scope spans all.
    pub fn labels(&self) -> (Option<&str>, Option<MessageClass>) {
        match self {
            Scope::Account => (None, None),
            Scope::Class { class } => (None, Some(*class)),
            Scope::Identity { identity } => (Some(identity), None),
            Scope::IdentityClass { identity, class } => (Some(identity), Some(*class)),
        }
    }

    fn covers(&self, identity: &str, class: MessageClass) -> bool {
        let (i, c) = self.labels();
        i.is_none_or(|i| i == identity) && c.is_none_or(|c| c == class)
    }
}

/// A scope's figures over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub scope: Scope,
    pub window: Window,
    #[serde(flatten)]
    pub counts: Counts,
    /// Hard bounces / sends (0 with no sends).
    pub bounce_rate: f64,
    /// Complaints / sends (0 with no sends).
    pub complaint_rate: f64,
    /// Enough sends for the bounce rate to count ([`Thresholds::min_sends_bounce`]).
    pub bounce_counts: bool,
    pub complaint_counts: bool,
}

impl Rates {
    pub fn of(scope: Scope, window: Window, counts: Counts, t: &Thresholds) -> Rates {
        Rates {
            scope,
            window,
            bounce_rate: ratio(counts.bounces, counts.sends),
            complaint_rate: ratio(counts.complaints, counts.sends),
            bounce_counts: counts.sends >= t.min_sends_bounce,
            complaint_counts: counts.sends >= t.min_sends_complaint,
            counts,
        }
    }
}

/// `part / whole`, 0 when nothing was sent. (More reports than sends in a window can happen —
/// a bounce of yesterday's send — and gives a rate above 1: shown as it is.)
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Counts per (identity, class) summed over one window.
pub type Table = BTreeMap<(String, MessageClass), Counts>;

/// Sums the rows inside `window` at `now_ms` per (identity, class).
pub fn table(rows: &[ActivityRow], window: Window, now_ms: u64) -> Table {
    let start = window.start(now_ms);
    let mut out = Table::new();
    for row in rows.iter().filter(|r| r.hour_ms >= start) {
        out.entry((row.identity_id.clone(), row.class))
            .or_default()
            .add(&row.counts);
    }
    out
}

/// The sum of the table's cells inside `scope`.
pub fn sum(table: &Table, scope: &Scope) -> Counts {
    let mut out = Counts::default();
    for ((identity, class), counts) in table {
        if scope.covers(identity, *class) {
            out.add(counts);
        }
    }
    out
}

/// Every scope reported: the account, each class, each identity (those configured and those
/// seen), each identity × class.
pub fn scopes(table: &Table, identities: &[String]) -> Vec<Scope> {
    let mut ids: Vec<String> = identities.to_vec();
    ids.extend(table.keys().map(|(i, _)| i.clone()));
    ids.sort();
    ids.dedup();
    let mut out = vec![Scope::Account];
    out.extend(MessageClass::ALL.map(|class| Scope::Class { class }));
    for identity in &ids {
        out.push(Scope::Identity {
            identity: identity.clone(),
        });
        for class in MessageClass::ALL {
            out.push(Scope::IdentityClass {
                identity: identity.clone(),
                class,
            });
        }
    }
    out
}

/// Rates of every scope in both windows.
pub fn all_rates(
    rows: &[ActivityRow],
    identities: &[String],
    t: &Thresholds,
    now_ms: u64,
) -> Vec<Rates> {
    let mut out = Vec::new();
    for window in Window::ALL {
        let table = table(rows, window, now_ms);
        for scope in scopes(&table, identities) {
            let counts = sum(&table, &scope);
            out.push(Rates::of(scope, window, counts, t));
        }
    }
    out
}

/// One hour of activity, for charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourlyPoint {
    /// Start of the hour (ms since the Unix epoch).
    pub hour_ms: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The last seven days hour by hour (168 points, oldest first, hours without activity as
/// zeros) for the rows inside `scope`.
pub fn series(rows: &[ActivityRow], scope: &Scope, now_ms: u64) -> Vec<HourlyPoint> {
    let start = Window::Week.start(now_ms);
    let mut points: Vec<HourlyPoint> = (0..Window::Week.hours())
        .map(|i| HourlyPoint {
            hour_ms: start + i * HOUR_MS,
            counts: Counts::default(),
        })
        .collect();
    for row in rows {
        if row.hour_ms < start || !scope.covers(&row.identity_id, row.class) {
            continue;
        }
        let i = ((row.hour_ms - start) / HOUR_MS) as usize;
        if let Some(p) = points.get_mut(i) {
            p.counts.add(&row.counts);
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn row(hours_ago: u64, identity: &str, class: MessageClass, c: [u64; 4]) -> ActivityRow {
        ActivityRow {
            hour_ms: hour_of(NOW) - hours_ago * HOUR_MS,
            identity_id: identity.into(),
            class,
            counts: Counts {
                sends: c[0],
                deliveries: c[1],
                bounces: c[2],
                complaints: c[3],
            },
        }
    }

    fn t() -> Thresholds {
        crate::reputation::ReputationConfig::default().thresholds()
    }

    #[test]
    fn windows_are_whole_hours_ending_with_the_current_one() {
        let rows = vec![
            row(0, "a", MessageClass::Bulk, [100, 0, 1, 0]),
            row(23, "a", MessageClass::Bulk, [100, 0, 3, 0]),
            row(24, "a", MessageClass::Bulk, [100, 0, 5, 0]),
            row(167, "a", MessageClass::Bulk, [100, 0, 7, 0]),
            row(168, "a", MessageClass::Bulk, [100, 0, 9, 0]),
        ];
        let day = sum(&table(&rows, Window::Day, NOW), &Scope::Account);
        assert_eq!((day.sends, day.bounces), (200, 4));
        let week = sum(&table(&rows, Window::Week, NOW), &Scope::Account);
        assert_eq!((week.sends, week.bounces), (400, 16));
    }

    #[test]
    fn rates_per_scope_and_minimum_volume() {
        let rows = vec![
            row(1, "news", MessageClass::Bulk, [1000, 900, 50, 2]),
            row(2, "news", MessageClass::Transactional, [100, 100, 0, 0]),
            row(2, "app", MessageClass::Transactional, [900, 890, 10, 0]),
        ];
        let rates = all_rates(&rows, &["app".into(), "idle".into()], &t(), NOW);
        let get = |scope: Scope, window| {
            rates
                .iter()
                .find(|r| r.scope == scope && r.window == window)
                .unwrap()
                .clone()
        };
        let account = get(Scope::Account, Window::Day);
        assert_eq!(account.counts.sends, 2000);
        assert!((account.bounce_rate - 0.03).abs() < 1e-12);
        assert!((account.complaint_rate - 0.001).abs() < 1e-12);
        assert!(account.bounce_counts && account.complaint_counts);
        let bulk = get(
            Scope::Class {
                class: MessageClass::Bulk,
            },
            Window::Day,
        );
        assert!((bulk.bounce_rate - 0.05).abs() < 1e-12);
        assert!(bulk.bounce_counts && !bulk.complaint_counts);
        let news = get(
            Scope::Identity {
                identity: "news".into(),
            },
            Window::Week,
        );
        assert_eq!(news.counts.sends, 1100);
        // A configured identity without mail is reported, with zeros, not left out.
        let idle = get(
            Scope::Identity {
                identity: "idle".into(),
            },
            Window::Day,
        );
        assert_eq!((idle.counts.sends, idle.bounce_rate), (0, 0.0));
        assert!(!idle.bounce_counts);
        // 2 windows × (account + 3 classes + 3 identities × (1 + 3 classes)).
        assert_eq!(rates.len(), 2 * (1 + 3 + 3 * 4));
    }

    #[test]
    fn series_has_one_point_per_hour_for_a_week() {
        let rows = vec![
            row(0, "a", MessageClass::Bulk, [5, 4, 1, 0]),
            row(0, "b", MessageClass::Bulk, [5, 5, 0, 0]),
            row(167, "a", MessageClass::Bulk, [1, 0, 0, 0]),
            row(200, "a", MessageClass::Bulk, [9, 0, 0, 0]),
        ];
        let s = series(&rows, &Scope::Account, NOW);
        assert_eq!(s.len(), 168);
        assert_eq!(s[167].hour_ms, hour_of(NOW));
        assert_eq!(s[167].counts.sends, 10);
        assert_eq!(s[0].counts.sends, 1);
        let only_b = series(
            &rows,
            &Scope::Identity {
                identity: "b".into(),
            },
            NOW,
        );
        assert_eq!(only_b[167].counts.deliveries, 5);
        assert_eq!(only_b.iter().map(|p| p.counts.sends).sum::<u64>(), 5);
    }
}
