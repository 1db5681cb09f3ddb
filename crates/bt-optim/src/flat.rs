//! Parameters as views into one chunk-padded flat buffer.
use crate::{chain, check_params, checked_grad, torch, OptimError, Result};
use tch::{Device, Kind, Tensor};

/// Elements per chunk. Every parameter starts on a chunk boundary and is zero-padded to a whole
/// number of chunks, so the buffer views as `[chunks, CHUNK]`: per-tensor sums are one
/// vectorized row sum plus a tiny chunk-to-tensor `index_add`, and per-tensor scalars broadcast
/// back as a `[chunks, 1]` column (no per-element index or `repeat_interleave`). Padding costs at
/// most `CHUNK - 1` floats per tensor (about 0.2% of the seed model) and stays exactly 0: its
/// gradient is 0, so its moments, update and decay are 0 too.
pub const CHUNK: i64 = 1024;

/// Every parameter of an optimizer in one contiguous f32 buffer.
///
/// # Shapes
/// `flat`: `[chunks * CHUNK]`; a "segment vector" is `[P]` (one value per parameter, f64);
/// a "chunk column" is `[chunks, 1]`.
#[derive(Debug)]
pub struct FlatParams {
    names: Vec<String>,
    params: Vec<Tensor>,
    shapes: Vec<Vec<i64>>,
    numels: Vec<i64>,
    offsets: Vec<i64>,
    flat: Tensor,
    chunk_seg: Tensor,
    zero_pad: Tensor,
    device: Device,
}

impl FlatParams {
    /// Moves `params` (f32, one device) into a flat buffer; each variable becomes a view into it
    /// (via `set_data`, so every handle to the variable, e.g. the `VarStore`'s, sees the move).
    pub fn new(params: Vec<(String, Tensor)>) -> Result<Self> {
        let device = check_params(&params)?;
        let mut offsets = Vec::with_capacity(params.len());
        let mut chunk_seg: Vec<i64> = Vec::new();
        let mut total = 0i64;
        for (i, (_, t)) in params.iter().enumerate() {
            offsets.push(total);
            let chunks = (t.numel() as i64 + CHUNK - 1) / CHUNK;
            chunk_seg.extend(std::iter::repeat_n(i as i64, chunks as usize));
            total += chunks * CHUNK;
        }
        let flat = torch("zeros(flat)", Tensor::f_zeros([total], (Kind::Float, device)))?;
        let (mut names, mut views, mut shapes, mut numels) = (vec![], vec![], vec![], vec![]);
        tch::no_grad(|| -> Result<()> {
            for ((name, mut t), &off) in params.into_iter().zip(&offsets) {
                let n = t.numel() as i64;
                let shape = t.size();
                let view = torch("narrow", flat.f_narrow(0, off, n))?;
                torch("copy_", view.shallow_clone().f_copy_(&torch("reshape", t.f_reshape([-1]))?))?;
                torch("set_data", t.f_set_data(&torch("view", view.f_view(shape.as_slice()))?))?;
                names.push(name);
                views.push(t);
                shapes.push(shape);
                numels.push(n);
            }
            Ok(())
        })?;
        Ok(Self {
            names,
            params: views,
            shapes,
            numels,
            offsets,
            flat,
            chunk_seg: torch("chunk index", Tensor::from_slice(&chunk_seg).f_to_device(device))?,
            zero_pad: torch("zeros(pad)", Tensor::f_zeros([CHUNK], (Kind::Float, device)))?,
            device,
        })
    }

    /// The flat parameter buffer (1-D).
    pub fn flat(&self) -> &Tensor {
        &self.flat
    }

    /// Parameter names, in layout order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Parameter shapes, in layout order.
    pub fn shapes(&self) -> &[Vec<i64>] {
        &self.shapes
    }

    /// The variables (views into [`flat`](Self::flat)).
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Number of chunks (rows of the `[chunks, CHUNK]` view).
    pub fn chunks(&self) -> i64 {
        self.flat.numel() as i64 / CHUNK
    }

    /// A zero buffer with the layout of [`flat`](Self::flat).
    pub fn zeros_like(&self) -> Result<Tensor> {
        torch("zeros_like(flat)", self.flat.f_zeros_like())
    }

    /// The device of the buffer.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The gradients (checked against their parameters) and zero padding, in the flat layout.
    fn grad_parts(&self) -> Result<Vec<Tensor>> {
        let mut parts = Vec::with_capacity(2 * self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let n = self.numels[i];
            parts.push(match checked_grad(&self.names[i], p)? {
                Some(g) => torch("reshape(grad)", g.f_reshape([-1]))?,
                None => torch("zeros(grad)", Tensor::f_zeros([n], (Kind::Float, self.device)))?,
            });
            let pad = (CHUNK - n % CHUNK) % CHUNK;
            if pad > 0 {
                parts.push(torch("narrow(pad)", self.zero_pad.f_narrow(0, 0, pad))?);
            }
        }
        Ok(parts)
    }

