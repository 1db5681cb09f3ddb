//! Published PyTorch weights in: `torch.save` zip files (`.pth`, `.pt`, Lightning `.ckpt`) and
//! safetensors, without Python at run time, mapped onto our torchvision-named variables with a
//! strict check.
//!
//! Reading ([`read`]): a zip archive is unpickled by a weights-only reader ([`pickle`]: tensor
//! rebuilds, storages, (ordered) dicts, lists, numbers, strings; any other Python global is an
//! error naming it) and its storages are read from the archive's `data/` records. The legacy
//! (pre-1.6, non-zip) format and TorchScript archives are refused with what to do instead.
//! Nested containers are flattened into dotted names (`model.module.backbone.conv1.weight`).
//!
//! Layouts ([`Layout`], recognized from the names): a torchvision/timm ResNet state dict (`fc.*`
//! dropped with a note; the official Barlow Twins `resnet50.pth` is one without `fc`), the
//! official `main.py` checkpoint (`dict(epoch, model, optimizer)` with `module.backbone.*`,
//! `module.projector.*`, `module.bn.*`), a solo-learn / Lightning checkpoint (`state_dict` with
//! `backbone.*`, `projector.*`), and ours (`encoder.*`, `projector.*`). Every tensor the
//! encoder (and, where asked, the projector) expects must be present with its shape; anything
//! else is listed, so a wrong architecture fails with the key lists ([`ModelError::Import`]).
pub mod pickle;

use crate::{BarlowTwins, Encoder, ModelError, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The container format of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `torch.save`'s zip archive (PyTorch >= 1.6; Lightning `.ckpt` files are the same).
    TorchZip,
    /// safetensors.
    Safetensors,
}

/// Every tensor of a weights file under its flattened name.
#[derive(Debug)]
pub struct ForeignFile {
    /// The file.
    pub path: PathBuf,
    /// Its container format.
    pub format: FileFormat,
    /// Tensors (CPU, contiguous) under dotted names, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// Tensors of training state that were not read (names only): a zip archive's optimizer
    /// and scheduler state (`optimizer.*`, `optimizer_states.*`, `lr_schedulers.*`), which
    /// can be as large as the model and is never loaded.
    pub skipped: Vec<String>,
}

fn err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Foreign { path: path.into(), reason: reason.into() }
}

/// Reads a weights file: a `torch.save` zip archive or safetensors (sniffed from the bytes,
/// not the extension).
pub fn read(path: impl AsRef<Path>) -> Result<ForeignFile> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let (tensors, skipped) = read_zip(path, &bytes)?;
        return Ok(ForeignFile { path: path.into(), format: FileFormat::TorchZip, tensors, skipped });
    }
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        if n.checked_add(8).is_some_and(|e| e <= bytes.len() as u64) {
            let tensors =
                Tensor::read_safetensors(path).map_err(|e| err(path, format!("bad safetensors file: {e}")))?;
            return Ok(ForeignFile {
                path: path.into(),
                format: FileFormat::Safetensors,
                tensors,
                skipped: Vec::new(),
            });
        }
        return Err(err(
            path,
            format!("truncated safetensors file: its header says {n} bytes, the file has {}", bytes.len()),
        ));
    }
    if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]) {
        return Err(err(
            path,
            "is in PyTorch's legacy (pre-1.6, non-zip) torch.save format, which is not read here; \
             re-save it once with PyTorch >= 1.6: torch.save(torch.load(f, weights_only=True), f2)",
        ));
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(err(
        path,
        format!(
            "is neither a torch.save zip archive nor safetensors (first bytes {}; {} bytes)",
            head.join(" "),
            bytes.len()
        ),
    ))
}

/// Training state a model never loads: read by name only.
const TRAINING_STATE: [&str; 3] = ["optimizer.", "optimizer_states.", "lr_schedulers."];

type ZipTensors = (Vec<(String, Tensor)>, Vec<String>);

