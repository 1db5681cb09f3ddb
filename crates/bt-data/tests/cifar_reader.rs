//! The CIFAR-10 reader: round trip through the official layout, and every bad-input case with
//! a message naming the file (and record / byte offset where it applies).
use bt_data::cifar::{read_meta, CIFAR10_CLASSES, OFFICIAL_FILE_BYTES, RECORD_BYTES};
use bt_data::{synthetic, write_cifar_binary, Cifar10, DataError, SizeCheck};
use std::path::Path;

fn write_small(dir: &Path) -> (bt_data::Dataset, bt_data::Dataset) {
    let train = synthetic::generate(50, 1, synthetic::Split::Train);
    let test = synthetic::generate(20, 1, synthetic::Split::Test);
    write_cifar_binary(dir, &train, &test, &synthetic::CLASS_NAMES).unwrap();
    (train, test)
}

#[test]
fn round_trip_custom_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = write_small(tmp.path());
    let c = Cifar10::load_with(tmp.path(), SizeCheck::Records).unwrap();
    assert_eq!(c.train, train);
    assert_eq!(c.test, test);
    assert_eq!(c.class_names, synthetic::CLASS_NAMES.to_vec());
    // Record layout: label byte, then R, G, B planes.
    let raw = std::fs::read(tmp.path().join("data_batch_1.bin")).unwrap();
    assert_eq!(raw.len(), 10 * RECORD_BYTES);
    assert_eq!(raw[RECORD_BYTES], train.label(1));
    assert_eq!(&raw[RECORD_BYTES + 1..2 * RECORD_BYTES], train.image(1));
}

#[test]
fn official_size_check_names_file_and_size() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let e = Cifar10::load(tmp.path()).unwrap_err();
    assert!(matches!(e, DataError::BadSize { .. }));
    let m = e.to_string();
    assert!(m.contains("data_batch_1.bin") && m.contains(&OFFICIAL_FILE_BYTES.to_string()), "{m}");
}

#[test]
fn missing_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    std::fs::remove_file(tmp.path().join("data_batch_3.bin")).unwrap();
    let m = Cifar10::load_with(tmp.path(), SizeCheck::Records).unwrap_err().to_string();
    assert!(m.contains("missing") && m.contains("data_batch_3.bin"), "{m}");
    let m = Cifar10::load(tmp.path().join("nope")).unwrap_err().to_string();
    assert!(m.contains("batches.meta.txt"), "{m}");
}

#[test]
fn partial_record_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let p = tmp.path().join("test_batch.bin");
    let mut raw = std::fs::read(&p).unwrap();
    raw.truncate(raw.len() - 100);
    std::fs::write(&p, raw).unwrap();
    let m = Cifar10::load_with(tmp.path(), SizeCheck::Records).unwrap_err().to_string();
    assert!(m.contains("test_batch.bin") && m.contains("3073"), "{m}");
}

#[test]
fn bad_label_names_record_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let p = tmp.path().join("data_batch_2.bin");
    let mut raw = std::fs::read(&p).unwrap();
    raw[4 * RECORD_BYTES] = 10;
    std::fs::write(&p, raw).unwrap();
    let e = Cifar10::load_with(tmp.path(), SizeCheck::Records).unwrap_err();
    match &e {
        DataError::BadLabel { record: 4, offset, label: 10, .. } => assert_eq!(*offset, 4 * 3073),
        other => panic!("{other:?}"),
    }
    let m = e.to_string();
    assert!(m.contains("data_batch_2.bin") && m.contains("record 4") && m.contains("12292"), "{m}");
}

#[test]
fn malformed_meta_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let p = tmp.path().join("batches.meta.txt");
    std::fs::write(&p, "cat\ndog\n\n").unwrap();
    let m = Cifar10::load_with(tmp.path(), SizeCheck::Records).unwrap_err().to_string();
    assert!(m.contains("batches.meta.txt") && m.contains("found 2"), "{m}");
    std::fs::write(&p, [0xffu8, 0xfe, b'\n']).unwrap();
    let m = read_meta(&p).unwrap_err().to_string();
    assert!(m.contains("UTF-8"), "{m}");
    std::fs::remove_file(&p).unwrap();
    let m = Cifar10::load_with(tmp.path(), SizeCheck::Records).unwrap_err().to_string();
    assert!(m.contains("missing") && m.contains("batches.meta.txt"), "{m}");
    // The official file: 10 names then blank lines.
    std::fs::write(&p, format!("{}\n\n", CIFAR10_CLASSES.join("\n"))).unwrap();
    assert_eq!(read_meta(&p).unwrap().len(), 10);
}

#[test]
fn a_file_claiming_a_terabyte_of_records_is_an_error_not_an_abort() {
    // A sparse file: its size (from the file system) says 400 million records, 1.2 TB.
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let huge = tmp.path().join("data_batch_3.bin");
    std::fs::File::create(&huge).unwrap().set_len(400_000_000 * RECORD_BYTES as u64).unwrap();
    let e = Cifar10::load_with(tmp.path(), SizeCheck::Records).unwrap_err();
    assert!(matches!(&e, DataError::BadSize { path, .. } if path == &huge), "{e}");
    assert!(e.to_string().contains("cannot be allocated"), "{e}");
}
