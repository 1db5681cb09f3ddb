//! Image folders: the must-show equivalence with the CIFAR binary reader, colour-type and
//! orientation handling, and one test per bad-input case.
use bt_config::{AugmentConfig, DataConfig, DatasetKind};
use bt_data::{
    synthetic, write_cifar_binary, Cifar10, DataError, FolderOptions, ImageFolder, ImageSource, LoadHint, SizeCheck,
    TwinPipeline,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn rgb_png(path: &Path, w: u32, h: u32, seed: u32) {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + seed) as u8, (y * 5) as u8, ((x + y) * 3) as u8]));
    img.save(path).unwrap();
}

fn folder_cfg(dir: &Path) -> DataConfig {
    DataConfig {
        dataset: DatasetKind::ImageFolder,
        dir: dir.into(),
        batch_size: 16,
        workers: 2,
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
        ..Default::default()
    }
}

#[test]
fn png_folder_gives_the_batches_of_the_cifar_binary_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let train = synthetic::generate(48, 3, synthetic::Split::Train);
    let test = synthetic::generate(10, 3, synthetic::Split::Test);
    let bin = tmp.path().join("bin");
    write_cifar_binary(&bin, &train, &test, &synthetic::CLASS_NAMES).unwrap();
    let cifar = Cifar10::load_with(&bin, SizeCheck::Records).unwrap();
    // The same records as PNG files whose sorted names follow the record order.
    let pngs = tmp.path().join("png");
    std::fs::create_dir_all(&pngs).unwrap();
    for i in 0..cifar.train.len() {
        let img = bt_data::Image::new(32, 32, cifar.train.image(i).to_vec()).unwrap();
        image::RgbImage::from_raw(32, 32, img.to_hwc()).unwrap().save(pngs.join(format!("{i:05}.png"))).unwrap();
    }
    let folder = Arc::new(ImageFolder::open(&pngs, &FolderOptions::default()).unwrap());
    assert_eq!(folder.len(), 48);
    for aug in [AugmentConfig::keras_seed(), AugmentConfig::cifar_asymmetric()] {
        let bin_cfg = DataConfig { batch_size: 16, workers: 2, ..Default::default() };
        let a = TwinPipeline::new(Arc::new(cifar.train.clone()), &bin_cfg, &aug, 77).unwrap();
        // Normalization by mean 0 / std 1 is the identity in f32.
        let b = TwinPipeline::new(folder.clone(), &folder_cfg(&pngs), &aug, 77).unwrap();
        for e in 0..2 {
            for (x, y) in a.epoch(e, 0).zip(b.epoch(e, 0)) {
                let (x, y) = (x.unwrap(), y.unwrap());
                assert_eq!(x.shape(), y.shape());
                assert_eq!(x.indices, y.indices);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&x.view_a), bits(&y.view_a));
                assert_eq!(bits(&x.view_b), bits(&y.view_b));
            }
        }
    }
}

#[test]
fn imagefolder_layout_labels_and_any_size_views() {
    let tmp = tempfile::tempdir().unwrap();
    for (c, n) in [("cat", 3), ("dog", 2)] {
        std::fs::create_dir_all(tmp.path().join(c).join("sub")).unwrap();
        for i in 0..n {
            rgb_png(&tmp.path().join(c).join(format!("{i}.png")), 60 + i, 45, i);
        }
    }
    rgb_png(&tmp.path().join("dog/sub/z.png"), 50, 70, 9);
    let f =
        Arc::new(ImageFolder::open(tmp.path(), &FolderOptions { require_labels: true, ..Default::default() }).unwrap());
    assert_eq!(f.class_names().unwrap(), ["cat", "dog"]);
    assert_eq!((0..f.len()).map(|i| f.label(i).unwrap()).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 1]);
    // sorted(os.walk): the files of `dog` before those of `dog/sub`.
    assert!(f.describe(5).ends_with("dog/sub/z.png"), "{}", f.describe(5));
    assert_eq!(f.dims(5), Some((50, 70)));
    let cfg = DataConfig { image_size: 24, batch_size: 4, drop_remainder: false, ..folder_cfg(tmp.path()) };
    let p = TwinPipeline::new(f.clone(), &cfg, &AugmentConfig::imagenet_official(), 1).unwrap();
    let batches: Vec<_> = p.epoch(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches[0].shape(), [4, 3, 24, 24]);
    assert_eq!(batches[1].shape(), [2, 3, 24, 24]);
    let ev: Vec<_> = bt_data::eval::eval_batches(f, &cfg, 4, false).map(|b| b.unwrap()).collect();
    assert_eq!(ev[0].shape(), [4, 3, 24, 24]);
    assert_eq!(ev[1].labels, [1, 1]);
}

