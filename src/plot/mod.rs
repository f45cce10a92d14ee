//! PNG line charts of training runs (loss curves, dev metrics), drawn with `plotters`.
//!
//! Text is set in DejaVu Sans, embedded in the binary from `src/plot/font/` and given
//! to plotters' `ab_glyph` renderer, so a plot needs no system fonts or libraries on
//! the machine that trains. Each [`Chart`] is one panel; [`render_panels`] lays the
//! panels out in a grid and encodes the image with the `png` crate. Non-finite values
//! (and non-positive ones on a log axis) are skipped and break the line, as in
//! matplotlib. Smoothed curves are drawn over their raw values, which stay faint.

mod metrics;

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScaleFont, ScaleFont};
use plotters::backend::RGBPixel;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

use crate::{Error, Result};

pub use metrics::{charts_from_metrics, plot_metrics_file, plot_run_metrics, run_charts};

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
    /// Logarithmic y axis (for losses spanning orders of magnitude); ignored unless
    /// the positive values span a decade or more.
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
const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
    RGBColor(0x00, 0x00, 0x00), // black
];
const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const TICK_TEXT: RGBColor = RGBColor(0x44, 0x44, 0x44);
const FRAME: RGBColor = RGBColor(0x80, 0x80, 0x80);
const GRID: RGBColor = RGBColor(0xE0, 0xE0, 0xE0);
const MINOR_GRID: RGBColor = RGBColor(0xF0, 0xF0, 0xF0);
const LEGEND_EDGE: RGBColor = RGBColor(0xCC, 0xCC, 0xCC);
const LINE_WIDTH: u32 = 2;
const RAW_ALPHA: f64 = 0.3;

/// The bundled font, registered as plotters' "sans-serif" family.
const FONT: &[u8] = include_bytes!("font/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Renders `panels` in a grid `columns` wide, each panel `width` x `height` pixels,
/// and returns the PNG file bytes.
pub fn render_panels(panels: &[Chart], columns: usize, width: u32, height: u32) -> Result<Vec<u8>> {
    let grid = Grid::new(panels.len(), columns, width, height)?;
    let font = bundled_font()?;
    let (w, h) = (grid.columns as u32 * width, grid.rows as u32 * height);
    let mut rgb = vec![0xFF; w as usize * h as usize * 3];
    {
        let bitmap = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, (w, h))
            .map_err(drawing_error)?;
        let root = Canvas { bitmap, font }.into_drawing_area();
        for (area, chart) in root
            .split_evenly((grid.rows, grid.columns))
            .iter()
            .zip(panels)
        {
            draw_chart(area, chart)?;
        }
        root.present().map_err(drawing_error)?;
    }
    encode(&rgb, w, h)
}

/// Renders `panels` (two per row) at the default panel size and writes the PNG
/// atomically, replacing any previous version (a run refreshes its plot as it goes).
pub fn write_png(panels: &[Chart], path: &Path) -> Result<()> {
    let columns = panels.len().clamp(1, 2);
    let bytes = render_panels(panels, columns, PANEL_WIDTH, PANEL_HEIGHT)?;
    crate::io::write_atomic(path, &bytes)
}

/// The bundled font, parsed and registered with plotters once per process.
fn bundled_font() -> Result<&'static FontRef<'static>> {
    static PARSED: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).ok()?;
            FontRef::try_from_slice(FONT).ok()
        })
        .as_ref()
        .ok_or_else(|| {
            Error::msg("the plot font bundled from src/plot/font/DejaVuSans.ttf could not be read")
        })
}

/// plotters' bitmap backend, except that text is drawn from each glyph's outline
/// where the font places it: plotters 0.3.7's own ab_glyph drawing drops the
/// glyphs' side bearings, which opens gaps after narrow letters ("attenti on").
/// plotters still measures text (with the same font, from the glyphs' advances).
struct Canvas<'a> {
    bitmap: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

