//! The guard's state machine: which (identity, class) targets are held, and every decision
//! with its figures. Pure: it is given the window's counts and the time, and answers the
//! decisions it took; storing them and acting on the queue is [`super::Reputation`]'s job.
//!
//! For each scope — the account as a whole, then (with `per_identity`) each identity — the
//! holdable classes are judged in their configured order (bulk, then mailing_list):
//! 1. a class whose own rate, with enough volume, is at or above the hold level is held;
//! 2. otherwise, if the scope's rate over the classes not yet held is at or above the hold
//!    level and this class contributed to it (has bounces, or complaints), it is held too.
//!    So a bad account rate holds bulk first, and mailing_list only if bulk's share was not
//!    enough to explain it.
//!
//! A held target stays held while its figure stays above the *resume* level (hysteresis), and
//! resumes once below it or once its volume in the window no longer counts. An operator's
//! release ends a hold at once; the guard then holds that target again only on new evidence
//! (more bounces or complaints than at the release) while it is still above the hold level.

use serde::{Deserialize, Serialize};

use super::config::Thresholds;
use super::rates::{ratio, sum, Scope, Table, Window};
use crate::activity::Counts;
use crate::domain::MessageClass;

/// Decisions kept for the CLI and console (oldest dropped first): months of an eventful
/// guard, a few hundred kilobytes of state.
pub const MAX_DECISIONS: usize = 500;
/// The history detail of a message the guard held in the queue; how a resume finds it.
pub const PARK_REASON_PREFIX: &str = "held by the reputation guard";

/// Which rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Bounce,
    Complaint,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Bounce => "bounce",
            Metric::Complaint => "complaint",
        }
    }

    fn events(self, c: &Counts) -> u64 {
        match self {
            Metric::Bounce => c.bounces,
            Metric::Complaint => c.complaints,
        }
    }

    /// (hold level, resume level, minimum sends).
    fn levels(self, t: &Thresholds) -> (f64, f64, u64) {
        match self {
            Metric::Bounce => (t.bounce_hold, t.bounce_resume, t.min_sends_bounce),
            Metric::Complaint => (t.complaint_hold, t.complaint_resume, t.min_sends_complaint),
        }
    }
}

/// What a hold covers: one class of one identity, or of the whole account (`identity` None).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HoldTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub class: MessageClass,
}

impl HoldTarget {
    pub fn covers(&self, identity: &str, class: MessageClass) -> bool {
        self.class == class && self.identity.as_deref().is_none_or(|i| i == identity)
    }

    fn own_scope(&self) -> Scope {
        match &self.identity {
            None => Scope::Class { class: self.class },
            Some(identity) => Scope::IdentityClass {
                identity: identity.clone(),
                class: self.class,
            },
        }
    }
}

impl std::fmt::Display for HoldTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.identity {
            None => write!(f, "{} mail", self.class),
            Some(i) => write!(f, "{} mail of identity {i}", self.class),
        }
    }
}

/// The figures a decision was taken on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Whose counts these are: the target's own, or its scope's without the classes held
    /// before it (rule 2 of the module doc).
    pub scope: Scope,
    pub window: Window,
    #[serde(flatten)]
    pub counts: Counts,
    pub rate: f64,
    /// The level the rate was compared with (the hold level, or the resume level).
    pub threshold: f64,
}

/// A target held now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub target: HoldTarget,
    pub metric: Metric,
    pub figures: Figures,
    pub since_ms: u64,
}

impl Hold {
    /// Safe to show a client: which mail, which rate, the level.
    pub fn reason(&self) -> String {
        format!(
            "{} is held: {} rate {:.2}% over the last {} (hold level {:.2}%)",
            self.target,
            self.metric.as_str(),
            self.figures.rate * 100.0,
            self.figures.window.as_str(),
            self.figures.threshold * 100.0
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The guard held a target.
    Hold,
    /// The guard ended its hold: the rate fell below the resume level.
    Resume,
    /// An operator ended a hold.
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Guard,
    Operator,
}

/// One guard decision, with the figures it was taken on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: u64,
    pub kind: DecisionKind,
    pub target: HoldTarget,
    pub by: Actor,
    pub metric: Metric,
    pub figures: Figures,
    /// In words, for logs and the CLI.
    pub reason: String,
}

/// An operator's release: the guard holds the target again only on new evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Released {
    pub target: HoldTarget,
    pub bounces: u64,
    pub complaints: u64,
    pub at_ms: u64,
}

