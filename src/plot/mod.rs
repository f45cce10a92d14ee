//! PNG line charts of training runs (loss curves, dev metrics), drawn with a small
//! built-in rasteriser and bitmap font so they need no fonts or system libraries.
//!
//! Each [`Chart`] is one panel; [`render_panels`] lays panels out in a grid and
//! encodes the image with the `png` crate. Non-finite values (and non-positive ones on
//! a log axis) are skipped and break the line, as in matplotlib.

mod axis;
mod canvas;
mod font;
mod metrics;

use std::path::Path;

use crate::{Error, Result};
use axis::{Axis, TickRoom};
use canvas::{Canvas, Rect, Rgb, Stroke};

pub use metrics::{charts_from_metrics, plot_metrics_file};

/// One named curve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Shown in the legend; series with an empty name are left out of it.
    pub name: String,
    /// (x, y) pairs joined in order.
    pub points: Vec<(f64, f64)>,
    /// Unsmoothed values drawn faintly behind `points` in the same colour.
    pub raw: Vec<(f64, f64)>,
    /// Dot every point (for sparse data such as evaluations).
    pub markers: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            ..Series::default()
        }
    }

    pub fn with_raw(mut self, raw: Vec<(f64, f64)>) -> Self {
        self.raw = raw;
        self
    }

    pub fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// One panel: a titled pair of axes with its series and legend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis (for losses spanning orders of magnitude).
    pub log_y: bool,
}

/// Panel size [`write_png`] uses.
pub const PANEL_WIDTH: u32 = 720;
pub const PANEL_HEIGHT: u32 = 440;
/// Smallest panel that still leaves room for a plot.
const MIN_PANEL: (u32, u32) = (200, 150);
/// Refuse images larger than this many pixels rather than allocate gigabytes.
const MAX_PIXELS: u64 = 1 << 26;

/// Okabe-Ito colours (distinguishable with the common colour-vision deficiencies),
/// without the yellow, which is unreadable on white. Series beyond these repeat
/// the colours dashed, then dotted.
const PALETTE: [Rgb; 7] = [
    Rgb(0x00, 0x72, 0xB2), // blue
    Rgb(0xD5, 0x5E, 0x00), // vermillion
    Rgb(0x00, 0x9E, 0x73), // bluish green
    Rgb(0xCC, 0x79, 0xA7), // reddish purple
    Rgb(0xE6, 0x9F, 0x00), // orange
    Rgb(0x56, 0xB4, 0xE9), // sky blue
    Rgb(0x00, 0x00, 0x00), // black
];
const TEXT: Rgb = Rgb(0x22, 0x22, 0x22);
const TICK_TEXT: Rgb = Rgb(0x44, 0x44, 0x44);
const FRAME: Rgb = Rgb(0x80, 0x80, 0x80);
const GRID: Rgb = Rgb(0xE4, 0xE4, 0xE4);
const MINOR_GRID: Rgb = Rgb(0xF2, 0xF2, 0xF2);
const LINE_WIDTH: f64 = 2.0;
const RAW_ALPHA: f32 = 0.3;

/// Renders `panels` in a grid `columns` wide, each panel `width` x `height` pixels,
/// and returns the PNG file bytes.
pub fn render_panels(panels: &[Chart], columns: usize, width: u32, height: u32) -> Result<Vec<u8>> {
    let (canvas, _) = draw(panels, columns, width, height)?;
    encode(canvas)
}

/// Renders `panels` (two per row) at the default panel size and writes the PNG
/// atomically, replacing any previous version (a run refreshes its plot as it goes).
pub fn write_png(panels: &[Chart], path: &Path) -> Result<()> {
    let columns = panels.len().clamp(1, 2);
    let bytes = render_panels(panels, columns, PANEL_WIDTH, PANEL_HEIGHT)?;
    crate::io::write_atomic(path, &bytes)
}

