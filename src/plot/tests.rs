//! Checks of rendered charts, read back through the PNG decoder, and of the layout
//! decisions (ticks, legend) they are drawn from.

use super::*;

type Rgb = [u8; 3];
const WHITE_PX: Rgb = [0xFF; 3];

fn rgb(c: RGBColor) -> Rgb {
    [c.0, c.1, c.2]
}

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(bytes: &[u8]) -> Image {
        let mut reader = png::Decoder::new(bytes).read_info().unwrap();
        let mut rgb = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        rgb.truncate(info.buffer_size());
        Image {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    fn get(&self, x: u32, y: u32) -> Rgb {
        let i = ((y * self.width + x) * 3) as usize;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Pixels in columns `xs` and rows `ys` for which `pick` holds.
    fn count(&self, xs: Range<u32>, ys: Range<u32>, pick: impl Fn(Rgb) -> bool) -> usize {
        ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| pick(self.get(x, y)))
            .count()
    }

    /// Rows of column `x` whose pixel is exactly `color`.
    fn rows_of(&self, x: u32, color: RGBColor) -> Vec<u32> {
        (0..self.height)
            .filter(|&y| self.get(x, y) == rgb(color))
            .collect()
    }

    /// Columns holding at least one pixel of exactly `color`.
    fn columns_of(&self, color: RGBColor) -> Vec<u32> {
        (0..self.width)
            .filter(|&x| !self.rows_of(x, color).is_empty())
            .collect()
    }
}

/// Text ink: the dark greys labels are set in (anti-aliased edges excluded).
fn dark(p: Rgb) -> bool {
    p.iter().all(|&c| c < 0x70)
}

fn render(charts: &[Chart], columns: usize, w: u32, h: u32) -> Image {
    Image::decode(&render_panels(charts, columns, w, h).unwrap())
}

fn flat(name: &str, y: f64) -> Series {
    Series::new(name, (0..=10).map(|x| (x as f64, y)).collect())
}

fn chart(series: Vec<Series>) -> Chart {
    Chart {
        title: "Loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series,
        log_y: false,
    }
}

#[test]
fn image_is_the_panel_grid() {
    let charts = vec![chart(vec![flat("a", 1.0)]); 3];
    let image = render(&charts, 2, 400, 300);
    assert_eq!((image.width, image.height), (800, 600));
    let blue = |p| p == rgb(PALETTE[0]);
    for (x, y) in [(0, 0), (400, 0), (0, 300)] {
        assert!(
            image.count(x..x + 400, y..y + 300, blue) > 100,
            "no curve in the panel at ({x}, {y})"
        );
    }
    assert_eq!(
        image.count(400..800, 300..600, |p| p != WHITE_PX),
        0,
        "the unused cell is not blank"
    );
    let single = render(&charts[..1], 3, 400, 300);
    assert_eq!((single.width, single.height), (400, 300));
}

#[test]
fn non_finite_values_are_skipped_and_break_the_line() {
    let points = vec![
        (0.0, 1.0),
        (1.0, 2.0),
        (2.0, f64::NAN),
        (3.0, f64::INFINITY),
        (4.0, 2.0),
        (5.0, 1.0),
    ];
    // Unnamed: no legend swatch in the way.
    let image = render(&[chart(vec![Series::new("", points)])], 1, 640, 400);
    let columns = image.columns_of(PALETTE[0]);
    let (left, right) = (columns[0], columns[columns.len() - 1]);
    let at = |x: f64| left + ((right - left) as f64 * x / 5.0) as u32;
    assert!(
        !image.rows_of(at(0.5), PALETTE[0]).is_empty(),
        "first stretch missing"
    );
    assert!(
        !image.rows_of(at(4.5), PALETTE[0]).is_empty(),
        "last stretch missing"
    );
    assert!(
        image.rows_of(at(2.5), PALETTE[0]).is_empty(),
        "the gap is bridged"
    );

    let nothing = chart(vec![
        Series::new("nan", vec![(0.0, f64::NAN)]),
        Series::new("empty", vec![]),
    ]);
    let image = render(&[nothing], 1, 640, 400);
    assert_eq!(image.columns_of(PALETTE[0]), Vec::<u32>::new());
}

#[test]
fn log_scale_spaces_decades_evenly() {
    let values = [1e-3, 1e-2, 1e-1, 1.0];
    let series = values.iter().map(|&v| flat("", v)).collect();
    let mut c = chart(series);
    c.log_y = true;
    let image = render(&[c], 1, 640, 480);
    let centres: Vec<f64> = (0..values.len())
        .map(|i| {
            let rows = image.rows_of(image.width / 2, PALETTE[i]);
            assert!(!rows.is_empty(), "series {i} not drawn");
            rows.iter().sum::<u32>() as f64 / rows.len() as f64
        })
        .collect();
    let gaps: Vec<f64> = centres.windows(2).map(|w| w[0] - w[1]).collect();
    assert!(gaps[0] > 50.0, "{centres:?}");
    for g in &gaps {
        assert!((g - gaps[0]).abs() <= 1.5, "uneven decades: {centres:?}");
    }
}

#[test]
fn log_axes_tick_decades_or_1_2_5_and_labels_stay_short() {
    let wide = Axis::log10((1e-4, 10.0), 8);
    assert!(wide.log);
    assert_eq!(wide.ticks, vec![1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]);
    assert!(wide.minor.is_empty(), "crowded decades get minor lines");
    let crowded = Axis::log10((1e-12, 1.0), 4);
    assert!(crowded.ticks.len() <= 4, "{:?}", crowded.ticks);
    let narrow = Axis::log10((0.05, 5.0), 8);
    assert_eq!(narrow.ticks, vec![0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]);
    assert!(narrow.minor.contains(&0.2) && narrow.minor.contains(&3.0));
    let labels: Vec<String> = [0.1 + 0.2, 1e-4, 2.5e-5, 12345.678, 250000.0, 0.0, -0.5]
        .map(tick_label)
        .to_vec();
    assert_eq!(
        labels,
        ["0.3", "1e-4", "2.5e-5", "12350", "2.5e5", "0", "-0.5"]
    );
    // Steps never get fractional ticks; a chart that asks for a log axis over less
    // than a decade gets a linear one.
    let steps = Axis::linear((0.0, 3.0), 10, true);
    assert!(steps.ticks.iter().all(|t| t.fract() == 0.0) && steps.ticks.len() >= 3);
    let mut c = chart(vec![flat("a", 2.0), flat("b", 5.0)]);
    c.log_y = true;
    assert!(!axes(&c, (500, 300)).1.log);
}

#[test]
fn smoothed_lines_are_drawn_over_every_faint_raw_curve() {
    // Series 0's raw values zigzag across series 1's flat line.
    let zigzag = (0..=40).map(|x| (x as f64, if x % 2 == 0 { 0.0 } else { 2.0 }));
    let c = chart(vec![
        Series::new("", vec![(0.0, 1.5), (40.0, 1.5)]).with_raw(zigzag.collect()),
        Series::new("", (0..=40).map(|x| (x as f64, 1.0)).collect()),
    ]);
    let image = render(&[c], 1, 640, 400);
    let faint = |p: Rgb| {
        let blend = rgb(PALETTE[0]).map(|c| 255.0 - (255.0 - c as f64) * RAW_ALPHA);
        p.iter()
            .zip(blend)
            .all(|(&a, b)| (a as f64 - b).abs() <= 3.0)
    };
    assert!(
        image.count(0..640, 0..400, faint) > 200,
        "raw values not drawn faintly"
    );
    let columns = image.columns_of(PALETTE[1]);
    let (left, right) = (columns[0], columns[columns.len() - 1]);
    let row = image.rows_of((left + right) / 2, PALETTE[1])[0];
    for x in left + 2..right - 2 {
        assert!(
            (row.saturating_sub(1)..=row + 1).any(|y| image.get(x, y) == rgb(PALETTE[1])),
            "raw values drawn over the line at column {x}"
        );
    }
}

#[test]
fn many_series_get_distinct_styles_and_all_show() {
    let series: Vec<Series> = (0..20)
        .map(|i| flat(&format!("series number {i}"), i as f64))
        .collect();
    let image = render(&[chart(series)], 1, 640, 400);
    for color in PALETTE {
        assert!(!image.columns_of(color).is_empty(), "{color:?} missing");
    }
    let styles: Vec<_> = (0..20).map(series_style).collect();
    for (i, a) in styles.iter().enumerate() {
        assert!(!styles[i + 1..].contains(a), "two series look alike");
    }
}

#[test]
fn title_axis_labels_and_legend_put_ink_where_they_belong() {
    let full = chart(vec![flat("accuracy", 1.0)]);
    let bare = Chart {
        series: vec![flat("", 1.0)],
        ..Chart::default()
    };
    let (with, without) = (render(&[full], 1, 640, 400), render(&[bare], 1, 640, 400));
    let ink = |image: &Image, xs: Range<u32>, ys: Range<u32>| image.count(xs, ys, dark);
    for (what, xs, ys) in [
        ("title", 200..440, 0..35),
        ("y label", 0..22, 100..300),
        ("x label", 200..440, 375..400),
        ("legend", 330..620, 40..200),
    ] {
        let (a, b) = (ink(&with, xs.clone(), ys.clone()), ink(&without, xs, ys));
        assert!(
            a >= b + 20,
            "no {what}: {a} dark pixels with it, {b} without"
        );
    }
}

#[test]
fn long_legend_labels_are_wrapped_whole_not_cut() {
    bundled_font().unwrap();
    let font = Fonts::for_panel((PANEL_WIDTH, PANEL_HEIGHT)).legend;
    let long = "a very long series name that would never fit in a narrow legend box";
    let word = "intermediate_attention_loss_of_layer_eleven_head_twelve";
    let entries = [(0, long), (1, word), (2, "kd")];
    let legend = Legend::layout(&entries, &font, 180, 1000).unwrap();
    assert!(legend.width <= 180, "{legend:?}");
    let size = font.get_size();
    let (pad, swatch) = ((size * LEGEND_PAD) as i32, (size * LEGEND_SWATCH) as i32);
    let room = legend.width - 3 * pad - swatch;
    for (_, text) in &legend.rows {
        let width = text_width(&font, text).unwrap();
        assert!(
            width <= room,
            "{text:?} is {width} px, the legend has {room}"
        );
    }
    let lines = |series: usize| {
        let start = legend
            .rows
            .iter()
            .position(|r| r.0 == Some(series))
            .unwrap();
        let rest = legend.rows[start + 1..]
            .iter()
            .take_while(|r| r.0.is_none());
        std::iter::once(&legend.rows[start])
            .chain(rest)
            .map(|r| r.1.as_str())
            .collect::<Vec<_>>()
    };
    assert!(lines(0).len() > 1, "{legend:?}");
    assert_eq!(lines(0).join(" "), long);
    assert_eq!(lines(1).concat(), word);
    assert_eq!(lines(2), ["kd"]);

    // Out of height: whole entries are left out and counted, never cut.
    let many: Vec<(usize, &str)> = (0..30).map(|i| (i, "loss")).collect();
    let short = Legend::layout(&many, &font, 300, 120).unwrap();
    assert!(short.height <= 120, "{short:?}");
    let last = &short.rows[short.rows.len() - 1];
    let shown = short.rows.len() - 1;
    assert_eq!(last, &(None, format!("+{} more", 30 - shown)));
}

#[test]
fn legend_goes_to_the_corner_with_the_least_data() {
    let falling: Vec<(i32, i32)> = (0..100).map(|k| (k * 4, k * 3)).collect();
    let rising: Vec<(i32, i32)> = (0..100).map(|k| (k * 4, 300 - k * 3)).collect();
    let (plot, size) = ((400, 300), (120, 60));
    assert_eq!(
        legend_corner(plot, size, 8, &falling),
        (272, 8),
        "not top right"
    );
    assert_eq!(
        legend_corner(plot, size, 8, &rising),
        (8, 8),
        "not top left"
    );
    let both: Vec<_> = falling.iter().chain(&rising).copied().collect();
    let top_band: Vec<_> = (0..400).map(|x| (x, 20)).chain(both).collect();
    assert_eq!(
        legend_corner(plot, size, 8, &top_band).1,
        232,
        "not at the bottom"
    );
}

#[test]
fn bad_layouts_are_refused_with_reasons() {
    let c = [chart(vec![flat("a", 1.0)])];
    let refusal = |charts: &[Chart], columns, w, h| {
        render_panels(charts, columns, w, h)
            .unwrap_err()
            .to_string()
    };
    assert!(refusal(&[], 1, 640, 400).contains("nothing to plot"));
    assert!(refusal(&c, 0, 640, 400).contains("columns"));
    assert!(refusal(&c, 1, 50, 40).contains("too small"));
    assert!(refusal(&c, 1, 100_000, 100_000).contains("limit"));
}

#[test]
fn write_png_writes_a_decodable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/loss.png");
    let charts = vec![chart(vec![flat("a", 1.0)]); 3];
    write_png(&charts, &path).unwrap();
    write_png(&charts[..1], &path).unwrap();
    let image = Image::decode(&std::fs::read(&path).unwrap());
    assert_eq!((image.width, image.height), (PANEL_WIDTH, PANEL_HEIGHT));
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn values_near_the_float_limits_still_render() {
    let extreme = vec![(0.0, -1e308), (1.0, 1e308), (f64::MAX, 0.0)];
    let tiny = vec![(0.0, 1e-310), (1.0, 1e-300), (2.0, 5e-324)];
    let mut log = chart(vec![
        Series::new("", tiny),
        Series::new("", vec![(0.0, f64::MAX)]),
    ]);
    log.log_y = true;
    let image = render(&[chart(vec![Series::new("", extreme)]), log], 2, 400, 300);
    assert!(!image.columns_of(PALETTE[0]).is_empty());
    assert_eq!(tick_label(5e-324), "5e-324");
}
