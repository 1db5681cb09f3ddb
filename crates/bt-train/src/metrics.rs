//! `metrics.jsonl`: one JSON object per line, appended and flushed as the run goes, so a crash
//! loses at most the line being written and `tail -f` / pandas can read it live.
//!
//! Every line has `"kind"`: `step` (every `run.log_every` steps), `epoch`, `knn` (the optional
//! monitor) or `run` (start/end markers). Times are seconds; `data_wait_s` is the time the
//! trainer spent blocked on the pipeline's channel, the figure the <5% data-wait budget is about.
use crate::error::{Error, Result};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Appends records to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens (creating or appending to) the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io("opening", path, e))?;
        Ok(Self { file, path: path.into() })
    }

    /// Writes one record as one line. One `write_all` per line, so lines never interleave.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io("writing", &self.path, e))
    }
}

/// Every record in a metrics file (lines that do not parse, e.g. a torn last line, are skipped).
pub fn read_all(path: &Path) -> Result<Vec<Value>> {
    let f = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    Ok(BufReader::new(f).lines().map_while(|l| l.ok()).filter_map(|l| serde_json::from_str::<Value>(&l).ok()).collect())
}

/// Records of one kind.
pub fn of_kind<'a>(records: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    records.iter().filter(move |r| r["kind"] == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_torn_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut w = MetricsWriter::open(&p).unwrap();
        w.write(&json!({"kind": "step", "loss": 1.5})).unwrap();
        w.write(&json!({"kind": "epoch", "loss": 1.0})).unwrap();
        drop(w);
        // A crash mid-write leaves a partial line.
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"{\"kind\": \"st").unwrap();
        let r = read_all(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(of_kind(&r, "epoch").count(), 1);
        assert_eq!(r[0]["loss"], 1.5);
    }
}
