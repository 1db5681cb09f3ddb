//! `cargo xtask fetch-cifar`: download, verify, extract, install atomically.
//!
//! Invariants: a failed, interrupted or corrupt download never leaves a half dataset at
//! `DEST/cifar-10-batches-bin` and never deletes a valid one. All work happens in a hidden
//! temporary folder inside DEST (same filesystem, so the final `rename` is atomic); the dataset
//! folder appears only after the MD5 and every file size check out. Stale temporary folders from
//! an interrupted run (SIGKILL leaves no chance to clean up) are removed at the next start.
use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
pub const MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
const DIR_NAME: &str = "cifar-10-batches-bin";
const TMP_PREFIX: &str = ".fetch-cifar-";
/// 10,000 records of 1 label byte + 3,072 pixel bytes.
const BATCH_BYTES: u64 = 30_730_000;
const BATCH_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

struct Opts {
    dest: PathBuf,
    url: String,
    from: Option<PathBuf>,
    md5: String,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { dest: PathBuf::from("data"), url: URL.into(), from: None, md5: MD5.into() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val =
            |name: &str| -> Result<String> { it.next().cloned().with_context(|| format!("{name} needs a value")) };
        match a.as_str() {
            "--dest" => o.dest = PathBuf::from(val("--dest")?),
            "--url" => o.url = val("--url")?,
            "--from" => o.from = Some(PathBuf::from(val("--from")?)),
            // For tests only: they serve a small generated archive whose MD5 is not the official one.
            "--md5-for-tests" => o.md5 = val("--md5-for-tests")?.to_lowercase(),
            other => bail!(
                "fetch-cifar: unknown argument `{other}` (usage: fetch-cifar [--dest DIR] [--url URL] [--from FILE])"
            ),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let target = o.dest.join(DIR_NAME);
    if target.exists() {
        match validate(&target) {
            Ok(()) => {
                println!("{} is already a valid CIFAR-10 binary dataset; nothing to do", target.display());
                return Ok(());
            }
            Err(e) => eprintln!(
                "xtask: existing {} is not valid ({e:#}); it will be replaced only once a verified copy is ready",
                target.display()
            ),
        }
    }
    fs::create_dir_all(&o.dest).with_context(|| format!("creating {}", o.dest.display()))?;
    clean_stale(&o.dest);
    let work = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(&o.dest)
        .with_context(|| format!("creating a temporary folder in {}", o.dest.display()))?;

    // 1. The archive, with its MD5 computed while it streams.
    let (archive, digest) = match &o.from {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("opening archive {}", path.display()))?;
            let len = f.metadata().map(|m| m.len()).ok();
            let digest = hash_stream(f, len, &mut std::io::sink(), &format!("checking {}", path.display()))?;
            (path.clone(), digest)
        }
        None => {
            let path = work.path().join("cifar-10-binary.tar.gz");
            let digest = download(&o.url, &path)?;
            (path, digest)
        }
    };
    if digest != o.md5 {
        bail!(
            "MD5 mismatch for {}: got {digest}, expected {} — the archive is corrupt or incomplete; nothing was installed{}",
            if o.from.is_some() { archive.display().to_string() } else { o.url.clone() },
            o.md5,
            if target.exists() { format!(" and {} was left as it was", target.display()) } else { String::new() }
        );
    }

    // 2. Extract inside the temporary folder and check every file.
    let extract = work.path().join("extract");
    fs::create_dir(&extract)?;
    let f = File::open(&archive).with_context(|| format!("opening {}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(f))
        .unpack(&extract)
        .with_context(|| format!("extracting {} (not a valid .tar.gz?)", archive.display()))?;
    let staged = extract.join(DIR_NAME);
    validate(&staged)
        .with_context(|| format!("the archive {} does not hold a valid {DIR_NAME}/", archive.display()))?;
    for f in BATCH_FILES.iter().chain(["batches.meta.txt"].iter()) {
        File::open(staged.join(f))?.sync_all()?;
    }

    // 3. Install: move an invalid old copy aside (never delete data), then an atomic rename.
    if target.exists() {
        let aside = o.dest.join(format!("{DIR_NAME}.invalid-{}", std::process::id()));
        fs::rename(&target, &aside).with_context(|| format!("moving invalid {} aside", target.display()))?;
        eprintln!("xtask: moved the invalid old copy to {}", aside.display());
    }
    fs::rename(&staged, &target).with_context(|| format!("installing {}", target.display()))?;
    if let Ok(d) = File::open(&o.dest) {
        let _ = d.sync_all();
    }
    println!("installed CIFAR-10 at {} (MD5 {digest} verified)", target.display());
    Ok(())
}

/// All six batch files of exactly 30,730,000 bytes and `batches.meta.txt`.
pub fn validate(dir: &Path) -> Result<()> {
    for f in BATCH_FILES {
        let p = dir.join(f);
        let len = fs::metadata(&p).with_context(|| format!("missing {}", p.display()))?.len();
        if len != BATCH_BYTES {
            bail!("{} has {len} bytes, expected {BATCH_BYTES}", p.display());
        }
    }
    let meta = dir.join("batches.meta.txt");
    if !meta.is_file() {
        bail!("missing {}", meta.display());
    }
    Ok(())
}

fn clean_stale(dest: &Path) {
    let Ok(rd) = fs::read_dir(dest) else { return };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn download(url: &str, to: &Path) -> Result<String> {
    let resp = ureq::get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => anyhow::anyhow!("downloading {url}: HTTP {code} {}", r.status_text()),
        other => anyhow::anyhow!("downloading {url}: {other}"),
    })?;
    let len = resp.header("Content-Length").and_then(|s| s.parse::<u64>().ok());
    let mut out = BufWriter::new(File::create(to).with_context(|| format!("creating {}", to.display()))?);
    let digest = hash_stream(resp.into_reader(), len, &mut out, &format!("downloading {url}"))
        .with_context(|| format!("downloading {url} (transfer interrupted?)"))?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    if let Some(expected) = len {
        let got = fs::metadata(to)?.len();
        if got != expected {
            bail!("downloading {url}: truncated transfer, got {got} of {expected} bytes");
        }
    }
    Ok(digest)
}

/// Copies `r` to `w` with a progress bar, returning the hex MD5.
fn hash_stream(mut r: impl Read, len: Option<u64>, w: &mut impl Write, what: &str) -> Result<String> {
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(format!("{:x}", h.finalize()))
}
