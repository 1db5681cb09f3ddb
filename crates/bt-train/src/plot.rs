//! Line charts as PNG with no system font: the `image` crate for pixels and a built-in 5x7
//! bitmap font for tick labels and titles.
//!
//! Why not `plotters`: its bitmap backend still wants a TrueType font (fontconfig / a system
//! font) for any text, and a run on a bare container must still get a readable `loss.png`.
//! A 5x7 font covers what a training curve needs (digits, `.`, `-`, `E`, capital letters).
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// One curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points `(x, y)`; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// RGB colour.
    pub color: [u8; 3],
    /// Line thickness in pixels (1 or more); thick series also get a dot at each point.
    pub thick: u32,
}

/// A chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title, top left.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Curves, drawn in order.
    pub series: Vec<Series>,
    /// Log-scale y when the data span more than this ratio (and are positive); `None`: linear.
    pub log_y_above_ratio: Option<f64>,
}

const W: u32 = 720;
const H: u32 = 440;
const ML: i64 = 78;
const MR: i64 = 20;
const MT: i64 = 36;
const MB: i64 = 52;

impl Chart {
    /// Renders to an image.
    pub fn render(&self) -> RgbImage {
        let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (x0, x1) = bounds(pts.iter().map(|p| p.0));
        let (ymin, ymax) = bounds(pts.iter().map(|p| p.1));
        let log = match self.log_y_above_ratio {
            Some(r) => ymin > 0.0 && ymax / ymin > r,
            None => false,
        };
        let ty = |y: f64| if log { y.log10() } else { y };
        let (y0, y1) = pad(ty(ymin), ty(ymax));
        let (px0, px1, py0, py1) = (ML, W as i64 - MR, H as i64 - MB, MT);
        let sx = |x: f64| px0 as f64 + (x - x0) / (x1 - x0) * (px1 - px0) as f64;
        let sy = |y: f64| py0 as f64 + (ty(y) - y0) / (y1 - y0) * (py1 - py0) as f64;

        // Grid, ticks, labels.
        let grid = Rgb([225, 225, 225]);
        let ink = Rgb([40, 40, 40]);
        for i in 0..=5 {
            let f = i as f64 / 5.0;
            let xv = x0 + f * (x1 - x0);
            let x = sx(xv).round() as i64;
            line(&mut img, x, py0, x, py1, grid, 1);
            let s = fmt_num(xv);
            text(&mut img, x - text_width(&s) as i64 / 2, py0 + 8, &s, ink);
            let yt = y0 + f * (y1 - y0);
            let yv = if log { 10f64.powf(yt) } else { yt };
            let y = (py0 as f64 + f * (py1 - py0) as f64).round() as i64;
            line(&mut img, px0, y, px1, y, grid, 1);
            let s = fmt_num(yv);
            text(&mut img, px0 - 6 - text_width(&s) as i64, y - 3, &s, ink);
        }
        line(&mut img, px0, py0, px1, py0, ink, 1);
        line(&mut img, px0, py0, px0, py1, ink, 1);
        text(&mut img, (px0 + px1) / 2 - text_width(&self.x_label) as i64 / 2, py0 + 26, &self.x_label, ink);
        let title = if log { format!("{} (LOG SCALE)", self.title) } else { self.title.clone() };
        text(&mut img, px0, 12, &title, ink);

        // Curves and legend.
        let mut lx = px1 - 10;
        for s in self.series.iter().rev() {
            let c = Rgb(s.color);
            let mut prev: Option<(i64, i64)> = None;
            for &(x, y) in s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
                let p = (sx(x).round() as i64, sy(y).round() as i64);
                if let Some(q) = prev {
                    line(&mut img, q.0, q.1, p.0, p.1, c, s.thick);
                }
                if s.thick > 1 {
                    dot(&mut img, p.0, p.1, c, s.thick as i64 + 1);
                }
                prev = Some(p);
            }
            let lw = text_width(&s.label) as i64;
            lx -= lw + 22;
            line(&mut img, lx, 15, lx + 14, 15, c, s.thick.max(2));
            text(&mut img, lx + 18, 12, &s.label, ink);
        }
        img
    }

    /// Renders and writes a PNG atomically (readers never see a half-written image).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::atomic_write(path, &png_bytes(&self.render(), path)?)
    }
}

