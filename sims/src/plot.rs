//! PNG line plots (plotters, bitmap backend) and CSV series.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// A named series of (x, y) points.
pub struct Series {
    /// Legend name.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system TrueType font for plot text (plotters' ab_glyph backend has none of
/// its own). Returns false if none was found: plots are then skipped.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let path = std::env::var("SIMS_FONT").ok();
        for p in path
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
        {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Writes `series` as CSV: `x_name,name1,name2...` when all series share x, else long form.
pub fn write_csv(path: &Path, x_name: &str, series: &[Series]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let same_x = series.windows(2).all(|s| {
        s[0].points.len() == s[1].points.len()
            && s[0]
                .points
                .iter()
                .zip(&s[1].points)
                .all(|(a, b)| a.0 == b.0)
    });
    if same_x && !series.is_empty() {
        write!(w, "{x_name}")?;
        for s in series {
            write!(w, ",{}", s.name)?;
        }
        writeln!(w)?;
        for i in 0..series[0].points.len() {
            write!(w, "{}", series[0].points[i].0)?;
            for s in series {
                write!(w, ",{}", s.points[i].1)?;
            }
            writeln!(w)?;
        }
    } else {
        writeln!(w, "series,{x_name},value")?;
        for s in series {
            for (x, y) in &s.points {
                writeln!(w, "{},{x},{y}", s.name)?;
            }
        }
    }
    w.flush()
}

/// Draws `series` as lines with points into a 800x500 PNG. Returns false if no font.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<bool> {
    if !font_ready() {
        return Ok(false);
    }
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    y1 += (y1 - y0) * 0.05;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    // Long titles get a smaller font, so they fit the 800 px width.
    let caption_px = (1500.0 / title.chars().count().max(1) as f64).clamp(12.0, 20.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", caption_px))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if s.points.len() <= 60 {
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )?;
        }
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(true)
}