type BackendError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;
type Drawn = std::result::Result<(), DrawingErrorKind<BackendError>>;

impl DrawingBackend for Canvas<'_> {
    type ErrorType = BackendError;

    fn get_size(&self) -> (u32, u32) {
        self.bitmap.get_size()
    }

    fn ensure_prepared(&mut self) -> Drawn {
        self.bitmap.ensure_prepared()
    }

    fn present(&mut self) -> Drawn {
        self.bitmap.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Drawn {
        self.bitmap.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Drawn {
        self.bitmap.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Drawn {
        self.bitmap.draw_rect(a, b, style, fill)
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Drawn {
        let color = style.color();
        let font = self.font.as_scaled(style.size() as f32);
        let ((x0, y0), (x1, y1)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (x1 - x0, y1 - y0);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Center => -width / 2,
            HPos::Right => -width,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        for (x, y, coverage) in glyph_pixels(&font, text) {
            let (tx, ty) = transform.transform(x + dx, y + dy);
            let alpha = color.alpha * coverage as f64;
            self.bitmap
                .draw_pixel((pos.0 + tx, pos.1 + ty), BackendColor { alpha, ..color })?;
        }
        Ok(())
    }
}

/// The pixels `text` covers (with their coverage), its top left corner at (0, 0)
/// and its baseline at the font's ascent.
fn glyph_pixels(font: &PxScaleFont<&FontRef>, text: &str) -> Vec<(i32, i32, f32)> {
    let mut pixels = Vec::new();
    let (mut caret, mut previous) = (0.0, None);
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(previous) = previous {
            caret += font.kern(previous, id);
        }
        let glyph = id.with_scale_and_position(font.scale(), point(caret, font.ascent()));
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            let (left, top) = (bounds.min.x as i32, bounds.min.y as i32);
            outline.draw(|x, y, c| pixels.push((left + x as i32, top + y as i32, c)));
        }
        caret += font.h_advance(id);
        previous = Some(id);
    }
    pixels
}

fn drawing_error(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("drawing the plot: {e}"))
}

/// Rows and columns of panels, checked to make a drawable image.
struct Grid {
    rows: usize,
    columns: usize,
}

impl Grid {
    fn new(panels: usize, columns: usize, width: u32, height: u32) -> Result<Grid> {
        if panels == 0 {
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
            let (w, h) = MIN_PANEL;
            let message = format!("{width}x{height} is too small; use at least {w}x{h}");
            return Err(Error::invalid("plot", "panel size", message));
        }
        let columns = columns.min(panels);
        let rows = panels.div_ceil(columns);
        let (w, h) = (width as u64 * columns as u64, height as u64 * rows as u64);
        if w * h > MAX_PIXELS {
            let message = format!("{w}x{h} pixels is larger than the {MAX_PIXELS}-pixel limit");
            return Err(Error::invalid("plot", "panel size", message));
        }
        Ok(Grid { rows, columns })
    }
}

fn encode(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let png_error = |e: png::EncodingError| Error::msg(format!("encoding PNG: {e}"));
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(rgb).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(bytes)
}

/// Text sizes and spacing of one panel, scaled with its size.
struct Fonts {
    title: FontDesc<'static>,
    label: FontDesc<'static>,
    tick: FontDesc<'static>,
    legend: FontDesc<'static>,
    /// Spacing unit in pixels (about a third of the legend's text height).
    unit: i32,
}

impl Fonts {
    fn for_panel((width, height): (u32, u32)) -> Fonts {
        let scale = (width as f64 / PANEL_WIDTH as f64)
            .min(height as f64 / PANEL_HEIGHT as f64)
            .clamp(0.6, 2.5);
        let font =
            |size: f64| FontDesc::new(FontFamily::Name(FAMILY), size * scale, FontStyle::Normal);
        Fonts {
            title: font(19.0),
            label: font(15.0),
            tick: font(13.0),
            legend: font(13.0),
            unit: (4.0 * scale).round() as i32,
        }
    }
}

/// Width of `text` in pixels, as plotters lays it out.
fn text_width(font: &FontDesc, text: &str) -> Result<i32> {
    let (width, _) = font.box_size(text).map_err(drawing_error)?;
    Ok(width as i32)
}

/// `text`, shortened with an ellipsis to fit `max_width` pixels.
fn fit(text: &str, font: &FontDesc, max_width: i32) -> Result<String> {
    if text_width(font, text)? <= max_width {
        return Ok(text.to_string());
    }
    let mut kept: Vec<char> = text.chars().collect();
    while !kept.is_empty() {
        kept.pop();
        let shortened = format!("{}…", kept.iter().collect::<String>());
        if text_width(font, &shortened)? <= max_width {
            return Ok(shortened);
        }
    }
    Ok(String::new())
}

/// A shown range with its labelled ticks and unlabelled (minor) grid values.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    range: Range<f64>,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    log: bool,
}

