//! An embedded, procedural 10-class dataset of 32x32 RGB images (tests, demo, benchmarks
//! without CIFAR-10).
//!
//! The class is the *kind of shape* (disk, square, triangle, ...), a property that crops of
//! 56-100% area, flips, colour jitter, blur and grayscale all preserve. Everything else is a
//! nuisance drawn independently of the class: foreground and background colours, position,
//! scale, a small rotation, the background texture (gradient, stripes or blotches) and pixel
//! noise. Because colours are independent of the class, per-channel colour statistics carry
//! almost no label information, while an encoder that has learned shape features separates the
//! classes well: self-supervised pretraining has something to learn that a random encoder lacks.
//!
//! Image `i` of a split depends only on `(seed, split, i)`, so any subset can be regenerated.
use crate::cifar::{Dataset, IMAGE_BYTES, IMAGE_SIDE, NUM_CLASSES};
use crate::rng::{stream, SampleRng};

/// Which split to generate; the splits use disjoint random streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training images.
    Train,
    /// Test images.
    Test,
}

/// Class names, in label order.
pub const CLASS_NAMES: [&str; 10] =
    ["disk", "square", "triangle", "plus", "ring", "diamond", "cross", "hbars", "vbars", "frame"];

/// Generates `n` images; the label of image `i` is `i % 10` (balanced classes).
pub fn generate(n: usize, seed: u64, split: Split) -> Dataset {
    let mut images = vec![0u8; n * IMAGE_BYTES];
    let mut labels = Vec::with_capacity(n);
    let split_tag = match split {
        Split::Train => 0,
        Split::Test => 1,
    };
    use rayon::prelude::*;
    images.par_chunks_mut(IMAGE_BYTES).enumerate().for_each(|(i, img)| {
        let mut rng = SampleRng::new(seed, split_tag, i as u64, stream::SYNTHETIC);
        render(i % NUM_CLASSES, &mut rng, img);
    });
    for i in 0..n {
        labels.push((i % NUM_CLASSES) as u8);
    }
    Dataset::new(images, labels).expect("generator sizes are consistent")
}

