//! The mail-flow chart: sends, deliveries, bounces and complaints per hour, drawn on the
//! server as inline SVG (no script, no chart library, nothing for the CSP to allow). Colours
//! come from the console's stylesheet through classes. The figures are the reputation
//! service's hourly series (recipients sent to, delivered, hard-bounced, complained about).

use std::fmt::Write;

use crate::reputation::HourlyPoint;

use super::html::esc;

use crate::activity::HOUR_MS;

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
    /// The last `hours` points of the reputation service's hourly series (oldest first).
    pub fn from_points(points: &[HourlyPoint], hours: usize) -> HourlySeries {
        let points = &points[points.len().saturating_sub(hours)..];
        HourlySeries {
            start_ms: points.first().map_or(0, |p| p.hour_ms),
            sent: points.iter().map(|p| p.counts.sends).collect(),
            delivered: points.iter().map(|p| p.counts.deliveries).collect(),
            bounced: points.iter().map(|p| p.counts.bounces).collect(),
            complained: points.iter().map(|p| p.counts.complaints).collect(),
        }
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

const WIDTH: u64 = 720;
const HEIGHT: u64 = 220;
const LEFT: u64 = 40;
const BOTTOM: u64 = 24;
const TOP: u64 = 10;
const RIGHT: u64 = 16;

/// The series as an SVG bar chart (four bars per hour) with a legend; each series is a group
/// carrying its total in `data-total`, which the legend also shows.
pub fn svg(series: &HourlySeries) -> String {
    let hours = series.sent.len().max(1) as u64;
    let max = series
        .series()
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let base = TOP + plot_h;
    // Each hour is a slot of four bars (sent, delivered, bounced, complained) and a gap.
    let slot = plot_w as f64 / hours as f64;
    let bar = slot / 5.0;
    let mut out = format!(
        "<svg class=\"chart\" id=\"flow-chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"Sends, deliveries, bounces and complaints per hour\" \
         xmlns=\"http://www.w3.org/2000/svg\">"
    );
    // Axes, the top value, and an hour label every six hours (UTC).
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{0}\" y2=\"{base}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\"/>\
         <text class=\"tick\" x=\"{1}\" y=\"{2}\" text-anchor=\"end\">{max}</text>\
         <text class=\"tick\" x=\"{1}\" y=\"{base}\" text-anchor=\"end\">0</text>",
        WIDTH - RIGHT,
        LEFT - 4,
        TOP + 8,
    );
    for i in 0..hours {
        let at = series.start_ms + i * HOUR_MS;
        if (at / HOUR_MS).is_multiple_of(6) {
            let label = &crate::clock::rfc3339(at)[11..16];
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{base}\"/>\
                 <text class=\"tick\" x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                HEIGHT - 6,
                x = LEFT as f64 + i as f64 * slot,
            );
        }
    }
    for (k, (key, label, values)) in series.series().into_iter().enumerate() {
        let total: u64 = values.iter().sum();
        let _ = write!(
            out,
            "<g class=\"series {key}\" data-series=\"{key}\" data-total=\"{total}\">"
        );
        for (i, &v) in values.iter().enumerate().filter(|(_, &v)| v > 0) {
            let h = (v * plot_h / max).max(1);
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{h}\"><title>{} {}: {v}</title></rect>",
                LEFT as f64 + i as f64 * slot + (k as f64 + 0.5) * bar,
                base - h,
                bar,
                &crate::clock::rfc3339(series.start_ms + i as u64 * HOUR_MS)[..16],
                esc(label)
            );
        }
        out.push_str("</g>");
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
    use crate::activity::Counts;

    fn point(hour: u64, sends: u64, bounces: u64) -> HourlyPoint {
        HourlyPoint {
            hour_ms: hour * HOUR_MS,
            counts: Counts {
                sends,
                bounces,
                ..Counts::default()
            },
        }
    }

    #[test]
    fn the_chart_takes_the_last_hours_of_the_series() {
        let points: Vec<_> = (0..10).map(|h| point(h, h, 0)).collect();
        let s = HourlySeries::from_points(&points, 4);
        assert_eq!(s.start_ms, 6 * HOUR_MS);
        assert_eq!(s.sent, vec![6, 7, 8, 9]);
        assert_eq!(HourlySeries::from_points(&points[..2], 4).sent, vec![0, 1]);
    }

    #[test]
    fn the_svg_carries_each_series_total_and_scales_to_the_peak() {
        let s = HourlySeries::from_points(&[point(3, 0, 0), point(4, 4, 1), point(5, 2, 0)], 3);
        let svg = svg(&s);
        assert!(
            svg.contains("data-series=\"sent\" data-total=\"6\""),
            "{svg}"
        );
        assert!(svg.contains("data-series=\"bounced\" data-total=\"1\""));
        assert!(svg.contains("data-series=\"complained\" data-total=\"0\""));
        // The peak (4) reaches the top of the plot; the single bounce a quarter of it.
        let plot_h = HEIGHT - TOP - BOTTOM;
        assert!(svg.contains(&format!("y=\"{TOP}\" width")), "{svg}");
        assert!(svg.contains(&format!("height=\"{}\"", plot_h / 4)), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 3, "no bars for zeros");
    }
}