/// Fraction of the data span added at each end so curves don't touch the frame.
const PAD: f64 = 0.05;

impl Axis {
    /// A linear axis over `lo..=hi` plus padding, with at most `max_ticks` ticks;
    /// `integer` data (steps) never gets fractional ticks.
    fn linear((lo, hi): (f64, f64), max_ticks: usize, integer: bool) -> Axis {
        // Halves, so that values near f64::MAX cannot overflow.
        let half_span = hi / 2.0 - lo / 2.0;
        let (start, end) = if half_span <= 5e-13 * lo.abs().max(hi.abs()) {
            // A constant: centre it in a range of +-10% (or +-1 around zero).
            let half = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo - half, hi + half)
        } else {
            let pad = half_span * 2.0 * PAD;
            (lo - pad, hi + pad)
        };
        let range = start.max(f64::MIN)..end.min(f64::MAX);
        // plotters' tick search never ends over a span that overflows.
        let ticks = if (range.end - range.start).is_finite() {
            let coord: RangedCoordf64 = range.clone().into();
            let ticks = coord.key_points(max_ticks).into_iter();
            ticks.filter(|v| !integer || v.fract() == 0.0).collect()
        } else {
            Vec::new()
        };
        Axis {
            range,
            ticks,
            minor: Vec::new(),
            log: false,
        }
    }

    /// A log10 axis over `lo..=hi` (positive, `hi >= 10 lo`) plus padding: ticks at
    /// 1-2-5 when `max_ticks` of them fit, else a tick per decade (every k-th when
    /// crowded); minor grid lines at 2..9 within each decade when decades are roomy.
    fn log10((lo, hi): (f64, f64), max_ticks: usize) -> Axis {
        let (l, h) = (lo.log10(), hi.log10());
        let pad = (h - l) * PAD;
        let range = 10f64.powf(l - pad)..10f64.powf(h + pad).min(f64::MAX);
        let decades = (l - pad).floor() as i32..=(h + pad).ceil() as i32;
        let shown = |v: &f64| range.contains(v);
        let with = |multiples: &'static [f64]| -> Vec<f64> {
            decades
                .clone()
                .flat_map(|d| multiples.iter().map(move |m| m * 10f64.powi(d)))
                .filter(shown)
                .collect()
        };
        let powers = with(&[1.0]);
        let roomy = powers.len() * 2 <= max_ticks;
        let minor = if roomy {
            with(&[2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
        } else {
            Vec::new()
        };
        let one_two_five = with(&[1.0, 2.0, 5.0]);
        let ticks = if one_two_five.len() <= max_ticks || powers.len() < 2 {
            one_two_five
        } else {
            let every = powers.len().div_ceil(max_ticks.max(2));
            powers.into_iter().step_by(every).collect()
        };
        Axis {
            range,
            ticks,
            minor,
            log: true,
        }
    }
}