    /// All gradients in the flat layout, with one `cat` (undefined gradients count as 0).
    ///
    /// # Errors
    /// [`OptimError::Grad`] for a gradient that does not fit its parameter; libtorch errors.
    pub fn grads(&self) -> Result<Tensor> {
        torch("cat(grads)", Tensor::f_cat(&self.grad_parts()?, 0))
    }

    /// [`grads`](Self::grads) into a preallocated flat-layout buffer (no allocation: on CPU a
    /// fresh 300 MB buffer per step costs more in page faults than the copy itself).
    ///
    /// # Errors
    /// As [`grads`](Self::grads).
    pub fn grads_into(&self, out: &Tensor) -> Result<()> {
        torch("cat_out(grads)", Tensor::f_cat_out(out, &self.grad_parts()?, 0)).map(|_| ())
    }

    /// Per-parameter sums of a flat-layout tensor (`[P]`, f64): f32 row sums of the
    /// `[chunks, CHUNK]` view, then an f64 `index_add` of the rows into their parameters.
    pub fn segment_sums(&self, x: &Tensor) -> Result<Tensor> {
        chain("segment sums", || {
            let rows = x.f_view([-1, CHUNK])?.f_sum_dim_intlist(1, false, Kind::Float)?.f_to_kind(Kind::Double)?;
            Tensor::f_zeros([self.params.len() as i64], (Kind::Double, self.device))?.f_index_add(
                0,
                &self.chunk_seg,
                &rows,
            )
        })
    }

    /// Per-parameter count (`[P]`, f64) of chunks of a flat-layout tensor that hold a NaN or an
    /// inf: one `aminmax` over the `[chunks, CHUNK]` view (NaN propagates through both; unlike a
    /// sum, neither can overflow on large finite values), then a `[chunks]` `index_add`.
    pub fn segment_nonfinite(&self, x: &Tensor) -> Result<Tensor> {
        chain("segment nonfinite", || {
            let (lo, hi) = x.f_view([-1, CHUNK])?.f_aminmax(Some(1), false)?;
            let bad = lo.f_isfinite()?.f_logical_and(&hi.f_isfinite()?)?.f_logical_not()?.f_to_kind(Kind::Double)?;
            Tensor::f_zeros([self.params.len() as i64], (Kind::Double, self.device))?.f_index_add(
                0,
                &self.chunk_seg,
                &bad,
            )
        })
    }

    /// Per-parameter squared L2 norms of a flat-layout tensor (`[P]`, f64).
    pub fn segment_sq_norms(&self, x: &Tensor) -> Result<Tensor> {
        self.segment_sums(&torch("square", x.f_square())?)
    }

    /// A `[P]` segment vector broadcast to a `[chunks, 1]` f32 chunk column.
    pub fn chunk_column(&self, per_segment: &Tensor) -> Result<Tensor> {
        chain("chunk column", || per_segment.f_to_kind(Kind::Float)?.f_index_select(0, &self.chunk_seg)?.f_unsqueeze(1))
    }

    /// A `[P]` boolean mask from a per-parameter predicate on (name, shape).
    pub fn segment_mask(&self, f: impl Fn(&str, &[i64]) -> bool) -> Result<Tensor> {
        let v: Vec<bool> = self.names.iter().zip(&self.shapes).map(|(n, s)| f(n, s)).collect();
        torch("segment mask", Tensor::from_slice(&v).f_to_device(self.device))
    }

    /// Per-parameter views (original shapes) of a flat-layout tensor.
    pub fn split(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.offsets
            .iter()
            .zip(&self.numels)
            .zip(&self.shapes)
            .map(|((&o, &n), s)| chain("split", || x.f_narrow(0, o, n)?.f_view(s.as_slice())))
            .collect()
    }

    /// Zeroes every gradient in place (keeps the gradient tensors alive).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Writes named per-parameter tensors (`<prefix><name>`) from `state` into the flat-layout
    /// buffer `dst`.
    pub fn load_into(&self, dst: &Tensor, state: &[(String, Tensor)], prefix: &str) -> Result<()> {
        for (view, (name, shape)) in self.split(dst)?.into_iter().zip(self.names.iter().zip(&self.shapes)) {
            let key = format!("{prefix}{name}");
            let src = crate::state_entry(state, &key, shape)?;
            tch::no_grad(|| view.shallow_clone().f_copy_(src))
                .map_err(|e| OptimError::State { key, reason: e.to_string() })?;
        }
        Ok(())
    }

    /// Named copies (`<prefix><name>`) of the per-parameter slices of `src`.
    pub fn export(&self, src: &Tensor, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        self.names
            .iter()
            .zip(self.split(src)?)
            .map(|(n, v)| Ok((format!("{prefix}{n}"), torch("copy(state)", crate::f_copy(&v))?)))
            .collect()
    }
}
