//! The overview's chart: tasks completed and failed per minute, as an SVG drawn on the
//! server (no script, no library: a page that works offline and in any browser).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// Width and height of the drawing, in SVG units (it scales to the page).
const W: f64 = 1200.0;
const H: f64 = 200.0;
/// Room for the axis labels.
const LEFT: f64 = 40.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 18.0;

/// One minute of the series.
#[derive(Debug, Clone, Copy)]
pub struct Minute {
    pub at: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
}

/// The SVG for `minutes` (one per minute, oldest first, gaps filled with zeros) ending at
/// `end`; an accessible title says what it shows.
pub fn throughput(minutes: &[Minute], end: DateTime<Utc>) -> String {
    let n = minutes.len().max(1) as f64;
    let top = minutes
        .iter()
        .map(|m| m.completed + m.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot_w = W - LEFT;
    let plot_h = H - BOTTOM - TOP;
    let base = H - BOTTOM;
    let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n;
    let y = |v: i64| base - plot_h * (v as f64) / top;
    let bar = (plot_w / n).max(1.0);
    let total_c: i64 = minutes.iter().map(|m| m.completed).sum();
    let total_f: i64 = minutes.iter().map(|m| m.failed).sum();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="throughput" class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="throughput-title"><title id="throughput-title">Tasks per minute over the last {} minutes: {total_c} completed, {total_f} failed</title>"#,
        minutes.len()
    );
    // Grid: the top value and half of it.
    for (v, label) in [(top, top), (top / 2.0, top / 2.0)] {
        let gy = base - plot_h * v / top;
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" y1="{gy:.1}" x2="{W}" y2="{gy:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 4.0,
            gy + 4.0,
            format_count(label)
        );
    }
    let _ = write!(
        s,
        r#"<line class="axis-line" x1="{LEFT}" y1="{base}" x2="{W}" y2="{base}"/>"#
    );
    // Failures as bars, completions as a line over them.
    for (i, m) in minutes.iter().enumerate().filter(|(_, m)| m.failed > 0) {
        let _ = write!(
            s,
            r#"<rect class="failed" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{}: {} failed</title></rect>"#,
            x(i) - bar / 2.0,
            y(m.failed),
            bar,
            base - y(m.failed),
            m.at.format("%H:%M UTC"),
            m.failed
        );
    }
    let points: Vec<String> = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{:.1},{:.1}", x(i), y(m.completed)))
        .collect();
    let _ = write!(
        s,
        r#"<polyline class="completed" points="{}"/>"#,
        points.join(" ")
    );
    if let (Some(first), Some(_)) = (minutes.first(), minutes.last()) {
        let _ = write!(
            s,
            r#"<text class="axis" x="{LEFT}" y="{H}">{}</text><text class="axis" x="{W}" y="{H}" text-anchor="end">{}</text>"#,
            first.at.format("%H:%M UTC"),
            end.format("%H:%M UTC")
        );
    }
    s.push_str("</svg>");
    s
}

fn format_count(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_one_svg_with_a_line_and_the_failures() {
        let t0 = Utc::now();
        let minutes: Vec<Minute> = (0..3)
            .map(|i| Minute {
                at: t0 + chrono::Duration::minutes(i),
                completed: i * 10,
                failed: if i == 1 { 2 } else { 0 },
            })
            .collect();
        let svg = throughput(&minutes, t0);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 1);
        assert!(svg.contains("30 completed, 2 failed"), "{svg}");
        assert!(svg.contains("<polyline"));
    }
}
