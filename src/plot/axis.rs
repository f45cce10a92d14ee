//! Axis ranges, 1-2-5 "nice" ticks and their labels, for linear and log10 scales.

/// A labelled tick mark.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub value: f64,
    pub label: String,
}

/// How an axis spaces its ticks.
pub struct TickRoom<'a> {
    /// Axis length in pixels.
    pub length: f64,
    /// Smallest distance between neighbouring ticks, in pixels.
    pub min_spacing: f64,
    /// Pixel extent of a label along the axis (its width on a horizontal axis).
    pub label_extent: &'a dyn Fn(&str) -> f64,
}

/// A mapping from data values to a fraction of the axis length, with its ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Shown range; for a log axis, in log10 units.
    lo: f64,
    hi: f64,
    log: bool,
    pub ticks: Vec<Tick>,
    /// Unlabelled grid values (2..9 within each decade of a log axis).
    pub minor: Vec<f64>,
}

/// Fraction of the data span added at each end so curves don't touch the frame.
const PAD: f64 = 0.05;

impl Axis {
    /// A linear axis showing `data_lo..=data_hi` (finite, `lo <= hi`) plus padding.
    /// `integer` data (steps) never gets fractional ticks.
    pub fn linear(data_lo: f64, data_hi: f64, integer: bool, room: &TickRoom) -> Axis {
        let (lo, hi) = if data_hi - data_lo <= 1e-12 * data_lo.abs().max(data_hi.abs()) {
            // A constant: centre it in a range of +-10% (or +-1 around zero).
            let half = if data_lo == 0.0 {
                1.0
            } else {
                data_lo.abs() * 0.1
            };
            (data_lo - half, data_hi + half)
        } else {
            let pad = (data_hi - data_lo) * PAD;
            (data_lo - pad, data_hi + pad)
        };
        let min_step = if integer { 1.0 } else { 0.0 };
        let px = room.length / (hi - lo);
        let ticks = linear_ticks(lo, hi, min_step, room, &|v| v * px);
        Axis {
            lo,
            hi,
            log: false,
            ticks,
            minor: Vec::new(),
        }
    }

    /// A log10 axis showing `data_lo..=data_hi` (both finite and positive) plus padding.
    pub fn log10(data_lo: f64, data_hi: f64, room: &TickRoom) -> Axis {
        let (l, h) = (data_lo.log10(), data_hi.log10());
        let (lo, hi) = if h - l < 1e-9 {
            (l - 0.1, h + 0.1)
        } else {
            let pad = (h - l) * PAD;
            (l - pad, h + pad)
        };
        let per_decade = room.length / (hi - lo);
        let fits = |ticks: &[Tick]| spaced(ticks, room, |v| v.log10() * per_decade);
        let decades: Vec<i32> = (lo.ceil() as i32..=hi.floor() as i32).collect();
        let mut ticks: Vec<Tick> = Vec::new();
        // Every decade, then 1-2-5 within decades when they are roomy, then every
        // k-th decade when they are crowded.
        let with_125: Vec<Tick> = (lo.floor() as i32..=hi.ceil() as i32)
            .flat_map(|d| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(d)))
            .filter(|v| (lo..=hi).contains(&v.log10()))
            .map(log_tick)
            .collect();
        if with_125.len() >= 2 && decades.len() <= 2 && fits(&with_125) {
            ticks = with_125;
        } else {
            for k in [1, 2, 3, 4, 5, 10, 20, 50, 100] {
                let candidate: Vec<Tick> = decades
                    .iter()
                    .filter(|d| d.rem_euclid(k) == 0)
                    .map(|&d| log_tick(10f64.powi(d)))
                    .collect();
                if fits(&candidate) {
                    ticks = candidate;
                    break;
                }
            }
        }
        if ticks.len() < 2 {
            // Less than a decade shown: plain ticks, placed on the log scale.
            let pixel = |v: f64| v.log10() * per_decade;
            ticks = linear_ticks(10f64.powf(lo), 10f64.powf(hi), 0.0, room, &pixel);
        }
        let minor = if per_decade >= 40.0 {
            (lo.floor() as i32..=hi.ceil() as i32)
                .flat_map(|d| (2..10).map(move |m| m as f64 * 10f64.powi(d)))
                .filter(|v| (lo..=hi).contains(&v.log10()))
                .collect()
        } else {
            Vec::new()
        };
        Axis {
            lo,
            hi,
            log: true,
            ticks,
            minor,
        }
    }

    /// Where `value` falls along the axis: 0 at the low end, 1 at the high end.
    /// `None` for values the axis cannot show (non-finite; non-positive on a log axis).
    pub fn fraction(&self, value: f64) -> Option<f64> {
        if !value.is_finite() || (self.log && value <= 0.0) {
            return None;
        }
        let v = if self.log { value.log10() } else { value };
        Some((v - self.lo) / (self.hi - self.lo))
    }
}

