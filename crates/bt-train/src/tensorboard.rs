//! TensorBoard event files (`run.tensorboard = true`): `events.out.tfevents.*` in the run
//! folder, so `tensorboard --logdir runs/` shows every run's loss, its two terms, the learning
//! rate, pairs/s, data wait and the kNN monitor.
//!
//! The format is small enough to write by hand, which keeps protobuf and TensorFlow out of the
//! dependency tree: a file is a sequence of TFRecords (`u64` length, masked CRC-32C of the
//! length, the bytes, masked CRC-32C of the bytes), each holding one `tensorflow.Event` protobuf
//! (`wall_time` = 1, `step` = 2, `file_version` = 3, `summary` = 5 with repeated
//! `Summary.Value { tag = 1, simple_value = 2 }`). The first record is the `brain.Event:2`
//! version event. Like `metrics.jsonl`, the file is append-only and flushed per event; each
//! invocation of a run (a resume) starts a new file, and TensorBoard orders them by step.
//! `tests/tensorboard.rs` reads the files back with the `tensorboard` package's own reader.
use crate::error::{Error, Result};
use crate::observer::{Event, Observer};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes scalars to one event file.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<unix seconds>.<host>.<pid>.<n>` (`n` counts the writers
    /// this process made, so a stop and a resume within one second never share a name; the file
    /// is created new, never overwritten) and writes the version record.
    pub fn create(dir: &Path) -> Result<Self> {
        static WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "localhost".to_string() } else { host };
        let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}.{n}", now.as_secs(), std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("creating", &path, e))?;
        let mut w = Self { file, path };
        let mut ev = Vec::new();
        put_f64(&mut ev, 1, now.as_secs_f64());
        put_bytes(&mut ev, 3, b"brain.Event:2");
        w.record(&ev)?;
        Ok(w)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event holding `scalars` (tag, value) at `step`.
    pub fn scalars(&mut self, step: usize, scalars: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in scalars {
            if !v.is_finite() {
                continue;
            }
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            value.push(0x15); // field 2, fixed32
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut ev = Vec::new();
        put_f64(&mut ev, 1, wall.as_secs_f64());
        ev.push(0x10); // field 2, varint
        put_varint(&mut ev, step as u64);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        // One write per record, then flush: a crash loses at most the record being written,
        // and TensorBoard skips a torn last record.
        self.file.write_all(&rec).and_then(|_| self.file.flush()).map_err(|e| Error::io("writing", &self.path, e))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_f64(out: &mut Vec<u8>, field: u8, v: f64) {
    out.push(field << 3 | 1); // fixed64
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    out.push(field << 3 | 2); // length-delimited
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// CRC-32C (Castagnoli), bitwise-reflected polynomial 0x82F63B78, as TFRecord uses.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// The [`Observer`] that turns a run's events into TensorBoard scalars: `loss`,
/// `loss/invariance`, `loss/redundancy`, `lr`, `pairs_per_s`, `data_wait_s` per logged step;
/// `epoch/loss`, `epoch/data_wait_pct` per epoch; `knn/top1` per kNN monitor. A write error is
/// reported once (as a tracing warning) and further events are dropped: curves are not worth
/// killing a run for.
#[derive(Debug)]
pub struct TensorBoard {
    writer: Option<EventWriter>,
}

impl TensorBoard {
    /// Starts a new event file in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        Ok(Self { writer: Some(EventWriter::create(dir)?) })
    }

    fn write(&mut self, step: usize, scalars: &[(&str, f64)]) {
        if let Some(w) = &mut self.writer {
            if let Err(e) = w.scalars(step, scalars) {
                tracing::warn!("TensorBoard events disabled: {e}");
                self.writer = None;
            }
        }
    }
}

impl Observer for TensorBoard {
    fn on_event(&mut self, event: &Event<'_>) {
        match event {
            Event::Step(m) => self.write(
                m.step,
                &[
                    ("loss", m.loss),
                    ("loss/invariance", m.invariance),
                    ("loss/redundancy", m.redundancy),
                    ("lr", m.lr),
                    ("pairs_per_s", m.pairs_per_s),
                    ("data_wait_s", m.data_wait_s),
                ],
            ),
            Event::Epoch(m) => self.write(m.step, &[("epoch/loss", m.loss), ("epoch/data_wait_pct", m.data_wait_pct)]),
            Event::Evaluated { name, step, top1, .. } => {
                let tag = format!("{name}/top1");
                self.write(*step, &[(tag.as_str(), *top1)])
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc3720_check_value() {
        // RFC 3720 B.4 / the CRC catalogue: CRC-32C of "123456789" is 0xE3069283, and of 32
        // zero bytes 0x8A9136AA.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn two_writers_in_one_second_get_two_files() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (EventWriter::create(d.path()).unwrap(), EventWriter::create(d.path()).unwrap());
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn varint_encoding() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }
}
