//! Labeled subsets of a training split, for semi-supervised fine-tuning (the 1% / 10% label
//! settings of the Barlow Twins paper): a class-balanced subset chosen by seed
//! ([`balanced_subset`]), or the images a file list names ([`listed_subset`], SimCLR's
//! published `1percent.txt` / `10percent.txt` format), served as an [`ImageSource`] by
//! [`Subset`].
use crate::error::{DataError, Result};
use crate::rng::SampleRng;
use crate::source::{Image, ImageSource, LoadHint};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Stream tag of the per-class draw of [`balanced_subset`].
const SUBSET_TAG: u64 = 0x5B5E7;

/// Some images of another source, in a given order; labels, class names and descriptions are
/// the parent's.
pub struct Subset {
    inner: Arc<dyn ImageSource>,
    indices: Vec<usize>,
}

impl Subset {
    /// The images `indices` (into `inner`, repeats allowed) of `inner`.
    ///
    /// # Errors
    /// [`DataError::Shape`] when an index is past the parent's end.
    pub fn new(inner: Arc<dyn ImageSource>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&i) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(DataError::Shape { what: "subset index".into(), expected: inner.len(), got: i });
        }
        Ok(Self { inner, indices })
    }

    /// The parent's index of each image.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl ImageSource for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn load(&self, index: usize, hint: LoadHint) -> Result<Image> {
        self.inner.load(self.indices[index], hint)
    }
    fn dims(&self, index: usize) -> Option<(usize, usize)> {
        self.inner.dims(self.indices[index])
    }
    fn label(&self, index: usize) -> Option<u32> {
        self.inner.label(self.indices[index])
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.inner.class_names()
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(self.indices[index])
    }
    fn bad_images(&self) -> usize {
        self.inner.bad_images()
    }
}

/// How many of a class's `n` images a `percent` subset keeps: `round(n * percent / 100)`, at
/// least one (a class never vanishes from the labeled set), all of them at 100.
pub fn per_class_count(n: usize, percent: f64) -> usize {
    if percent >= 100.0 {
        return n;
    }
    (((n as f64) * percent / 100.0).round() as usize).clamp(1.min(n), n)
}

/// A class-balanced `percent` subset of a labeled source: from each class, the
/// [`per_class_count`] images a seeded permutation of that class's images puts first. The same
/// `(source, percent, seed)` gives the same subset on any machine; a smaller percent's subset
/// is not necessarily inside a larger one's. Returned in the parent's index order.
///
/// # Errors
/// [`DataError::BadConfig`] (key `eval.finetune_train_percent`) for a percent outside
/// `(0, 100]`, and when an image has no label (naming it).
pub fn balanced_subset(source: &dyn ImageSource, percent: f64, seed: u64) -> Result<Vec<usize>> {
    let key = "eval.finetune_train_percent";
    if !(percent > 0.0 && percent <= 100.0) {
        return Err(DataError::BadConfig { key: key.into(), reason: format!("{percent} is not in (0, 100]") });
    }
    let mut by_class: Vec<Vec<usize>> = Vec::new();
    for i in 0..source.len() {
        let Some(c) = source.label(i) else {
            return Err(DataError::BadConfig {
                key: key.into(),
                reason: format!("{} has no label: a labeled subset needs a labeled training split", source.describe(i)),
            });
        };
        let c = c as usize;
        if by_class.len() <= c {
            by_class.resize(c + 1, Vec::new());
        }
        by_class[c].push(i);
    }
    let mut out = Vec::new();
    for (c, members) in by_class.iter().enumerate() {
        let k = per_class_count(members.len(), percent);
        let order = SampleRng::new(seed, 0, c as u64, SUBSET_TAG).permutation(members.len());
        out.extend(order[..k].iter().map(|&j| members[j as usize]));
    }
    out.sort_unstable();
    Ok(out)
}

/// The last two components of a path, `/`-joined (`class/file.jpg`): how a listed image is
/// matched to a source's image, whatever the folder it was found under.
fn class_and_file(path: &str) -> Option<String> {
    let p = Path::new(path);
    let file = p.file_name()?.to_str()?;
    let class = p.parent()?.file_name()?.to_str()?;
    Some(format!("{class}/{file}"))
}

