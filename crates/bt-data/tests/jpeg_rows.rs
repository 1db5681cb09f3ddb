//! JPEG decodes stopped below the rows the crops need ([`LoadHint::rows`]): the same pixels
//! as a full decode where they are kept, and the same twin batches as a pipeline that always
//! decodes whole images. Fixtures: Pillow-written JPEGs in each chroma layout
//! (`scripts/fixtures/jpeg_layouts.py`).
use bt_config::{AugmentConfig, DataConfig, DatasetKind};
use bt_data::{decode, FolderOptions, Image, ImageFolder, ImageSource, LoadHint, TwinPipeline};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg").join(name)).unwrap()
}

/// Row `y` of each plane.
fn row(img: &Image, y: usize) -> Vec<&[u8]> {
    let (w, hw) = (img.width, img.width * img.height);
    (0..3).map(|c| &img.data[c * hw + y * w..c * hw + (y + 1) * w]).collect()
}

#[test]
fn a_decode_stopped_below_a_row_keeps_the_full_decodes_top_rows() {
    let files =
        [("s444.jpg", true), ("s422.jpg", true), ("s420.jpg", true), ("gray.jpg", true), ("prog420.jpg", false)];
    for (k, &(name, sequential)) in files.iter().enumerate() {
        let bytes = fixture(name);
        // Decoded before each stopped decode, so the decoder's reused buffer holds other
        // pixels below the stop: rows kept beyond what was decoded would not match.
        let other = fixture(files[(k + 1) % files.len()].0);
        let full = decode::decode(&bytes, LoadHint::FULL).unwrap();
        assert_eq!((full.width, full.height), (61, 83), "{name}");
        let mut shortest = full.height;
        for rows in 1..=full.height {
            decode::decode(&other, LoadHint::FULL).unwrap();
            let part = decode::decode(&bytes, LoadHint { max_reduction: 1, rows }).unwrap();
            assert_eq!(part.width, full.width, "{name} rows {rows}");
            assert!((rows..=full.height).contains(&part.height), "{name}: {} rows for {rows}", part.height);
            for y in 0..part.height {
                assert_eq!(row(&part, y), row(&full, y), "{name}: row {y} of a decode stopped for {rows} rows");
            }
            if rows <= full.height / 2 && sequential {
                // The point of the hint: the decoder stopped well before the bottom.
                assert!(part.height < full.height, "{name}: {rows} rows asked, the whole image decoded");
            }
            shortest = shortest.min(part.height);
        }
        // Progressive scans refine the whole image at once: nothing to stop early.
        assert_eq!(shortest < full.height, sequential, "{name}: shortest decode {shortest} rows");
    }
}

/// `inner` with every hint's row limit removed, counting the hints that had one below the
/// image's height.
struct Whole {
    inner: Arc<ImageFolder>,
    limited: AtomicUsize,
}

impl ImageSource for Whole {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn load(&self, index: usize, hint: LoadHint) -> bt_data::Result<Image> {
        if hint.rows < self.inner.dims(index).unwrap().1 {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.load(index, LoadHint { rows: usize::MAX, ..hint })
    }

    fn dims(&self, index: usize) -> Option<(usize, usize)> {
        self.inner.dims(index)
    }
}

#[test]
fn twin_batches_are_the_same_whether_decodes_stop_early_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..24u32 {
        // Noisy content (dense entropy-coded data), tall and wide files, some large enough
        // for a DCT-reduced decode of 64 px crops.
        let (w, h) = [(150, 230), (230, 150), (300, 280)][i as usize % 3];
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ i.wrapping_mul(97)) % 61;
            image::Rgb([(x * 255 / w) as u8 ^ n as u8, (y * 255 / h) as u8, ((x + y + i) % 256) as u8])
        });
        let mut f = std::fs::File::create(tmp.path().join(format!("{i:02}.jpg"))).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 90).encode_image(&img).unwrap();
    }
    let folder = Arc::new(ImageFolder::open(tmp.path(), &FolderOptions::default()).unwrap());
    let whole = Arc::new(Whole { inner: folder.clone(), limited: AtomicUsize::new(0) });
    let cfg = DataConfig {
        dataset: DatasetKind::ImageFolder,
        dir: tmp.path().into(),
        image_size: 64,
        batch_size: 8,
        workers: 2,
        ..Default::default()
    };
    let aug = AugmentConfig::imagenet_official();
    let a = TwinPipeline::new(folder, &cfg, &aug, 5).unwrap();
    let b = TwinPipeline::new(whole.clone(), &cfg, &aug, 5).unwrap();
    for e in 0..3 {
        for (x, y) in a.epoch(e, 0).zip(b.epoch(e, 0)) {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(x.indices, y.indices);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x.view_a), bits(&y.view_a), "epoch {e}");
            assert_eq!(bits(&x.view_b), bits(&y.view_b), "epoch {e}");
        }
    }
    // Most pairs' crops end above the bottom row, so the stopped decodes were exercised.
    assert!(whole.limited.load(Ordering::Relaxed) > 24, "{} limited hints", whole.limited.load(Ordering::Relaxed));
}
