//! Pixel-level checks of rendered charts, read back through the PNG decoder.

use super::*;

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

    fn get(&self, x: i32, y: i32) -> Rgb {
        let i = ((y as u32 * self.width + x as u32) * 3) as usize;
        Rgb(self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    /// Rows of column `x` within `rect` whose pixel is exactly `color`.
    fn rows_of(&self, x: i32, rect: Rect, color: Rgb) -> Vec<i32> {
        (rect.y0..rect.y1)
            .filter(|&y| self.get(x, y) == color)
            .collect()
    }

    fn count_in(&self, rect: Rect, color: Rgb) -> usize {
        (rect.y0..rect.y1)
            .flat_map(|y| (rect.x0..rect.x1).map(move |x| (x, y)))
            .filter(|&(x, y)| self.get(x, y) == color)
            .count()
    }
}

/// Renders through both paths: the frames say where data should land, the decoded
/// PNG says where it did.
fn render(charts: &[Chart], columns: usize, w: u32, h: u32) -> (Image, Vec<Frame>) {
    let (_, frames) = draw(charts, columns, w, h).unwrap();
    let image = Image::decode(&render_panels(charts, columns, w, h).unwrap());
    (image, frames)
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

fn quadrant(plot: Rect, right: bool, top: bool) -> Rect {
    let (mx, my) = ((plot.x0 + plot.x1) / 2, (plot.y0 + plot.y1) / 2);
    Rect {
        x0: if right { mx } else { plot.x0 + 1 },
        x1: if right { plot.x1 - 1 } else { mx },
        y0: if top { plot.y0 + 1 } else { my },
        y1: if top { my } else { plot.y1 - 1 },
    }
}

#[test]
fn image_is_the_panel_grid() {
    let charts = vec![chart(vec![flat("a", 1.0)]); 3];
    let (image, frames) = render(&charts, 2, 400, 300);
    assert_eq!((image.width, image.height), (800, 600));
    assert_eq!(image.rgb.len(), 800 * 600 * 3);
    // Third panel starts the second row.
    assert!(frames[2].plot.y0 > 300 && frames[2].plot.x1 < 400);
    let single = Image::decode(&render_panels(&charts[..1], 3, 400, 300).unwrap());
    assert_eq!((single.width, single.height), (400, 300));
}

#[test]
fn horizontal_lines_land_on_their_rows() {
    let (image, frames) = render(
        &[chart(vec![flat("low", 0.25), flat("high", 0.75)])],
        1,
        640,
        400,
    );
    let plot = frames[0].plot;
    // y range is the data range padded by 5% of its span at each end.
    let (lo, hi) = (0.25 - 0.025, 0.75 + 0.025);
    let x = (plot.x0 + plot.x1) / 2;
    for (value, color) in [(0.25, PALETTE[0]), (0.75, PALETTE[1])] {
        let expected = plot.y0 as f64 + (1.0 - (value - lo) / (hi - lo)) * plot.height() as f64;
        let rows = image.rows_of(x, plot, color);
        assert!(!rows.is_empty(), "no {color:?} in column {x}");
        for row in rows {
            assert!(
                (row as f64 + 0.5 - expected).abs() <= 1.0,
                "row {row} vs {expected}"
            );
        }
    }
}

#[test]
fn log_scale_spaces_decades_evenly() {
    let values = [1e-3, 1e-2, 1e-1, 1.0];
    let series = values
        .iter()
        .enumerate()
        .map(|(i, &v)| flat(&format!("s{i}"), v))
        .collect();
    let mut c = chart(series);
    c.log_y = true;
    let (image, frames) = render(&[c], 1, 640, 480);
    let plot = frames[0].plot;
    let x = plot.x0 + plot.width() / 3;
    let centres: Vec<f64> = (0..values.len())
        .map(|i| {
            let rows = image.rows_of(x, plot, PALETTE[i]);
            assert!(!rows.is_empty(), "series {i} not drawn");
            rows.iter().sum::<i32>() as f64 / rows.len() as f64
        })
        .collect();
    let gaps: Vec<f64> = centres.windows(2).map(|w| w[0] - w[1]).collect();
    assert!(gaps[0] > 50.0, "{centres:?}");
    for g in &gaps {
        assert!((g - gaps[0]).abs() <= 1.0, "uneven decades: {centres:?}");
    }
}

#[test]
fn title_and_labels_put_ink_in_their_margins() {
    let (image, frames) = render(&[chart(vec![flat("a", 1.0)])], 1, 640, 400);
    let plot = frames[0].plot;
    let title_area = Rect {
        x0: 0,
        y0: 0,
        x1: 640,
        y1: plot.y0,
    };
    assert!(image.count_in(title_area, TEXT) > 50);
    let left = Rect {
        x0: 0,
        y0: plot.y0,
        x1: plot.x0 - 1,
        y1: plot.y1,
    };
    assert!(image.count_in(left, TICK_TEXT) > 20, "no y tick labels");
    assert!(image.count_in(left, TEXT) > 10, "no y label");
    let below = Rect {
        x0: plot.x0,
        y0: plot.y1 + 1,
        x1: plot.x1,
        y1: 400,
    };
    assert!(image.count_in(below, TICK_TEXT) > 20, "no x tick labels");

    let mut untitled = chart(vec![flat("a", 1.0)]);
    untitled.title.clear();
    let (image, frames) = render(&[untitled], 1, 640, 400);
    let title_area = Rect {
        x0: 0,
        y0: 0,
        x1: 640,
        y1: frames[0].plot.y0,
    };
    assert_eq!(image.count_in(title_area, TEXT), 0);
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
    let c = chart(vec![
        Series::new("loss", points),
        Series::new("", vec![(f64::NAN, 5.0)]),
    ]);
    let (image, frames) = render(&[c], 1, 640, 400);
    let frame = &frames[0];
    // The y range comes from the finite values only.
    assert!((frame.y.fraction(1.5).unwrap() - 0.5).abs() < 1e-12);
    let (gap_x, _) = frame.to_pixel((2.5, 2.0)).unwrap();
    assert!(
        image
            .rows_of(gap_x as i32, frame.plot, PALETTE[0])
            .is_empty(),
        "gap bridged"
    );
    let (seg_x, _) = frame.to_pixel((0.5, 1.5)).unwrap();
    assert!(!image
        .rows_of(seg_x as i32, frame.plot, PALETTE[0])
        .is_empty());

    let nothing = chart(vec![
        Series::new("nan", vec![(0.0, f64::NAN)]),
        Series::new("empty", vec![]),
    ]);
    let (image, frames) = render(&[nothing], 1, 640, 400);
    assert_eq!(image.count_in(frames[0].plot, PALETTE[0]), 0);
    assert!(
        image.count_in(frames[0].plot, FRAME) > 0,
        "no 'no data' note"
    );
}

#[test]
fn a_single_point_is_a_visible_dot_and_constants_are_centred() {
    let c = chart(vec![Series::new("one", vec![(3.0, 7.0)])]);
    let (image, frames) = render(&[c], 1, 640, 400);
    let (x, y) = frames[0].to_pixel((3.0, 7.0)).unwrap();
    let plot = frames[0].plot;
    assert!((x - (plot.x0 + plot.x1) as f64 / 2.0).abs() < 1.0);
    assert!((y - (plot.y0 + plot.y1) as f64 / 2.0).abs() < 1.0);
    assert_eq!(image.get(x as i32, y as i32), PALETTE[0]);
}

#[test]
fn many_series_get_distinct_styles_and_all_show() {
    let series: Vec<Series> = (0..20)
        .map(|i| flat(&format!("series number {i}"), i as f64))
        .collect();
    let (image, frames) = render(&[chart(series)], 1, 640, 400);
    for color in PALETTE {
        assert!(
            image.count_in(frames[0].plot, color) > 0,
            "{color:?} missing"
        );
    }
    let styles: Vec<Stroke> = (0..20).map(stroke_for).collect();
    for (i, a) in styles.iter().enumerate() {
        for b in &styles[i + 1..] {
            assert!(
                a.color != b.color || a.dash != b.dash,
                "two series look alike"
            );
        }
    }
}

#[test]
fn legend_moves_off_the_data_and_truncates_long_names() {
    let falling = Series::new(
        "a very long series name that would never fit in a legend box",
        vec![(0.0, 1.0), (10.0, 0.0)],
    );
    let rising = Series::new("accuracy", vec![(0.0, 0.0), (10.0, 1.0)]);
    let (image, frames) = render(&[chart(vec![falling]), chart(vec![rising])], 2, 640, 400);
    let (fall, rise) = (frames[0].plot, frames[1].plot);
    assert!(
        image.count_in(quadrant(fall, true, true), TEXT) > 20,
        "legend not top right"
    );
    assert_eq!(
        image.count_in(quadrant(rise, true, true), TEXT),
        0,
        "legend over the data"
    );
    assert!(
        image.count_in(quadrant(rise, false, true), TEXT) > 20,
        "legend not top left"
    );
    // The truncated name stays within the panel's right half.
    assert_eq!(image.count_in(quadrant(fall, false, true), TEXT), 0);
    assert_eq!(fit("abcdefghij", 6 * 6 - 1, 1), "abcd..");
    assert_eq!(fit("abc", 6 * 6 - 1, 1), "abc");
}

#[test]
fn bad_layouts_are_refused_with_reasons() {
    let c = [chart(vec![flat("a", 1.0)])];
    assert!(render_panels(&[], 1, 640, 400)
        .unwrap_err()
        .to_string()
        .contains("nothing to plot"));
    assert!(render_panels(&c, 0, 640, 400)
        .unwrap_err()
        .to_string()
        .contains("columns"));
    assert!(render_panels(&c, 1, 50, 40)
        .unwrap_err()
        .to_string()
        .contains("too small"));
    assert!(render_panels(&c, 1, 100_000, 100_000)
        .unwrap_err()
        .to_string()
        .contains("limit"));
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
