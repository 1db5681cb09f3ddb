//! Test helpers shared by the whole workspace (a dev-dependency of every crate with numeric
//! or environment-dependent tests; pure Rust).
//!
//! - **One comparison.** [`max_abs_diff`] / [`assert_close`]: the largest `|a - b|` over two
//!   slices, an error (never a silent pass) when the lengths differ or when either side holds a
//!   NaN or an infinity. A helper written `if d > m { m = d }` or `fold(0.0, f64::max)` skips
//!   NaN (every comparison with NaN is false, and `f64::max` returns the other operand), so an
//!   op returning NaN everywhere passes it; `zip` hides a length mismatch. Use this instead.
//! - **Skips that are seen.** [`skip`]: a test that cannot run here (no `BT_PYTHON`, a CUDA
//!   machine for a CPU-only check) calls it instead of returning early. Under `cargo xtask test`
//!   (and so CI), which sets [`REQUIRE_ALL`]` = 1`, it fails the test. Elsewhere it fails too
//!   unless [`ALLOW_SKIP`]` = 1` is set, in which case it prints the reason and returns: a skip is
//!   never a silent pass, only one the person running the tests asked for.
//! - **Hostile files.** [`write_png_bomb`]: a valid PNG of a few hundred KB whose header says
//!   60000 x 60000 pixels (a decompression bomb), written row by row in bounded memory.
#![deny(missing_docs)]
use std::io::Write;

/// Environment variable `cargo xtask test` sets: every test must run (a skip fails).
pub const REQUIRE_ALL: &str = "BT_REQUIRE_ALL";
/// Environment variable that lets a test skip (print the reason, pass) outside `xtask test`.
pub const ALLOW_SKIP: &str = "BT_ALLOW_SKIP";

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Where the largest difference of two slices is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxDiff {
    /// The largest `|a[i] - b[i]|` (0 for two empty slices).
    pub diff: f64,
    /// Its index.
    pub index: usize,
}

/// The largest `|a[i] - b[i]|`, or an error naming `what` when the lengths differ or an element
/// of either side is NaN or infinite (the first such index is named).
///
/// # Errors
/// A message for the failed test.
pub fn max_abs_diff<A, B>(what: &str, a: &[A], b: &[B]) -> Result<MaxDiff, String>
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    if a.len() != b.len() {
        return Err(format!("{what}: lengths differ ({} vs {})", a.len(), b.len()));
    }
    let mut m = MaxDiff { diff: 0.0, index: 0 };
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (x, y): (f64, f64) = (x.into(), y.into());
        if !x.is_finite() || !y.is_finite() {
            return Err(format!("{what}: element {i} is not finite ({x} vs {y})"));
        }
        let d = (x - y).abs();
        if d > m.diff {
            m = MaxDiff { diff: d, index: i };
        }
    }
    Ok(m)
}

/// Panics (naming `what`, the index and both values) unless `a` and `b` have the same length,
/// are finite, and differ by at most `tol` everywhere. Returns the largest difference.
///
/// # Panics
/// On a length mismatch, a NaN or infinity, or a difference above `tol`.
#[track_caller]
pub fn assert_close<A, B>(what: &str, a: &[A], b: &[B], tol: f64) -> f64
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    let m = max_abs_diff(what, a, b).unwrap_or_else(|e| panic!("{e}"));
    if m.diff > tol {
        let (x, y): (f64, f64) = (a[m.index].into(), b[m.index].into());
        panic!("{what}: max |a - b| = {:e} at {} ({x} vs {y}) exceeds {tol:e}", m.diff, m.index);
    }
    m.diff
}

/// A test that cannot run here: fails under `cargo xtask test` ([`REQUIRE_ALL`]) and unless
/// [`ALLOW_SKIP`] is set; with it, prints `SKIPPED: <reason>` and returns, so the caller
/// returns too.
///
/// # Panics
/// Unless skips are allowed (see the crate doc).
#[track_caller]
pub fn skip(reason: &str) {
    if flag(REQUIRE_ALL) {
        panic!("this test must run under `cargo xtask test` ({REQUIRE_ALL}=1) but cannot: {reason}");
    }
    if !flag(ALLOW_SKIP) {
        panic!("cannot run here: {reason}. Set {ALLOW_SKIP}=1 to skip it instead (never under `cargo xtask test`)");
    }
    println!("SKIPPED: {reason}");
    eprintln!("SKIPPED: {reason}");
}

/// Writes a valid `width x height` 1-bit grayscale PNG of black pixels to `path`: every row
/// is deflated as it is produced, so memory stays bounded (one row) whatever the size, and the
/// file is about `width * height / 8 / 1000` bytes (deflate's best ratio on zeros). 60000 x
/// 60000 gives ~440 KB that decode to 3.6 GB of 8-bit gray, 10.8 GB of RGB.
///
/// # Errors
/// Writing the file.
pub fn write_png_bomb(path: &std::path::Path, width: u32, height: u32) -> std::io::Result<()> {
    fn chunk(out: &mut impl Write, kind: &[u8; 4], data: &[u8]) -> std::io::Result<()> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.write_all(&(data.len() as u32).to_be_bytes())?;
        out.write_all(kind)?;
        out.write_all(data)?;
        out.write_all(&crc.finalize().to_be_bytes())
    }
    let mut idat = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Filter byte 0 (none), then width bits of zeros.
    let row = vec![0u8; 1 + (width as usize).div_ceil(8)];
    for _ in 0..height {
        idat.write_all(&row)?;
    }
    let idat = idat.finish()?;
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 1, colour type 0 (gray), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x89PNG\r\n\x1a\n")?;
    chunk(&mut f, b"IHDR", &ihdr)?;
    chunk(&mut f, b"IDAT", &idat)?;
    chunk(&mut f, b"IEND", &[])?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_inf_and_length_mismatches_are_errors() {
        assert!(max_abs_diff("x", &[1.0f32, f32::NAN], &[1.0f32, 2.0]).unwrap_err().contains("element 1"));
        assert!(max_abs_diff("x", &[1.0f64], &[f64::INFINITY]).is_err());
        assert!(max_abs_diff("x", &[1.0f32, 2.0], &[1.0f32]).unwrap_err().contains("lengths differ"));
        let m = max_abs_diff("x", &[1.0f32, 2.0, 3.0], &[1.0f64, 2.5, 3.1]).unwrap();
        assert_eq!((m.diff, m.index), (0.5, 1));
        assert_eq!(assert_close("x", &[0.0f32; 0], &[0.0f32; 0], 0.0), 0.0);
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn a_difference_above_the_tolerance_panics() {
        assert_close("x", &[1.0f32], &[1.5f32], 0.1);
    }

    #[test]
    #[should_panic(expected = "not finite")]
    fn nan_everywhere_panics() {
        assert_close("x", &[f32::NAN; 4], &[f32::NAN; 4], 1.0);
    }
}
