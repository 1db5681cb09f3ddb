//! A folder of images at any resolution as an [`ImageSource`].
//!
//! - **Layout.** torchvision's `ImageFolder` when `dir` holds class subfolders and no image
//!   files of its own: classes are the subfolder names sorted, files are found recursively in
//!   `sorted(os.walk(class_dir))` order, labels are class indices. Otherwise the folder is
//!   *unlabeled* and searched recursively in the same order. A file list (one path per line,
//!   relative to the list's own folder; blank lines and `#` comments ignored) replaces the walk
//!   for sets too large to list a directory tree (unlabeled).
//! - **Header scan.** [`ImageFolder::open`] reads every file once on the rayon pool and checks
//!   format, completeness and dimensions without decoding pixels
//!   ([`crate::decode::scan_header`]), so a bad file is named before a step is taken. With
//!   `skip_bad` such files are dropped and counted instead.
//! - **Decode time.** Pixels are decoded by [`ImageSource::load`] on the pipeline's rayon pool
//!   as batches are made. A file that passed the scan but fails to decode is an error naming it,
//!   or with `skip_bad` is counted once and replaced by the next good image (deterministically:
//!   the same replacement every epoch).
//! - **Decompression bombs.** The scan applies Pillow's pixel limit
//!   ([`FolderOptions::max_image_pixels`], see [`crate::decode::check_pixels`]) to every header:
//!   an image of more than twice the limit is a bad file (an error naming it, or skipped and
//!   counted), one above the limit a warning; decoding checks the header again before it
//!   allocates.
//! - **Links.** Symbolic links to folders are followed (datasets are often linked together),
//!   but each real folder is read once (device + inode): a link back up the tree
//!   (`class8/loop -> ..`) or two links to one folder never list a file twice, and no file is
//!   listed twice either. [`ImageFolder::links_followed`] counts the links, and the refused ones
//!   are a warning. A class folder without images is a warning naming it
//!   ([`ImageFolder::warnings`]; torchvision refuses such a folder).
//! - **Cache.** [`bt_config::CacheMode::Decoded`] keeps each decoded image, reduced (JPEG DCT
//!   scaling) as far as `cache_min_side` allows.
use crate::decode::{check_pixels, decode_file_limited, scan_header_limited, Header, PixelCheck};
use crate::error::{DataError, Result};
use crate::source::{Image, ImageSource, LoadHint};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Extensions (lowercase) taken as images when walking a folder.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// How an [`ImageFolder`] is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderOptions {
    /// The config key naming the folder, for errors (`data.dir`, `data.test_dir`).
    pub key: String,
    /// Read paths from this file instead of walking the folder.
    pub file_list: Option<PathBuf>,
    /// Require the class-subfolder layout with at least two classes (evaluation splits).
    pub require_labels: bool,
    /// Skip and count unreadable files instead of failing.
    pub skip_bad: bool,
    /// Keep decoded images in memory.
    pub cache: bool,
    /// With `cache`: the shorter side a cached image keeps at least (it is decoded reduced by
    /// the largest JPEG factor that keeps it).
    pub cache_min_side: usize,
    /// Fail unless some image has both sides at least this long (`data.image_size`); 0 = no
    /// check.
    pub image_size: usize,
    /// Pillow's `MAX_IMAGE_PIXELS` (`data.max_image_pixels`): warn above it, refuse an image
    /// above twice it as unreadable; 0 = no limit.
    pub max_image_pixels: u64,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            key: "data.dir".into(),
            file_list: None,
            require_labels: false,
            skip_bad: false,
            cache: false,
            cache_min_side: 0,
            image_size: 0,
            max_image_pixels: crate::decode::DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

/// Images of a folder; see the module doc.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<PathBuf>,
    headers: Vec<Header>,
    labels: Option<Vec<u32>>,
    classes: Option<Vec<String>>,
    skip_bad: bool,
    scan_bad: usize,
    broken: Vec<AtomicBool>,
    decode_bad: AtomicUsize,
    cache: Option<Vec<OnceLock<Image>>>,
    cache_min_side: usize,
    max_image_pixels: u64,
    links_followed: usize,
    warnings: Vec<String>,
}