/// The axis as plotters' coordinate: values map linearly, or their log10 does.
impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (from, to): (i32, i32)) -> i32 {
        // Halved linear values: the span of a range near f64::MAX would overflow.
        let at = |v: f64| if self.log { v.log10() } else { v / 2.0 };
        let (lo, hi) = (at(self.range.start), at(self.range.end));
        let fraction = (at(*value) - lo) / (hi - lo);
        from + (fraction * (to - from) as f64).round() as i32
    }

    /// Labelled ticks, or the unlabelled grid values when plotters asks for light
    /// lines.
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(value: &f64) -> String {
        tick_label(*value)
    }
}

/// Tick label: up to four significant digits, exponent form for very large or small.
fn tick_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let scale = 10f64.powi(3 - v.abs().log10().floor() as i32);
    let rounded = Some((v * scale).round() / scale)
        .filter(|r| r.is_finite())
        .unwrap_or(v);
    if (1e-3..1e5).contains(&rounded.abs()) {
        format!("{rounded}")
    } else {
        format!("{rounded:e}")
    }
}

/// A point an axis can show: finite, and positive on a log axis.
fn drawable((x, y): (f64, f64), log: bool) -> bool {
    x.is_finite() && y.is_finite() && (!log || y > 0.0)
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The axes a chart's data needs in a plot about `width` x `height` pixels large,
/// and whether there is anything to draw.
fn axes(chart: &Chart, (width, height): (u32, u32)) -> (Axis, Axis, bool) {
    let all = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().chain(&s.raw))
            .copied()
    };
    let positive = min_max(all().filter(|&p| drawable(p, true)).map(|p| p.1));
    let log = chart.log_y && positive.is_some_and(|(lo, hi)| hi >= 10.0 * lo);
    let shown = || all().filter(move |&p| drawable(p, log));
    let xs = min_max(shown().map(|p| p.0));
    let ys = min_max(shown().map(|p| p.1));
    let integer_x = shown().all(|(x, _)| x.fract() == 0.0);
    let x_ticks = (width as usize / 90).clamp(2, 10);
    let y_ticks = (height as usize / 45).clamp(2, 10);
    let x = Axis::linear(xs.unwrap_or((0.0, 1.0)), x_ticks, integer_x && xs.is_some());
    let y = match ys {
        Some(range) if log => Axis::log10(range, y_ticks),
        Some(range) => Axis::linear(range, y_ticks, false),
        None => Axis::linear((0.0, 1.0), y_ticks, false),
    };
    (x, y, xs.is_some())
}

type Panel<'a> = DrawingArea<Canvas<'a>, Shift>;
type Context<'a, 'b> = ChartContext<'a, Canvas<'b>, Cartesian2d<Axis, Axis>>;

/// Draws one chart filling `area`.
fn draw_chart(area: &Panel, chart: &Chart) -> Result<()> {
    let (width, height) = area.dim_in_pixel();
    let (x, y, has_data) = axes(chart, (width * 3 / 4, height * 3 / 4));
    let fonts = Fonts::for_panel((width, height));
    Layout {
        chart,
        fonts: &fonts,
        x,
        y,
        has_data,
    }
    .draw(area)
}

/// What one panel shows and how its text is set.
struct Layout<'a> {
    chart: &'a Chart,
    fonts: &'a Fonts,
    x: Axis,
    y: Axis,
    has_data: bool,
}