/// Whether local coordinates `(u, v)` (shape frame, roughly `[-1, 1]`, `v` down) are inside
/// the shape of `class`.
fn inside(class: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match class {
        0 => u * u + v * v <= 1.0,
        1 => au <= 0.8 && av <= 0.8,
        // Apex up (negative v), base down.
        2 => (-0.9..=0.8).contains(&v) && au <= 0.95 * (v + 0.9) / 1.7,
        3 => (au <= 0.28 && av <= 0.95) || (av <= 0.28 && au <= 0.95),
        4 => {
            let r2 = u * u + v * v;
            (0.3..=1.0).contains(&r2)
        }
        5 => au + av <= 1.0,
        6 => ((u - v).abs() <= 0.35 || (u + v).abs() <= 0.35) && au <= 0.85 && av <= 0.85,
        7 => au <= 0.95 && ((v - 0.5).abs() <= 0.2 || (v + 0.5).abs() <= 0.2),
        8 => av <= 0.95 && ((u - 0.5).abs() <= 0.2 || (u + 0.5).abs() <= 0.2),
        _ => {
            let m = au.max(av);
            (0.55..=0.9).contains(&m)
        }
    }
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn render(class: usize, rng: &mut SampleRng, out: &mut [u8]) {
    let s = IMAGE_SIDE;
    let mut col = || [rng.uniform() as f32, rng.uniform() as f32, rng.uniform() as f32];
    let bg = col();
    let bg2 = col();
    // Foreground colour: random, but far enough in luma from the background to stay visible.
    let mut fg = col();
    for _ in 0..16 {
        if (luma(fg) - luma(bg)).abs() > 0.3 {
            break;
        }
        fg = col();
    }
    let texture = rng.below(3);
    let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
    let freq = rng.range(0.15, 0.6) as f32;
    let tex_amp = rng.range(0.1, 0.45) as f32;
    let mut blotch = [[0f32; 5]; 5];
    for row in blotch.iter_mut() {
        for b in row.iter_mut() {
            *b = rng.uniform() as f32;
        }
    }
    let cx = rng.range(11.0, 21.0) as f32;
    let cy = rng.range(11.0, 21.0) as f32;
    let scale = rng.range(7.0, 12.5) as f32;
    let rot = rng.range(-0.26, 0.26) as f32;
    let (sin, cos) = rot.sin_cos();
    let noise = rng.range(0.0, 0.06) as f32;
    let shade = rng.range(-0.25, 0.25) as f32;
    let (ca, sa) = (angle.cos(), angle.sin());
    for y in 0..s {
        for x in 0..s {
            let (xf, yf) = (x as f32, y as f32);
            // Background texture value t in [0, 1].
            let t = match texture {
                0 => ((xf - 15.5) * ca + (yf - 15.5) * sa) / 44.0 + 0.5,
                1 => 0.5 + 0.5 * (freq * (xf * ca + yf * sa)).sin(),
                _ => {
                    let (gx, gy) = (xf / 31.0 * 4.0, yf / 31.0 * 4.0);
                    let (ix, iy) = ((gx as usize).min(3), (gy as usize).min(3));
                    let (fx, fy) = (gx - ix as f32, gy - iy as f32);
                    let top = blotch[iy][ix] * (1.0 - fx) + blotch[iy][ix + 1] * fx;
                    let bot = blotch[iy + 1][ix] * (1.0 - fx) + blotch[iy + 1][ix + 1] * fx;
                    top * (1.0 - fy) + bot * fy
                }
            };
            // 2x2 supersampled coverage of the shape, for anti-aliased edges.
            let mut cover = 0.0f32;
            for (ox, oy) in [(0.25f32, 0.25f32), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let dx = (xf + ox - 0.5 - cx) / scale;
                let dy = (yf + oy - 0.5 - cy) / scale;
                let u = cos * dx + sin * dy;
                let v = -sin * dx + cos * dy;
                if inside(class, u, v) {
                    cover += 0.25;
                }
            }
            let light = 1.0 + shade * (yf - cy) / scale.max(1.0) * 0.5;
            for c in 0..3 {
                let b = bg[c] * (1.0 - tex_amp * t) + bg2[c] * tex_amp * t;
                let f = fg[c] * light;
                let n = noise * rng.normalish() as f32;
                let val = b * (1.0 - cover) + f * cover + n;
                out[c * s * s + y * s + x] = (val.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_balanced() {
        let a = generate(40, 3, Split::Train);
        let b = generate(40, 3, Split::Train);
        let t = generate(40, 3, Split::Test);
        assert_eq!(a, b);
        assert_ne!(a.images(), t.images());
        for k in 0..10 {
            assert_eq!(a.labels().iter().filter(|&&l| l == k).count(), 4);
        }
        // Images are not blank and differ from each other.
        assert_ne!(a.image(0), a.image(10));
        let (lo, hi) = a.images().iter().fold((255u8, 0u8), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(hi - lo > 100);
    }

    #[test]
    fn colour_statistics_carry_little_class_information() {
        // Nearest-class-mean on per-channel means of the image: should be near chance (10%),
        // far below what a shape-aware encoder reaches. (Mean luma still leaks a little
        // through the shapes' different areas.)
        let train = generate(2000, 11, Split::Train);
        let test = generate(1000, 11, Split::Test);
        let feat = |ds: &Dataset, i: usize| -> [f64; 3] {
            let img = ds.image(i);
            let mut m = [0f64; 3];
            for (c, mc) in m.iter_mut().enumerate() {
                *mc = img[c * 1024..(c + 1) * 1024].iter().map(|&v| v as f64).sum::<f64>() / 1024.0;
            }
            m
        };
        let mut centers = [[0f64; 3]; 10];
        let mut counts = [0f64; 10];
        for i in 0..train.len() {
            let f = feat(&train, i);
            let l = train.label(i) as usize;
            for c in 0..3 {
                centers[l][c] += f[c];
            }
            counts[l] += 1.0;
        }
        for (cen, n) in centers.iter_mut().zip(counts) {
            cen.iter_mut().for_each(|v| *v /= n);
        }
        let mut correct = 0;
        for i in 0..test.len() {
            let f = feat(&test, i);
            let best = (0..10)
                .min_by(|&a, &b| {
                    let d = |k: usize| (0..3).map(|c| (f[c] - centers[k][c]).powi(2)).sum::<f64>();
                    d(a).partial_cmp(&d(b)).unwrap()
                })
                .unwrap();
            correct += (best == test.label(i) as usize) as usize;
        }
        let acc = correct as f64 / test.len() as f64;
        assert!(acc < 0.25, "colour-mean classifier accuracy {acc}");
    }
}