fn read_zip(path: &Path, bytes: &[u8]) -> Result<ZipTensors> {
    let zerr = |e: zip::result::ZipError| err(path, format!("not a readable zip archive (truncated?): {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zerr)?;
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    let pkl = names.iter().find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).cloned();
    let Some(pkl) = pkl else {
        if names.iter().any(|n| n.ends_with("/constants.pkl") || n.contains("/code/")) {
            return Err(err(path, "is a TorchScript archive (torch.jit.save), not a state dict: load it with torch.jit.load, or save model.state_dict() with torch.save"));
        }
        return Err(err(path, "is a zip archive without <name>/data.pkl: not a torch.save file"));
    };
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut record = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(|e| err(path, format!("record {name}: {e}")))?;
        let mut out = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut out).map_err(|e| err(path, format!("record {name}: {e} (truncated?)")))?;
        Ok(out)
    };
    if let Ok(order) = record(&format!("{prefix}byteorder")) {
        if order != b"little" {
            return Err(err(path, format!("byte order {:?} is not supported", String::from_utf8_lossy(&order))));
        }
    }
    let data = record(&pkl)?;
    let value = pickle::load(&data).map_err(|e| match e {
        pickle::PickleError::Global(g) => err(
            path,
            format!(
                "{pkl} names the Python global `{g}`, which a weights-only reader does not load \
                 (torch.load(weights_only=True) refuses it too); save only the tensors, e.g. \
                 torch.save({{'state_dict': ckpt['state_dict']}}, f)"
            ),
        ),
        pickle::PickleError::Malformed(m) => err(path, format!("{pkl}: {m}")),
    })?;
    let mut leaves = Vec::new();
    flatten(&value, String::new(), &mut leaves);
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(leaves.len());
    let mut skipped = Vec::new();
    for (name, t) in leaves {
        if TRAINING_STATE.iter().any(|p| name.starts_with(p)) {
            skipped.push(name);
            continue;
        }
        let s = &t.storage;
        if !storages.contains_key(&s.key) {
            let raw = record(&format!("{prefix}data/{}", s.key))?;
            let want = s.numel as usize * s.kind.elt_size_in_bytes();
            if raw.len() != want {
                return Err(err(
                    path,
                    format!("storage {} of `{name}` has {} bytes, expected {want}", s.key, raw.len()),
                ));
            }
            let st = Tensor::f_from_data_size(&raw, &[s.numel], s.kind)
                .map_err(|e| err(path, format!("storage {}: {e}", s.key)))?;
            storages.insert(s.key.clone(), st);
        }
        let st = &storages[&s.key];
        let last = t.size.iter().zip(&t.stride).map(|(n, s)| (n - 1).max(0) * s).sum::<i64>() + t.offset;
        if t.size.iter().all(|&n| n > 0) && (t.offset < 0 || last >= s.numel) {
            return Err(err(path, format!("`{name}` reaches past its storage {}", s.key)));
        }
        let v = st
            .f_as_strided(&t.size, &t.stride, Some(t.offset))
            .and_then(|v| v.f_contiguous())
            .map_err(|e| err(path, format!("`{name}`: {e}")))?;
        out.push((name, v));
    }
    Ok((out, skipped))
}