impl Layout<'_> {
    fn draw(&self, area: &Panel) -> Result<()> {
        let (chart, fonts, u) = (self.chart, self.fonts, self.fonts.unit);
        let (width, _) = area.dim_in_pixel();
        let label_height = |text: &str| {
            if text.is_empty() {
                0
            } else {
                fonts.label.get_size() as i32 + u
            }
        };
        let tick_height = fonts.tick.get_size() as i32;
        let y_ticks_width = self
            .y
            .ticks
            .iter()
            .map(|&v| text_width(&fonts.tick, &tick_label(v)));
        let y_ticks_width = y_ticks_width
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(2 * u)
            .margin_right(4 * u)
            .x_label_area_size(3 * u + tick_height + label_height(&chart.x_label) + u)
            .y_label_area_size(3 * u + y_ticks_width + label_height(&chart.y_label) + u);
        if !chart.title.is_empty() {
            let title = fit(&chart.title, &fonts.title, width as i32 - 4 * u)?;
            builder.caption(title, fonts.title.color(&TEXT));
        }
        let mut ctx = builder
            .build_cartesian_2d(self.x.clone(), self.y.clone())
            .map_err(drawing_error)?;
        self.mesh(&mut ctx)?;
        draw_data(&mut ctx, chart, self.y.log)?;
        let plot = ctx.plotting_area().strip_coord_spec();
        let (w, h) = plot.dim_in_pixel();
        let frame = Rectangle::new([(0, 0), (w as i32 - 1, h as i32 - 1)], FRAME);
        plot.draw(&frame).map_err(drawing_error)?;
        if !self.has_data {
            let style = fonts
                .label
                .color(&FRAME)
                .pos(Pos::new(HPos::Center, VPos::Center));
            let note = Text::new("no data", (w as i32 / 2, h as i32 / 2), style);
            plot.draw(&note).map_err(drawing_error)?;
        }
        draw_legend(&ctx, chart, fonts, self.y.log)
    }

    /// Grid lines, ticks, their labels and the axis labels.
    fn mesh(&self, ctx: &mut Context) -> Result<()> {
        let fonts = self.fonts;
        let mut mesh = ctx.configure_mesh();
        mesh.label_style(fonts.tick.color(&TICK_TEXT))
            .axis_desc_style(fonts.label.color(&TEXT))
            .bold_line_style(GRID)
            .light_line_style(MINOR_GRID)
            .axis_style(FRAME)
            .set_all_tick_mark_size(fonts.unit);
        if !self.chart.x_label.is_empty() {
            mesh.x_desc(self.chart.x_label.as_str());
        }
        if !self.chart.y_label.is_empty() {
            mesh.y_desc(self.chart.y_label.as_str());
        }
        mesh.draw().map_err(drawing_error)
    }
}

/// A line's pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dash {
    Solid,
    Dashed,
    Dotted,
}

/// How series `i` is drawn: its colour, and after the palette runs out, dashed then
/// dotted lines.
fn series_style(i: usize) -> (RGBColor, Dash) {
    let dash = match i / PALETTE.len() {
        0 => Dash::Solid,
        1 => Dash::Dashed,
        _ => Dash::Dotted,
    };
    (PALETTE[i % PALETTE.len()], dash)
}

/// The drawable stretches of `points`, split wherever a point cannot be shown.
fn runs(points: &[(f64, f64)], log: bool) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|&p| !drawable(p, log))
        .filter(|run| !run.is_empty())
        .map(<[_]>::to_vec)
        .collect()
}

/// Faint raw values under every line first, then the lines and their markers.
fn draw_data(ctx: &mut Context, chart: &Chart, log: bool) -> Result<()> {
    for (i, series) in chart.series.iter().enumerate() {
        let faint = series_style(i).0.mix(RAW_ALPHA).stroke_width(1);
        for run in runs(&series.raw, log) {
            ctx.draw_series(LineSeries::new(run, faint))
                .map_err(drawing_error)?;
        }
    }
    for (i, series) in chart.series.iter().enumerate() {
        let (color, dash) = series_style(i);
        let line = color.stroke_width(LINE_WIDTH);
        for run in runs(&series.points, log) {
            let drawn = match dash {
                Dash::Solid => ctx.draw_series(LineSeries::new(run.clone(), line)),
                Dash::Dashed => ctx.draw_series(DashedLineSeries::new(run.clone(), 8, 5, line)),
                Dash::Dotted => {
                    ctx.draw_series(DottedLineSeries::new(run.clone(), 0, 5, move |c| {
                        Circle::new(c, 1, color.filled())
                    }))
                }
            };
            drawn.map_err(drawing_error)?;
            // A lone point has no line to show it.
            if series.markers || run.len() == 1 {
                let dots = run.iter().map(|&p| Circle::new(p, 3, color.filled()));
                ctx.draw_series(dots).map_err(drawing_error)?;
            }
        }
    }
    Ok(())
}

