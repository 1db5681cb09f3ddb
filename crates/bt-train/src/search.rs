//! Search and deduplicate images by their vectors: exact cosine k-nearest neighbours and
//! near-duplicate groups over an `embed` output (`X.npy` + `X.files.txt`), and a contact sheet
//! (query, then neighbours with scores) as PNG.
//!
//! Exact search by chunked matrix products: rows are L2-normalized once, then compared block by
//! block (`rows x cols` similarities at a time, [`CHUNK`]), keeping a running top-k (neighbours)
//! or the pairs above the threshold (duplicates, merged by union-find). Memory is the vectors
//! (`N x D x 4` bytes) plus one block, whatever N; time is `N x D` per query and `N² x D / 2`
//! for duplicates. That is fine up to a few million vectors on one machine (2M x 2048 = 16 GB of
//! vectors); beyond, or for many queries per second, use a vector index (FAISS: `IndexFlatIP` on
//! the same normalized `.npy`, or IVF/HNSW for approximate search).
use crate::error::{refuse, Error, Result};
use image::{imageops, Rgb, RgbImage};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Rows (and columns) of one similarity block: 4096 x 4096 f32 = 64 MiB.
pub const CHUNK: i64 = 4096;

/// Embeddings with the image of each row.
#[derive(Debug)]
pub struct Embeddings {
    /// `N x D` f32, each row L2-normalized (cosine similarity = dot product).
    pub unit: Tensor,
    /// The row names (`X.files.txt`), or `row <i>` when there is no such file.
    pub names: Vec<String>,
}

/// Reads a 2-D `.npy` (f32 or f64, C order) as an `N x D` f32 tensor.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let bad = |why: String| Error::checkpoint(path, format!("not a usable .npy embedding matrix: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no .npy magic".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(bad(format!("version {v}"))),
    };
    let header = bytes.get(start..start + hlen).ok_or_else(|| bad("truncated header".into()))?;
    let header = String::from_utf8_lossy(header);
    let descr = if header.contains("'<f4'") {
        Kind::Float
    } else if header.contains("'<f8'") {
        Kind::Double
    } else {
        return Err(bad(format!("dtype must be <f4 or <f8 ({header})")));
    };
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order".into()));
    }
    let shape_s = header.split("'shape':").nth(1).and_then(|s| s.split(')').next()).unwrap_or("");
    let dims: Vec<i64> =
        shape_s.trim_start_matches([' ', '(']).split(',').filter_map(|d| d.trim().parse().ok()).collect();
    if dims.len() != 2 {
        return Err(bad(format!("shape ({shape_s}) is not 2-D")));
    }
    let data = &bytes[start + hlen..];
    let want = (dims[0] * dims[1]) as usize * descr.elt_size_in_bytes();
    if data.len() != want {
        return Err(bad(format!("{} data bytes for shape {dims:?}, expected {want}", data.len())));
    }
    Ok(Tensor::f_from_data_size(data, &dims, descr)?.f_to_kind(Kind::Float)?)
}

impl Embeddings {
    /// Reads `X.npy` and, beside it, `X.files.txt` (one name per row; its line count must
    /// match). Non-finite rows are an error naming the first.
    pub fn open(npy: &Path) -> Result<Self> {
        let x = read_npy(npy)?;
        let n = x.size()[0];
        let finite = x.f_isfinite()?.f_all_dim(1, false)?;
        if let Some(bad) = Vec::<bool>::try_from(&finite)?.iter().position(|f| !f) {
            return Err(Error::checkpoint(npy, format!("row {bad} is not finite")));
        }
        let files = crate::embed::files_path(npy);
        let names = match std::fs::read_to_string(&files) {
            Ok(t) => {
                let names: Vec<String> = t.lines().map(String::from).collect();
                if names.len() as i64 != n {
                    return Err(Error::checkpoint(
                        &files,
                        format!("{} names for the {n} rows of {}", names.len(), npy.display()),
                    ));
                }
                names
            }
            Err(_) => (0..n).map(|i| format!("row {i}")).collect(),
        };
        Ok(Self { unit: unit_rows(&x)?, names })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The k rows most similar to `query` (a `D` vector, normalized here), best first, as
    /// `(row, cosine)`; `exclude` leaves one row out (the query's own row).
    pub fn nearest(&self, query: &Tensor, k: usize, exclude: Option<usize>) -> Result<Vec<(usize, f32)>> {
        let d = self.unit.size()[1];
        if query.size() != [d] {
            refuse!("query vector has shape {:?}, the embeddings have {d} columns", query.size());
        }
        let q = unit_rows(&query.f_to_kind(Kind::Float)?.f_view([1, d])?)?.f_view([d, 1])?;
        let n = self.unit.size()[0];
        let mut best: Vec<(usize, f32)> = Vec::new();
        let mut start = 0;
        while start < n {
            let len = CHUNK.min(n - start);
            let s = self.unit.f_narrow(0, start, len)?.f_matmul(&q)?.f_view([len])?;
            let take = (k + 1).min(len as usize) as i64;
            let (v, i) = s.f_topk(take, 0, true, true)?;
            let (v, i) = (Vec::<f32>::try_from(&v)?, Vec::<i64>::try_from(&i)?);
            best.extend(i.iter().zip(v).map(|(&i, v)| ((start + i) as usize, v)));
            best.retain(|(r, _)| Some(*r) != exclude);
            best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            best.truncate(k);
            start += len;
        }
        Ok(best)
    }

    /// Groups of rows whose cosine similarity is at least `threshold`, linked transitively
    /// (union-find over the pairs), each group sorted, groups ordered by their first row;
    /// singletons are left out. Blocks of [`CHUNK`] x [`CHUNK`] similarities.
    pub fn duplicates(&self, threshold: f32) -> Result<Vec<Vec<usize>>> {
        let n = self.unit.size()[0];
        let mut parent: Vec<usize> = (0..n as usize).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        let mut r0 = 0;
        while r0 < n {
            let rl = CHUNK.min(n - r0);
            let rows = self.unit.f_narrow(0, r0, rl)?;
            // Only the upper triangle: columns from the block's first row on.
            let mut c0 = r0;
            while c0 < n {
                let cl = CHUNK.min(n - c0);
                let s = rows.f_matmul(&self.unit.f_narrow(0, c0, cl)?.f_tr()?)?;
                let pairs = s.f_ge(threshold as f64)?.f_nonzero()?;
                let flat = Vec::<i64>::try_from(&pairs.f_flatten(0, -1)?)?;
                for p in flat.chunks_exact(2) {
                    let (i, j) = ((r0 + p[0]) as usize, (c0 + p[1]) as usize);
                    if i < j {
                        let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                        parent[a.max(b)] = a.min(b);
                    }
                }
                c0 += cl;
            }
            r0 += rl;
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for i in 0..n as usize {
            let r = find(&mut parent, i);
            groups.entry(r).or_default().push(i);
        }
        Ok(groups.into_values().filter(|g| g.len() > 1).collect())
    }
}

fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?.f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?.f_to_device(Device::Cpu)?.f_contiguous()?)
}

