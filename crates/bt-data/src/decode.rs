//! Image files to [`Image`]s: format sniffing, a cheap header scan, full or DCT-reduced
//! decoding, EXIF orientation and conversion of every colour type to 8-bit RGB.
//!
//! - **Formats.** JPEG, PNG and WebP, recognized by their magic bytes (not the extension).
//! - **Colour.** Grayscale is replicated, palettes are expanded, 16-bit samples are rounded to
//!   8 bits, alpha is dropped (as PIL's `convert("RGB")`: no compositing), CMYK/YCCK JPEGs are
//!   converted by the decoder.
//! - **Orientation.** The EXIF orientation tag is applied, so `(width, height)` and the pixels
//!   are those a viewer shows (PIL's `ImageOps.exif_transpose`; torchvision's `ImageFolder`
//!   does *not* do this, so rotated phone photos differ from torchvision there).
//! - **Reduced JPEG decoding** ([`decode`] with `max_reduction > 1`): `jpeg-decoder`'s
//!   `Decoder::scale` runs the inverse DCT at 1/2, 1/4 or 1/8 size (like libjpeg-turbo's
//!   scaled decoding behind PIL's `Image.draft`), skipping most of the IDCT and colour
//!   conversion work. Full-size JPEGs go to `zune-jpeg` directly (the decoder behind `image`,
//!   without its wrapper's repeated header parses and copies), everything else through the
//!   `image` crate; see the crate doc for the measurements behind this split.
//! - **Top rows only** ([`decode`] with [`LoadHint::rows`] below the height): a sequential
//!   full-size JPEG stops after the MCU row that completes the rows asked for, and the image
//!   comes back as the native image's top rows (the same bytes a full decode has there). The
//!   entropy decoding below them, which no DCT scaling skips, is never done.
//! - **Decompression bombs.** A PNG of a few hundred KB can say 60000 x 60000 (10.8 GB of RGB).
//!   Pillow's rule applies ([`DEFAULT_MAX_IMAGE_PIXELS`], `data.max_image_pixels`): above the
//!   limit an image is decoded but reported ([`PixelCheck::Large`]), above twice the limit it is
//!   refused, from the header, before any pixel buffer is allocated: the header scan refuses
//!   it, and every decode path checks the header's size again before it allocates.
use crate::error::{DataError, Result};
use crate::source::{Image, LoadHint};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat};
use std::io::Cursor;
use std::path::Path;

/// A file format this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG (JFIF/EXIF).
    Jpeg,
    /// PNG.
    Png,
    /// WebP (lossy or lossless).
    Webp,
}

impl Format {
    fn image_format(self) -> ImageFormat {
        match self {
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Png => ImageFormat::Png,
            Format::Webp => ImageFormat::WebP,
        }
    }
}

/// The format of a file from its first bytes.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(Format::Webp)
    } else {
        None
    }
}

/// Pillow's `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`: a quarter GiB of
/// 3-byte pixels): larger images are reported, images more than twice as large refused.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// What [`check_pixels`] says of an image size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelCheck {
    /// At most the limit (or no limit).
    Ok,
    /// Above the limit, at most twice it: decoded, but worth a warning (Pillow's
    /// `DecompressionBombWarning`).
    Large,
}

/// Pillow's decompression-bomb rule for a `width x height` image and a limit of `max_pixels`
/// (0 = no limit): [`PixelCheck::Large`] above it, an error (the message) above twice it.
///
/// # Errors
/// The reason, naming the size and the limit, when the image has more than `2 * max_pixels`
/// pixels.
pub fn check_pixels(width: u64, height: u64, max_pixels: u64) -> std::result::Result<PixelCheck, String> {
    let n = width.saturating_mul(height);
    if max_pixels == 0 || n <= max_pixels {
        Ok(PixelCheck::Ok)
    } else if n <= max_pixels.saturating_mul(2) {
        Ok(PixelCheck::Large)
    } else {
        Err(format!(
            "{width}x{height} = {n} pixels is more than twice data.max_image_pixels ({max_pixels}): \
             refused as a possible decompression bomb before decoding (raise data.max_image_pixels, or 0 for no limit)"
        ))
    }
}

/// `check_pixels` for the decode paths: `true` when the decoder may allocate for this size.
fn fits(width: usize, height: usize, max_pixels: u64) -> bool {
    check_pixels(width as u64, height as u64, max_pixels).is_ok()
}