/// Whether neighbouring labels of `ticks` keep `room.min_spacing` apart and do not
/// overlap, with `position` mapping a value to pixels.
fn spaced(ticks: &[Tick], room: &TickRoom, position: impl Fn(f64) -> f64) -> bool {
    ticks.windows(2).all(|pair| {
        let gap = (position(pair[1].value) - position(pair[0].value)).abs();
        let half_widths =
            ((room.label_extent)(&pair[0].label) + (room.label_extent)(&pair[1].label)) / 2.0;
        gap >= room.min_spacing && gap >= half_widths + 6.0
    })
}

/// Multiples of the smallest 1-2-5 step (at least `min_step`) whose ticks fit in
/// `lo..=hi`, with `pixel` mapping values to pixels along the axis.
fn linear_ticks(
    lo: f64,
    hi: f64,
    min_step: f64,
    room: &TickRoom,
    pixel: &dyn Fn(f64) -> f64,
) -> Vec<Tick> {
    let span = hi - lo;
    let mut step = nice_at_least((span / (room.length / room.min_spacing).max(1.0)).max(min_step));
    loop {
        let ticks = ticks_for_step(lo, hi, step);
        if ticks.len() <= 2 || spaced(&ticks, room, pixel) {
            return ticks;
        }
        step = next_nice(step);
    }
}

