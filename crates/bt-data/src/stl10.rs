//! STL-10 in the official binary layout (<https://cs.stanford.edu/~acoates/stl10/>).
//!
//! `*_X.bin` holds `N` images of 96x96x3 bytes, each channel plane stored **column-major**
//! (torchvision's `STL10` reads them as `reshape(-1, 3, 96, 96)` then swaps the last two
//! axes): byte `c * 9216 + x * 96 + y` is channel `c` at row `y`, column `x`. `*_y.bin` holds
//! one label byte per image, `1..=10` on disk (0-based in memory). The reader transposes each
//! plane once into the row-major CHW layout of [`crate::Image`].
use crate::error::{DataError, Result};
use crate::source::MemoryImages;
use bt_config::Stl10Split;
use std::path::{Path, PathBuf};

/// Side of an STL-10 image.
pub const STL10_SIDE: usize = 96;
/// Bytes of one image.
pub const STL10_IMAGE_BYTES: usize = 3 * STL10_SIDE * STL10_SIDE;
/// STL-10 classes, in label order (`class_names.txt` of the archive).
pub const STL10_CLASSES: [&str; 10] =
    ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"];

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::BadFolder {
                key: "data.dir".into(),
                path: path.into(),
                reason: "missing STL-10 file: expected the official binary layout (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin)".into(),
            }
        } else {
            DataError::Io { path: path.into(), source: e }
        }
    })
}

/// `n` zero bytes, or an error naming `path` when they cannot be allocated (never an abort).
fn zeroed(n: usize, path: &Path) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| DataError::BadSize {
        path: path.into(),
        size: n as u64,
        expected: "images this machine can hold in memory (the buffer cannot be allocated)".into(),
    })?;
    v.resize(n, 0);
    Ok(v)
}

/// Reads `X` (and labels from `y` when given) into row-major CHW images. The file is read with
/// `std::fs::read`, which reserves its size fallibly (an `Io` error naming it, not an abort).
fn read_pair(x_path: &Path, y_path: Option<&Path>) -> Result<(Vec<u8>, Vec<Option<u32>>)> {
    let raw = read(x_path)?;
    if raw.is_empty() || raw.len() % STL10_IMAGE_BYTES != 0 {
        return Err(DataError::BadSize {
            path: x_path.into(),
            size: raw.len() as u64,
            expected: format!("a non-zero multiple of {STL10_IMAGE_BYTES} bytes (96x96x3 images)"),
        });
    }
    let n = raw.len() / STL10_IMAGE_BYTES;
    let labels = match y_path {
        None => vec![None; n],
        Some(y) => {
            let ly = read(y)?;
            if ly.len() != n {
                return Err(DataError::BadSize {
                    path: y.into(),
                    size: ly.len() as u64,
                    expected: format!("{n} bytes, one label per image of {}", x_path.display()),
                });
            }
            let mut out = Vec::with_capacity(n);
            for (r, &l) in ly.iter().enumerate() {
                if !(1..=10).contains(&l) {
                    return Err(DataError::BadLabel { path: y.into(), record: r, offset: r as u64, label: l });
                }
                out.push(Some(l as u32 - 1));
            }
            out
        }
    };
    let s = STL10_SIDE;
    let mut data = zeroed(raw.len(), x_path)?;
    for (src, dst) in raw.chunks_exact(s * s).zip(data.chunks_exact_mut(s * s)) {
        for x in 0..s {
            for y in 0..s {
                dst[y * s + x] = src[x * s + y];
            }
        }
    }
    Ok((data, labels))
}

fn class_names(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("class_names.txt"))
        .ok()
        .map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>())
        .filter(|v| v.len() == 10)
        .unwrap_or_else(|| STL10_CLASSES.iter().map(|s| s.to_string()).collect())
}

/// The pretraining split `split` and the labeled test split of `dir`, with the class names
/// (`class_names.txt` when present and well-formed, else [`STL10_CLASSES`]).
///
/// # Errors
/// A missing file, a size that is not whole images, a label file of the wrong length or a
/// label outside `1..=10`, each naming the file.
pub fn load_stl10(dir: impl AsRef<Path>, split: Stl10Split) -> Result<(MemoryImages, MemoryImages, Vec<String>)> {
    let dir = dir.as_ref();
    let p = |f: &str| -> PathBuf { dir.join(f) };
    let names = class_names(dir);
    let (mut data, mut labels) = (Vec::new(), Vec::new());
    if matches!(split, Stl10Split::Train | Stl10Split::TrainUnlabeled) {
        let (d, l) = read_pair(&p("train_X.bin"), Some(&p("train_y.bin")))?;
        data.extend(d);
        labels.extend(l);
    }
    if matches!(split, Stl10Split::Unlabeled | Stl10Split::TrainUnlabeled) {
        let (d, l) = read_pair(&p("unlabeled_X.bin"), None)?;
        data.try_reserve_exact(d.len()).map_err(|_| DataError::BadSize {
            path: p("unlabeled_X.bin"),
            size: d.len() as u64,
            expected: "images this machine can hold in memory with train_X.bin".into(),
        })?;
        data.extend(d);
        labels.extend(l);
    }
    let train = MemoryImages::new(STL10_SIDE, STL10_SIDE, data, labels, Some(10))?
        .with_names("STL-10 train image", Some(names.clone()));
    let (d, l) = read_pair(&p("test_X.bin"), Some(&p("test_y.bin")))?;
    let test =
        MemoryImages::new(STL10_SIDE, STL10_SIDE, d, l, Some(10))?.with_names("STL-10 test image", Some(names.clone()));
    Ok((train, test, names))
}