/// Tensors of a value under dotted names (`a.b.0.c`); other leaves are skipped.
fn flatten(v: &pickle::Value, prefix: String, out: &mut Vec<(String, pickle::TensorRef)>) {
    use pickle::Value as V;
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        V::Tensor(t) => out.push((prefix, (**t).clone())),
        V::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                let key = match k {
                    V::Str(s) => s.clone(),
                    V::Int(i) => i.to_string(),
                    _ => continue,
                };
                flatten(v, join(&key), out);
            }
        }
        V::List(l) => {
            for (i, v) in l.borrow().iter().enumerate() {
                flatten(v, join(&i.to_string()), out);
            }
        }
        V::Tuple(t) => {
            for (i, v) in t.iter().enumerate() {
                flatten(v, join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// Which published layout a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A torchvision / timm ResNet `state_dict()` (torchvision names, with or without `fc`);
    /// the official Barlow Twins `resnet50.pth` is one without `fc`.
    Torchvision,
    /// The official `main.py` checkpoint: `model` = the DDP `BarlowTwins` module's state dict
    /// (`module.backbone.*`, `module.projector.*`, `module.bn.*`), plus `epoch`, `optimizer`.
    OfficialFull,
    /// A solo-learn / Lightning checkpoint: `state_dict` with `backbone.*` and `projector.*`.
    SoloLearn,
    /// Ours: `encoder.*` (and `projector.*`) from `save_full`, or a training checkpoint.
    Ours,
}

/// A file's tensors split into encoder and projector parts under our names, with what was
/// dropped and why.
#[derive(Debug)]
pub struct Imported {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: FileFormat,
    /// The layout recognized.
    pub layout: Layout,
    /// Encoder tensors under torchvision names (`conv1.weight`).
    pub encoder: Vec<(String, Tensor)>,
    /// Projector tensors under our names without prefix (`0.weight`, `1.running_mean`).
    pub projector: Vec<(String, Tensor)>,
    /// One line per group of tensors that was not mapped (`fc.*`, `module.bn.*`, ...).
    pub notes: Vec<String>,
}

fn strip_all<'a>(names: impl Iterator<Item = &'a str>, prefix: &str) -> bool {
    let mut any = false;
    for n in names {
        if !n.starts_with(prefix) {
            return false;
        }
        any = true;
    }
    any
}

/// Splits a file's tensors by layout: which prefix is the encoder, which the projector, and
/// what is dropped (with a note per dropped group).
pub fn recognize(file: ForeignFile) -> Result<Imported> {
    let ForeignFile { path, format, tensors, skipped } = file;
    let has = |p: &str| tensors.iter().any(|(k, _)| k.starts_with(p));
    // (layout, container prefix, encoder prefix, projector prefix)
    let (layout, root, enc, proj) = if has("state_dict.backbone.") {
        (Layout::SoloLearn, "state_dict.", "backbone.", Some("projector."))
    } else if has("model.module.backbone.") {
        (Layout::OfficialFull, "model.", "module.backbone.", Some("module.projector."))
    } else if has("model.backbone.") {
        (Layout::OfficialFull, "model.", "backbone.", Some("projector."))
    } else if has("state_dict.encoder.") {
        (Layout::Ours, "state_dict.", "encoder.", Some("projector."))
    } else if has("encoder.") {
        (Layout::Ours, "", "encoder.", Some("projector."))
    } else if strip_all(tensors.iter().map(|(k, _)| k.as_str()), "state_dict.") {
        (Layout::Torchvision, "state_dict.", "", None)
    } else if strip_all(tensors.iter().map(|(k, _)| k.as_str()), "module.") {
        (Layout::Torchvision, "module.", "", None)
    } else {
        (Layout::Torchvision, "", "", None)
    };
    let mut encoder = Vec::new();
    let mut projector = Vec::new();
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    for (k, t) in tensors {
        let inner = k.strip_prefix(root);
        let group = |k: &str| match k.split('.').next() {
            Some(first) if !first.is_empty() && first != k => format!("{first}.*"),
            _ => k.to_string(),
        };
        match inner {
            Some(i) if proj.is_some_and(|p| i.starts_with(p)) => {
                projector.push((i[proj.unwrap().len()..].to_string(), t));
            }
            Some(i) if i.starts_with(enc) => {
                let name = &i[enc.len()..];
                if layout == Layout::Torchvision && name.starts_with("fc.") {
                    *dropped.entry(format!("{root}fc.* (the classifier head)")).or_default() += 1;
                } else {
                    encoder.push((name.to_string(), t));
                }
            }
            Some(i) => {
                let g = group(i);
                let why = match (layout, g.as_str()) {
                    (Layout::OfficialFull, "module.*") if i.starts_with("module.bn.") => {
                        "module.bn.* (the loss's affine-free batch norm statistics; our loss normalizes per batch)"
                            .to_string()
                    }
                    (Layout::SoloLearn, "classifier.*") => "classifier.* (the online linear probe)".to_string(),
                    _ => format!("{root}{g}"),
                };
                *dropped.entry(why).or_default() += 1;
            }
            None => *dropped.entry(group(&k)).or_default() += 1,
        }
    }
    for k in skipped {
        let first = k.split('.').next().unwrap_or_default();
        *dropped.entry(format!("{first}.* (training state, not read)")).or_default() += 1;
    }
    let notes = dropped.into_iter().map(|(g, n)| format!("dropped {n} tensor(s) {g}")).collect();
    Ok(Imported { path, format, layout, encoder, projector, notes })
}

/// Reads and recognizes a file ([`read`] then [`recognize`]).
pub fn import(path: impl AsRef<Path>) -> Result<Imported> {
    recognize(read(path)?)
}

/// A guess of the torchvision ResNet a set of encoder names belongs to (`resnet50`), for error
/// messages: bottleneck blocks have `conv3`; ResNet-18 has 2 blocks in `layer3`, 34/50 have 6.
pub fn guess_arch<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Option<&'static str> {
    let blocks = names.clone().filter(|n| n.starts_with("layer3.") && n.ends_with(".conv1.weight")).count();
    let bottleneck = names.clone().any(|n| n.ends_with(".conv3.weight"));
    let cifar = names.clone().any(|n| n == "conv1.weight");
    if !cifar {
        return None;
    }
    match (blocks, bottleneck) {
        (2, false) => Some("resnet18 (or cifar-resnet18)"),
        (6, false) => Some("resnet34 (or cifar-resnet34)"),
        (6, true) => Some("resnet50 (or cifar-resnet50)"),
        (23, true) => Some("resnet101 (not supported)"),
        (36, true) => Some("resnet152 (not supported)"),
        _ => None,
    }
}