fn io_err(path: &Path, e: std::io::Error) -> DataError {
    DataError::Io { path: path.into(), source: e }
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The identity of a real folder or file: device and inode (the canonical path elsewhere).
#[cfg(unix)]
type FileKey = (u64, u64);
#[cfg(not(unix))]
type FileKey = PathBuf;

#[cfg(unix)]
fn file_key(_: &Path, m: &std::fs::Metadata) -> Result<FileKey> {
    use std::os::unix::fs::MetadataExt;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_key(p: &Path, _: &std::fs::Metadata) -> Result<FileKey> {
    std::fs::canonicalize(p).map_err(|e| io_err(p, e))
}

/// What a walk has seen so far: real folders and files, links followed and refused.
#[derive(Default)]
struct Walk {
    dirs: std::collections::HashSet<FileKey>,
    files: std::collections::HashSet<FileKey>,
    links: usize,
    repeated_links: Vec<PathBuf>,
}

impl Walk {
    /// Marks `dir` as read (or about to be); `false` when it already was.
    fn enter(&mut self, dir: &Path) -> Result<bool> {
        let m = std::fs::metadata(dir).map_err(|e| io_err(dir, e))?;
        Ok(self.dirs.insert(file_key(dir, &m)?))
    }

    /// Image files under `dir` in `sorted(os.walk(dir, followlinks=True))` order: folders by
    /// path, the files of each sorted by name; a real folder or file already seen (through a
    /// link) is left out. `dir` itself must have been [`Walk::enter`]ed.
    fn walk(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut stack = vec![dir.to_path_buf()];
        let mut groups: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
        while let Some(d) = stack.pop() {
            let mut entries = Vec::new();
            for e in std::fs::read_dir(&d).map_err(|e| io_err(&d, e))? {
                let e = e.map_err(|e| io_err(&d, e))?;
                entries.push((e.path(), e.file_type().map_err(|err| io_err(&e.path(), err))?.is_symlink()));
            }
            // Sorted, so which of two paths to one folder is read is the same on every run.
            entries.sort();
            let mut files = Vec::new();
            let mut subdirs = Vec::new();
            for (p, link) in entries {
                // metadata follows links. An image name that cannot be followed (a dangling
                // link) is listed, so the header scan names it as unreadable.
                let Ok(m) = std::fs::metadata(&p) else {
                    if is_image(&p) {
                        files.push(p);
                    }
                    continue;
                };
                if m.is_dir() {
                    if link {
                        self.links += 1;
                    }
                    if self.dirs.insert(file_key(&p, &m)?) {
                        subdirs.push(p);
                    } else if link {
                        self.repeated_links.push(p);
                    }
                } else if is_image(&p) && self.files.insert(file_key(&p, &m)?) {
                    files.push(p);
                }
            }
            stack.extend(subdirs.into_iter().rev());
            groups.push((d, files));
        }
        // os.walk yields `root` strings; sorting them as strings is what `sorted` does.
        groups.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
        Ok(groups.into_iter().flat_map(|(_, f)| f).collect())
    }
}

impl ImageFolder {
    /// Lists and header-scans `dir` (see the module doc).
    ///
    /// # Errors
    /// [`DataError::BadFolder`] (naming `opts.key`) for a missing or empty folder, a labeled
    /// split with fewer than two classes, or no image as large as `opts.image_size`;
    /// [`DataError::BadImage`] for the first unreadable file unless `opts.skip_bad`.
    pub fn open(dir: impl AsRef<Path>, opts: &FolderOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let folder_err =
            |path: &Path, reason: String| DataError::BadFolder { key: opts.key.clone(), path: path.into(), reason };
        let mut walk = Walk::default();
        let mut warnings = Vec::new();
        let (root, files, labels, classes) = if let Some(list) = &opts.file_list {
            let text = std::fs::read_to_string(list).map_err(|e| io_err(list, e))?;
            let base = list.parent().unwrap_or(Path::new("."));
            let files: Vec<PathBuf> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| base.join(l))
                .collect();
            (list.clone(), files, None, None)
        } else {
            if !dir.is_dir() {
                return Err(folder_err(dir, "not a folder".into()));
            }
            walk.enter(dir)?;
            let mut subdirs = Vec::new();
            let mut top_images = 0usize;
            for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
                let p = e.map_err(|e| io_err(dir, e))?.path();
                if p.is_dir() {
                    subdirs.push(p);
                } else if is_image(&p) {
                    top_images += 1;
                }
            }
            subdirs.sort();
            if !subdirs.is_empty() && top_images == 0 {
                let mut files = Vec::new();
                let mut labels = Vec::new();
                let mut classes = Vec::new();
                // Every class folder is marked first: a link inside one class to another (or
                // to the root) never moves the other's files under the wrong label.
                let mut class_dirs = Vec::new();
                for s in &subdirs {
                    if walk.enter(s)? {
                        class_dirs.push(s);
                    } else {
                        warnings.push(format!(
                            "{}: this class folder is a link to a folder already read as another class; it gets no images",
                            s.display()
                        ));
                    }
                }
                for s in &subdirs {
                    let f = if class_dirs.contains(&s) { walk.walk(s)? } else { Vec::new() };
                    // torchvision refuses classes without files; we keep them (the labels stay
                    // those of the sorted folder names) and say so.
                    if f.is_empty() && class_dirs.contains(&s) {
                        warnings.push(format!(
                            "class folder {} has no images (extensions {}): a class with no examples",
                            s.display(),
                            IMAGE_EXTENSIONS.join(", ")
                        ));
                    }
                    labels.extend(std::iter::repeat_n(classes.len() as u32, f.len()));
                    files.extend(f);
                    classes.push(s.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
                }
                (dir.to_path_buf(), files, Some(labels), Some(classes))
            } else {
                (dir.to_path_buf(), walk.walk(dir)?, None, None)
            }
        };
        if !walk.repeated_links.is_empty() {
            let shown: Vec<String> = walk.repeated_links.iter().take(3).map(|p| p.display().to_string()).collect();
            warnings.push(format!(
                "{} folder link(s) lead to a folder already read (a loop or a second link to it) and were not read again: {}{}",
                walk.repeated_links.len(),
                shown.join(", "),
                if walk.repeated_links.len() > 3 { ", ..." } else { "" }
            ));
        }
        if opts.require_labels {
            match &classes {
                Some(c) if c.len() >= 2 => {}
                Some(c) => {
                    return Err(folder_err(
                        &root,
                        format!(
                            "a labeled evaluation folder needs at least 2 class subfolders, found {} ({})",
                            c.len(),
                            c.join(", ")
                        ),
                    ))
                }
                None => {
                    return Err(folder_err(
                        &root,
                        "an evaluation folder needs the ImageFolder layout (one subfolder per class, no images at the top level)".into(),
                    ))
                }
            }
        }
        if files.is_empty() {
            return Err(folder_err(&root, format!("no images found (extensions {})", IMAGE_EXTENSIONS.join(", "))));
        }
        let max_px = opts.max_image_pixels;
        let scans: Vec<Result<Header>> = files.par_iter().map(|p| scan_header_limited(p, max_px)).collect();
        let mut keep_files = Vec::with_capacity(files.len());
        let mut keep_labels = Vec::with_capacity(files.len());
        let mut headers = Vec::with_capacity(files.len());
        let mut scan_bad = 0;
        let mut first_bad = None;
        let mut large = Vec::new();
        for (k, (f, s)) in files.into_iter().zip(scans).enumerate() {
            match s {
                Ok(h) => {
                    if check_pixels(h.width as u64, h.height as u64, max_px) == Ok(PixelCheck::Large) {
                        large.push(format!("{} ({}x{})", f.display(), h.width, h.height));
                    }
                    headers.push(h);
                    keep_files.push(f);
                    if let Some(l) = &labels {
                        keep_labels.push(l[k]);
                    }
                }
                Err(e) if opts.skip_bad => {
                    first_bad.get_or_insert(e);
                    scan_bad += 1;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = first_bad {
            warnings.push(format!("{scan_bad} unreadable image(s) skipped at the header scan; the first: {e}"));
        }
        if !large.is_empty() {
            warnings.push(format!(
                "{} image(s) above data.max_image_pixels ({max_px} pixels; up to twice that is decoded, like Pillow's \
                 DecompressionBombWarning): {}{}",
                large.len(),
                large.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                if large.len() > 3 { ", ..." } else { "" }
            ));
        }
        if keep_files.is_empty() {
            return Err(folder_err(&root, format!("all {scan_bad} image files are unreadable")));
        }
        if opts.image_size > 0 && !headers.iter().any(|h| h.width.min(h.height) >= opts.image_size) {
            let largest = headers.iter().map(|h| h.width.min(h.height)).max().unwrap_or(0);
            return Err(DataError::BadConfig {
                key: "data.image_size".into(),
                reason: format!(
                    "{} is larger than every image of {} (largest shorter side {largest} px)",
                    opts.image_size,
                    root.display()
                ),
            });
        }
        let n = keep_files.len();
        Ok(Self {
            root,
            files: keep_files,
            headers,
            labels: labels.map(|_| keep_labels),
            classes,
            skip_bad: opts.skip_bad,
            scan_bad,
            broken: (0..n).map(|_| AtomicBool::new(false)).collect(),
            decode_bad: AtomicUsize::new(0),
            cache: opts.cache.then(|| (0..n).map(|_| OnceLock::new()).collect()),
            cache_min_side: opts.cache_min_side,
            max_image_pixels: max_px,
            links_followed: walk.links,
            warnings,
        })
    }

    /// Symbolic links to folders met by the walk (followed, or refused because their folder
    /// was already read).
    pub fn links_followed(&self) -> usize {
        self.links_followed
    }

    /// What the caller should show the user: class folders without images, folder links not
    /// read again (loops), images skipped at the scan (the first named), images above the
    /// pixel limit.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The folder (or file list) the images came from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image files, in index order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn decode_one(&self, i: usize, hint: LoadHint) -> Result<Image> {
        if let Some(cache) = &self.cache {
            if let Some(img) = cache[i].get() {
                return Ok(img.clone());
            }
            let h = &self.headers[i];
            let short = h.width.min(h.height);
            let k = [8u32, 4, 2]
                .into_iter()
                .find(|&k| self.cache_min_side > 0 && short / k as usize >= self.cache_min_side)
                .unwrap_or(1);
            let img = decode_file_limited(
                &self.files[i],
                LoadHint { max_reduction: k, ..LoadHint::FULL },
                self.max_image_pixels,
            )?;
            return Ok(cache[i].get_or_init(|| img).clone());
        }
        decode_file_limited(&self.files[i], hint, self.max_image_pixels)
    }
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn load(&self, index: usize, hint: LoadHint) -> Result<Image> {
        let n = self.files.len();
        // Broken files are replaced by the next good one, the same one every time.
        for step in 0..n {
            let i = (index + step) % n;
            if self.broken[i].load(Ordering::Relaxed) {
                continue;
            }
            match self.decode_one(i, hint) {
                Ok(img) => return Ok(img),
                Err(e) if !self.skip_bad => return Err(e),
                Err(_) => {
                    if !self.broken[i].swap(true, Ordering::Relaxed) {
                        self.decode_bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Err(DataError::BadFolder {
            key: "data.dir".into(),
            path: self.root.clone(),
            reason: "every image failed to decode".into(),
        })
    }

    fn dims(&self, index: usize) -> Option<(usize, usize)> {
        if self.broken[index].load(Ordering::Relaxed) {
            // The replacement's size is unknown here: let the pipeline decode first.
            return None;
        }
        let h = &self.headers[index];
        Some((h.width, h.height))
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[index])
    }

    fn num_classes(&self) -> Option<usize> {
        self.classes.as_ref().map(Vec::len)
    }

    fn class_names(&self) -> Option<Vec<String>> {
        self.classes.clone()
    }

    fn describe(&self, index: usize) -> String {
        self.files[index].display().to_string()
    }

    fn bad_images(&self) -> usize {
        self.scan_bad + self.decode_bad.load(Ordering::Relaxed)
    }
}