/// What the header scan learns about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Displayed width (after the EXIF orientation).
    pub width: usize,
    /// Displayed height (after the EXIF orientation).
    pub height: usize,
    /// The format.
    pub format: Format,
}

fn bad(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadImage { path: path.into(), reason: reason.into() }
}

/// `true` when the file's end is where its format says it ends: a JPEG's EOI marker
/// (`FF D9`, trailing padding of up to 64 bytes tolerated), a PNG's `IEND` chunk, a WebP's
/// RIFF length. This catches truncated downloads without decoding any pixel.
fn complete(bytes: &[u8], format: Format) -> bool {
    match format {
        Format::Jpeg => {
            let tail = &bytes[bytes.len().saturating_sub(66)..];
            tail.windows(2).any(|w| w == [0xFF, 0xD9])
        }
        Format::Png => bytes.len() >= 12 && &bytes[bytes.len() - 8..bytes.len() - 4] == b"IEND",
        Format::Webp => {
            let riff = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
            riff + 8 <= bytes.len()
        }
    }
}

fn swaps_sides(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Reads `path` and checks it without decoding pixels: a supported format, a complete file,
/// a parsable header with non-zero dimensions, at most twice [`DEFAULT_MAX_IMAGE_PIXELS`]
/// pixels ([`scan_header_limited`] takes the limit).
///
/// # Errors
/// [`DataError::BadImage`] naming the file and what is wrong; [`DataError::Io`] when it
/// cannot be read at all.
pub fn scan_header(path: &Path) -> Result<Header> {
    scan_header_limited(path, DEFAULT_MAX_IMAGE_PIXELS)
}

/// [`scan_header`] with Pillow's rule at `max_pixels` (0 = no limit; see [`check_pixels`]).
///
/// # Errors
/// As [`scan_header`]; an image of more than `2 * max_pixels` pixels is a
/// [`DataError::BadImage`].
pub fn scan_header_limited(path: &Path, max_pixels: u64) -> Result<Header> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io { path: path.into(), source: e })?;
    let h = scan_bytes(&bytes).map_err(|reason| bad(path, reason))?;
    check_pixels(h.width as u64, h.height as u64, max_pixels).map_err(|reason| bad(path, reason))?;
    Ok(h)
}

fn scan_bytes(bytes: &[u8]) -> std::result::Result<Header, String> {
    let format = sniff(bytes).ok_or_else(|| {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("not a JPEG, PNG or WebP file (first bytes {})", head.join(" "))
    })?;
    if !complete(bytes, format) {
        return Err(format!("truncated {format:?} file ({} bytes, its end marker is missing)", bytes.len()));
    }
    let mut dec = image::ImageReader::with_format(Cursor::new(bytes), format.image_format())
        .into_decoder()
        .map_err(|e| format!("bad {format:?} header: {e}"))?;
    let (w, h) = dec.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("{format:?} header says {w}x{h}"));
    }
    let o = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let (w, h) = if swaps_sides(o) { (h, w) } else { (w, h) };
    Ok(Header { width: w as usize, height: h as usize, format })
}

/// Decodes `path` (see [`decode`]).
pub fn decode_file(path: &Path, hint: LoadHint) -> Result<Image> {
    decode_file_limited(path, hint, DEFAULT_MAX_IMAGE_PIXELS)
}

/// Decodes `path` (see [`decode_limited`]).
pub fn decode_file_limited(path: &Path, hint: LoadHint, max_pixels: u64) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io { path: path.into(), source: e })?;
    decode_limited(&bytes, hint, max_pixels).map_err(|reason| bad(path, reason))
}

/// [`decode_limited`] at [`DEFAULT_MAX_IMAGE_PIXELS`].
pub fn decode(bytes: &[u8], hint: LoadHint) -> std::result::Result<Image, String> {
    decode_limited(bytes, hint, DEFAULT_MAX_IMAGE_PIXELS)
}