fn ticks_for_step(lo: f64, hi: f64, step: f64) -> Vec<Tick> {
    let big = lo.abs().max(hi.abs());
    ((lo / step).ceil() as i64..=(hi / step).floor() as i64)
        .map(|k| {
            let v = k as f64 * step;
            let value = if v.abs() < step * 1e-9 { 0.0 } else { v };
            Tick {
                value,
                label: linear_label(value, step, big),
            }
        })
        .collect()
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `x` (> 0).
fn nice_at_least(x: f64) -> f64 {
    let magnitude = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// The next 1-2-5 step above `step`.
fn next_nice(step: f64) -> f64 {
    nice_at_least(step * 1.5)
}

/// `value` written with as many decimals as `step` needs: "k" and "M" suffixes for
/// coarse large scales (step counts), scientific notation for other extremes.
pub fn linear_label(value: f64, step: f64, largest: f64) -> String {
    for (unit, min_step, suffix) in [(1e6, 1e5, "M"), (1e3, 1e3, "k")] {
        if step >= min_step && largest >= 10.0 * min_step.max(1e3) && value != 0.0 {
            return format!(
                "{}{suffix}",
                linear_label(value / unit, step / unit, largest / unit)
            );
        }
    }
    if largest >= 1e6 || step < 1e-4 {
        if value == 0.0 {
            return "0".into();
        }
        let digits = (value.abs().log10().floor() - step.log10().floor()).clamp(0.0, 6.0) as usize;
        return scientific(value, digits);
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let text = format!("{value:.decimals$}");
    // A value that rounds to zero reads "0.0", never "-0.0".
    match text.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => text,
    }
}

/// A label for a log-axis tick of the form m * 10^d with a one-digit mantissa.
fn log_tick(value: f64) -> Tick {
    let exponent = (value.log10() + 1e-9).floor();
    let label = if (-3.0..=4.0).contains(&exponent) {
        let decimals = (-exponent).max(0.0) as usize;
        format!("{value:.decimals$}")
    } else {
        scientific(value, 0)
    };
    Tick { value, label }
}

/// `1.5e-5` style, without trailing zeros in the mantissa.
fn scientific(value: f64, digits: usize) -> String {
    let text = format!("{value:.digits$e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if mantissa.contains('.') => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(length: f64) -> TickRoom<'static> {
        TickRoom {
            length,
            min_spacing: 40.0,
            label_extent: &|s: &str| s.len() as f64 * 12.0,
        }
    }

    fn labels(axis: &Axis) -> Vec<&str> {
        axis.ticks.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn linear_ticks_use_one_two_five_steps() {
        let a = Axis::linear(0.0, 1.0, false, &room(400.0));
        assert_eq!(labels(&a), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let b = Axis::linear(0.0, 1000.0, true, &room(300.0));
        assert_eq!(labels(&b), ["0", "200", "400", "600", "800", "1000"]);
        let c = Axis::linear(3.0, 7.0, true, &room(2000.0));
        assert!(c.ticks.iter().all(|t| t.value.fract() == 0.0), "{c:?}");
        let d = Axis::linear(0.0, 3e-5, false, &room(400.0));
        assert!(labels(&d).contains(&"1e-5"), "{:?}", labels(&d));
    }

    #[test]
    fn wide_labels_thin_out_the_ticks() {
        let wide = TickRoom {
            label_extent: &|s: &str| s.len() as f64 * 40.0,
            ..room(400.0)
        };
        let a = Axis::linear(0.0, 100000.0, true, &wide);
        for pair in a.ticks.windows(2) {
            let gap = (pair[1].value - pair[0].value) / 110000.0 * 400.0;
            assert!(gap >= pair[0].label.len() as f64 * 40.0, "{a:?}");
        }
    }

    #[test]
    fn constant_data_gets_a_padded_range() {
        let a = Axis::linear(5.0, 5.0, false, &room(300.0));
        assert_eq!(a.fraction(5.0), Some(0.5));
        let z = Axis::linear(0.0, 0.0, false, &room(300.0));
        assert_eq!(z.fraction(0.0), Some(0.5));
        assert!(z.ticks.len() >= 2);
        let l = Axis::log10(2.0, 2.0, &room(300.0));
        assert!((l.fraction(2.0).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn log_axis_maps_decades_evenly() {
        let a = Axis::log10(1e-4, 10.0, &room(500.0));
        let f: Vec<f64> = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
            .iter()
            .map(|&v| a.fraction(v).unwrap())
            .collect();
        for w in f.windows(3) {
            assert!(((w[1] - w[0]) - (w[2] - w[1])).abs() < 1e-12, "{f:?}");
        }
        assert_eq!(labels(&a), ["1e-4", "0.001", "0.01", "0.1", "1", "10"]);
        assert_eq!(a.fraction(0.0), None);
        assert_eq!(a.fraction(-1.0), None);
        assert_eq!(a.fraction(f64::NAN), None);
    }

    #[test]
    fn log_axis_ticks_within_and_across_many_decades() {
        let narrow = Axis::log10(0.3, 0.6, &room(400.0));
        assert!(narrow.ticks.len() >= 2, "{narrow:?}");
        let short = Axis::log10(0.05, 2.0, &room(400.0));
        assert!(labels(&short).contains(&"0.5"), "{:?}", labels(&short));
        let long = Axis::log10(1e-12, 1e12, &room(300.0));
        assert!(long.ticks.len() >= 2 && long.ticks.len() <= 8, "{long:?}");
    }

    #[test]
    fn labels_are_clean() {
        assert_eq!(linear_label(0.30000000000000004, 0.1, 1.0), "0.3");
        assert_eq!(linear_label(-1e-17, 0.1, 1.0), "0.0");
        assert_eq!(linear_label(2500000.0, 500000.0, 3e6), "2.5M");
        assert_eq!(linear_label(15000.0, 5000.0, 2e4), "15k");
        assert_eq!(linear_label(1500.0, 500.0, 2e4), "1500");
        assert_eq!(linear_label(2500000.0, 5000.0, 3e6), "2500k");
        assert_eq!(linear_label(2500000.0, 50.0, 3e6), "2.5e6");
        assert_eq!(scientific(2e-5, 0), "2e-5");
    }
}