/// Duplicate groups as CSV (`group,row,file`) text.
pub fn groups_csv(groups: &[Vec<usize>], names: &[String]) -> String {
    let mut s = String::from("group,row,file\n");
    for (g, rows) in groups.iter().enumerate() {
        for &r in rows {
            let f = &names[r];
            let f = if f.contains([',', '"', '\n']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() };
            s.push_str(&format!("{g},{r},{f}\n"));
        }
    }
    s
}

/// Duplicate groups as JSON: `[{"group": 0, "files": [...], "rows": [...]}, ...]`.
pub fn groups_json(groups: &[Vec<usize>], names: &[String]) -> serde_json::Value {
    serde_json::Value::Array(
        groups
            .iter()
            .enumerate()
            .map(|(g, rows)| {
                serde_json::json!({
                    "group": g,
                    "rows": rows,
                    "files": rows.iter().map(|&r| names[r].clone()).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// One tile of a contact sheet.
#[derive(Debug, Clone)]
pub struct Tile {
    /// The image file.
    pub file: PathBuf,
    /// Caption line 1 (`query`, `#1 0.934`).
    pub caption: String,
}

/// Draws tiles in one row (`tile` px squares, image letterboxed, caption and file name under
/// it) and writes the PNG atomically. An unreadable image is an error naming it.
pub fn contact_sheet(tiles: &[Tile], tile: u32, out: &Path) -> Result<()> {
    let pad = 8u32;
    let text_h = 22u32;
    let w = tiles.len() as u32 * (tile + pad) + pad;
    let h = tile + 2 * pad + text_h;
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (i, t) in tiles.iter().enumerate() {
        let src = image::open(&t.file)
            .map_err(|e| Error::checkpoint(&t.file, format!("cannot draw it in the contact sheet: {e}")))?
            .to_rgb8();
        let th = imageops::thumbnail(&src, tile, tile);
        let x0 = pad + i as u32 * (tile + pad);
        let (ox, oy) = ((tile - th.width()) / 2, (tile - th.height()) / 2);
        imageops::overlay(&mut img, &th, (x0 + ox) as i64, (pad + oy) as i64);
        let y = (pad + tile + 3) as i64;
        let ink = if i == 0 { Rgb([200, 30, 30]) } else { Rgb([20, 20, 20]) };
        crate::plot::text(&mut img, x0 as i64, y, &t.caption, ink);
        let name = t.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let max = (tile / 6) as usize;
        let name: String = if name.chars().count() > max { name.chars().take(max).collect() } else { name };
        crate::plot::text(&mut img, x0 as i64, y + 10, &name, Rgb([90, 90, 90]));
    }
    let bytes = crate::plot::png_bytes(&img, out)?;
    crate::atomic::atomic_write(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(rows: &[[f32; 3]]) -> Embeddings {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let x = Tensor::from_slice(&flat).view([rows.len() as i64, 3]);
        Embeddings { unit: unit_rows(&x).unwrap(), names: (0..rows.len()).map(|i| format!("f{i}")).collect() }
    }

    #[test]
    fn nearest_is_by_cosine_and_excludes_self() {
        let e = emb(&[[1.0, 0.0, 0.0], [10.0, 1.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]);
        let q = e.unit.get(0);
        let nn = e.nearest(&q, 2, Some(0)).unwrap();
        assert_eq!(nn.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((nn[0].1 - 10.0 / 101f32.sqrt()).abs() < 1e-6, "{nn:?}");
    }

    #[test]
    fn duplicates_link_transitively_and_skip_singletons() {
        let e = emb(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.01, 0.0], [1.0, 0.02, 0.0], [0.0, 0.0, 1.0]]);
        assert_eq!(e.duplicates(0.9999).unwrap(), vec![vec![0, 2, 3]]);
        assert_eq!(e.duplicates(1.5).unwrap(), Vec::<Vec<usize>>::new());
    }
}