/// The rules the state machine applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub thresholds: Thresholds,
    /// In the order the guard holds them.
    pub hold_classes: Vec<MessageClass>,
    pub per_identity: bool,
}

/// Everything the guard remembers; stored through the spool so it survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    pub holds: Vec<Hold>,
    #[serde(default)]
    pub released: Vec<Released>,
    /// Oldest first, at most [`MAX_DECISIONS`].
    #[serde(default)]
    pub decisions: Vec<Decision>,
}

/// Why an operator's release did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not held")]
pub struct NotHeld(pub HoldTarget);

/// The metric that trips `counts` at the level for a target held (`held`) or not, with that
/// level. Complaints are looked at first: SES's complaint levels are the tighter ones.
fn tripping(counts: &Counts, t: &Thresholds, held: bool) -> Option<(Metric, f64)> {
    [Metric::Complaint, Metric::Bounce]
        .into_iter()
        .find_map(|m| {
            let (hold, resume, min_sends) = m.levels(t);
            let rate = ratio(m.events(counts), counts.sends);
            let level = if held { resume } else { hold };
            let over = if held { rate > level } else { rate >= level };
            (counts.sends >= min_sends && over && m.events(counts) > 0).then_some((m, level))
        })
}

impl GuardState {
    /// The hold that stops mail of `identity` and `class`, if any.
    pub fn hold_for(&self, identity: &str, class: MessageClass) -> Option<&Hold> {
        self.holds.iter().find(|h| h.target.covers(identity, class))
    }

    fn is_held(&self, target: &HoldTarget) -> bool {
        self.holds.iter().any(|h| &h.target == target)
    }

    fn record(&mut self, decision: Decision) {
        self.decisions.push(decision);
        if self.decisions.len() > MAX_DECISIONS {
            let extra = self.decisions.len() - MAX_DECISIONS;
            self.decisions.drain(..extra);
        }
    }

