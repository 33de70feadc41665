//! The run's chart: four panels over time (users; throughput and 429s;
//! end-to-end p50/p95; queue depth and jobs processing), as an SVG drawn
//! with plotters' SVG backend (no font or bitmap dependencies: text is left
//! to the viewer).

use super::report::Report;
use super::LoadgenError;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 220;
const TITLE_HEIGHT: u32 = 50;

/// Where a panel's y axis starts.
#[derive(Clone, Copy)]
enum Floor {
    /// At zero: counts and rates.
    Zero,
    /// Just below the smallest value: latencies dominated by a constant
    /// (the LLM's 2 s) whose variations would be flattened from zero.
    Data,
}

/// One line of a panel.
struct Line {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Draws `report`'s timeline into `path`.
pub fn draw(report: &Report, path: &Path) -> Result<(), LoadgenError> {
    let chart_err = |e: String| LoadgenError::Chart(e);
    let t = &report.timeline;
    let series = |f: &dyn Fn(&super::report::TimelinePoint) -> Option<f64>| -> Vec<(f64, f64)> {
        t.iter().filter_map(|p| f(p).map(|v| (p.t, v))).collect()
    };
    let panels: Vec<(&str, &str, Floor, Vec<Line>)> = vec![
        (
            "Virtual users",
            "users",
            Floor::Zero,
            vec![Line {
                label: "users",
                color: RGBColor(31, 119, 180),
                points: series(&|p| Some(p.users as f64)),
            }],
        ),
        (
            "Throughput (5 s average)",
            "per second",
            Floor::Zero,
            vec![
                Line {
                    label: "turns/s",
                    color: RGBColor(44, 160, 44),
                    points: series(&|p| Some(p.throughput_turns_per_s)),
                },
                Line {
                    label: "429s/s",
                    color: RGBColor(214, 39, 40),
                    points: series(&|p| Some(p.rejected_429 as f64)),
                },
            ],
        ),
        (
            "End-to-end latency, p95 of the last 5 s (axis from the lowest value)",
            "ms",
            Floor::Data,
            vec![Line {
                label: "p95",
                color: RGBColor(255, 127, 14),
                points: series(&|p| p.p95_ms),
            }],
        ),
        (
            "Queue (GET /v1/queue)",
            "jobs",
            Floor::Zero,
            vec![
                Line {
                    label: "queued",
                    color: RGBColor(148, 103, 189),
                    points: series(&|p| p.queue_total.map(|v| v as f64)),
                },
                Line {
                    label: "processing",
                    color: RGBColor(140, 86, 75),
                    points: series(&|p| p.processing.map(|v| v as f64)),
                },
            ],
        ),
    ];
    let height = TITLE_HEIGHT + PANEL_HEIGHT * panels.len() as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(e.to_string()))?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    let heading = format!(
        "skipjack loadgen: {} ({})",
        report.scenario, report.profile_description
    );
    let numbers = format!(
        "{:.1} turns/s over the run, end-to-end p95 {:.0} ms, p99 {:.0} ms; {} errors, {} mismatches, {} lost, {} 429s",
        report.throughput_turns_per_s,
        report.latency_ms.end_to_end.p95_ms,
        report.latency_ms.end_to_end.p99_ms,
        report.counts.errors,
        report.counts.mismatches,
        report.counts.lost,
        report.counts.rejected_429,
    );
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    for (text, y) in [(&heading, 8), (&numbers, 28)] {
        title
            .draw_text(text, &font, (10, y))
            .map_err(|e| chart_err(e.to_string()))?;
    }

    let x_max = t.last().map_or(1.0, |p| p.t + 1.0).max(1.0);
    let areas = body.split_evenly((panels.len(), 1));
    for (area, (caption, unit, floor, lines)) in areas.iter().zip(panels) {
        let values = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
        let y_max = values().fold(0.0f64, f64::max);
        let y_min = match floor {
            Floor::Zero => 0.0,
            Floor::Data => values().fold(f64::INFINITY, f64::min),
        };
        let (y_min, y_max) = if y_max > 0.0 && y_min.is_finite() && y_min < y_max {
            let pad = (y_max - y_min) * 0.1;
            ((y_min - pad).max(0.0), y_max + pad)
        } else {
            (0.0, if y_max > 0.0 { y_max * 1.1 } else { 1.0 })
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(|e| chart_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc(unit)
            .x_labels(12)
            .y_labels(5)
            .draw()
            .map_err(|e| chart_err(e.to_string()))?;
        for line in lines {
            let color = line.color;
            chart
                .draw_series(LineSeries::new(line.points, color.stroke_width(2)))
                .map_err(|e| chart_err(e.to_string()))?
                .label(line.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| chart_err(e.to_string()))?;
    }
    root.present().map_err(|e| chart_err(e.to_string()))?;
    Ok(())
}