/// A legend's rows (the series it shows, or none for a continuation or the
/// "+N more" note) and its size in pixels.
#[derive(Debug)]
struct Legend {
    rows: Vec<(Option<usize>, String)>,
    width: i32,
    height: i32,
}

/// Legend metrics in units of the legend font size.
const LEGEND_PAD: f64 = 0.5;
const LEGEND_SWATCH: f64 = 2.0;
const LEGEND_ROW: f64 = 1.35;

impl Legend {
    /// Lays out `entries` (series index, name), wrapping names onto more lines rather
    /// than cutting them, within `max_width` x `max_height` pixels; entries that do
    /// not fit in height are counted on a last "+N more" row.
    fn layout(
        entries: &[(usize, &str)],
        font: &FontDesc,
        max_width: i32,
        max_height: i32,
    ) -> Result<Legend> {
        let size = font.get_size();
        let (pad, swatch, row) = (
            (size * LEGEND_PAD) as i32,
            (size * LEGEND_SWATCH) as i32,
            size * LEGEND_ROW,
        );
        let text_room = (max_width - 3 * pad - swatch).max(1);
        let max_rows = (((max_height - 2 * pad) as f64 - size).max(0.0) / row) as usize + 1;
        let mut rows = Vec::new();
        for (k, &(series, name)) in entries.iter().enumerate() {
            let lines = wrap(name, font, text_room)?;
            let room_after = if k + 1 < entries.len() { 1 } else { 0 };
            if rows.len() + lines.len() + room_after > max_rows && k > 0 {
                rows.push((None, format!("+{} more", entries.len() - k)));
                break;
            }
            for (j, line) in lines.into_iter().enumerate() {
                rows.push(((j == 0).then_some(series), line));
            }
        }
        let widths = rows.iter().map(|(_, text)| text_width(font, text));
        let text = widths
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        let height = 2 * pad + (rows.len().saturating_sub(1) as f64 * row + size) as i32;
        Ok(Legend {
            rows,
            width: 3 * pad + swatch + text,
            height,
        })
    }
}