    /// Judges the window's counts at `now_ms`; returns the decisions taken (also recorded).
    pub fn evaluate(&mut self, table: &Table, rules: &Rules, now_ms: u64) -> Vec<Decision> {
        let t = &rules.thresholds;
        let mut scopes: Vec<Option<String>> = vec![None];
        if rules.per_identity {
            let mut ids: Vec<String> = table.keys().map(|(i, _)| i.clone()).collect();
            ids.dedup();
            scopes.extend(ids.into_iter().map(Some));
        }
        let mut wanted: Vec<(HoldTarget, Metric, Figures)> = Vec::new();
        for identity in scopes {
            let base = match &identity {
                None => Scope::Account,
                Some(i) => Scope::Identity {
                    identity: i.clone(),
                },
            };
            let mut remainder = sum(table, &base);
            for &class in &rules.hold_classes {
                let target = HoldTarget {
                    identity: identity.clone(),
                    class,
                };
                let own_scope = target.own_scope();
                let own = sum(table, &own_scope);
                let held = self.is_held(&target);
                // An account-wide hold of the class already covers this identity: a second
                // hold would only be one more thing for the operator to release.
                let covered = identity.is_some()
                    && wanted
                        .iter()
                        .any(|(t, ..)| t.identity.is_none() && t.class == class);
                if covered && !held {
                    remainder = remainder.minus(&own);
                    continue;
                }
                if let Some(r) = self.released.iter().find(|r| r.target == target) {
                    let fresh = own.bounces > r.bounces || own.complaints > r.complaints;
                    if !fresh {
                        // The operator took this class on: it neither holds nor escalates.
                        remainder = remainder.minus(&own);
                        continue;
                    }
                }
                let found = match tripping(&own, t, held) {
                    Some((m, level)) => Some((m, level, own_scope, own)),
                    None => tripping(&remainder, t, held)
                        .filter(|(m, _)| m.events(&own) > 0)
                        .map(|(m, level)| (m, level, base.clone(), remainder)),
                };
                if let Some((metric, threshold, scope, counts)) = found {
                    let figures = Figures {
                        scope,
                        window: t.window,
                        rate: ratio(metric.events(&counts), counts.sends),
                        counts,
                        threshold,
                    };
                    wanted.push((target, metric, figures));
                    remainder = remainder.minus(&own);
                }
            }
        }
        // A release marker lasts until the target's own figures are below the resume level.
        self.released.retain(|r| {
            let own = sum(table, &r.target.own_scope());
            tripping(&own, t, true).is_some()
        });
        let mut out = Vec::new();
        let mut kept = Vec::new();
        for hold in std::mem::take(&mut self.holds) {
            if wanted.iter().any(|(target, ..)| *target == hold.target) {
                kept.push(hold);
                continue;
            }
            let own_scope = hold.target.own_scope();
            let own = sum(table, &own_scope);
            let (_, resume, _) = hold.metric.levels(t);
            let figures = Figures {
                scope: own_scope,
                window: t.window,
                rate: ratio(hold.metric.events(&own), own.sends),
                counts: own,
                threshold: resume,
            };
            out.push(Decision {
                at_ms: now_ms,
                kind: DecisionKind::Resume,
                reason: format!(
                    "{} resumed: {} rate {:.2}% over the last {} is below the resume level {:.2}% or its volume no longer counts",
                    hold.target,
                    hold.metric.as_str(),
                    figures.rate * 100.0,
                    t.window.as_str(),
                    resume * 100.0
                ),
                target: hold.target,
                by: Actor::Guard,
                metric: hold.metric,
                figures,
            });
        }
        self.holds = kept;
        for (target, metric, figures) in wanted {
            if self.is_held(&target) {
                continue;
            }
            let hold = Hold {
                target: target.clone(),
                metric,
                figures: figures.clone(),
                since_ms: now_ms,
            };
            out.push(Decision {
                at_ms: now_ms,
                kind: DecisionKind::Hold,
                reason: hold.reason(),
                target,
                by: Actor::Guard,
                metric,
                figures,
            });
            self.holds.push(hold);
        }
        for d in &out {
            self.record(d.clone());
        }
        out
    }