#[test]
fn colour_types_become_rgb_and_exif_orientation_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    image::GrayImage::from_fn(8, 4, |x, _| image::Luma([x as u8 * 30])).save(d.join("gray.png")).unwrap();
    image::RgbaImage::from_pixel(8, 4, image::Rgba([10, 20, 30, 0])).save(d.join("alpha.png")).unwrap();
    image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(8, 4, image::Rgb([65535, 257 * 128, 0]))
        .save(d.join("deep.png"))
        .unwrap();
    let rgb = image::RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 30, y as u8 * 60, 5]));
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(rgb.as_raw(), 8, 4, image::ExtendedColorType::Rgb8)
        .unwrap();
    std::fs::write(d.join("lossless.webp"), webp).unwrap();
    // A JPEG with an EXIF APP1 segment saying "rotate 90 CW" (orientation 6).
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 95).encode_image(&rgb).unwrap();
    let mut exif = b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0".to_vec();
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    app1.append(&mut exif);
    jpg.splice(2..2, app1);
    std::fs::write(d.join("rotated.jpg"), jpg).unwrap();
    let f = ImageFolder::open(d, &FolderOptions::default()).unwrap();
    let by_name = |n: &str| (0..f.len()).find(|&i| f.describe(i).ends_with(n)).unwrap();
    let gray = f.load(by_name("gray.png"), LoadHint::FULL).unwrap();
    assert_eq!((gray.data[3], gray.data[32 + 3], gray.data[64 + 3]), (90, 90, 90));
    let alpha = f.load(by_name("alpha.png"), LoadHint::FULL).unwrap();
    assert_eq!((alpha.data[0], alpha.data[32], alpha.data[64]), (10, 20, 30));
    let deep = f.load(by_name("deep.png"), LoadHint::FULL).unwrap();
    assert_eq!((deep.data[0], deep.data[32], deep.data[64]), (255, 128, 0));
    let w = f.load(by_name("lossless.webp"), LoadHint::FULL).unwrap();
    assert_eq!(w.to_hwc(), rgb.as_raw().to_vec());
    let r = by_name("rotated.jpg");
    assert_eq!(f.dims(r), Some((4, 8)));
    let img = f.load(r, LoadHint::FULL).unwrap();
    assert_eq!((img.width, img.height), (4, 8));
    // Rotating 90 CW puts the original bottom-left pixel (x 0, y 3: G = 180) at the top left.
    assert!(img.data[32].abs_diff(180) <= 6, "{}", img.data[32]);
}

fn expect_bad_image(dir: &Path, name: &str) {
    match ImageFolder::open(dir, &FolderOptions::default()) {
        Err(DataError::BadImage { path, reason }) => {
            assert!(path.ends_with(name), "{} {reason}", path.display())
        }
        other => panic!("expected BadImage for {name}, got {other:?}"),
    }
    let f = ImageFolder::open(dir, &FolderOptions { skip_bad: true, ..Default::default() }).unwrap();
    assert_eq!((f.len(), f.bad_images()), (1, 1));
}

fn one_good(dir: &Path) -> PathBuf {
    rgb_png(&dir.join("good.png"), 40, 40, 0);
    dir.join("good.png")
}

#[test]
fn a_non_image_file_is_named_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    one_good(tmp.path());
    std::fs::write(tmp.path().join("notes.jpg"), b"these are not pixels").unwrap();
    expect_bad_image(tmp.path(), "notes.jpg");
}

#[test]
fn a_truncated_png_is_named_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let good = one_good(tmp.path());
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(tmp.path().join("cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    expect_bad_image(tmp.path(), "cut.png");
}

#[test]
fn a_truncated_jpeg_is_named_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    one_good(tmp.path());
    let rgb = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpg).encode_image(&rgb).unwrap();
    std::fs::write(tmp.path().join("cut.jpg"), &jpg[..jpg.len() * 2 / 3]).unwrap();
    expect_bad_image(tmp.path(), "cut.jpg");
}

#[test]
fn a_file_broken_only_at_decode_time_fails_the_batch_or_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..4 {
        rgb_png(&tmp.path().join(format!("{i}.png")), 40, 40, i);
    }
    // Valid signature, header and IEND, garbage in the compressed data: only decoding fails.
    let mut bytes = std::fs::read(tmp.path().join("2.png")).unwrap();
    let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut bytes[idat + 4..idat + 40] {
        *b ^= 0x5A;
    }
    std::fs::write(tmp.path().join("2.png"), bytes).unwrap();
    let cfg = DataConfig { image_size: 16, batch_size: 4, ..folder_cfg(tmp.path()) };
    let f = Arc::new(ImageFolder::open(tmp.path(), &FolderOptions::default()).unwrap());
    let p = TwinPipeline::new(f, &cfg, &AugmentConfig::imagenet_official(), 3).unwrap();
    match p.epoch(0, 0).next().unwrap() {
        Err(DataError::BadImage { path, .. }) => assert!(path.ends_with("2.png")),
        other => panic!("expected BadImage, got {other:?}"),
    }
    let f = Arc::new(ImageFolder::open(tmp.path(), &FolderOptions { skip_bad: true, ..Default::default() }).unwrap());
    let p = TwinPipeline::new(f, &cfg, &AugmentConfig::imagenet_official(), 3).unwrap();
    for e in 0..2 {
        for b in p.epoch(e, 0) {
            b.unwrap();
        }
    }
    // Counted once, however often it is drawn.
    assert_eq!(p.bad_images(), 1);
}