/// Where a panel's data went: its plot rectangle and axes (tests check pixels by them).
#[derive(Debug)]
struct Frame {
    plot: Rect,
    x: Axis,
    y: Axis,
}

impl Frame {
    /// Pixel position of a data point, or `None` when an axis cannot show it.
    fn to_pixel(&self, (x, y): (f64, f64)) -> Option<(f64, f64)> {
        let fx = self.x.fraction(x)?;
        let fy = self.y.fraction(y)?;
        let p = &self.plot;
        Some((
            p.x0 as f64 + fx * p.width() as f64,
            p.y0 as f64 + (1.0 - fy) * p.height() as f64,
        ))
    }
}

fn draw(panels: &[Chart], columns: usize, width: u32, height: u32) -> Result<(Canvas, Vec<Frame>)> {
    if panels.is_empty() {
        return Err(Error::invalid(
            "plot",
            "panels",
            "nothing to plot: no charts given",
        ));
    }
    if columns == 0 {
        return Err(Error::invalid("plot", "columns", "must be at least 1"));
    }
    if width < MIN_PANEL.0 || height < MIN_PANEL.1 {
        return Err(Error::invalid(
            "plot",
            "panel size",
            format!(
                "{width}x{height} is too small; use at least {}x{}",
                MIN_PANEL.0, MIN_PANEL.1
            ),
        ));
    }
    let columns = columns.min(panels.len());
    let rows = panels.len().div_ceil(columns);
    let (total_w, total_h) = (width as u64 * columns as u64, height as u64 * rows as u64);
    if total_w * total_h > MAX_PIXELS {
        return Err(Error::invalid(
            "plot",
            "panel size",
            format!("{total_w}x{total_h} pixels is larger than the {MAX_PIXELS}-pixel limit"),
        ));
    }
    let mut canvas = Canvas::new(total_w as u32, total_h as u32, Rgb::WHITE);
    let frames = panels
        .iter()
        .enumerate()
        .map(|(i, chart)| {
            let (col, row) = ((i % columns) as i32, (i / columns) as i32);
            let area = Rect {
                x0: col * width as i32,
                y0: row * height as i32,
                x1: (col + 1) * width as i32,
                y1: (row + 1) * height as i32,
            };
            draw_chart(&mut canvas, area, chart)
        })
        .collect();
    Ok((canvas, frames))
}

fn encode(canvas: Canvas) -> Result<Vec<u8>> {
    let (width, height) = (canvas.width(), canvas.height());
    let png_error = |e: png::EncodingError| Error::msg(format!("encoding PNG: {e}"));
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer
        .write_image_data(&canvas.into_rgb())
        .map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(bytes)
}