    /// An operator ends the hold on `target`, on the window's `table`. An account-wide target
    /// (`identity` None) ends every identity's hold of the class too: "release bulk" means
    /// bulk mail goes again, from everyone.
    pub fn release(
        &mut self,
        target: &HoldTarget,
        table: &Table,
        t: &Thresholds,
        now_ms: u64,
    ) -> Result<Decision, NotHeld> {
        let covers =
            |h: &HoldTarget| h == target || (target.identity.is_none() && h.class == target.class);
        let (ended, kept): (Vec<Hold>, Vec<Hold>) = std::mem::take(&mut self.holds)
            .into_iter()
            .partition(|h| covers(&h.target));
        self.holds = kept;
        if ended.is_empty() {
            return Err(NotHeld(target.clone()));
        }
        // Marked released: the target, the holds it ended, and (account-wide) every identity
        // that sent this class, so none of them is held again on the same figures.
        let mut marked: Vec<HoldTarget> = vec![target.clone()];
        marked.extend(ended.iter().map(|h| h.target.clone()));
        if target.identity.is_none() {
            marked.extend(
                table
                    .keys()
                    .filter(|(_, c)| *c == target.class)
                    .map(|(i, c)| HoldTarget {
                        identity: Some(i.clone()),
                        class: *c,
                    }),
            );
        }
        marked.sort();
        marked.dedup();
        for m in marked {
            let own = sum(table, &m.own_scope());
            self.released.retain(|r| r.target != m);
            self.released.push(Released {
                target: m,
                bounces: own.bounces,
                complaints: own.complaints,
                at_ms: now_ms,
            });
        }
        let metric = ended
            .iter()
            .find(|h| &h.target == target)
            .unwrap_or(&ended[0])
            .metric;
        let own_scope = target.own_scope();
        let own = sum(table, &own_scope);
        let others = ended.iter().filter(|h| &h.target != target).count();
        let with = match others {
            0 => String::new(),
            1 => " (and 1 identity's hold)".into(),
            n => format!(" (and {n} identities' holds)"),
        };
        let decision = Decision {
            at_ms: now_ms,
            kind: DecisionKind::Release,
            reason: format!(
                "{target} released by the operator{with}; held again only on new bounces or complaints"
            ),
            target: target.clone(),
            by: Actor::Operator,
            metric,
            figures: Figures {
                scope: own_scope,
                window: t.window,
                rate: ratio(metric.events(&own), own.sends),
                counts: own,
                threshold: metric.levels(t).0,
            },
        };
        self.record(decision.clone());
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::ReputationConfig;

    const NOW: u64 = 1_700_000_000_000;

    fn rules() -> Rules {
        let config = ReputationConfig {
            min_sends_bounce: 100,
            min_sends_complaint: 1000,
            ..ReputationConfig::default()
        };
        Rules {
            thresholds: config.thresholds(),
            hold_classes: config.hold_classes,
            per_identity: true,
        }
    }

    /// (identity, class, sends, bounces, complaints)
    fn table(cells: &[(&str, MessageClass, u64, u64, u64)]) -> Table {
        cells
            .iter()
            .map(|&(i, c, sends, bounces, complaints)| {
                (
                    (i.to_string(), c),
                    Counts {
                        sends,
                        deliveries: sends - bounces,
                        bounces,
                        complaints,
                    },
                )
            })
            .collect()
    }

    fn account(class: MessageClass) -> HoldTarget {
        HoldTarget {
            identity: None,
            class,
        }
    }

    fn kinds(d: &[Decision]) -> Vec<(DecisionKind, HoldTarget)> {
        d.iter().map(|d| (d.kind, d.target.clone())).collect()
    }

    use MessageClass::{Bulk, MailingList, Transactional};

    #[test]
    fn quiet_figures_hold_nothing_and_small_volumes_do_not_count() {
        let mut g = GuardState::default();
        let t = table(&[
            ("news", Bulk, 1000, 10, 0),
            // 50 % bounces, but 20 sends: below the minimum volume.
            ("app", Bulk, 20, 10, 0),
        ]);
        assert!(g.evaluate(&t, &rules(), NOW).is_empty());
        assert!(g.holds.is_empty() && g.decisions.is_empty());
    }

    #[test]
    fn a_class_over_the_bounce_level_is_held_with_its_figures() {
        let mut g = GuardState::default();
        let t = table(&[
            ("news", Bulk, 1000, 30, 0),
            ("app", Transactional, 5000, 10, 0),
        ]);
        let d = g.evaluate(&t, &rules(), NOW);
        // Held account-wide; the identity needs no hold of its own on top.
        assert_eq!(kinds(&d), vec![(DecisionKind::Hold, account(Bulk))]);
        let f = &d[0].figures;
        assert_eq!(d[0].metric, Metric::Bounce);
        assert_eq!((f.counts.sends, f.counts.bounces), (1000, 30));
        assert!((f.rate - 0.03).abs() < 1e-12 && (f.threshold - 0.02).abs() < 1e-12);
        assert_eq!(f.scope, Scope::Class { class: Bulk });
        assert!(g.hold_for("news", Bulk).is_some());
        assert!(g.hold_for("other", Bulk).is_some(), "account-wide hold");
        assert!(g.hold_for("news", Transactional).is_none());
        assert!(g.hold_for("news", MailingList).is_none());
        assert_eq!(g.decisions.len(), 1);
        // The same figures again decide nothing new.
        assert!(g.evaluate(&t, &rules(), NOW + 1).is_empty());
    }

    #[test]
    fn one_identity_over_the_level_is_held_alone() {
        let mut g = GuardState::default();
        // news bounces 3 %; the account's bulk, diluted by big's, is at 0.4 %.
        let t = table(&[("news", Bulk, 1000, 30, 0), ("big", Bulk, 9000, 10, 0)]);
        let d = g.evaluate(&t, &rules(), NOW);
        let news = HoldTarget {
            identity: Some("news".into()),
            class: Bulk,
        };
        assert_eq!(kinds(&d), vec![(DecisionKind::Hold, news.clone())]);
        assert!(g.hold_for("news", Bulk).is_some());
        assert!(g.hold_for("big", Bulk).is_none());
        // Per-identity judging off: nothing held.
        let mut r = rules();
        r.per_identity = false;
        assert!(GuardState::default().evaluate(&t, &r, NOW).is_empty());
        // An operator releases it by its identity; another identity's release is refused.
        let big = HoldTarget {
            identity: Some("big".into()),
            class: Bulk,
        };
        assert_eq!(g.release(&big, &t, &r.thresholds, NOW), Err(NotHeld(big)));
        assert!(g.release(&news, &t, &r.thresholds, NOW).is_ok());
        assert!(g.holds.is_empty());
    }

    #[test]
    fn an_account_wide_release_ends_the_identities_holds_too() {
        let mut g = GuardState::default();
        let t = table(&[("news", Bulk, 1000, 30, 0), ("big", Bulk, 9000, 10, 0)]);
        g.evaluate(&t, &rules(), NOW);
        // Later the whole account's bulk is over too: held account-wide, news's hold stays.
        let worse = table(&[("news", Bulk, 1000, 30, 0), ("big", Bulk, 9000, 300, 0)]);
        g.evaluate(&worse, &rules(), NOW + 1);
        assert_eq!(g.holds.len(), 2);
        let d = g
            .release(&account(Bulk), &worse, &rules().thresholds, NOW + 2)
            .unwrap();
        assert!(d.reason.contains("and 1 identity's hold"), "{}", d.reason);
        assert!(g.holds.is_empty());
        // Neither the account nor any identity is held again on the same figures.
        assert!(g.evaluate(&worse, &rules(), NOW + 3).is_empty());
    }

    #[test]
    fn complaints_are_judged_first_and_at_their_own_level() {
        let mut g = GuardState::default();
        // 0.1 % complaints, 2.5 % bounces: both over; the complaint is named.
        let t = table(&[("news", MailingList, 2000, 50, 2)]);
        let d = g.evaluate(&t, &rules(), NOW);
        assert_eq!(d[0].metric, Metric::Complaint);
        assert_eq!(d[0].target, account(MailingList));
    }

    #[test]
    fn an_account_rate_holds_bulk_first_then_mailing_list_never_transactional() {
        let mut r = rules();
        r.per_identity = false;
        // Every class at 1.5 %: nothing held.
        let mut g = GuardState::default();
        let calm = table(&[
            ("a", Bulk, 1000, 15, 0),
            ("a", MailingList, 1000, 15, 0),
            ("a", Transactional, 1000, 15, 0),
        ]);
        assert!(g.evaluate(&calm, &r, NOW).is_empty());
        // Transactional mail bounces hard: the account is over. Bulk goes first (it
        // contributes bounces); the rest is still over, so mailing_list too; transactional is
        // not holdable by default, so that is where it stops.
        let bad = table(&[
            ("a", Bulk, 1000, 15, 0),
            ("a", MailingList, 1000, 15, 0),
            ("a", Transactional, 1000, 100, 0),
        ]);
        let d = g.evaluate(&bad, &r, NOW);
        assert_eq!(
            kinds(&d),
            vec![
                (DecisionKind::Hold, account(Bulk)),
                (DecisionKind::Hold, account(MailingList))
            ]
        );
        assert_eq!(d[0].figures.scope, Scope::Account);
        assert_eq!(d[0].figures.counts.sends, 3000);
        // Mailing list was judged on what was left once bulk was held.
        assert_eq!(d[1].figures.counts.sends, 2000);
        assert!(g.hold_for("a", Transactional).is_none());
        // Only the explicit configuration lets the guard hold transactional mail.
        let mut g = GuardState::default();
        r.hold_classes = vec![Bulk, MailingList, Transactional];
        let d = g.evaluate(&bad, &r, NOW);
        assert_eq!(d.len(), 3);
        assert_eq!(d[2].target, account(Transactional));
    }

    #[test]
    fn escalation_stops_once_the_rest_is_below_the_level() {
        let mut r = rules();
        r.per_identity = false;
        let mut g = GuardState::default();
        // Bulk at 4 % is held on its own figures; what is left (mailing_list, 0.5 %) is
        // under the level, so mailing_list is not held although it has bounces.
        let t = table(&[("a", Bulk, 1000, 40, 0), ("a", MailingList, 1000, 5, 0)]);
        let d = g.evaluate(&t, &r, NOW);
        assert_eq!(kinds(&d), vec![(DecisionKind::Hold, account(Bulk))]);
    }

    #[test]
    fn a_hold_resumes_only_below_the_resume_level() {
        let mut r = rules();
        r.per_identity = false;
        let mut g = GuardState::default();
        g.evaluate(&table(&[("a", Bulk, 1000, 30, 0)]), &r, NOW);
        assert_eq!(g.holds.len(), 1);
        // 1.5 %: under the hold level, over the resume level (1 %): still held.
        assert!(g
            .evaluate(&table(&[("a", Bulk, 2000, 30, 0)]), &r, NOW + 1)
            .is_empty());
        assert_eq!(g.holds.len(), 1);
        // 0.75 %: resumes, with the figures it resumed on.
        let d = g.evaluate(&table(&[("a", Bulk, 4000, 30, 0)]), &r, NOW + 2);
        assert_eq!(kinds(&d), vec![(DecisionKind::Resume, account(Bulk))]);
        assert_eq!(d[0].by, Actor::Guard);
        assert!((d[0].figures.threshold - 0.01).abs() < 1e-12);
        assert!(g.holds.is_empty());
        // When the window no longer has enough volume, the rate does not count: resumed too.
        g.evaluate(&table(&[("a", Bulk, 1000, 30, 0)]), &r, NOW + 3);
        let d = g.evaluate(&table(&[("a", Bulk, 50, 30, 0)]), &r, NOW + 4);
        assert_eq!(kinds(&d), vec![(DecisionKind::Resume, account(Bulk))]);
        assert_eq!(g.decisions.len(), 4);
    }

    #[test]
    fn an_operator_release_sticks_until_new_evidence() {
        let mut r = rules();
        r.per_identity = false;
        let mut g = GuardState::default();
        let t = table(&[("a", Bulk, 1000, 30, 0)]);
        g.evaluate(&t, &r, NOW);
        let d = g
            .release(&account(Bulk), &t, &r.thresholds, NOW + 1)
            .unwrap();
        assert_eq!((d.kind, d.by), (DecisionKind::Release, Actor::Operator));
        assert_eq!(d.figures.counts.bounces, 30);
        assert!(g.holds.is_empty());
        assert_eq!(
            g.release(&account(Bulk), &t, &r.thresholds, NOW + 1),
            Err(NotHeld(account(Bulk)))
        );
        // Same figures: not held again, and the released class does not push the next one
        // into a hold either.
        let t2 = table(&[("a", Bulk, 1000, 30, 0), ("a", MailingList, 100, 1, 0)]);
        assert!(g.evaluate(&t2, &r, NOW + 2).is_empty());
        // New bounces while still over the level: held again.
        let d = g.evaluate(&table(&[("a", Bulk, 1100, 40, 0)]), &r, NOW + 3);
        assert_eq!(kinds(&d), vec![(DecisionKind::Hold, account(Bulk))]);
        // Once the class is below its resume level the release marker is forgotten.
        g.release(&account(Bulk), &t, &r.thresholds, NOW + 4)
            .unwrap();
        g.evaluate(&table(&[("a", Bulk, 10_000, 40, 0)]), &r, NOW + 5);
        assert!(g.released.is_empty());
    }

    #[test]
    fn decisions_are_capped_and_the_state_round_trips_as_json() {
        let mut r = rules();
        r.per_identity = false;
        let mut g = GuardState::default();
        let (bad, good) = (
            table(&[("a", Bulk, 1000, 30, 0)]),
            table(&[("a", Bulk, 1000, 0, 0)]),
        );
        for i in 0..MAX_DECISIONS as u64 {
            g.evaluate(&bad, &r, NOW + 2 * i);
            g.evaluate(&good, &r, NOW + 2 * i + 1);
        }
        assert_eq!(g.decisions.len(), MAX_DECISIONS);
        assert_eq!(
            g.decisions.last().unwrap().at_ms,
            NOW + 2 * MAX_DECISIONS as u64 - 1
        );
        g.evaluate(&bad, &r, NOW + 10_000);
        let json = serde_json::to_value(&g).unwrap();
        let back: GuardState = serde_json::from_value(json).unwrap();
        assert_eq!(back, g);
        assert!(back.hold_for("x", Bulk).is_some());
    }
}