#[test]
fn an_empty_folder_names_the_key_and_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("readme.txt"), "no images").unwrap();
    let e = ImageFolder::open(tmp.path(), &FolderOptions::default()).unwrap_err().to_string();
    assert!(e.contains("data.dir") && e.contains(&tmp.path().display().to_string()) && e.contains("no images"), "{e}");
}

#[test]
fn a_labeled_evaluation_folder_with_one_class_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("only")).unwrap();
    rgb_png(&tmp.path().join("only/a.png"), 40, 40, 0);
    let o = FolderOptions { key: "data.test_dir".into(), require_labels: true, ..Default::default() };
    let e = ImageFolder::open(tmp.path(), &o).unwrap_err().to_string();
    assert!(e.contains("data.test_dir") && e.contains("at least 2 class") && e.contains("only"), "{e}");
}

#[test]
fn image_size_larger_than_every_image_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    rgb_png(&tmp.path().join("a.png"), 40, 30, 0);
    let e =
        ImageFolder::open(tmp.path(), &FolderOptions { image_size: 64, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("data.image_size") && e.contains("64") && e.contains("30 px"), "{e}");
}

#[test]
fn a_file_list_is_relative_to_its_own_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("imgs")).unwrap();
    rgb_png(&tmp.path().join("imgs/b.png"), 40, 40, 0);
    rgb_png(&tmp.path().join("imgs/a.png"), 40, 40, 1);
    std::fs::write(tmp.path().join("list.txt"), "# two images\nimgs/b.png\n\nimgs/a.png\n").unwrap();
    let o = FolderOptions { file_list: Some(tmp.path().join("list.txt")), ..Default::default() };
    let f = ImageFolder::open("unused", &o).unwrap();
    assert_eq!(f.len(), 2);
    assert!(f.describe(0).ends_with("imgs/b.png"));
}

#[test]
fn decoded_cache_returns_the_same_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    rgb_png(&tmp.path().join("a.png"), 50, 40, 3);
    let plain = ImageFolder::open(tmp.path(), &FolderOptions::default()).unwrap();
    let cached = ImageFolder::open(tmp.path(), &FolderOptions { cache: true, ..Default::default() }).unwrap();
    let want = plain.load(0, LoadHint::FULL).unwrap();
    assert_eq!(cached.load(0, LoadHint::FULL).unwrap(), want);
    assert_eq!(cached.load(0, LoadHint::FULL).unwrap(), want);
}

#[test]
fn detect_kind_tells_cifar_stl10_and_image_folders_apart() {
    use bt_config::DatasetKind;
    let d = tempfile::tempdir().unwrap();
    let (cifar, stl, imgs, missing) = (d.path().join("c"), d.path().join("s"), d.path().join("i"), d.path().join("m"));
    for p in [&cifar, &stl, &imgs] {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(cifar.join("data_batch_1.bin"), b"x").unwrap();
    std::fs::write(stl.join("unlabeled_X.bin"), b"x").unwrap();
    std::fs::create_dir_all(imgs.join("cats")).unwrap();
    std::fs::write(imgs.join("cats/a.jpg"), b"x").unwrap();
    assert_eq!(bt_data::detect_kind(&cifar), DatasetKind::Cifar10);
    assert_eq!(bt_data::detect_kind(&stl), DatasetKind::Stl10);
    assert_eq!(bt_data::detect_kind(&imgs), DatasetKind::ImageFolder);
    // Missing: CIFAR-10, whose reader's error says what it expected.
    assert_eq!(bt_data::detect_kind(&missing), DatasetKind::Cifar10);
}

/// `n` small PNGs `img000.png`... in `dir`.
fn pngs(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        rgb_png(&dir.join(format!("img{i:03}.png")), 24 + (i % 5) as u32, 20, i as u32);
    }
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header_or_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    pngs(&dir, 20);
    let bomb = dir.join("bomb.png");
    // A valid PNG of a few hundred KB that decodes to 10.8 GB of RGB.
    bt_testkit::write_png_bomb(&bomb, 60_000, 60_000).unwrap();
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 1 << 20, "the bomb is small on disk: {size} bytes");

    // Strict: an error naming the file, from the header scan (nothing decoded: this returns at
    // once; a decode would need gigabytes).
    let e = ImageFolder::open(&dir, &FolderOptions::default()).unwrap_err();
    assert!(matches!(&e, DataError::BadImage { path, .. } if path == &bomb), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("60000x60000") && msg.contains("data.max_image_pixels") && msg.contains("bomb"), "{msg}");

    // Skipped and counted, named in the warnings; every other image loads.
    let f = ImageFolder::open(&dir, &FolderOptions { skip_bad: true, ..Default::default() }).unwrap();
    assert_eq!((f.len(), f.bad_images()), (20, 1));
    assert!(f.warnings().iter().any(|w| w.contains("bomb.png") && w.contains("1 unreadable")), "{:?}", f.warnings());
    for i in 0..f.len() {
        f.load(i, LoadHint::FULL).unwrap();
    }
    // 0 lifts the limit: the header scan then accepts it (and does not decode it).
    let f = ImageFolder::open(&dir, &FolderOptions { max_image_pixels: 0, ..Default::default() }).unwrap();
    assert_eq!(f.len(), 21);

    // Every decode path checks the header's size before allocating, even called directly.
    let bytes = std::fs::read(&bomb).unwrap();
    let e = bt_data::decode::decode(&bytes, LoadHint::FULL).unwrap_err();
    assert!(e.contains("decompression bomb"), "{e}");
}

