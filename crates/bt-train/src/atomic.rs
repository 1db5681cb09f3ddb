//! The one primitive every file of a run folder is written with: [`atomic_write`] (temporary
//! file in the same folder, fsync, rename, fsync of the folder). A reader, or a crash, sees the
//! old file or the whole new one, never a torn one.
use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that a reader (or a crash) sees either the old file or the whole
/// new one: a temporary file in the same folder, `fsync`, `rename` over the target, then `fsync`
/// of the folder so the rename itself is durable. Same folder, because `rename` is only atomic
/// within one filesystem.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, "", |f| f.write_all(bytes))
}

/// [`atomic_write`] with the file's contents produced by `fill` (which may fail: the temporary
/// file is then removed and `path` is untouched). `what` names the operation in the error (default `writing`).
pub fn atomic_write_with(
    path: &Path,
    what: &'static str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Directory fsync: without it the rename may be lost on power failure.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(if what.is_empty() { "writing" } else { what }, path, e));
    }
    Ok(())
}

/// Writes a file through `write(tmp)` then renames it into place (for writers that only take a
/// path, like `BarlowTwins::save_full`).
pub fn atomic_via(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let bytes = std::fs::read(&tmp).map_err(|e| Error::io("reading back", &tmp, e))?;
    let _ = std::fs::remove_file(&tmp);
    atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn atomic_write_into_missing_folder_fails_with_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nope/x.bin");
        let e = atomic_write(&p, b"x").unwrap_err().to_string();
        assert!(e.contains("nope/x.bin"), "{e}");
    }

    #[test]
    fn failed_fill_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        atomic_write(&p, b"old").unwrap();
        let e = atomic_write_with(&p, "", |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
