//! Tensor files: safetensors with metadata (the `safetensors` crate directly, because tch's
//! writer has no metadata), and NumPy `.npy` (format 1.0) written by hand: a short header and
//! the raw little-endian data, readable by `numpy.load` and `torch.from_numpy`.
use crate::error::{Error, Result};

fn unsupported(what: String) -> Error {
    Error::Torch(tch::TchError::Kind(what))
}
use crate::error::ResultExt;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Bool => Dtype::BOOL,
        k => return Err(unsupported(format!("tensor kind {k:?} cannot be stored"))),
    })
}

fn kind(d: Dtype) -> Result<Kind> {
    Ok(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::BOOL => Kind::Bool,
        d => return Err(unsupported(format!("safetensors dtype {d:?} is not supported"))),
    })
}

/// Raw bytes of a tensor (moved to CPU, made contiguous).
pub fn raw_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let n = t.numel();
    let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, n)?;
    Ok(buf)
}

/// A safetensors file image of `tensors` with `metadata`.
pub fn safetensors_bytes(tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    HostTensors::copy(tensors)?.serialize(metadata)
}

/// Named tensors copied to host memory (name, dtype, shape, bytes): what a background thread
/// serializes while the originals keep changing on the device.
pub struct HostTensors(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

impl HostTensors {
    /// Copies every tensor to a host buffer (a device-to-host copy on CUDA, a memcpy on CPU).
    pub fn copy(tensors: &[(String, Tensor)]) -> Result<Self> {
        let raw = tensors
            .iter()
            .map(|(n, t)| {
                let shape = t.size().iter().map(|&d| d as usize).collect();
                Ok((n.clone(), dtype(t.kind())?, shape, raw_bytes(t).with_context(|| format!("tensor `{n}`"))?))
            })
            .collect::<Result<_>>()?;
        Ok(Self(raw))
    }

    /// The safetensors file image with `metadata`.
    pub fn serialize(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let views = self
            .0
            .iter()
            .map(|(n, d, s, b)| {
                let v = TensorView::new(*d, s.clone(), b).map_err(|e| unsupported(format!("tensor `{n}`: {e:?}")))?;
                Ok((n.as_str(), v))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = if metadata.is_empty() { None } else { Some(metadata) };
        safetensors::tensor::serialize(views, &meta).map_err(|e| unsupported(format!("serializing safetensors: {e:?}")))
    }
}

/// Named tensors and the string metadata of a safetensors file.
pub type TensorsAndMeta = (Vec<(String, Tensor)>, HashMap<String, String>);

/// Reads every tensor (on CPU) and the metadata of a safetensors file (sorted by name).
pub fn read_safetensors(path: &Path) -> Result<TensorsAndMeta> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e:?}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("bad safetensors header: {e:?}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let size: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::f_from_data_size(view.data(), &size, kind(view.dtype())?)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// A `.npy` (format 1.0) image of a f32, f64, i64 or i32 tensor of any rank.
pub fn npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let descr = match t.kind() {
        Kind::Float => "<f4",
        Kind::Double => "<f8",
        Kind::Int64 => "<i8",
        Kind::Int => "<i4",
        k => return Err(unsupported(format!("cannot write {k:?} as .npy"))),
    };
    let shape = t.size();
    let shape_s = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    // x86-64 and aarch64 are little-endian, as the header says.
    out.extend_from_slice(&raw_bytes(t)?);
    Ok(out)
}

/// Parses a `.npy` 1.0 header: `(descr, shape, data offset)`.
#[cfg(test)]
pub(crate) fn npy_header(bytes: &[u8]) -> std::result::Result<(String, Vec<usize>, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let h = std::str::from_utf8(&bytes[10..10 + hlen]).map_err(|e| e.to_string())?;
    let descr = h.split("'descr': '").nth(1).and_then(|s| s.split('\'').next()).ok_or("no descr")?;
    let shape = h.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or("no shape")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| s.to_string()))
        .collect::<std::result::Result<_, _>>()?;
    Ok((descr.to_string(), shape, 10 + hlen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parses() {
        let t = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([2, 3]);
        let b = npy_bytes(&t).unwrap();
        let (descr, shape, off) = npy_header(&b).unwrap();
        assert_eq!((descr.as_str(), shape, off % 64), ("<f4", vec![2, 3], 0));
        let vals: Vec<f32> = b[off..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(vals, vec![1., 2., 3., 4., 5., 6.]);
        let l = npy_bytes(&Tensor::from_slice(&[7i64, 8])).unwrap();
        let (d, s, _) = npy_header(&l).unwrap();
        assert_eq!((d.as_str(), s), ("<i8", vec![2]));
    }

    #[test]
    fn safetensors_metadata_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.safetensors");
        let t =
            vec![("a".to_string(), Tensor::from_slice(&[1f32, 2.])), ("b".to_string(), Tensor::from_slice(&[3i64]))];
        let meta = HashMap::from([("epoch".to_string(), "3".to_string())]);
        std::fs::write(&p, safetensors_bytes(&t, meta).unwrap()).unwrap();
        let (back, m) = read_safetensors(&p).unwrap();
        assert_eq!(m["epoch"], "3");
        assert_eq!(back[0].0, "a");
        assert!(back[0].1.equal(&t[0].1) && back[1].1.equal(&t[1].1));
    }
}
