//! `cargo xtask fetch-cifar` against a real HTTP server on 127.0.0.1 serving a generated archive in
//! the official layout: success, checksum mismatch, truncated transfer, HTTP 404, corrupt local
//! archive. Every failure must leave the destination exactly as it was.
use md5::{Digest, Md5};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

const BATCH_BYTES: usize = 30_730_000;

/// A generated `cifar-10-binary.tar.gz` (official names and sizes) and its MD5.
fn archive() -> &'static (PathBuf, String) {
    static A: OnceLock<(PathBuf, String)> = OnceLock::new();
    A.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join("cifar-10-binary.tar.gz");
        let f = std::fs::File::create(&path).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut record = vec![0u8; BATCH_BYTES];
        for (i, b) in record.iter_mut().enumerate() {
            *b = if i % 3073 == 0 { (i / 3073 % 10) as u8 } else { (i % 251) as u8 };
        }
        let names = [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ];
        for name in names {
            let mut h = tar::Header::new_gnu();
            h.set_size(record.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), &record[..]).unwrap();
        }
        let meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(meta.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "cifar-10-batches-bin/batches.meta.txt", &meta[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (path, format!("{:x}", Md5::digest(&bytes)))
    })
}

/// Serves `/ok` (the archive), `/truncated` (half of it, with the full Content-Length), and 404
/// for anything else. Returns the base URL.
fn serve() -> String {
    let body = Arc::new(std::fs::read(&archive().0).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let head = |status: &str, len: usize| {
                    format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n")
                };
                let _ = match path.as_str() {
                    "/ok" => {
                        stream.write_all(head("200 OK", body.len()).as_bytes()).and_then(|_| stream.write_all(&body))
                    }
                    "/truncated" => stream
                        .write_all(head("200 OK", body.len()).as_bytes())
                        .and_then(|_| stream.write_all(&body[..body.len() / 2])),
                    _ => stream
                        .write_all(head("404 Not Found", 9).as_bytes())
                        .and_then(|_| stream.write_all(b"not found")),
                };
            });
        }
    });
    format!("http://{addr}")
}

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).arg("fetch-cifar").args(args).output().unwrap()
}

/// Every file under `dir` with its size and MD5: "the folder is exactly as it was".
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), (0, "dir".into()));
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    (bytes.len() as u64, format!("{:x}", Md5::digest(&bytes))),
                );
            }
        }
    }
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A destination holding unrelated files and a half-written dataset folder (as a crashed
/// hand-made copy would leave), which a failed fetch must not touch.
fn messy_dest() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("README.md"), "keep me").unwrap();
    std::fs::create_dir(d.path().join("cifar-10-batches-bin")).unwrap();
    std::fs::write(d.path().join("cifar-10-batches-bin/data_batch_1.bin"), vec![7u8; 1000]).unwrap();
    d
}

#[test]
fn download_installs_then_second_run_does_nothing() {
    let (_, md5) = archive();
    let base = serve();
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let o = xtask(&["--dest", d, "--url", &format!("{base}/ok"), "--md5-for-tests", md5]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = dest.path().join("cifar-10-batches-bin");
    for f in ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin"] {
        assert_eq!(std::fs::metadata(dir.join(f)).unwrap().len(), BATCH_BYTES as u64);
    }
    assert!(dir.join("batches.meta.txt").is_file());
    // Only the dataset folder remains: no temporary leftovers.
    let names: Vec<_> = std::fs::read_dir(dest.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cifar-10-batches-bin")]);

    let before = snapshot(dest.path());
    let o = xtask(&["--dest", d, "--url", &format!("{base}/missing")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("already a valid"));
    assert_eq!(snapshot(dest.path()), before);
}

#[test]
fn replaces_a_half_dataset_but_keeps_it_aside() {
    let (_, md5) = archive();
    let base = serve();
    let dest = messy_dest();
    let o = xtask(&["--dest", dest.path().to_str().unwrap(), "--url", &format!("{base}/ok"), "--md5-for-tests", md5]);
    assert!(o.status.success(), "{}", stderr(&o));
    let aside: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cifar-10-batches-bin.invalid-"))
        .collect();
    assert_eq!(aside.len(), 1, "the invalid copy is moved aside, never deleted");
    assert_eq!(std::fs::read(aside[0].path().join("data_batch_1.bin")).unwrap(), vec![7u8; 1000]);
}

#[test]
fn checksum_mismatch_fails_and_leaves_dest_as_it_was() {
    let base = serve();
    let dest = messy_dest();
    let before = snapshot(dest.path());
    // The official MD5 is expected by default; the generated archive does not have it.
    let o = xtask(&["--dest", dest.path().to_str().unwrap(), "--url", &format!("{base}/ok")]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("MD5 mismatch") && e.contains("c32a1d4ab5d03f1284b67883e8d87530"), "{e}");
    assert_eq!(snapshot(dest.path()), before);
}

#[test]
fn truncated_transfer_fails_and_leaves_dest_as_it_was() {
    let (_, md5) = archive();
    let base = serve();
    let dest = messy_dest();
    let before = snapshot(dest.path());
    let o = xtask(&[
        "--dest",
        dest.path().to_str().unwrap(),
        "--url",
        &format!("{base}/truncated"),
        "--md5-for-tests",
        md5,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("truncated") || e.contains("interrupted"), "{e}");
    assert_eq!(snapshot(dest.path()), before);
}

#[test]
fn http_404_fails_with_the_status() {
    let base = serve();
    let dest = tempfile::tempdir().unwrap();
    let o = xtask(&["--dest", dest.path().to_str().unwrap(), "--url", &format!("{base}/nope.tar.gz")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 404"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
}

#[test]
fn corrupt_local_archive_fails_and_leaves_dest_as_it_was() {
    let dest = messy_dest();
    let before = snapshot(dest.path());
    let bad = dest.path().join("../corrupt-cifar.tar.gz");
    std::fs::write(&bad, b"\x1f\x8b this is not a real archive").unwrap();
    let o = xtask(&["--dest", dest.path().to_str().unwrap(), "--from", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("MD5 mismatch"), "{}", stderr(&o));
    assert_eq!(snapshot(dest.path()), before);
    // Even with a matching checksum, an archive that is not a tar.gz installs nothing.
    let md5 = format!("{:x}", Md5::digest(std::fs::read(&bad).unwrap()));
    let o = xtask(&["--dest", dest.path().to_str().unwrap(), "--from", bad.to_str().unwrap(), "--md5-for-tests", &md5]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("extracting"), "{}", stderr(&o));
    assert_eq!(snapshot(dest.path()), before);
    std::fs::remove_file(bad).unwrap();
}

#[test]
fn local_archive_installs() {
    let (path, md5) = archive();
    let dest = tempfile::tempdir().unwrap();
    let o = xtask(&["--dest", dest.path().to_str().unwrap(), "--from", path.to_str().unwrap(), "--md5-for-tests", md5]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dest.path().join("cifar-10-batches-bin/test_batch.bin").is_file());
}
