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

    /// An operator ends the hold on `target`, on the window's `table`.
    pub fn release(
        &mut self,
        target: &HoldTarget,
        table: &Table,
        t: &Thresholds,
        now_ms: u64,
    ) -> Result<Decision, NotHeld> {
        let i = self
            .holds
            .iter()
            .position(|h| &h.target == target)
            .ok_or_else(|| NotHeld(target.clone()))?;
        let hold = self.holds.remove(i);
        let own_scope = target.own_scope();
        let own = sum(table, &own_scope);
        self.released.retain(|r| &r.target != target);
        self.released.push(Released {
            target: target.clone(),
            bounces: own.bounces,
            complaints: own.complaints,
            at_ms: now_ms,
        });
        let decision = Decision {
            at_ms: now_ms,
            kind: DecisionKind::Release,
            reason: format!(
                "{target} released by the operator; held again only on new {}s",
                hold.metric.as_str()
            ),
            target: target.clone(),
            by: Actor::Operator,
            metric: hold.metric,
            figures: Figures {
                scope: own_scope,
                window: t.window,
                rate: ratio(hold.metric.events(&own), own.sends),
                counts: own,
                threshold: hold.metric.levels(t).0,
            },
        };
        self.record(decision.clone());
        Ok(decision)
    }
}