/// An image encoded as PNG in memory (`path`: for the error message), to be written with
/// [`atomic_write`](crate::atomic::atomic_write).
pub fn png_bytes(img: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::io("encoding PNG for", path, std::io::Error::other(e)))?;
    Ok(buf.into_inner())
}

fn bounds(it: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in it {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

fn pad(lo: f64, hi: f64) -> (f64, f64) {
    let m = (hi - lo) * 0.05;
    (lo - m, hi + m)
}

/// Compact number: `1234`, `12.5`, `0.031`, `1.2E5`.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        s.to_uppercase()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn dot(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>, d: i64) {
    let r = d / 2;
    for dy in -r..=r {
        for dx in -r..=r {
            if dx * dx + dy * dy <= r * r {
                put(img, x + dx, y + dy, c);
            }
        }
    }
}

/// Bresenham, `t` pixels thick.
fn line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>, t: u32) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    let r = (t as i64 - 1) / 2;
    loop {
        for oy in -r..=(t as i64 - 1 - r) {
            for ox in -r..=(t as i64 - 1 - r) {
                put(img, x + ox, y + oy, c);
            }
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Width in pixels of `s` in the 5x7 font (6 px per character).
pub fn text_width(s: &str) -> u32 {
    s.chars().count() as u32 * 6
}

/// Draws `s` (upper-cased) with its top-left corner at `(x, y)`.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().flat_map(char::to_uppercase).enumerate() {
        let g = glyph(ch);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0b10000 >> col) != 0 {
                    put(img, x + i as i64 * 6 + col, y + row as i64, c);
                }
            }
        }
    }
}

/// 5x7 glyphs, one 5-bit row each (MSB = leftmost pixel), after the classic HD44780 ROM.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F], // unknown: a box
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(img: &RgbImage, c: [u8; 3], xr: std::ops::Range<u32>, yr: std::ops::Range<u32>) -> usize {
        let mut n = 0;
        for y in yr {
            for x in xr.clone() {
                if img.get_pixel(x, y).0 == c {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn decreasing_curve_runs_from_top_left_to_bottom_right() {
        let red = [200, 0, 0];
        let chart = Chart {
            title: "loss".into(),
            x_label: "epoch".into(),
            series: vec![Series {
                label: "loss".into(),
                points: (0..50).map(|i| (i as f64, 100.0 - i as f64)).collect(),
                color: red,
                thick: 2,
            }],
            log_y_above_ratio: None,
        };
        let img = chart.render();
        let (w, h) = (img.width(), img.height());
        // Plot area split in quadrants: the line only crosses top-left and bottom-right.
        let (cx, cy) = ((ML as u32 + w - MR as u32) / 2, (MT as u32 + h - MB as u32) / 2);
        // (6 px kept clear around the centre, where the thick line crosses quadrant borders.)
        let tl = count(&img, red, ML as u32..cx - 6, MT as u32..cy - 6);
        let br = count(&img, red, cx + 6..w - MR as u32, cy + 6..h - MB as u32);
        let tr = count(&img, red, cx + 6..w - MR as u32, MT as u32..cy - 6);
        let bl = count(&img, red, ML as u32..cx - 6, cy + 6..h - MB as u32);
        assert!(tl > 50 && br > 50, "tl {tl} br {br}");
        assert_eq!(tr + bl, 0, "tr {tr} bl {bl}");
    }

    #[test]
    fn png_round_trips_and_text_is_drawn() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.png");
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            series: vec![Series {
                label: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 1000.0)],
                color: [0, 0, 255],
                thick: 1,
            }],
            log_y_above_ratio: Some(20.0),
        };
        chart.save(&p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (W, H));
        // Tick labels are dark pixels left of the y axis.
        assert!(count(&img, [40, 40, 40], 0..ML as u32 - 2, MT as u32..H - MB as u32) > 20);
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(12.5), "12.5");
        assert_eq!(fmt_num(0.031), "0.031");
        assert_eq!(fmt_num(123456.0), "1.2E5");
        assert_eq!(fmt_num(0.0), "0");
    }
}
