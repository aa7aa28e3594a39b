//! The reputation figures in `/metrics`. Label sets are bounded: identities come from the
//! configuration, classes and windows are fixed.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Decision, Hold, Reputation};
use crate::domain::MessageClass;

/// Which rate a gauge is: `scope` is account, class, identity or identity_class; `identity`
/// and `class` are empty where the scope spans all.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLabels {
    scope: String,
    identity: String,
    class: String,
    window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    identity: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabels {
    metric: String,
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Counters kept between scrapes.
#[derive(Default)]
pub(super) struct Counters {
    refusals: Family<TargetLabels, Counter>,
    parked: Family<TargetLabels, Counter>,
    decisions: Family<KindLabels, Counter>,
}

impl Counters {
    pub(super) fn refused(&self, identity: &str, class: MessageClass) {
        self.refusals
            .get_or_create(&TargetLabels {
                identity: identity.into(),
                class: class.as_str().into(),
            })
            .inc();
    }

    pub(super) fn parked(&self, hold: &Hold) {
        self.parked.get_or_create(&target(hold)).inc();
    }

    pub(super) fn decision(&self, d: &Decision) {
        let kind = serde_json::to_value(d.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.decisions.get_or_create(&KindLabels { kind }).inc();
    }
}

fn target(hold: &Hold) -> TargetLabels {
    TargetLabels {
        identity: hold.target.identity.clone().unwrap_or_default(),
        class: hold.target.class.as_str().into(),
    }
}

pub(super) fn register(rep: &Reputation, registry: &mut Registry) {
    let report = rep.report();
    let bounce: Family<RateLabels, FloatGauge> = Family::default();
    let complaint: Family<RateLabels, FloatGauge> = Family::default();
    let sends: Family<RateLabels, Gauge> = Family::default();
    for r in &report.rates {
        let (identity, class) = r.scope.labels();
        let scope = serde_json::to_value(&r.scope)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .unwrap_or_default();
        let labels = RateLabels {
            scope,
            identity: identity.unwrap_or_default().into(),
            class: class.map(|c| c.as_str()).unwrap_or_default().into(),
            window: r.window.as_str().into(),
        };
        bounce.get_or_create(&labels).set(r.bounce_rate);
        complaint.get_or_create(&labels).set(r.complaint_rate);
        sends.get_or_create(&labels).set(r.counts.sends as i64);
    }
    let levels: Family<LevelLabels, FloatGauge> = Family::default();
    let t = report.thresholds;
    for (metric, level, value) in [
        ("bounce", "hold", t.bounce_hold),
        ("bounce", "resume", t.bounce_resume),
        ("complaint", "hold", t.complaint_hold),
        ("complaint", "resume", t.complaint_resume),
    ] {
        levels
            .get_or_create(&LevelLabels {
                metric: metric.into(),
                level: level.into(),
            })
            .set(value);
    }
    let held: Family<TargetLabels, Gauge> = Family::default();
    for hold in &report.holds {
        held.get_or_create(&target(hold)).set(1);
    }
    registry.register(
        "reputation_bounce_rate",
        "Hard bounces / recipients sent, per scope and window (ratio)",
        bounce,
    );
    registry.register(
        "reputation_complaint_rate",
        "Complaints / recipients sent, per scope and window (ratio)",
        complaint,
    );
    registry.register(
        "reputation_sends",
        "Recipients sent (accepted by the provider), per scope and window",
        sends,
    );
    registry.register(
        "reputation_threshold",
        "The guard's hold and resume levels (ratio)",
        levels,
    );
    registry.register(
        "reputation_held",
        "1 for each (identity, class) the guard holds; identity empty for the whole account",
        held,
    );
    registry.register(
        "reputation_refusals",
        "Submissions refused because their class is held",
        rep.metrics.refusals.clone(),
    );
    registry.register(
        "reputation_parked",
        "Queued messages held because their class is held",
        rep.metrics.parked.clone(),
    );
    registry.register(
        "reputation_decisions",
        "Guard decisions by kind (hold, resume, release)",
        rep.metrics.decisions.clone(),
    );
}
