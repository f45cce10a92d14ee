//! An RGB raster with the few primitives charts need: rectangles, crisp grid lines,
//! anti-aliased thick polylines, round markers and bitmap text.

use super::font;

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub const WHITE: Rgb = Rgb(255, 255, 255);

    /// `self` blended over `under` with opacity `alpha` in [0, 1].
    pub fn over(self, under: Rgb, alpha: f32) -> Rgb {
        let mix = |a: u8, b: u8| (a as f32 * alpha + b as f32 * (1.0 - alpha)).round() as u8;
        Rgb(
            mix(self.0, under.0),
            mix(self.1, under.1),
            mix(self.2, under.2),
        )
    }
}

/// A pixel rectangle; `x1` and `y1` are exclusive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl Rect {
    pub fn width(&self) -> i32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> i32 {
        self.y1 - self.y0
    }

    pub fn contains(&self, x: f64, y: f64) -> bool {
        x >= self.x0 as f64 && x < self.x1 as f64 && y >= self.y0 as f64 && y < self.y1 as f64
    }

    fn intersect(&self, other: &Rect) -> Rect {
        Rect {
            x0: self.x0.max(other.x0),
            y0: self.y0.max(other.y0),
            x1: self.x1.min(other.x1),
            y1: self.y1.min(other.y1),
        }
    }
}

/// How a polyline is stroked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stroke {
    pub color: Rgb,
    pub width: f64,
    pub alpha: f32,
    /// On and off lengths in pixels; `None` draws a solid line.
    pub dash: Option<(f64, f64)>,
}

pub struct Canvas {
    width: u32,
    height: u32,
    /// Row-major RGB bytes.
    pixels: Vec<u8>,
    /// Drawing outside this rectangle is discarded.
    clip: Rect,
}

impl Canvas {
    pub fn new(width: u32, height: u32, background: Rgb) -> Self {
        let pixels = [background.0, background.1, background.2].repeat((width * height) as usize);
        Canvas {
            width,
            height,
            pixels,
            clip: Self::full(width, height),
        }
    }

    fn full(width: u32, height: u32) -> Rect {
        Rect {
            x0: 0,
            y0: 0,
            x1: width as i32,
            y1: height as i32,
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn into_rgb(self) -> Vec<u8> {
        self.pixels
    }

    /// Restricts drawing to `rect` (within the canvas); `None` lifts the restriction.
    pub fn set_clip(&mut self, rect: Option<Rect>) {
        let full = Self::full(self.width, self.height);
        self.clip = rect.map_or(full, |r| r.intersect(&full));
    }

    #[cfg(test)]
    pub fn get(&self, x: u32, y: u32) -> Rgb {
        let i = ((y * self.width + x) * 3) as usize;
        Rgb(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2])
    }

    /// Blends `color` into pixel (`x`, `y`) with opacity `alpha`, honouring the clip.
    pub fn blend(&mut self, x: i32, y: i32, color: Rgb, alpha: f32) {
        let c = self.clip;
        if x < c.x0 || y < c.y0 || x >= c.x1 || y >= c.y1 || alpha <= 0.0 {
            return;
        }
        let i = ((y as u32 * self.width + x as u32) * 3) as usize;
        let under = Rgb(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]);
        let Rgb(r, g, b) = color.over(under, alpha.min(1.0));
        self.pixels[i..i + 3].copy_from_slice(&[r, g, b]);
    }

    pub fn fill_rect(&mut self, rect: Rect, color: Rgb, alpha: f32) {
        for y in rect.y0..rect.y1 {
            for x in rect.x0..rect.x1 {
                self.blend(x, y, color, alpha);
            }
        }
    }

    /// Outline one pixel wide, inside `rect`.
    pub fn stroke_rect(&mut self, rect: Rect, color: Rgb) {
        self.fill_rect(
            Rect {
                y1: rect.y0 + 1,
                ..rect
            },
            color,
            1.0,
        );
        self.fill_rect(
            Rect {
                y0: rect.y1 - 1,
                ..rect
            },
            color,
            1.0,
        );
        self.fill_rect(
            Rect {
                x1: rect.x0 + 1,
                ..rect
            },
            color,
            1.0,
        );
        self.fill_rect(
            Rect {
                x0: rect.x1 - 1,
                ..rect
            },
            color,
            1.0,
        );
    }