/// Decodes an encoded image to 8-bit RGB CHW with its EXIF orientation applied, doing no more
/// work than `hint` asks for: a JPEG may come back reduced by `k <= hint.max_reduction` (`k`
/// in 2, 4, 8; sides `ceil(native / k)`), or at full scale as the native image's top
/// `height >= hint.rows` rows (see [`LoadHint`]); other formats always come back whole. The
/// error is the decoder's message, or [`check_pixels`]'s when the header's size is more than
/// twice `max_pixels` (0 = no limit): checked before anything of that size is allocated.
pub fn decode_limited(bytes: &[u8], hint: LoadHint, max_pixels: u64) -> std::result::Result<Image, String> {
    let format = sniff(bytes).ok_or("not a JPEG, PNG or WebP file")?;
    if format == Format::Jpeg {
        if hint.max_reduction >= 2 {
            if let Some(img) = decode_jpeg_reduced(bytes, hint.max_reduction, max_pixels) {
                return Ok(img);
            }
        }
        if let Some(img) = decode_jpeg_full(bytes, hint.rows, max_pixels) {
            return Ok(img);
        }
    }
    let mut dec = image::ImageReader::with_format(Cursor::new(bytes), format.image_format())
        .into_decoder()
        .map_err(|e| e.to_string())?;
    let (w, h) = dec.dimensions();
    check_pixels(w.into(), h.into(), max_pixels)?;
    let o = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).map_err(|e| e.to_string())?;
    img.apply_orientation(o);
    let rgb = img.into_rgb8();
    Image::from_hwc(rgb.width() as usize, rgb.height() as usize, rgb.as_raw()).map_err(|e| e.to_string())
}

thread_local! {
    /// A pool thread's interleaved decoder output, reused from image to image.
    static HWC: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Full-size JPEG decoding with `zune-jpeg` called directly: the decoder `image` wraps, with
/// the same options (lenient mode, RGB out), so the same pixels, but one header parse instead
/// of three, no copy of the file and a reused output buffer. `None` (the `image` path decides,
/// and words any error) for CMYK/YCCK or anything the decoder refuses.
///
/// With `rows` below the height, a sequential (baseline or extended) JPEG without an EXIF
/// rotation or flip stops early and comes back as its top `height >= rows` rows. zune-jpeg
/// has no "stop at row" option, so the stop is its cooperative cancellation: the check is
/// polled [`POLLS_PER_MCU_ROW`] times per MCU row (`8 * v_max` pixel rows) once asked to poll
/// at every row, and fires after the polls of the MCU rows that cover `rows`, plus
/// [`POLL_SLACK`] for the polls before the first row. Whatever the count, only the rows the
/// decoder reports as stable (`decoded_scanlines`: finished, upsampled and colour-converted,
/// the bytes a full decode writes there) are kept; if they are fewer than `rows`, the file is
/// decoded again in full. A miscount costs time, never pixels.
/// An image above the pixel limit is `None` (the `image` path words the refusal).
fn decode_jpeg_full(bytes: &[u8], rows: usize, max_pixels: u64) -> Option<Image> {
    decode_jpeg_top(bytes, rows, POLLS_PER_MCU_ROW, POLL_SLACK, max_pixels)
}

/// [`decode_jpeg_full`] with the poll count as parameters (a test makes it miscount).
fn decode_jpeg_top(
    bytes: &[u8],
    rows: usize,
    polls_per_mcu_row: usize,
    poll_slack: usize,
    max_pixels: u64,
) -> Option<Image> {
    use zune_core::colorspace::ColorSpace;
    use zune_jpeg::SampleRatios;
    let opts = zune_core::options::DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), opts);
    d.decode_headers().ok()?;
    let out = match d.input_colorspace()? {
        ColorSpace::YCbCr | ColorSpace::RGB => ColorSpace::RGB,
        ColorSpace::Luma => ColorSpace::Luma,
        _ => return None,
    };
    d.set_options(opts.jpeg_set_out_colorspace(out));
    let (w, h) = d.dimensions()?;
    if !fits(w, h, max_pixels) {
        return None;
    }
    let o = d.exif().and_then(|e| Orientation::from_exif_chunk(e)).unwrap_or(Orientation::NoTransforms);
    let stop = rows < h && o == Orientation::NoTransforms && {
        let info = d.info()?;
        let sequential = info.sof.is_sequential_dct();
        let v_max = match info.sample_ratio {
            SampleRatios::HV | SampleRatios::V => 2,
            SampleRatios::Generic(_, v) => v.max(1),
            SampleRatios::H | SampleRatios::None => 1,
        };
        if sequential {
            let limit = polls_per_mcu_row * rows.div_ceil(8 * v_max) + poll_slack;
            let polls = std::sync::atomic::AtomicUsize::new(0);
            d.set_cancel(move || polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= limit);
            d.set_cancel_interval(1);
        }
        sequential
    };
    let channels = if out == ColorSpace::Luma { 1 } else { 3 };
    HWC.with_borrow_mut(|buf| {
        buf.resize(d.output_buffer_size()?, 0);
        let height = match d.decode_into(buf) {
            Ok(()) => h,
            Err(zune_jpeg::errors::DecodeErrors::Cancelled) if stop => {
                let stable = d.decoded_scanlines()?.min(h);
                if stable < rows {
                    return None;
                }
                stable
            }
            Err(_) => return None,
        };
        let px = &buf[..channels * w * height];
        if out == ColorSpace::Luma {
            let mut data = Vec::with_capacity(3 * w * height);
            for _ in 0..3 {
                data.extend_from_slice(px);
            }
            let img = Image::new(w, height, data).ok()?;
            return if o == Orientation::NoTransforms { Some(img) } else { oriented(&img.to_hwc(), w, h, o) };
        }
        if o == Orientation::NoTransforms {
            Image::from_hwc(w, height, px).ok()
        } else {
            oriented(px, w, h, o)
        }
    })
    .or_else(|| if stop { decode_jpeg_top(bytes, usize::MAX, 0, 0, max_pixels) } else { None })
}