/// Every drawable point of a chart (`points` and `raw`), before axis mapping.
fn finite_points(chart: &Chart) -> impl Iterator<Item = (f64, f64)> + '_ {
    chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().chain(&s.raw))
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Draws one chart inside `area` and returns where its data went.
fn draw_chart(canvas: &mut Canvas, area: Rect, chart: &Chart) -> Frame {
    // Text doubles in size once a panel is big enough to be looked at whole.
    let s: i32 = if area.width() >= 480 && area.height() >= 300 {
        2
    } else {
        1
    };
    let scale = s as u32;
    let glyph_h = font::GLYPH_HEIGHT as i32 * s;
    let cap_h = font::CAP_HEIGHT as i32 * s;
    let width_of = |text: &str| font::text_width(text, scale) as i32;
    let margin = 7 * s;
    let tick_len = 3 * s;

    // Vertical layout: title, plot, tick labels, x label.
    let title_h = if chart.title.is_empty() {
        0
    } else {
        glyph_h + 5 * s
    };
    let x_label_h = if chart.x_label.is_empty() {
        0
    } else {
        glyph_h + 3 * s
    };
    let plot_y0 = area.y0 + margin + title_h;
    let plot_y1 = area.y1 - margin - x_label_h - glyph_h - tick_len - 2 * s;

    let log_y = chart.log_y && finite_points(chart).any(|(_, y)| y > 0.0);
    let xs = min_max(finite_points(chart).map(|(x, _)| x));
    let ys = min_max(
        finite_points(chart)
            .map(|(_, y)| y)
            .filter(|&y| !log_y || y > 0.0),
    );
    let integer_x = finite_points(chart).all(|(x, _)| x.fract() == 0.0);
    let has_data = xs.is_some() && ys.is_some();

    let y_room = TickRoom {
        length: (plot_y1 - plot_y0) as f64,
        min_spacing: 22.0 * s as f64,
        label_extent: &|_| cap_h as f64,
    };
    let y = match ys {
        Some((lo, hi)) if log_y => Axis::log10(lo, hi, &y_room),
        Some((lo, hi)) => Axis::linear(lo, hi, false, &y_room),
        None => Axis::linear(0.0, 1.0, false, &y_room),
    };

    // Horizontal layout: y label, tick labels, plot, room for the last x label.
    let y_label_w = if chart.y_label.is_empty() {
        0
    } else {
        glyph_h + 4 * s
    };
    let y_ticks_w = y
        .ticks
        .iter()
        .map(|t| width_of(&t.label))
        .max()
        .unwrap_or(0);
    let plot_x0 = area.x0 + margin + y_label_w + y_ticks_w + tick_len + 3 * s;
    let plot_x1 = area.x1 - margin - 8 * s;
    let plot = Rect {
        x0: plot_x0,
        y0: plot_y0,
        x1: plot_x1.max(plot_x0 + 10),
        y1: plot_y1.max(plot_y0 + 10),
    };
    let x_extent = |label: &str| width_of(label) as f64;
    let x_room = TickRoom {
        length: plot.width() as f64,
        min_spacing: 40.0 * s as f64,
        label_extent: &x_extent,
    };
    let x = match xs {
        Some((lo, hi)) => Axis::linear(lo, hi, integer_x, &x_room),
        None => Axis::linear(0.0, 1.0, false, &x_room),
    };
    let frame = Frame { plot, x, y };

    // Grid, then frame, ticks and their labels.
    let px = |f: f64| (plot.x0 as f64 + f * plot.width() as f64).round() as i32;
    let py = |f: f64| (plot.y0 as f64 + (1.0 - f) * plot.height() as f64).round() as i32;
    let vline = |c: &mut Canvas, x: i32, color| {
        c.fill_rect(
            Rect {
                x0: x,
                x1: x + 1,
                ..plot
            },
            color,
            1.0,
        )
    };
    let hline = |c: &mut Canvas, y: i32, color| {
        c.fill_rect(
            Rect {
                y0: y,
                y1: y + 1,
                ..plot
            },
            color,
            1.0,
        )
    };
    for f in frame.y.minor.iter().filter_map(|&v| frame.y.fraction(v)) {
        hline(canvas, py(f), MINOR_GRID);
    }
    for tick in &frame.y.ticks {
        let Some(f) = frame.y.fraction(tick.value) else {
            continue;
        };
        let row = py(f);
        hline(canvas, row, GRID);
        canvas.fill_rect(
            Rect {
                x0: plot.x0 - tick_len,
                x1: plot.x0,
                y0: row,
                y1: row + 1,
            },
            FRAME,
            1.0,
        );
        let label_x = plot.x0 - tick_len - 3 * s - width_of(&tick.label);
        canvas.text(label_x, row - cap_h / 2, &tick.label, scale, TICK_TEXT);
    }
    for tick in &frame.x.ticks {
        let Some(f) = frame.x.fraction(tick.value) else {
            continue;
        };
        let col = px(f);
        vline(canvas, col, GRID);
        canvas.fill_rect(
            Rect {
                x0: col,
                x1: col + 1,
                y0: plot.y1,
                y1: plot.y1 + tick_len,
            },
            FRAME,
            1.0,
        );
        let label_x = col - width_of(&tick.label) / 2;
        canvas.text(
            label_x,
            plot.y1 + tick_len + 3 * s,
            &tick.label,
            scale,
            TICK_TEXT,
        );
    }
    canvas.stroke_rect(plot, FRAME);

    // Titles.
    if !chart.title.is_empty() {
        let title = fit(&chart.title, area.width() - 2 * margin, scale);
        let x0 = area.x0 + (area.width() - width_of(&title)) / 2;
        // Bold: the same text twice, one pixel apart.
        canvas.text(x0, area.y0 + margin, &title, scale, TEXT);
        canvas.text(x0 + 1, area.y0 + margin, &title, scale, TEXT);
    }
    if !chart.x_label.is_empty() {
        let label = fit(&chart.x_label, plot.width(), scale);
        let x0 = plot.x0 + (plot.width() - width_of(&label)) / 2;
        canvas.text(x0, area.y1 - margin - glyph_h, &label, scale, TEXT);
    }
    if !chart.y_label.is_empty() {
        let label = fit(&chart.y_label, plot.height(), scale);
        let bottom = plot.y1 - (plot.height() - width_of(&label)) / 2;
        canvas.text_up(area.x0 + margin, bottom, &label, scale, TEXT);
    }

    // Data, clipped to the plot: faint raw values under every line first.
    canvas.set_clip(Some(Rect {
        x0: plot.x0 + 1,
        y0: plot.y0 + 1,
        x1: plot.x1 - 1,
        y1: plot.y1 - 1,
    }));
    let strokes: Vec<Stroke> = (0..chart.series.len()).map(stroke_for).collect();
    for (series, stroke) in chart.series.iter().zip(&strokes) {
        for run in runs(&frame, &series.raw) {
            let faint = Stroke {
                width: 1.2,
                alpha: RAW_ALPHA,
                dash: None,
                ..*stroke
            };
            canvas.polyline(&run, faint);
        }
    }
    let marker_radius = 1.5 + s as f64;
    for (series, stroke) in chart.series.iter().zip(&strokes) {
        for run in runs(&frame, &series.points) {
            canvas.polyline(&run, *stroke);
            // A lone point has no line to show it.
            if series.markers || run.len() == 1 {
                for &(x, y) in &run {
                    canvas.disc(x, y, marker_radius, stroke.color);
                }
            }
        }
    }
    canvas.set_clip(None);

    if !has_data {
        let note = "no data";
        let x0 = plot.x0 + (plot.width() - width_of(note)) / 2;
        canvas.text(
            x0,
            plot.y0 + (plot.height() - cap_h) / 2,
            note,
            scale,
            FRAME,
        );
    }
    draw_legend(canvas, &frame, chart, &strokes, s);
    frame
}

