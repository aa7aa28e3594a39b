//! The mail-flow chart: sends, deliveries, bounces and complaints per hour, drawn on the
//! server as inline SVG (no script, no chart library, nothing for the CSP to allow). Colours
//! come from the console's stylesheet through classes.

use std::fmt::Write;

use crate::domain::{Outcome, State};
use crate::spool::{Ledger, SpoolError};

use super::html::esc;

pub const HOUR_MS: u64 = 3_600_000;

/// Counts per hour, oldest first; bucket `i` covers `[start_ms + i h, start_ms + (i+1) h)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HourlySeries {
    pub start_ms: u64,
    pub sent: Vec<u64>,
    pub delivered: Vec<u64>,
    pub bounced: Vec<u64>,
    pub complained: Vec<u64>,
}

impl HourlySeries {
    /// `hours` empty buckets ending with the hour that holds `now_ms`.
    pub fn empty(now_ms: u64, hours: usize) -> HourlySeries {
        let end = now_ms / HOUR_MS * HOUR_MS + HOUR_MS;
        HourlySeries {
            start_ms: end.saturating_sub(hours as u64 * HOUR_MS),
            sent: vec![0; hours],
            delivered: vec![0; hours],
            bounced: vec![0; hours],
            complained: vec![0; hours],
        }
    }

    fn bucket(&self, at_ms: u64) -> Option<usize> {
        let i = at_ms.checked_sub(self.start_ms)? / HOUR_MS;
        usize::try_from(i).ok().filter(|&i| i < self.sent.len())
    }

    fn series(&self) -> [(&'static str, &'static str, &[u64]); 4] {
        [
            ("sent", "Sent", &self.sent),
            ("delivered", "Delivered", &self.delivered),
            ("bounced", "Bounced", &self.bounced),
            ("complained", "Complained", &self.complained),
        ]
    }
}

/// Most finished records read per state for the chart (the ledger's listing bound).
const MAX_RECORDS_PER_STATE: usize = 10_000;

/// The chart's data read straight from the ledger: each record's `sent` transition and each
/// recipient's reported outcome, bucketed by the hour it happened. A stop-gap until the
/// reputation module's own hourly series is merged in (issue 17 items 1–2): this is the one
/// function to swap for it.
pub async fn hourly_series_from_ledger(
    ledger: &dyn Ledger,
    now_ms: u64,
    hours: usize,
) -> Result<HourlySeries, SpoolError> {
    let mut series = HourlySeries::empty(now_ms, hours);
    for state in [
        State::Sent,
        State::Delivered,
        State::Bounced,
        State::Complained,
    ] {
        for record in ledger.in_state(state, MAX_RECORDS_PER_STATE).await? {
            if let Some(i) = record
                .history
                .iter()
                .find(|t| t.state == State::Sent)
                .and_then(|t| series.bucket(t.at_ms))
            {
                series.sent[i] += 1;
            }
            for status in record.delivery.values() {
                let Some(i) = series.bucket(status.at_ms) else {
                    continue;
                };
                match status.outcome {
                    Outcome::Delivered | Outcome::NotSpam => series.delivered[i] += 1,
                    Outcome::Bounced | Outcome::Rejected => series.bounced[i] += 1,
                    Outcome::Complained => series.complained[i] += 1,
                    Outcome::Delayed | Outcome::Suppressed => {}
                }
            }
        }
    }
    Ok(series)
}

const WIDTH: u64 = 720;
const HEIGHT: u64 = 220;
const LEFT: u64 = 40;
const BOTTOM: u64 = 24;
const TOP: u64 = 10;

/// The series as an SVG line chart with a legend; each line carries its total in
/// `data-total`, which the legend also shows.
pub fn svg(series: &HourlySeries) -> String {
    let hours = series.sent.len().max(1) as u64;
    let max = series
        .series()
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - 10;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |i: u64| LEFT + i * plot_w / hours.saturating_sub(1).max(1);
    let y = |v: u64| TOP + plot_h - v * plot_h / max;
    let mut out = format!(
        "<svg class=\"chart\" id=\"flow-chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"Sends, deliveries, bounces and complaints per hour\" \
         xmlns=\"http://www.w3.org/2000/svg\">"
    );
    // Axes, the top value, and an hour label every six hours (UTC).
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{0}\"/>\
         <text class=\"tick\" x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{max}</text>\
         <text class=\"tick\" x=\"{2}\" y=\"{0}\" text-anchor=\"end\">0</text>",
        TOP + plot_h,
        WIDTH - 10,
        LEFT - 4,
        TOP + 8,
    );
    for i in 0..hours {
        let at = series.start_ms + i * HOUR_MS;
        if (at / HOUR_MS) % 6 == 0 {
            let label = &crate::clock::rfc3339(at)[11..16];
            let _ = write!(
                out,
                "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                x(i),
                HEIGHT - 6
            );
        }
    }
    for (key, label, values) in series.series() {
        let total: u64 = values.iter().sum();
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{},{}", x(i as u64), y(v)))
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"series {key}\" data-series=\"{key}\" data-total=\"{total}\" \
             points=\"{}\"><title>{} ({total})</title></polyline>",
            points.join(" "),
            esc(label)
        );
    }
    out.push_str("</svg><ul class=\"legend\">");
    for (key, label, values) in series.series() {
        let total: u64 = values.iter().sum();
        let _ = write!(
            out,
            "<li class=\"{key}\"><span class=\"swatch\"></span>{label} \
             <strong data-legend=\"{key}\">{total}</strong></li>"
        );
    }
    out.push_str("</ul>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_last_hours_up_to_now() {
        let now = 10 * HOUR_MS + 1234;
        let s = HourlySeries::empty(now, 4);
        assert_eq!(s.start_ms, 7 * HOUR_MS);
        assert_eq!(s.bucket(now), Some(3));
        assert_eq!(s.bucket(7 * HOUR_MS), Some(0));
        assert_eq!(s.bucket(7 * HOUR_MS - 1), None);
        assert_eq!(s.bucket(11 * HOUR_MS), None);
    }

    #[test]
    fn the_svg_carries_each_series_total_and_scales_to_the_peak() {
        let mut s = HourlySeries::empty(5 * HOUR_MS, 3);
        s.sent = vec![0, 4, 2];
        s.bounced = vec![0, 1, 0];
        let svg = svg(&s);
        assert!(
            svg.contains("data-series=\"sent\" data-total=\"6\""),
            "{svg}"
        );
        assert!(svg.contains("data-series=\"bounced\" data-total=\"1\""));
        assert!(svg.contains("data-series=\"complained\" data-total=\"0\""));
        // The peak (4) is drawn at the top of the plot.
        assert!(svg.contains(&format!("{},{TOP}", LEFT + (WIDTH - LEFT - 10) / 2)));
    }
}