/// Strict match of `tensors` against `(name, variable)` pairs: every variable present with its
/// shape, no extra tensor. Floating tensors of another float kind are converted. Returns the
/// pairs to copy, or the three lists.
fn match_strict<'a>(
    path: &Path,
    part: &'static str,
    tensors: &'a [(String, Tensor)],
    expected: &[(String, &'a Tensor)],
    layout: Layout,
) -> Result<Vec<(&'a Tensor, Tensor)>> {
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut pairs = Vec::new();
    let (mut missing, mut misshaped) = (Vec::new(), Vec::new());
    for (name, var) in expected {
        match by_name.get(name.as_str()) {
            None => missing.push(name.clone()),
            Some(t) => {
                let float = |k: Kind| matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
                let kind_ok = t.kind() == var.kind() || (float(t.kind()) && float(var.kind()));
                if t.size() != var.size() || !kind_ok {
                    misshaped.push(format!(
                        "{name}: file {:?} {:?}, model {:?} {:?}",
                        t.size(),
                        t.kind(),
                        var.size(),
                        var.kind()
                    ));
                } else {
                    let t = t.f_to_kind(var.kind()).map_err(|e| err(path, format!("`{name}`: {e}")))?;
                    pairs.push((*var, t));
                }
            }
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let unexpected: Vec<String> =
        tensors.iter().map(|(k, _)| k).filter(|k| !known.contains(k.as_str())).cloned().collect();
    if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
        return Ok(pairs);
    }
    let hint = if part == "encoder" {
        guess_arch(tensors.iter().map(|(k, _)| k.as_str()))
            .map(|a| format!("; the file's encoder looks like {a}"))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Err(ModelError::Import(Box::new(crate::ImportMismatch {
        path: path.into(),
        part,
        layout: format!("{layout:?}"),
        missing,
        unexpected,
        misshaped,
        hint,
    })))
}

fn copy_all(path: &Path, pairs: Vec<(&Tensor, Tensor)>) -> Result<()> {
    tch::no_grad(|| {
        for (var, t) in pairs {
            var.shallow_clone().f_copy_(&t).map_err(|e| err(path, format!("copying: {e}")))?;
        }
        Ok(())
    })
}

impl Encoder {
    /// Loads the encoder part of an [`Imported`] file, strictly (every variable present with its
    /// shape; no other encoder tensor). The encoder is unchanged on error.
    pub fn load_imported(&self, im: &Imported) -> Result<()> {
        let expected: Vec<(String, &Tensor)> = self.vars.iter().map(|v| (v.name.clone(), &v.tensor)).collect();
        let pairs = match_strict(&im.path, "encoder", &im.encoder, &expected, im.layout)?;
        copy_all(&im.path, pairs)
    }
}

/// What [`BarlowTwins::load_imported`] loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Encoder only (the file has no projector, or it was not asked for).
    Encoder,
    /// Encoder and projector.
    EncoderAndProjector,
}

impl BarlowTwins {
    /// Loads an [`Imported`] file: the encoder always, the projector when the file has one and
    /// `projector` is true (then strictly too: a projector of other widths is an error listing
    /// the keys, see `model.projector`). Nothing is copied unless every part matches.
    pub fn load_imported(&self, im: &Imported, projector: bool) -> Result<Loaded> {
        let enc_vars: Vec<(String, &Tensor)> = self.encoder.vars.iter().map(|v| (v.name.clone(), &v.tensor)).collect();
        let mut pairs = match_strict(&im.path, "encoder", &im.encoder, &enc_vars, im.layout)?;
        let with_proj = projector && !im.projector.is_empty();
        if with_proj {
            let proj_vars: Vec<(String, &Tensor)> = self
                .vars
                .iter()
                .filter_map(|v| Some((v.name.strip_prefix("projector.")?.to_string(), &v.tensor)))
                .collect();
            pairs.extend(match_strict(&im.path, "projector", &im.projector, &proj_vars, im.layout)?);
        }
        copy_all(&im.path, pairs)?;
        Ok(if with_proj { Loaded::EncoderAndProjector } else { Loaded::Encoder })
    }
}
