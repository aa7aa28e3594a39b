//! `[reputation]`: the guard's thresholds and what it may hold.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::Window;
use crate::domain::MessageClass;

/// Amazon SES places an account under review at about 5 % bounces and 0.1 % complaints, and
/// may pause sending at about 10 % / 0.5 %. The defaults hold well inside the review levels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// Whether the guard holds mail; the rates are computed and shown either way.
    pub guard: bool,
    /// The window whose rates the guard judges: `"24h"` (default) reacts within a day;
    /// `"7d"` keeps a class held for up to a week after a spike.
    pub window: Window,
    /// Hard bounce rate (percent of recipients sent to) at which a class is held.
    pub bounce_hold_percent: f64,
    /// Bounce rate below which an automatic hold ends (hysteresis, so a class does not flap).
    pub bounce_resume_percent: f64,
    /// Complaint rate (percent) at which a class is held.
    pub complaint_hold_percent: f64,
    pub complaint_resume_percent: f64,
    /// Recipients sent to in the window before the bounce rate counts: below it one or two
    /// bounces are noise, not a reputation.
    pub min_sends_bounce: u64,
    /// Recipients sent to before the complaint rate counts. 2000 is the volume at which one
    /// complaint is exactly the default 0.05 %: below it a single complaint would hold mail.
    pub min_sends_complaint: u64,
    /// Classes the guard may hold, in the order it holds them when a scope's rate stays too
    /// high (bulk first, then mailing_list). `transactional` only if listed here: holding
    /// password resets is a decision for the operator.
    pub hold_classes: Vec<MessageClass>,
    /// Judge each identity on its own too (hold one identity's class, not everyone's).
    pub per_identity: bool,
    /// Mail of a held class already in the queue is held too (not sent into an account under
    /// review), and released with the class.
    pub hold_queued: bool,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            guard: true,
            window: Window::Day,
            bounce_hold_percent: 2.0,
            bounce_resume_percent: 1.0,
            complaint_hold_percent: 0.05,
            complaint_resume_percent: 0.025,
            min_sends_bounce: 200,
            min_sends_complaint: 2000,
            hold_classes: vec![MessageClass::Bulk, MessageClass::MailingList],
            per_identity: true,
            hold_queued: true,
        }
    }
}

/// The thresholds as ratios (0.02 for 2 %), as reports and metrics show them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub window: Window,
    pub bounce_hold: f64,
    pub bounce_resume: f64,
    pub complaint_hold: f64,
    pub complaint_resume: f64,
    pub min_sends_bounce: u64,
    pub min_sends_complaint: u64,
}

impl ReputationConfig {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            window: self.window,
            bounce_hold: self.bounce_hold_percent / 100.0,
            bounce_resume: self.bounce_resume_percent / 100.0,
            complaint_hold: self.complaint_hold_percent / 100.0,
            complaint_resume: self.complaint_resume_percent / 100.0,
            min_sends_bounce: self.min_sends_bounce,
            min_sends_complaint: self.min_sends_complaint,
        }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, hold, resume) in [
            (
                "bounce",
                self.bounce_hold_percent,
                self.bounce_resume_percent,
            ),
            (
                "complaint",
                self.complaint_hold_percent,
                self.complaint_resume_percent,
            ),
        ] {
            if !(hold > 0.0 && hold <= 100.0) {
                bail!("reputation: {name}_hold_percent must be above 0 and at most 100");
            }
            if !(resume >= 0.0 && resume <= hold) {
                bail!(
                    "reputation: {name}_resume_percent must be between 0 and {name}_hold_percent"
                );
            }
        }
        if self.min_sends_bounce == 0 || self.min_sends_complaint == 0 {
            bail!("reputation: min_sends_bounce and min_sends_complaint must be at least 1");
        }
        let mut seen = Vec::new();
        for c in &self.hold_classes {
            if seen.contains(c) {
                bail!("reputation: hold_classes names {c} twice");
            }
            seen.push(*c);
        }
        Ok(())
    }
}
