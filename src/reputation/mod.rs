//! Sending reputation: bounce and complaint rates per window, and the guard that holds a
//! message class before Amazon SES puts the account under review.
//!
//! Amazon SES reviews an account above about 5 % hard bounces or 0.1 % complaints and may
//! pause it at about 10 % / 0.5 % — every sender on it, password resets included. This module
//! watches the same figures from the feedback the ledger records and holds the offending
//! class (bulk first, then mailing_list; transactional only if configured), for the account
//! or for one identity, well before that.
//!
//! - [`rates`]: the maths: hourly activity summed per window (24 h, 7 d) and scope.
//! - [`guard`]: the state machine: holds, resumes, operator releases, decisions.
//! - [`config`]: the `[reputation]` section.
//!
//! Where the numbers come from: the ledger counts sends, deliveries, hard bounces and
//! complaints per hour, identity and class in the same write that changes a record (see
//! [`crate::activity`]), and keeps them 8 days whatever the record retention is. [`Reputation`]
//! reads those few rows (at most 192 hours × identities × 3 classes) when the ledger's change
//! feed moves, at most once per [`MIN_REFRESH`], and at least every [`MAX_REFRESH`] as the
//! windows slide. Front doors ask [`Reputation::check`], an in-memory look-up.
//!
//! [`Reputation::report`] is the one source of the figures for the CLI (`outbox reputation`),
//! `/metrics` and the operator console: rates per scope and window, thresholds, holds, recent
//! decisions and an hourly series of the last 7 days.

pub mod config;
pub mod guard;
mod metrics;
pub mod rates;
#[cfg(test)]
mod tests;
pub mod text;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::activity::ActivityRow;
use crate::clock::Clock;
use crate::domain::{MessageClass, State};
use crate::spool::{Action, Spool, SpoolError};

pub use config::{ReputationConfig, Thresholds};
pub use guard::{
    Actor, Decision, DecisionKind, Figures, GuardState, Hold, HoldTarget, Metric, NotHeld,
};
pub use rates::{HourlyPoint, Rates, Scope, Window};

/// The shortest time between two reads of the activity rows: a burst of feedback costs one.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest: the windows slide by the hour, so a minute is plenty.
pub const MAX_REFRESH: Duration = Duration::from_secs(60);
/// Decisions a report carries (the state keeps [`guard::MAX_DECISIONS`]).
pub const REPORT_DECISIONS: usize = 50;
/// Held messages looked at when a hold ends, to release the ones the guard held.
const MAX_UNPARK_SCAN: usize = 100_000;

/// A submission refused because its class is held; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}; try again later")]
pub struct Refusal {
    pub target: HoldTarget,
    pub metric: Metric,
    pub reason: String,
}

/// Everything the CLI, `/metrics` and the console show. Rates are ratios (0.02 is 2 %).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReputationReport {
    /// When the figures were read (ms since the Unix epoch); 0 before the first read.
    pub generated_ms: u64,
    /// Whether the guard holds mail (the figures are computed either way).
    pub guard_enabled: bool,
    /// Classes the guard may hold, in its order.
    pub hold_classes: Vec<MessageClass>,
    pub thresholds: Thresholds,
    /// Every scope (account, each class, each identity, each identity × class) in both
    /// windows.
    pub rates: Vec<Rates>,
    pub holds: Vec<Hold>,
    /// The most recent decisions, newest first, at most [`REPORT_DECISIONS`].
    pub decisions: Vec<Decision>,
    /// Account-wide sends, deliveries, bounces, complaints per hour for the last 7 days.
    pub series: Vec<HourlyPoint>,
    /// Why the figures could not be read, if they could not (they are then stale or empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the last refresh read.
#[derive(Default)]
struct Snapshot {
    rows: Vec<ActivityRow>,
    state: GuardState,
    read_ms: u64,
    error: Option<String>,
    /// The state changed since it was last saved (a save failed).
    unsaved: bool,
}

/// The reputation service: figures, guard state, and the in-memory check the front doors
/// make.
pub struct Reputation {
    config: ReputationConfig,
    /// Configured identity ids: reported even without mail.
    identities: Vec<String>,
    spool: Spool,
    clock: Arc<dyn Clock>,
    snapshot: RwLock<Snapshot>,
    /// One refresh or release at a time (each reads, decides and saves).
    writing: Mutex<()>,
    metrics: metrics::Counters,
    /// Decisions taken since the service opened; moves with each one.
    decided: watch::Sender<u64>,
}

