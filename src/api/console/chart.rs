//! The overview's chart: jobs finished per minute as stacked bars, drawn
//! on the server as inline SVG (no script, no image request).

use crate::api::admin::MinuteCounts;
use std::fmt::Write as _;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 8.0;

/// The SVG of `minutes` (oldest first), with a text alternative.
pub fn throughput_svg(minutes: &[MinuteCounts]) -> String {
    let peak = minutes
        .iter()
        .map(|m| m.completed + m.failed + m.cancelled)
        .max()
        .unwrap_or(0)
        .max(1);
    let total: i64 = minutes
        .iter()
        .map(|m| m.completed + m.failed + m.cancelled)
        .sum();
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = (WIDTH - LEFT) / minutes.len().max(1) as f64;
    let bar = (slot - 2.0).max(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title"><title id="chart-title">Jobs finished per minute over the last hour: {total} in all, at most {peak} in one minute</title>"#
    );
    for frac in [0.0, 0.5, 1.0] {
        let y = TOP + plot_h * (1.0 - frac);
        let label = (peak as f64 * frac).round() as i64;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            LEFT - 4.0,
            y + 4.0
        );
    }
    for (i, m) in minutes.iter().enumerate() {
        let x = LEFT + i as f64 * slot + 1.0;
        let mut base = TOP + plot_h;
        for (count, class, what) in [
            (m.completed, "ok", "completed"),
            (m.failed, "bad", "failed"),
            (m.cancelled, "cx", "cancelled"),
        ] {
            if count == 0 {
                continue;
            }
            let h = plot_h * count as f64 / peak as f64;
            base -= h;
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{x:.1}" y="{base:.1}" width="{bar:.1}" height="{h:.1}"><title>{} UTC: {count} {what}</title></rect>"#,
                m.minute.format("%H:%M")
            );
        }
    }
    for (i, m) in minutes.iter().enumerate().step_by(10) {
        let x = LEFT + i as f64 * slot;
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}">{}</text>"#,
            HEIGHT - 5.0,
            m.minute.format("%H:%M")
        );
    }
    svg.push_str("</svg>");
    svg
}