/// The images of `source` (an image folder, one subfolder per class) that the file list at
/// `list` names, in the list's order. A line is either SimCLR's format, a file name whose
/// class is the part before its first `_` (`n01440764_10026.JPEG` is
/// `n01440764/n01440764_10026.JPEG`, what `evaluate.py` reads for `--train-percent 1|10`), or a
/// `class/file` path; blank lines are skipped.
///
/// # Errors
/// [`DataError::Io`] when the list cannot be read; [`DataError::BadConfig`] (key
/// `eval.finetune_train_files`) naming the list, the line and its text when a line names no
/// image of the source, and when the list names none at all.
pub fn listed_subset(source: &dyn ImageSource, list: &Path) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(list).map_err(|e| DataError::Io { path: list.into(), source: e })?;
    let key = "eval.finetune_train_files";
    let index: HashMap<String, usize> =
        (0..source.len()).filter_map(|i| class_and_file(&source.describe(i)).map(|k| (k, i))).collect();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let rel = if line.contains('/') {
            class_and_file(line)
        } else {
            line.split('_').next().filter(|c| !c.is_empty() && *c != line).map(|c| format!("{c}/{line}"))
        };
        let found = rel.as_ref().and_then(|r| index.get(r));
        let Some(&i) = found else {
            let why = match rel {
                Some(r) => format!("no image {r} in the training split"),
                None => "neither `class/file` nor SimCLR's `<class>_<name>` file name".into(),
            };
            return Err(DataError::BadConfig {
                key: key.into(),
                reason: format!("{} line {}: `{line}`: {why}", list.display(), n + 1),
            });
        };
        out.push(i);
    }
    if out.is_empty() {
        return Err(DataError::BadConfig { key: key.into(), reason: format!("{} names no image", list.display()) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemoryImages;

    /// 3 classes of 50, 30 and 7 images (labels interleaved).
    fn labeled() -> MemoryImages {
        let mut labels = Vec::new();
        for (c, n) in [(0u32, 50), (1, 30), (2, 7)] {
            labels.extend(std::iter::repeat_n(c, n));
        }
        labels.rotate_left(13);
        let n = labels.len();
        MemoryImages::new(2, 2, vec![0u8; n * 2 * 2 * 3], labels.into_iter().map(Some).collect(), Some(3)).unwrap()
    }

    fn counts(src: &dyn ImageSource, idx: &[usize]) -> Vec<usize> {
        let mut c = vec![0; 3];
        for &i in idx {
            c[src.label(i).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn balanced_subsets_have_the_per_class_sizes_and_repeat_for_a_seed() {
        let src = labeled();
        for (pct, want) in [(10.0, [5, 3, 1]), (1.0, [1, 1, 1]), (50.0, [25, 15, 4]), (100.0, [50, 30, 7])] {
            let a = balanced_subset(&src, pct, 3).unwrap();
            assert_eq!(counts(&src, &a), want, "{pct}%");
            assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats: {a:?}");
            assert_eq!(a, balanced_subset(&src, pct, 3).unwrap(), "same seed, same subset");
        }
        let draws: std::collections::HashSet<Vec<usize>> =
            (0..6).map(|s| balanced_subset(&src, 10.0, s).unwrap()).collect();
        assert!(draws.len() >= 5, "seeds should draw different subsets: {draws:?}");
    }

    #[test]
    fn balanced_subset_refuses_bad_percents_and_unlabeled_images() {
        let src = labeled();
        for bad in [0.0, -1.0, 101.0, f64::NAN] {
            let e = balanced_subset(&src, bad, 0).unwrap_err().to_string();
            assert!(e.contains("eval.finetune_train_percent"), "{e}");
        }
        let unlabeled = MemoryImages::new(2, 2, vec![0u8; 4 * 12], vec![None; 4], None).unwrap();
        let e = balanced_subset(&unlabeled, 10.0, 0).unwrap_err().to_string();
        assert!(e.contains("image 0 has no label"), "{e}");
    }

    #[test]
    fn a_subset_serves_its_parents_images_and_labels() {
        let src: Arc<dyn ImageSource> = Arc::new(labeled());
        let s = Subset::new(src.clone(), vec![4, 0, 4]).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s.label(0), s.label(1)), (src.label(4), src.label(0)));
        assert_eq!(s.describe(2), src.describe(4));
        assert!(Subset::new(src.clone(), vec![src.len()]).is_err());
    }
}
