//! Latency-distribution plots: every series of a [`Report`] as a cumulative distribution on one
//! chart (log-scale x: the series of one benchmark can differ by orders of magnitude), drawn
//! with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use super::{BenchError, Report};

/// Colours for successive series (colour-blind-safe, from the Okabe–Ito palette).
const COLORS: [RGBColor; 5] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
];

/// Writes the CDF of every series of `report` to the SVG file `path`.
pub fn write_cdf(report: &Report, path: &Path) -> Result<(), BenchError> {
    let plot_err = |e: Box<dyn std::error::Error + Send + Sync>| BenchError::Plot {
        path: path.display().to_string(),
        source: e,
    };
    draw(report, path).map_err(plot_err)
}

/// 1500 → "1.5k", 2000000 → "2M": axis labels a reader takes in at a glance.
fn si(v: f64) -> String {
    let (value, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{value:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
}

type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn draw(report: &Report, path: &Path) -> DrawResult {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = report
        .series
        .iter()
        .map(|s| (s.label, s.histogram.cdf()))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let lo = curves
        .iter()
        .flat_map(|(_, c)| c.first().map(|p| p.0))
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .flat_map(|(_, c)| c.last().map(|p| p.0))
        .fold(0.0, f64::max);
    if curves.is_empty() || !(lo.is_finite() && hi > lo) {
        return Err("no samples to plot".into());
    }
    // Whole decades around the data, so the log axis has round labels.
    let x_lo = 10f64.powf(lo.max(1.0).log10().floor());
    let x_hi = 10f64.powf(hi.log10().ceil());

    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("hvkvm bench {}: {}", report.benchmark, report.title),
        ("sans-serif", 17),
    )?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("host: {}", report.host.describe()),
            ("sans-serif", 13),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc(format!("{} per operation (log scale)", report.unit))
        .y_desc("fraction of operations ≤ x")
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, (label, curve)) in curves.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // A step function: flat within each bucket, rising at its edge.
        let mut steps = Vec::with_capacity(curve.len() * 2);
        let mut prev = 0.0;
        for (x, y) in curve {
            steps.push((x, prev));
            steps.push((x, y));
            prev = y;
        }
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_series() {
        let report = crate::bench::tests::sample_report();
        let path = std::env::temp_dir().join(format!("hvkvm-plot-test-{}.svg", std::process::id()));
        write_cdf(&report, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("fast path") && svg.contains("slow path"));
        assert!(svg.contains("<polyline"), "no curves drawn");
    }

    #[test]
    fn axis_labels_use_si_prefixes() {
        assert_eq!(si(10.0), "10");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(100_000.0), "100k");
        assert_eq!(si(10_000_000.0), "10M");
    }

    #[test]
    fn an_empty_report_is_an_error_not_an_empty_plot() {
        let mut report = crate::bench::tests::sample_report();
        for s in &mut report.series {
            s.histogram = crate::bench::Histogram::default();
        }
        let err = write_cdf(&report, Path::new("/nonexistent/x.svg")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.svg"));
    }
}