/// Calls of the cancellation check per MCU row of a sequential scan at a poll interval of
/// one MCU (zune-jpeg 0.5.16: one at the top of the row, one before decoding it).
const POLLS_PER_MCU_ROW: usize = 2;
/// Calls before the first MCU row (marker checks when the scan starts).
const POLL_SLACK: usize = 2;

/// Interleaved RGB with an EXIF orientation applied, as CHW.
fn oriented(hwc: &[u8], w: usize, h: usize, o: Orientation) -> Option<Image> {
    let mut img = DynamicImage::ImageRgb8(image::RgbImage::from_raw(w as u32, h as u32, hwc.to_vec())?);
    img.apply_orientation(o);
    let rgb = img.into_rgb8();
    Image::from_hwc(rgb.width() as usize, rgb.height() as usize, rgb.as_raw()).ok()
}

/// The DCT-reduced path; `None` (fall back to the full decoder) for CMYK, 16-bit or any
/// error, so a reduced decode never fails where the full one would succeed; `None` also above
/// the pixel limit (the decoder's buffers follow the native size).
fn decode_jpeg_reduced(bytes: &[u8], max_reduction: u32, max_pixels: u64) -> Option<Image> {
    let k = [8u32, 4, 2].into_iter().find(|&k| k <= max_reduction)?;
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().ok()?;
    let info = d.info()?;
    if !matches!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8) {
        return None;
    }
    let (w, h) = (info.width as u32, info.height as u32);
    if !fits(w as usize, h as usize, max_pixels) {
        return None;
    }
    d.scale(w.div_ceil(k) as u16, h.div_ceil(k) as u16).ok()?;
    let px = d.decode().ok()?;
    let info = d.info()?;
    let (w, h) = (info.width as u32, info.height as u32);
    let rgb: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => px.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => px,
    };
    let o = d.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
    if o == Orientation::NoTransforms {
        return Image::from_hwc(w as usize, h as usize, &rgb).ok();
    }
    oriented(&rgb, w as usize, h as usize, o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_before_the_rows_asked_for_falls_back_to_the_whole_image() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg/s420.jpg");
        let bytes = std::fs::read(path).unwrap();
        let full = decode_jpeg_full(&bytes, usize::MAX, 0).unwrap();
        // No polls allowed: the decoder is cancelled before its first row, so nothing is
        // stable and the file is decoded again in full.
        assert_eq!(decode_jpeg_top(&bytes, 40, 0, 0, 0).unwrap(), full);
        // The real counts stop below the bottom with the same top rows.
        let top = decode_jpeg_top(&bytes, 40, POLLS_PER_MCU_ROW, POLL_SLACK, 0).unwrap();
        assert!((40..full.height).contains(&top.height), "{} rows", top.height);
        let plane = |img: &Image, c: usize| img.data[c * img.width * img.height..][..img.width * top.height].to_vec();
        for c in 0..3 {
            assert_eq!(plane(&top, c), plane(&full, c));
        }
    }
}