#[test]
fn pillows_rule_warns_above_the_pixel_limit_and_refuses_above_twice_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    pngs(&dir, 3); // 24..26 x 20: at most 520 pixels
    rgb_png(&dir.join("large.png"), 40, 30, 1); // 1200 pixels: above 1000, at most 2000
    rgb_png(&dir.join("huge.png"), 50, 41, 2); // 2050 pixels: above 2 x 1000
    let opts = FolderOptions { max_image_pixels: 1000, skip_bad: true, ..Default::default() };
    let f = ImageFolder::open(&dir, &opts).unwrap();
    assert_eq!((f.len(), f.bad_images()), (4, 1));
    let w = f.warnings().join("\n");
    assert!(w.contains("huge.png") && w.contains("50x41"), "{w}");
    assert!(w.contains("1 image(s) above data.max_image_pixels (1000") && w.contains("large.png (40x30)"), "{w}");
    // The large image is decoded (a warning, not a refusal).
    let i = f.files().iter().position(|p| p.ends_with("large.png")).unwrap();
    assert_eq!(f.load(i, LoadHint::FULL).unwrap().width, 40);
    let e = ImageFolder::open(&dir, &FolderOptions { max_image_pixels: 1000, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("huge.png"), "{e}");
}

#[test]
fn a_symlink_loop_lists_each_image_once_and_empty_classes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    for c in 0..10 {
        pngs(&root.join(format!("class{c}")), 20);
    }
    // A loop back to the root (was read as 8,200 images), a second link to a class folder, a
    // link to a folder outside the tree (followed: datasets are linked together), and an
    // empty class.
    std::os::unix::fs::symlink("..", root.join("class8/loop")).unwrap();
    std::os::unix::fs::symlink("../class3", root.join("class5/again")).unwrap();
    let outside = tmp.path().join("more");
    pngs(&outside, 4);
    std::os::unix::fs::symlink(&outside, root.join("class9/more")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();

    let f = ImageFolder::open(&root, &FolderOptions::default()).unwrap();
    assert_eq!(f.len(), 10 * 20 + 4, "each image once");
    let mut real: Vec<PathBuf> = f.files().iter().map(|p| std::fs::canonicalize(p).unwrap()).collect();
    real.sort();
    real.dedup();
    assert_eq!(real.len(), f.len(), "no file listed twice");
    assert_eq!(f.num_classes(), Some(11));
    // The outside folder's images are class 9's; class 3's are not listed again under class 5.
    let labels: Vec<u32> = (0..f.len()).map(|i| f.label(i).unwrap()).collect();
    assert_eq!(labels.iter().filter(|&&l| l == 9).count(), 24);
    assert_eq!(labels.iter().filter(|&&l| l == 5).count(), 20);
    assert_eq!(f.links_followed(), 3);
    let w = f.warnings().join("\n");
    assert!(w.contains("2 folder link(s)") && w.contains("class8/loop") && w.contains("class5/again"), "{w}");
    assert!(w.contains("class folder") && w.contains("empty") && w.contains("no images"), "{w}");

    // Unlabeled: the same loop at the top level.
    let flat = tmp.path().join("flat");
    pngs(&flat, 5);
    std::os::unix::fs::symlink(".", flat.join("self")).unwrap();
    let f = ImageFolder::open(&flat, &FolderOptions::default()).unwrap();
    assert_eq!((f.len(), f.links_followed()), (5, 1));
}