    /// Strokes the connected runs of `points` (pixel coordinates) as one shape, so
    /// translucent lines do not darken where their segments overlap.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: Stroke) {
        if points.len() < 2 {
            return;
        }
        let reach = stroke.width / 2.0 + 1.0;
        let (mut lo_x, mut lo_y, mut hi_x, mut hi_y) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for &(x, y) in points {
            lo_x = lo_x.min(x);
            lo_y = lo_y.min(y);
            hi_x = hi_x.max(x);
            hi_y = hi_y.max(y);
        }
        let bounds = Rect {
            x0: (lo_x - reach).floor().max(self.clip.x0 as f64) as i32,
            y0: (lo_y - reach).floor().max(self.clip.y0 as f64) as i32,
            x1: (hi_x + reach).ceil().min(self.clip.x1 as f64) as i32,
            y1: (hi_y + reach).ceil().min(self.clip.y1 as f64) as i32,
        };
        if bounds.width() <= 0 || bounds.height() <= 0 {
            return;
        }
        // Coverage is the maximum over segments, then blended once per pixel.
        let mut coverage = vec![0f32; (bounds.width() * bounds.height()) as usize];
        let mut travelled = 0.0;
        for pair in points.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let length = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
            match stroke.dash {
                None => cover_segment(&mut coverage, bounds, a, b, stroke.width),
                Some((on, off)) => {
                    // Walk the dash pattern along the segment, carrying the phase over.
                    let period = on + off;
                    let mut t = 0.0;
                    while t < length {
                        let phase = (travelled + t) % period;
                        let (drawn, rest) = if phase < on {
                            (true, on - phase)
                        } else {
                            (false, period - phase)
                        };
                        let end = (t + rest).min(length);
                        if drawn && length > 0.0 {
                            let at = |s: f64| (a.0 + (b.0 - a.0) * s, a.1 + (b.1 - a.1) * s);
                            let (p, q) = (at(t / length), at(end / length));
                            cover_segment(&mut coverage, bounds, p, q, stroke.width);
                        }
                        t = end;
                    }
                }
            }
            travelled += length;
        }
        for y in bounds.y0..bounds.y1 {
            for x in bounds.x0..bounds.x1 {
                let c = coverage[((y - bounds.y0) * bounds.width() + x - bounds.x0) as usize];
                self.blend(x, y, stroke.color, c * stroke.alpha);
            }
        }
    }

    /// An anti-aliased filled disc centred on (`cx`, `cy`).
    pub fn disc(&mut self, cx: f64, cy: f64, radius: f64, color: Rgb) {
        let (x0, x1) = (
            (cx - radius - 1.0).floor() as i32,
            (cx + radius + 1.0).ceil() as i32,
        );
        let (y0, y1) = (
            (cy - radius - 1.0).floor() as i32,
            (cy + radius + 1.0).ceil() as i32,
        );
        for y in y0..y1 {
            for x in x0..x1 {
                let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                let c = (radius + 0.5 - d).clamp(0.0, 1.0) as f32;
                self.blend(x, y, color, c);
            }
        }
    }

    /// Draws `text` with its top-left corner at (`x`, `y`), each font pixel a
    /// `scale` x `scale` block.
    pub fn text(&mut self, x: i32, y: i32, text: &str, scale: u32, color: Rgb) {
        self.glyphs(text, scale, color, |gx, gy| (x + gx, y + gy));
    }

    /// Draws `text` rotated a quarter turn anticlockwise (reading bottom to top),
    /// with the bottom-left corner of its first glyph at (`x`, `y`).
    pub fn text_up(&mut self, x: i32, y: i32, text: &str, scale: u32, color: Rgb) {
        self.glyphs(text, scale, color, |gx, gy| (x + gy, y - 1 - gx));
    }

    /// Plots every set font pixel through `place`, which maps unrotated
    /// output-pixel offsets to canvas coordinates.
    fn glyphs(
        &mut self,
        text: &str,
        scale: u32,
        color: Rgb,
        place: impl Fn(i32, i32) -> (i32, i32),
    ) {
        let s = scale as i32;
        for (i, c) in text.chars().enumerate() {
            let g = font::glyph(c);
            let left = i as i32 * (font::ADVANCE as i32) * s;
            for fy in 0..font::GLYPH_HEIGHT {
                for fx in 0..font::GLYPH_WIDTH {
                    if !font::pixel(g, fx, fy) {
                        continue;
                    }
                    for dy in 0..s {
                        for dx in 0..s {
                            let (px, py) = place(left + fx as i32 * s + dx, fy as i32 * s + dy);
                            self.blend(px, py, color, 1.0);
                        }
                    }
                }
            }
        }
    }
}

