//! STL-10 on files this test writes in the official layout: torchvision's `STL10` reads
//! `np.fromfile(X).reshape(-1, 3, 96, 96)` and transposes the last two axes, so the byte at
//! `c * 9216 + i * 96 + j` is channel `c`, row `j`, column `i` (column-major planes); labels
//! are `1..=10` on disk.
use bt_config::Stl10Split;
use bt_data::{load_stl10, DataError, ImageSource};
use std::path::Path;

/// Pixel value of image `n`, channel `c`, row `y`, column `x`: distinct enough that a
/// transposed read or a swapped channel changes it.
fn px(n: usize, c: usize, y: usize, x: usize) -> u8 {
    (n * 31 + c * 101 + y * 7 + x * 3 + (x * y) % 13) as u8
}

fn write_x(path: &Path, n: usize, offset: usize) {
    let mut out = Vec::with_capacity(n * 27648);
    for k in 0..n {
        for c in 0..3 {
            for i in 0..96 {
                for j in 0..96 {
                    out.push(px(k + offset, c, j, i)); // byte (c, i, j) = row j, column i
                }
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

fn write_all(dir: &Path) {
    write_x(&dir.join("train_X.bin"), 3, 0);
    std::fs::write(dir.join("train_y.bin"), [1u8, 10, 4]).unwrap();
    write_x(&dir.join("unlabeled_X.bin"), 2, 100);
    write_x(&dir.join("test_X.bin"), 2, 200);
    std::fs::write(dir.join("test_y.bin"), [2u8, 3]).unwrap();
}

#[test]
fn pixels_and_labels_follow_torchvisions_layout() {
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path());
    let (train, test, names) = load_stl10(tmp.path(), Stl10Split::TrainUnlabeled).unwrap();
    assert_eq!((train.len(), test.len(), names.len()), (5, 2, 10));
    assert_eq!((0..5).map(|i| train.label(i)).collect::<Vec<_>>(), [Some(0), Some(9), Some(3), None, None]);
    assert_eq!(test.label(1), Some(2));
    // (source, index, the image id the writer used): train 1, unlabeled 0 (train+unlabeled
    // index 3), test 0.
    for (src, n, id) in [(&train, 1, 1), (&train, 3, 100), (&test, 0, 200)] {
        let img = src.image(n);
        for (c, y, x) in [(0, 0, 1), (1, 5, 90), (2, 95, 3), (0, 17, 64)] {
            assert_eq!(img[c * 9216 + y * 96 + x], px(id, c, y, x), "image {id} c{c} y{y} x{x}");
        }
    }
    let (u, _, _) = load_stl10(tmp.path(), Stl10Split::Unlabeled).unwrap();
    assert_eq!((u.len(), u.label(0), u.dims(0)), (2, None, Some((96, 96))));
}

#[test]
fn bad_sizes_and_labels_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path());
    std::fs::write(tmp.path().join("train_y.bin"), [1u8, 11, 4]).unwrap();
    match load_stl10(tmp.path(), Stl10Split::Train) {
        Err(DataError::BadLabel { path, record: 1, label: 11, .. }) => assert!(path.ends_with("train_y.bin")),
        other => panic!("{other:?}"),
    }
    std::fs::write(tmp.path().join("train_y.bin"), [1u8, 2]).unwrap();
    let e = load_stl10(tmp.path(), Stl10Split::Train).unwrap_err().to_string();
    assert!(e.contains("train_y.bin") && e.contains("3 bytes"), "{e}");
    std::fs::write(tmp.path().join("test_X.bin"), vec![0u8; 27648 + 5]).unwrap();
    std::fs::write(tmp.path().join("train_y.bin"), [1u8, 2, 3]).unwrap();
    let e = load_stl10(tmp.path(), Stl10Split::Train).unwrap_err().to_string();
    assert!(e.contains("test_X.bin") && e.contains("27648"), "{e}");
    std::fs::remove_file(tmp.path().join("unlabeled_X.bin")).unwrap();
    let e = load_stl10(tmp.path(), Stl10Split::Unlabeled).unwrap_err().to_string();
    assert!(e.contains("unlabeled_X.bin"), "{e}");
}

#[test]
fn a_file_claiming_a_terabyte_of_images_is_an_error_not_an_abort() {
    // A sparse unlabeled_X.bin of 40 million 96x96x3 images (1.1 TB): read fallibly, named.
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path());
    let huge = tmp.path().join("unlabeled_X.bin");
    std::fs::File::create(&huge).unwrap().set_len(40_000_000 * 27_648).unwrap();
    let e = load_stl10(tmp.path(), Stl10Split::TrainUnlabeled).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unlabeled_X.bin"), "{msg}");
}