/// `text` broken into lines at most `max_width` pixels wide: at spaces, and inside
/// a word only when the word alone is too wide. Every character is kept.
fn wrap(text: &str, font: &FontDesc, max_width: i32) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let joined = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if text_width(font, &joined)? <= max_width {
            line = joined;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        for c in word.chars() {
            line.push(c);
            if line.chars().count() > 1 && text_width(font, &line)? > max_width {
                line.pop();
                lines.push(std::mem::replace(&mut line, c.to_string()));
            }
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    Ok(lines)
}

/// Of the plot's four inside corners, the one where a `size` box covers the fewest
/// of `samples` (plot pixels); the top right wins ties.
fn legend_corner(
    plot: (i32, i32),
    size: (i32, i32),
    inset: i32,
    samples: &[(i32, i32)],
) -> (i32, i32) {
    let (right, bottom) = (plot.0 - inset - size.0, plot.1 - inset - size.1);
    let corners = [
        (right, inset),
        (inset, inset),
        (right, bottom),
        (inset, bottom),
    ];
    let covered = |&(x0, y0): &(i32, i32)| {
        let inside = |&&(x, y): &&(i32, i32)| {
            (x0..=x0 + size.0).contains(&x) && (y0..=y0 + size.1).contains(&y)
        };
        samples.iter().filter(inside).count()
    };
    corners
        .into_iter()
        .min_by_key(covered)
        .unwrap_or((inset, inset))
}

/// Plot pixels along every drawn line, every few pixels, for placing the legend.
fn line_samples(ctx: &Context, chart: &Chart, log: bool) -> Vec<(i32, i32)> {
    let (bx, by) = ctx.plotting_area().get_base_pixel();
    let pixel = |p: &(f64, f64)| {
        let (x, y) = ctx.backend_coord(p);
        ((x - bx) as f64, (y - by) as f64)
    };
    let mut samples = Vec::new();
    let series = chart
        .series
        .iter()
        .flat_map(|s| runs(&s.points, log).into_iter().chain(runs(&s.raw, log)));
    for run in series {
        let pixels: Vec<(f64, f64)> = run.iter().map(pixel).collect();
        samples.push(pixels[0]);
        for pair in pixels.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let n = (((b.0 - a.0).abs() + (b.1 - a.1).abs()) / 4.0)
                .ceil()
                .clamp(1.0, 200.0) as usize;
            samples.extend((1..=n).map(|k| {
                let t = k as f64 / n as f64;
                (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
            }));
        }
    }
    samples
        .into_iter()
        .map(|(x, y)| (x as i32, y as i32))
        .collect()
}

/// A legend box in whichever inside corner of the plot hides the fewest data.
fn draw_legend(ctx: &Context, chart: &Chart, fonts: &Fonts, log: bool) -> Result<()> {
    let entries: Vec<(usize, &str)> = chart
        .series
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            !s.name.is_empty() && s.points.iter().chain(&s.raw).any(|&p| drawable(p, log))
        })
        .map(|(i, s)| (i, s.name.as_str()))
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let plot = ctx.plotting_area().strip_coord_spec();
    let (w, h) = plot.dim_in_pixel();
    let inset = 2 * fonts.unit;
    // At most three fifths of the plot wide: longer names wrap.
    let max_width = w as i32 * 3 / 5;
    let legend = Legend::layout(&entries, &fonts.legend, max_width, h as i32 - 2 * inset)?;
    let samples = line_samples(ctx, chart, log);
    let (x0, y0) = legend_corner(
        (w as i32, h as i32),
        (legend.width, legend.height),
        inset,
        &samples,
    );
    let corner = (x0 + legend.width, y0 + legend.height);
    let fill = Rectangle::new([(x0, y0), corner], WHITE.mix(0.88).filled());
    plot.draw(&fill).map_err(drawing_error)?;
    plot.draw(&Rectangle::new([(x0, y0), corner], LEGEND_EDGE))
        .map_err(drawing_error)?;
    let size = fonts.legend.get_size();
    let (pad, swatch) = ((size * LEGEND_PAD) as i32, (size * LEGEND_SWATCH) as i32);
    for (k, (series, text)) in legend.rows.iter().enumerate() {
        let top = y0 + pad + (k as f64 * size * LEGEND_ROW) as i32;
        let mid = top + (size / 2.0) as i32;
        if let Some(i) = series {
            draw_swatch(&plot, *i, (x0 + pad, mid), swatch)?;
        }
        let label = Text::new(
            text.as_str(),
            (x0 + 2 * pad + swatch, top),
            fonts.legend.color(&TEXT),
        );
        plot.draw(&label).map_err(drawing_error)?;
    }
    Ok(())
}

/// A short line in series `i`'s style starting at `(x, y)`.
fn draw_swatch(plot: &Panel, i: usize, (x, y): (i32, i32), length: i32) -> Result<()> {
    let (color, dash) = series_style(i);
    let style = color.stroke_width(LINE_WIDTH);
    let pieces: Vec<(i32, i32)> = match dash {
        Dash::Solid => vec![(0, length)],
        Dash::Dashed => vec![(0, length * 2 / 5), (length * 3 / 5, length)],
        Dash::Dotted => (0..4)
            .map(|k| (k * length / 3 - 1, k * length / 3 + 1))
            .collect(),
    };
    for (a, b) in pieces {
        let piece = PathElement::new(vec![(x + a, y), (x + b, y)], style);
        plot.draw(&piece).map_err(drawing_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