/// Raises `coverage` (a buffer over `bounds`) to the coverage of a segment `width`
/// pixels thick: full within the half width, fading out over one pixel.
fn cover_segment(coverage: &mut [f32], bounds: Rect, a: (f64, f64), b: (f64, f64), width: f64) {
    let reach = width / 2.0 + 1.0;
    let x0 = ((a.0.min(b.0) - reach).floor() as i32).max(bounds.x0);
    let x1 = ((a.0.max(b.0) + reach).ceil() as i32).min(bounds.x1);
    let y0 = ((a.1.min(b.1) - reach).floor() as i32).max(bounds.y0);
    let y1 = ((a.1.max(b.1) + reach).ceil() as i32).min(bounds.y1);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = if len2 > 0.0 {
                (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let d = ((px - a.0 - t * dx).powi(2) + (py - a.1 - t * dy).powi(2)).sqrt();
            let c = (width / 2.0 + 0.5 - d).clamp(0.0, 1.0) as f32;
            let cell = &mut coverage[((y - bounds.y0) * bounds.width() + x - bounds.x0) as usize];
            *cell = cell.max(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: Rgb = Rgb(200, 0, 0);

    #[test]
    fn horizontal_line_two_pixels_wide_covers_exactly_two_rows() {
        let mut c = Canvas::new(20, 20, Rgb::WHITE);
        let stroke = Stroke {
            color: RED,
            width: 2.0,
            alpha: 1.0,
            dash: None,
        };
        c.polyline(&[(2.0, 10.0), (18.0, 10.0)], stroke);
        let rows: Vec<u32> = (0..20).filter(|&y| c.get(10, y) == RED).collect();
        assert_eq!(rows, vec![9, 10]);
        assert_eq!(c.get(10, 8), Rgb::WHITE);
        assert_eq!(c.get(10, 11), Rgb::WHITE);
    }

    #[test]
    fn translucent_polyline_is_uniform_across_joints_and_clipped() {
        let mut c = Canvas::new(30, 10, Rgb::WHITE);
        c.set_clip(Some(Rect {
            x0: 0,
            y0: 0,
            x1: 25,
            y1: 10,
        }));
        let stroke = Stroke {
            color: Rgb(0, 0, 0),
            width: 2.0,
            alpha: 0.5,
            dash: None,
        };
        c.polyline(&[(0.0, 5.0), (10.0, 5.0), (20.0, 5.0), (30.0, 5.0)], stroke);
        assert_eq!(c.get(10, 5), c.get(5, 5), "joint drawn twice");
        assert_eq!(c.get(5, 5), Rgb(128, 128, 128));
        assert_eq!(c.get(27, 5), Rgb::WHITE, "clip ignored");
    }

    #[test]
    fn dashed_line_has_gaps() {
        let mut c = Canvas::new(40, 10, Rgb::WHITE);
        let stroke = Stroke {
            color: RED,
            width: 2.0,
            alpha: 1.0,
            dash: Some((6.0, 4.0)),
        };
        c.polyline(&[(0.0, 5.0), (40.0, 5.0)], stroke);
        let row: Vec<bool> = (0..40).map(|x| c.get(x, 5) == RED).collect();
        assert!(row[2] && !row[8] && row[12] && !row[18]);
    }

    #[test]
    fn upright_and_rotated_text_put_ink_where_expected() {
        let mut c = Canvas::new(40, 40, Rgb::WHITE);
        c.text(1, 1, "I", 2, RED);
        // 'I' has a vertical stem in its middle column (font x = 2).
        assert_eq!(c.get(1 + 4, 1 + 6), RED);
        assert_eq!(c.get(1, 1 + 6), Rgb::WHITE);
        let mut r = Canvas::new(40, 40, Rgb::WHITE);
        r.text_up(10, 30, "I", 1, RED);
        // Rotated, the stem becomes a horizontal run at y = 30 - 1 - 2.
        assert_eq!(r.get(10 + 3, 27), RED);
        assert_eq!(r.get(10 + 3, 29), Rgb::WHITE);
    }
}
