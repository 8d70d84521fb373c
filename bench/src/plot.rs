//! PNG plots of the report's series (plotters, bitmap backend). Text is drawn with DejaVu Sans
//! embedded from the `dejavu` crate through plotters' `ab_glyph` feature, so no system font
//! library or installed font is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::Plot;

static FONT: Once = Once::new();

fn register_font() -> Result<()> {
    let mut result = Ok(());
    FONT.call_once(|| {
        result = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .map_err(|_| anyhow!("the embedded DejaVu Sans font was refused"));
    });
    result
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `plot` into `dir/<plot.file>`.
pub fn draw(plot: &Plot, dir: &Path) -> Result<()> {
    register_font()?;
    let path = dir.join(&plot.file);
    let points = plot.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for (x, y) in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return Err(anyhow!("plot {} has no points", plot.file));
    }
    let y1 = (y1 * 1.15).max(1.0);
    if plot.log_x {
        let lo = x0.max(0.5) / 2.0;
        draw_with(plot, &path, (lo..x1 * 2.0).log_scale(), 0.0..y1)
    } else {
        let pad = ((x1 - x0) * 0.05).max(0.5);
        draw_with(plot, &path, (x0 - pad)..(x1 + pad), 0.0..y1)
    }
}

fn draw_with<X>(plot: &Plot, path: &Path, x: X, y: std::ops::Range<f64>) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(&plot.x_label)
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(&plot.y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, s) in plot.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(&s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 4, colour.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// 1, 10, 100, 1k, 10k, 100k, 1M ...
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.trim_end_matches(".0").to_string()
}