/// Colour for series `i`; after the palette runs out, dashed then dotted lines.
fn stroke_for(i: usize) -> Stroke {
    let dash = match i / PALETTE.len() {
        0 => None,
        1 => Some((7.0, 4.0)),
        _ => Some((2.0, 3.0)),
    };
    Stroke {
        color: PALETTE[i % PALETTE.len()],
        width: LINE_WIDTH,
        alpha: 1.0,
        dash,
    }
}

/// The pixel positions of `points`, split wherever a point cannot be shown.
fn runs(frame: &Frame, points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for &p in points {
        match frame.to_pixel(p) {
            Some(q) => runs.last_mut().map_or((), |run| run.push(q)),
            None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
            None => {}
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// `text` shortened with ".." to fit `max_width` pixels.
fn fit(text: &str, max_width: i32, scale: u32) -> String {
    let max_chars = ((max_width.max(0) as u32 + scale) / (font::ADVANCE * scale)) as usize;
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(2)).collect();
    format!("{kept}..")
}

/// A legend box in whichever inside corner of the plot covers the fewest data points.
fn draw_legend(canvas: &mut Canvas, frame: &Frame, chart: &Chart, strokes: &[Stroke], s: i32) {
    let scale = s as u32;
    let plot = frame.plot;
    let entries: Vec<(&Series, Stroke)> = chart
        .series
        .iter()
        .zip(strokes.iter().copied())
        .filter(|(series, _)| {
            !series.name.is_empty()
                && series
                    .points
                    .iter()
                    .chain(&series.raw)
                    .any(|&p| frame.to_pixel(p).is_some())
        })
        .collect();
    if entries.is_empty() {
        return;
    }
    let (pad, swatch, row_h) = (4 * s, 14 * s, 11 * s);
    let inset = 5 * s;
    let max_rows = ((plot.height() - 2 * inset - 2 * pad) / row_h).max(1) as usize;
    let shown = if entries.len() > max_rows {
        max_rows - 1
    } else {
        entries.len()
    };
    let max_text = plot.width() * 45 / 100 - swatch - 3 * pad;
    let mut lines: Vec<(Option<Stroke>, String)> = entries[..shown]
        .iter()
        .map(|(series, stroke)| (Some(*stroke), fit(&series.name, max_text, scale)))
        .collect();
    if shown < entries.len() {
        lines.push((None, format!("+{} more", entries.len() - shown)));
    }
    let text_w = lines
        .iter()
        .map(|(_, t)| font::text_width(t, scale) as i32)
        .max()
        .unwrap_or(0);
    let (w, h) = (
        pad * 3 + swatch + text_w,
        pad * 2 + row_h * lines.len() as i32 - 2 * s,
    );
    let corners = [
        (plot.x1 - inset - w, plot.y0 + inset),
        (plot.x0 + inset, plot.y0 + inset),
        (plot.x1 - inset - w, plot.y1 - inset - h),
        (plot.x0 + inset, plot.y1 - inset - h),
    ];
    let covered = |&(x0, y0): &(i32, i32)| {
        let rect = Rect {
            x0,
            y0,
            x1: x0 + w,
            y1: y0 + h,
        };
        data_samples(frame, chart)
            .filter(|&(x, y)| rect.contains(x, y))
            .count()
    };
    // `min_by_key` keeps the first of equals: top right unless that covers more.
    let Some(&(x0, y0)) = corners.iter().min_by_key(|c| covered(c)) else {
        return;
    };
    let rect = Rect {
        x0,
        y0,
        x1: x0 + w,
        y1: y0 + h,
    };
    canvas.fill_rect(rect, Rgb::WHITE, 0.88);
    canvas.stroke_rect(rect, Rgb(0xCC, 0xCC, 0xCC));
    for (i, (stroke, text)) in lines.iter().enumerate() {
        let top = y0 + pad + i as i32 * row_h;
        let mid = (top + font::CAP_HEIGHT as i32 * s / 2) as f64;
        if let Some(stroke) = stroke {
            let (a, b) = ((x0 + pad) as f64, (x0 + pad + swatch) as f64);
            canvas.polyline(&[(a, mid), (b, mid)], *stroke);
        }
        canvas.text(x0 + 2 * pad + swatch, top, text, scale, TEXT);
    }
}

/// Pixel positions along every drawn line (points and segment samples every few
/// pixels), for choosing where the legend hides the least.
fn data_samples<'a>(frame: &'a Frame, chart: &'a Chart) -> impl Iterator<Item = (f64, f64)> + 'a {
    chart.series.iter().flat_map(move |series| {
        let mut samples = Vec::new();
        for run in runs(frame, &series.points)
            .into_iter()
            .chain(runs(frame, &series.raw))
        {
            samples.push(run[0]);
            for pair in run.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let n = (((b.0 - a.0).abs() + (b.1 - a.1).abs()) / 4.0)
                    .ceil()
                    .min(200.0) as usize;
                samples.extend((1..=n.max(1)).map(|k| {
                    let t = k as f64 / n.max(1) as f64;
                    (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
                }));
            }
        }
        samples
    })
}

#[cfg(test)]
mod tests;
