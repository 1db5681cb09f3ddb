//! Embedding writers: frozen features and labels of a split as NumPy `.npy` (embeddings in
//! `X.npy`, labels in `X.labels.npy`) or one `.safetensors` file (tensors `embeddings` and
//! `labels`, metadata from the caller); beside them `X.files.txt`, the image of each row (one
//! per line: a file path for image folders), so a user can search or deduplicate their own
//! images with the vectors. Everything is written atomically.
use crate::atomic::atomic_write;
use crate::error::{refuse, Error, Result};
use crate::tensors::{npy_bytes, safetensors_bytes};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Output format, from the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `X.npy` + `X.labels.npy`.
    Npy,
    /// `X.safetensors`.
    Safetensors,
}

impl Format {
    /// The format of `path` (`.npy` or `.safetensors`); anything else is an error naming it.
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Ok(Self::Npy),
            Some("safetensors") => Ok(Self::Safetensors),
            _ => refuse!("{}: the file name must end in .npy or .safetensors", path.display()),
        }
    }
}

/// The row-names file written beside `out`: `X.files.txt` for `X.npy` / `X.safetensors`.
pub fn files_path(out: &Path) -> PathBuf {
    out.with_extension("files.txt")
}

/// Writes `embeddings` (`N x F` f32), `labels` (`N` int64) and the row names (`N` lines) to
/// `out` and beside it; returns the files written, `out` first. Creates `out`'s folder.
pub fn write(
    out: &Path,
    embeddings: &Tensor,
    labels: &Tensor,
    names: &[String],
    metadata: HashMap<String, String>,
) -> Result<Vec<PathBuf>> {
    let format = Format::of(out)?;
    if names.len() as i64 != embeddings.size()[0] {
        refuse!("{} row names for {} embeddings", names.len(), embeddings.size()[0]);
    }
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    }
    let mut written = match format {
        Format::Npy => {
            let lp = out.with_extension("labels.npy");
            atomic_write(out, &npy_bytes(embeddings)?)?;
            atomic_write(&lp, &npy_bytes(labels)?)?;
            vec![out.to_path_buf(), lp]
        }
        Format::Safetensors => {
            let t = [
                ("embeddings".to_string(), embeddings.shallow_clone()),
                ("labels".to_string(), labels.shallow_clone()),
            ];
            atomic_write(out, &safetensors_bytes(&t, metadata)?)?;
            vec![out.to_path_buf()]
        }
    };
    let fp = files_path(out);
    let mut text = names.join("\n");
    text.push('\n');
    atomic_write(&fp, text.as_bytes())?;
    written.push(fp);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_pair_and_bad_extension() {
        let d = tempfile::tempdir().unwrap();
        let x = Tensor::from_slice(&[1f32, 2., 3., 4.]).view([2, 2]);
        let y = Tensor::from_slice(&[0i64, 1]);
        let names = vec!["a.jpg".to_string(), "b/c.png".to_string()];
        let files = write(&d.path().join("sub/e.npy"), &x, &y, &names, HashMap::new()).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(std::fs::read_to_string(&files[2]).unwrap(), "a.jpg\nb/c.png\n");
        assert!(files[1].ends_with("sub/e.labels.npy") && files[1].is_file());
        let (descr, shape, _) = crate::tensors::npy_header(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!((descr.as_str(), shape), ("<f4", vec![2, 2]));
        let e = write(&d.path().join("e.csv"), &x, &y, &names, HashMap::new()).unwrap_err().to_string();
        assert!(e.contains("e.csv") && e.contains(".npy"), "{e}");
    }
}