impl Reputation {
    /// Opens the service on `spool`, restoring the guard's saved state. If the state cannot
    /// be read (storage failing), the service starts with no holds, reports the error, and
    /// takes the stored state at the first refresh that can read it.
    pub async fn open(
        config: ReputationConfig,
        identities: Vec<String>,
        spool: Spool,
        clock: Arc<dyn Clock>,
    ) -> Arc<Reputation> {
        let mut snapshot = Snapshot::default();
        match spool.ledger.guard_state().await {
            Ok(Some(saved)) => match serde_json::from_value::<GuardState>(saved) {
                Ok(state) => snapshot.state = state,
                Err(e) => {
                    tracing::error!(error = %e, "the saved reputation guard state is unreadable; starting with no holds");
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reputation guard state not available");
                snapshot.error = Some(e.to_string());
            }
        }
        Arc::new(Reputation {
            config,
            identities,
            spool,
            clock,
            snapshot: RwLock::new(snapshot),
            writing: Mutex::new(()),
            metrics: metrics::Counters::default(),
            decided: watch::channel(0).0,
        })
    }

    fn rules(&self) -> guard::Rules {
        guard::Rules {
            thresholds: self.config.thresholds(),
            hold_classes: self.config.hold_classes.clone(),
            per_identity: self.config.per_identity,
        }
    }

    /// Whether new mail of `identity_id` and `class` may be accepted: an in-memory look-up.
    /// A refusal is counted.
    pub fn check(&self, identity_id: &str, class: MessageClass) -> Result<(), Refusal> {
        let Some(hold) = self.hold_for(identity_id, class) else {
            return Ok(());
        };
        self.metrics.refused(identity_id, class);
        Err(Refusal {
            reason: hold.reason(),
            target: hold.target,
            metric: hold.metric,
        })
    }

    /// The hold that stops mail of `identity_id` and `class`, if any.
    pub fn hold_for(&self, identity_id: &str, class: MessageClass) -> Option<Hold> {
        if !self.config.guard {
            return None;
        }
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        snapshot.state.hold_for(identity_id, class).cloned()
    }

    /// Whether queued mail of a held class is held too (`hold_queued`).
    pub fn holds_queued(&self) -> bool {
        self.config.guard && self.config.hold_queued
    }

    /// Reads the activity rows, lets the guard judge them, saves and logs its decisions, and
    /// acts on the queue (holds end: the messages it held are released). Returns the
    /// decisions taken.
    pub async fn refresh(&self) -> Result<Vec<Decision>, SpoolError> {
        let _writing = self.writing.lock().await;
        let now = self.clock.now_ms();
        let since = Window::Week.start(now);
        let rows = match self.spool.ledger.activity(since).await {
            Ok(rows) => rows,
            Err(e) => {
                self.snapshot
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .error = Some(e.to_string());
                return Err(e);
            }
        };
        // What is stored wins over what is in memory (unless this process's last save failed):
        // with several nodes on one store, another node's decision or an operator's release
        // made through it reaches this one here.
        let stored = match self.spool.ledger.guard_state().await {
            Ok(Some(value)) => serde_json::from_value::<GuardState>(value).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "reading the reputation guard state failed");
                None
            }
        };
        let rules = self.rules();
        let table = rates::table(&rows, rules.thresholds.window, now);
        let (decisions, state, unsaved) = {
            let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            if let Some(stored) = stored.filter(|_| !snapshot.unsaved) {
                snapshot.state = stored;
            }
            let decisions = if self.config.guard {
                snapshot.state.evaluate(&table, &rules, now)
            } else {
                Vec::new()
            };
            snapshot.rows = rows;
            snapshot.read_ms = now;
            snapshot.error = None;
            (decisions, snapshot.state.clone(), snapshot.unsaved)
        };
        for d in &decisions {
            log(d);
            self.metrics.decision(d);
        }
        if !decisions.is_empty() || unsaved {
            self.save(&state).await;
        }
        self.unpark_resumed(&decisions).await;
        self.decided.send_modify(|n| *n += decisions.len() as u64);
        Ok(decisions)
    }

    /// An operator ends the hold on `target` (`outbox reputation release`).
    pub async fn release(&self, target: HoldTarget) -> Result<Decision, ReleaseError> {
        let _writing = self.writing.lock().await;
        let now = self.clock.now_ms();
        let t = self.config.thresholds();
        let (decision, state) = {
            let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            let table = rates::table(&snapshot.rows, t.window, now);
            let decision = snapshot.state.release(&target, &table, &t, now)?;
            (decision, snapshot.state.clone())
        };
        log(&decision);
        self.metrics.decision(&decision);
        if !self.save(&state).await {
            return Err(ReleaseError::Storage);
        }
        self.unpark_resumed(std::slice::from_ref(&decision)).await;
        self.decided.send_modify(|n| *n += 1);
        Ok(decision)
    }

    /// Saves the guard state; on failure keeps it marked unsaved (the next refresh retries).
    async fn save(&self, state: &GuardState) -> bool {
        let value = match serde_json::to_value(state) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "encoding the reputation guard state failed");
                return false;
            }
        };
        let saved = self.spool.ledger.save_guard_state(value).await;
        let ok = saved.is_ok();
        if let Err(e) = saved {
            tracing::error!(error = %e, "saving the reputation guard state failed; retried at the next refresh");
        }
        self.snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .unsaved = !ok;
        ok
    }

    /// Holds a queued message of a held class (a sender found it before sending): it is not
    /// sent into an account under review, and is released when the hold ends.
    pub async fn park(&self, id: crate::domain::QueueId, hold: &Hold) -> Result<(), SpoolError> {
        let reason = format!("{PARK_REASON}: {}", hold.reason());
        self.spool.queue.act(id, Action::Park { reason }).await?;
        self.metrics.parked(hold);
        tracing::info!(%id, target = %hold.target, "queued message held by the reputation guard");
        Ok(())
    }

    /// Releases the messages the guard held for the targets whose holds just ended (unless
    /// another hold still covers them).
    async fn unpark_resumed(&self, decisions: &[Decision]) {
        let ended: Vec<&HoldTarget> = decisions
            .iter()
            .filter(|d| d.kind != DecisionKind::Hold)
            .map(|d| &d.target)
            .collect();
        if ended.is_empty() {
            return;
        }
        let held = match self
            .spool
            .ledger
            .in_state(State::Held, MAX_UNPARK_SCAN)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(error = %e, "listing held messages to release failed");
                return;
            }
        };
        for record in held {
            let ours = record
                .history
                .last()
                .and_then(|t| t.detail.as_deref())
                .is_some_and(|d| d.starts_with(PARK_REASON));
            let (identity, class) = (&record.job.identity_id, record.job.message_class);
            if !ours
                || !ended.iter().any(|t| t.covers(identity, class))
                || self.hold_for(identity, class).is_some()
            {
                continue;
            }
            let reason = "released: the reputation guard's hold ended".to_string();
            match self
                .spool
                .queue
                .act(record.id(), Action::Unpark { reason })
                .await
            {
                Ok(()) => {
                    tracing::info!(id = %record.id(), "queued message released by the reputation guard")
                }
                Err(e) => {
                    tracing::warn!(id = %record.id(), error = %e, "releasing a held message failed")
                }
            }
        }
    }

    /// The figures, holds and decisions as of the last refresh.
    pub fn report(&self) -> ReputationReport {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        let t = self.config.thresholds();
        let now = snapshot.read_ms;
        ReputationReport {
            generated_ms: now,
            guard_enabled: self.config.guard,
            hold_classes: self.config.hold_classes.clone(),
            thresholds: t,
            rates: rates::all_rates(&snapshot.rows, &self.identities, &t, now),
            holds: snapshot.state.holds.clone(),
            decisions: snapshot
                .state
                .decisions
                .iter()
                .rev()
                .take(REPORT_DECISIONS)
                .cloned()
                .collect(),
            series: rates::series(&snapshot.rows, &Scope::Account, now),
            error: snapshot.error.clone(),
        }
    }

    /// The hourly series of the last 7 days for one scope (the report carries the account's).
    pub fn series(&self, scope: &Scope) -> Vec<HourlyPoint> {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        rates::series(&snapshot.rows, scope, snapshot.read_ms)
    }

    /// Moves whenever the guard takes a decision (the number taken since the service opened):
    /// a console can wait on it instead of polling.
    pub fn watch_decisions(&self) -> watch::Receiver<u64> {
        self.decided.subscribe()
    }

    /// Every guard decision kept (up to [`guard::MAX_DECISIONS`]), newest first.
    pub fn decisions(&self) -> Vec<Decision> {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        snapshot.state.decisions.iter().rev().cloned().collect()
    }

    /// Refreshes whenever the ledger's change feed moves (at most once per [`MIN_REFRESH`])
    /// and at least every [`MAX_REFRESH`], until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        /// Feed entries skipped per read: which records changed does not matter, only that
        /// some did.
        const PAGE: usize = 10_000;
        let mut cursor = 0;
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading reputation figures failed");
            }
            while let Ok(page) = self.spool.ledger.changes(cursor, PAGE).await {
                cursor = page.next;
                if page.changes.len() < PAGE {
                    break;
                }
            }
            tokio::select! {
                _ = self.spool.ledger.wait_for_changes(cursor, MAX_REFRESH) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(MIN_REFRESH) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Adds the reputation gauges and counters to a metrics registry (see README "Metrics").
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        metrics::register(self, registry);
    }
}

/// The history detail of a message the guard held; a resume releases only these.
const PARK_REASON: &str = guard::PARK_REASON_PREFIX;

/// Why an operator's release failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    NotHeld(#[from] NotHeld),
    #[error("the release could not be stored; try again")]
    Storage,
}

fn log(d: &Decision) {
    match d.kind {
        DecisionKind::Hold => tracing::warn!(
            target_mail = %d.target,
            metric = d.metric.as_str(),
            rate = d.figures.rate,
            threshold = d.figures.threshold,
            sends = d.figures.counts.sends,
            bounces = d.figures.counts.bounces,
            complaints = d.figures.counts.complaints,
            "reputation guard: {}", d.reason
        ),
        DecisionKind::Resume | DecisionKind::Release => tracing::info!(
            target_mail = %d.target,
            metric = d.metric.as_str(),
            rate = d.figures.rate,
            "reputation guard: {}", d.reason
        ),
    }
}
