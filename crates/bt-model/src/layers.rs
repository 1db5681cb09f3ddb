//! The building blocks: convolution (with TensorFlow's `same` padding done explicitly), batch
//! norm (Keras or PyTorch running-statistics semantics), linear, pools, and the variable
//! registry that gives every tensor its PyTorch state-dict name.
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use tch::{nn, Kind, Tensor};

/// What a variable is, for counting and for the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A trainable parameter (weights, biases, BN gamma/beta).
    Trainable,
    /// A float buffer updated in training mode: BN `running_mean` / `running_var` (Keras'
    /// "non-trainable" weights).
    Buffer,
    /// BN `num_batches_tracked` (int64 scalar): PyTorch bookkeeping, not a weight; kept so that
    /// state dicts load with `strict=True`, left out of parameter counts.
    Counter,
}

/// One variable of the model under its state-dict name (relative to the model root).
#[derive(Debug)]
pub struct NamedVar {
    /// State-dict name, e.g. `encoder.layer1.0.bn1.running_var`.
    pub name: String,
    /// The live tensor (shares storage with the model).
    pub tensor: Tensor,
    /// Trainable parameter, float buffer or counter.
    pub role: Role,
}

/// A row of the per-layer table printed by `model-summary`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    /// State-dict prefix of the layer (`encoder.layer2.0.conv1`), or a descriptive name for
    /// parameter-free layers (`encoder.maxpool`).
    pub name: String,
    /// Layer kind (`Conv2d 3x3/2 tf-same`, `BatchNorm2d`, `Linear`, ...).
    pub kind: String,
    /// Output shape for the traced input (batch dimension included).
    pub output_shape: Vec<i64>,
    /// Trainable parameters of this layer.
    pub trainable: i64,
    /// Non-trainable parameters (BN moving statistics) of this layer.
    pub non_trainable: i64,
}

/// Per-forward settings threaded through every layer.
pub(crate) struct Ctx<'a> {
    pub train: bool,
    /// Mixed precision as PyTorch's autocast: convolutions and linear layers take bf16 inputs and
    /// bf16 copies of the weights and return bf16; batch norm takes bf16 and computes in f32
    /// (f32 affine parameters and statistics) and returns bf16; ReLU, pools and residual adds run
    /// in bf16 (autocast leaves them in their input's kind).
    pub bf16: bool,
    pub trace: Option<&'a RefCell<Vec<LayerRow>>>,
    /// Cross-replica sum for synchronized batch norm (training mode only): batch statistics
    /// over every replica's rows. Set per part of the model (`BarlowTwins::set_sync_bn`);
    /// `None` is plain per-process batch norm.
    pub sync: Option<&'a dyn Fn(&Tensor) -> Tensor>,
}

impl Ctx<'_> {
    /// A forward without tracing or synchronized batch norm.
    pub(crate) fn plain(train: bool, bf16: bool) -> Self {
        Ctx { train, bf16, trace: None, sync: None }
    }

    pub(crate) fn record(&self, name: &str, kind: String, out: &Tensor, tr: i64, nt: i64) {
        if let Some(t) = self.trace {
            t.borrow_mut().push(LayerRow {
                name: name.to_string(),
                kind,
                output_shape: out.size(),
                trainable: tr,
                non_trainable: nt,
            });
        }
    }
}

/// What building a model records: its variables, and the first libtorch error (an allocation
/// that failed: out of memory, an unusable device).
///
/// Layer constructors return their layer, not a `Result`, so that the encoders read like
/// torchvision's; a failed allocation is recorded here instead, later variables are not
/// allocated at all, and the model's `try_new` turns it into an error.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) vars: Vec<NamedVar>,
    /// The low-precision weight slot of every convolution and linear layer, in creation order.
    pub(crate) low: Vec<Arc<LowPrecision>>,
    pub(crate) error: Option<(String, tch::TchError)>,
}

/// The bf16 copy of one layer's f32 weight (and bias), cast once per training step.
///
/// The f32 tensors stay the parameters (the optimizer's flat buffer holds them: re-pointing them
/// at a bf16 tensor would cut them off it), and the copy is a differentiable cast of them: its
/// backward casts the gradient back and accumulates it into the f32 `.grad`. Both forwards of a
/// step (the two views) use the same copy, as autocast's weight-cast cache does, so the weight is
/// read and cast once per step instead of once per forward, and its two gradients meet in bf16
/// before the one cast back (autocast's rounding too).
pub(crate) struct LowPrecision {
    /// The layer's state-dict prefix (`encoder.conv1`): which model part it belongs to.
    pub(crate) name: String,
    /// Behind a `Mutex` because the slot is shared (`Arc`) between the layer and the model's
    /// list, and an `Arc` is `Send` (as `nn::ModuleT` requires) only over a `Sync` value.
    slot: Mutex<Slot>,
}

struct Slot {
    /// The f32 master weight and bias (shallow clones of the variables).
    weight: Tensor,
    bias: Option<Tensor>,
    /// The bf16 copies: `Some` between [`LowPrecision::refresh`] and [`LowPrecision::clear`].
    cached: Option<(Tensor, Option<Tensor>)>,
}

impl LowPrecision {
    fn new(name: &str, weight: &Tensor, bias: Option<&Tensor>) -> Self {
        let slot = Slot { weight: weight.shallow_clone(), bias: bias.map(Tensor::shallow_clone), cached: None };
        Self { name: name.to_string(), slot: Mutex::new(slot) }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        // A panic while the lock was held left at worst a stale `cached`; the tensors are valid.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Casts the weight (channels-last when `channels_last` and 4-D) and the bias to bf16 under
    /// autograd and keeps them for the training-mode forwards until the next refresh.
    pub(crate) fn refresh(&self, channels_last: bool) -> Result<(), tch::TchError> {
        let mut slot = self.slot();
        let (w, b) = tch::with_grad(|| -> Result<_, tch::TchError> {
            let weight = &slot.weight;
            let w = if channels_last && weight.dim() == 4 {
                // tch has no `to(dtype, memory_format)`: an NHWC-strided bf16 tensor filled by a
                // differentiable `copy_` is the same single kernel as PyTorch's
                // `w.to(torch.bfloat16, memory_format=torch.channels_last)`.
                let size = weight.size();
                let (c, h, w) = (size[1], size[2], size[3]);
                let mut out =
                    Tensor::f_empty_strided(&size, [h * w * c, 1, w * c, c], (Kind::BFloat16, weight.device()))?;
                out.f_copy_(weight)?;
                out
            } else {
                weight.f_to_kind(Kind::BFloat16)?
            };
            let b = slot.bias.as_ref().map(|b| b.f_to_kind(Kind::BFloat16)).transpose()?;
            Ok((w, b))
        })?;
        slot.cached = Some((w, b));
        Ok(())
    }

    /// Drops the copies (the layer casts per call again).
    pub(crate) fn clear(&self) {
        self.slot().cached = None;
    }

    /// The bf16 weight and bias for a forward: the step's copies in a training-mode forward after
    /// a refresh, else a cast made now. Inference-mode forwards (evaluation between steps, after
    /// the optimizer changed the f32 weights) never read the copies, so they cannot see stale ones.
    fn get(&self, train: bool) -> (Tensor, Option<Tensor>) {
        let slot = self.slot();
        match (&slot.cached, train) {
            (Some((w, b)), true) => (w.shallow_clone(), b.as_ref().map(Tensor::shallow_clone)),
            _ => (slot.weight.to_kind(Kind::BFloat16), slot.bias.as_ref().map(|b| b.to_kind(Kind::BFloat16))),
        }
    }
}

/// A model output handed to the caller: f32 whatever the compute kind (bf16 only inside).
pub(crate) fn output_f32(y: Tensor) -> Tensor {
    if y.kind() == Kind::BFloat16 {
        y.to_kind(Kind::Float)
    } else {
        y
    }
}

/// Refreshes (`Some(channels_last)`) or clears (`None`) the low-precision copies of `layers`.
pub(crate) fn refresh_all(layers: &[Arc<LowPrecision>], channels_last: Option<bool>) -> crate::Result<()> {
    for l in layers {
        match channels_last {
            Some(cl) => l.refresh(cl).map_err(|source| crate::ModelError::Torch {
                op: "casting to bf16",
                name: format!("{}.weight", l.name),
                source,
            })?,
            None => l.clear(),
        }
    }
    Ok(())
}

/// `x` in bf16 (a no-op when it already is: activations stay bf16 from layer to layer).
fn bf16(x: &Tensor) -> Tensor {
    if x.kind() == Kind::BFloat16 {
        x.shallow_clone()
    } else {
        x.to_kind(Kind::BFloat16)
    }
}

/// A `nn::Path` that also records each variable's relative name and role.
#[derive(Clone)]
pub(crate) struct Scope<'a> {
    path: nn::Path<'a>,
    rel: String,
    reg: Rc<RefCell<Registry>>,
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

impl<'a> Scope<'a> {
    pub(crate) fn root(path: &nn::Path<'a>, reg: Rc<RefCell<Registry>>) -> Self {
        Self { path: path.clone(), rel: String::new(), reg }
    }
    pub(crate) fn sub(&self, s: impl std::fmt::Display) -> Scope<'a> {
        let s = s.to_string();
        Scope { path: &self.path / s.as_str(), rel: join(&self.rel, &s), reg: self.reg.clone() }
    }
    pub(crate) fn name(&self) -> &str {
        &self.rel
    }
    /// The low-precision slot of a layer's `weight` (and `bias`), registered for
    /// `BarlowTwins::refresh_low_precision_weights`.
    fn low_precision(&self, weight: &Tensor, bias: Option<&Tensor>) -> Arc<LowPrecision> {
        let low = Arc::new(LowPrecision::new(&self.rel, weight, bias));
        self.reg.borrow_mut().low.push(low.clone());
        low
    }
    /// Registers `made` under `name`, or records its error: after the first error nothing more
    /// is allocated or added to the `VarStore`, and an empty CPU tensor stands in (layer
    /// constructors only keep it; the model is never returned).
    fn add(&self, name: &str, made: impl FnOnce() -> Result<Tensor, tch::TchError>, role: Role) -> Tensor {
        let full = join(&self.rel, name);
        let mut reg = self.reg.borrow_mut();
        let made = match reg.error {
            Some(_) => None,
            None => match tch::no_grad(made) {
                Ok(t) => Some(t),
                Err(e) => {
                    reg.error = Some((full.clone(), e));
                    None
                }
            },
        };
        let Some(t) = made else {
            return Tensor::zeros([0], (Kind::Float, tch::Device::Cpu));
        };
        let t = self.path.add(name, t, role == Role::Trainable);
        reg.vars.push(NamedVar { name: full, tensor: t.shallow_clone(), role });
        t
    }
    fn float(&self, name: &str, dims: &[i64], init: Init, role: Role) -> Tensor {
        let opts = (Kind::Float, self.path.device());
        let made = || match init {
            Init::Zeros => Tensor::f_zeros(dims, opts),
            Init::Ones => Tensor::f_ones(dims, opts),
            Init::Uniform(bound) => Tensor::f_empty(dims, opts)?.f_uniform_(-bound, bound),
            Init::Normal(std) => Tensor::f_randn(dims, opts)?.f_mul_scalar(std),
        };
        self.add(name, made, role)
    }
}

/// Initializers, named by where they come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    Zeros,
    Ones,
    /// U(-b, b).
    Uniform(f64),
    /// N(0, std²).
    Normal(f64),
}

/// Keras' default `glorot_uniform`: U(±sqrt(6 / (fan_in + fan_out))).
pub(crate) fn glorot(fan_in: i64, fan_out: i64) -> Init {
    Init::Uniform((6.0 / (fan_in + fan_out) as f64).sqrt())
}

/// How a convolution pads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Padding {
    /// PyTorch: `p` zeros on every side.
    Symmetric(i64),
    /// TensorFlow `same` after `pre` zeros on every side (Keras `ZeroPadding2D(pre)` folded
    /// into the same pad op). TF puts the odd pixel of an odd total at the bottom/right, which
    /// no PyTorch conv padding can express, so the pad is explicit when asymmetric.
    TfSame { pre: i64 },
    /// TensorFlow `valid`: no padding.
    Valid,
}

/// TF `same` padding of one spatial dimension: `(before, after)`.
pub fn tf_same_pad(n: i64, k: i64, s: i64) -> (i64, i64) {
    let out = (n + s - 1) / s;
    let total = ((out - 1) * s + k - n).max(0);
    (total / 2, total - total / 2)
}

pub(crate) struct Conv2d {
    name: String,
    pub(crate) weight: Tensor,
    bias: Option<Tensor>,
    low: Arc<LowPrecision>,
    k: i64,
    stride: i64,
    padding: Padding,
}

impl Conv2d {
    /// `init`: the kernel initializer; a bias (zeros) when `bias`.
    // The argument list is nn.Conv2d's plus the name scope and init; a builder would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        s: &Scope,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: Padding,
        bias: bool,
        init: Init,
    ) -> Self {
        let weight = s.float("weight", &[c_out, c_in, k, k], init, Role::Trainable);
        let bias = bias.then(|| s.float("bias", &[c_out], Init::Zeros, Role::Trainable));
        let low = s.low_precision(&weight, bias.as_ref());
        Self { name: s.name().to_string(), weight, bias, low, k, stride, padding }
    }

    pub(crate) fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        // Cast before padding: the pad then moves half the bytes.
        let x = if ctx.bf16 { bf16(x) } else { x.shallow_clone() };
        let (x, pad) = match self.padding {
            Padding::Symmetric(p) => (x.shallow_clone(), p),
            Padding::Valid => (x.shallow_clone(), 0),
            Padding::TfSame { pre } => {
                let (t, b) = tf_same_pad(h + 2 * pre, self.k, self.stride);
                let (l, r) = tf_same_pad(w + 2 * pre, self.k, self.stride);
                if t == b && l == r && t == l {
                    (x.shallow_clone(), t + pre)
                } else {
                    (x.constant_pad_nd([l + pre, r + pre, t + pre, b + pre]), 0)
                }
            }
        };
        let s = [self.stride, self.stride];
        let y = if ctx.bf16 {
            let (w, b) = self.low.get(ctx.train);
            x.conv2d(&w, b.as_ref(), s, [pad, pad], [1, 1], 1)
        } else {
            x.conv2d(&self.weight, self.bias.as_ref(), s, [pad, pad], [1, 1], 1)
        };
        if ctx.trace.is_some() {
            let pad = match self.padding {
                Padding::Symmetric(p) => format!("pad {p}"),
                Padding::Valid => "valid".into(),
                Padding::TfSame { pre: 0 } => "tf-same".into(),
                Padding::TfSame { pre } => format!("zero-pad {pre} + tf-same"),
            };
            let n = self.weight.numel() + self.bias.as_ref().map_or(0, |b| b.numel());
            let [_, c_in, k, _] = self.weight.size()[..] else { unreachable!() };
            let kind = format!("Conv2d {c_in}->{} {k}x{k}/{} {pad}", self.weight.size()[0], self.stride);
            ctx.record(&self.name, kind, &y, n as i64, 0);
        }
        y
    }
}

/// Running-statistics semantics of a batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BnStyle {
    /// PyTorch: running_var is updated with the unbiased batch variance.
    Torch,
    /// Keras: moving_variance is updated with the biased (population) batch variance, the same
    /// one used to normalize.
    Keras,
}

pub(crate) struct BatchNorm {
    name: String,
    pub(crate) weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    /// PyTorch convention: new = (1 - momentum) * old + momentum * batch.
    momentum: f64,
    eps: f64,
    style: BnStyle,
}

impl BatchNorm {
    /// PyTorch's defaults (eps 1e-5, momentum 0.1).
    pub(crate) fn torch(s: &Scope, c: i64) -> Self {
        Self::new(s, c, 1e-5, 0.1, BnStyle::Torch)
    }
    /// Keras' defaults: epsilon 1e-3, momentum 0.99 (i.e. PyTorch momentum 0.01).
    pub(crate) fn keras(s: &Scope, c: i64) -> Self {
        Self::new(s, c, 1e-3, 0.01, BnStyle::Keras)
    }
    fn new(s: &Scope, c: i64, eps: f64, momentum: f64, style: BnStyle) -> Self {
        let weight = s.float("weight", &[c], Init::Ones, Role::Trainable);
        let bias = s.float("bias", &[c], Init::Zeros, Role::Trainable);
        let running_mean = s.float("running_mean", &[c], Init::Zeros, Role::Buffer);
        let running_var = s.float("running_var", &[c], Init::Ones, Role::Buffer);
        let opts = (Kind::Int64, s.path.device());
        let nbt = || Tensor::f_zeros([], opts);
        let num_batches_tracked = s.add("num_batches_tracked", nbt, Role::Counter);
        Self {
            name: s.name().to_string(),
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            momentum,
            eps,
            style,
        }
    }

    /// `x` f32, or bf16 under mixed precision: the kernels (CPU and CUDA) then compute in f32
    /// with the f32 parameters and statistics and return bf16, as autocast's batch norm does.
    pub(crate) fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let (w, b) = (Some(&self.weight), Some(&self.bias));
        let (rm, rv) = (Some(&self.running_mean), Some(&self.running_var));
        let y = match (ctx.train, self.style) {
            (true, _) if ctx.sync.is_some() => self.forward_synced(x, ctx.sync.expect("checked")),
            (false, _) => x.batch_norm(w, b, rm, rv, false, self.momentum, self.eps, true),
            (true, BnStyle::Torch) => {
                tch::no_grad(|| {
                    let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
                });
                x.batch_norm(w, b, rm, rv, true, self.momentum, self.eps, true)
            }
            (true, BnStyle::Keras) => {
                // Normalize with batch statistics but let no kernel touch the running buffers:
                // it would update them with the unbiased variance. The saved mean and inverse
                // std give the biased variance back for free (var = invstd^-2 - eps), so the
                // update costs O(C), not another pass over the activations.
                let (y, mean, invstd) =
                    x.native_batch_norm(w, b, None::<&Tensor>, None::<&Tensor>, true, self.momentum, self.eps);
                tch::no_grad(|| {
                    let m = self.momentum;
                    let var = invstd.to_kind(Kind::Float).pow_tensor_scalar(-2) - self.eps;
                    let mut rm = self.running_mean.shallow_clone();
                    let mut rv = self.running_var.shallow_clone();
                    let _ = rm.g_mul_scalar_(1.0 - m).g_add_(&(mean.to_kind(Kind::Float) * m));
                    let _ = rv.g_mul_scalar_(1.0 - m).g_add_(&(var * m));
                    let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
                });
                y
            }
        };
        if ctx.trace.is_some() {
            let c = self.weight.numel() as i64;
            let kind = format!(
                "BatchNorm{}d eps {} ({})",
                if x.dim() == 4 { 2 } else { 1 },
                self.eps,
                if self.style == BnStyle::Keras { "keras" } else { "torch" }
            );
            ctx.record(&self.name, kind, &y, 2 * c, 2 * c);
        }
        y
    }
}

impl BatchNorm {
    /// Training-mode batch norm over the rows of every replica (PyTorch's `SyncBatchNorm`):
    /// `sum` adds a tensor across replicas and, in the backward pass, adds the incoming
    /// gradients across replicas too (the convention of `bt_loss::CrossReplicaReduce`), which
    /// makes the gradient that of one process holding the whole batch. Mean and variance take
    /// two passes (mean first), as the single-process kernel does; the running variance gets
    /// the unbiased global variance (Torch style) or the biased one (Keras style).
    fn forward_synced(&self, x: &Tensor, sum: &dyn Fn(&Tensor) -> Tensor) -> Tensor {
        let c = x.size()[1];
        let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let mut shape = vec![1i64; x.dim()];
        shape[1] = c;
        // The global row count rides in the same reduction as the sums (one collective, no
        // host round trip): `[Σ x per channel..., local count]`.
        //
        // Statistics accumulate and cross replicas in f64 whatever the input kind, then round
        // once to the compute kind (f32; f64 for f64 inputs). Why (issue 14): in f32 the sums
        // of W partial sums round differently from one sum over the whole batch, and that
        // last-bit difference in a mean was enough to flip a ReLU somewhere in a tiny ResNet on
        // the synthetic shapes and move its gradient by 2% (two ranks vs one process, seed 1;
        // a 1e-7 input perturbation does not, 1e-6 does). In f64 the partial sums of f32
        // values are exact to ~1e-16, so the rounded mean and variance, hence the forward, are
        // the same bits on any number of replicas as in one process running this path.
        let stat = if x.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let local = Tensor::full([1], (x.numel() as i64 / c) as f64, (Kind::Double, x.device()));
        let sums = sum(&Tensor::cat(&[x.sum_dim_intlist(dims.as_slice(), false, Kind::Double), local], 0));
        let n = sums.narrow(0, c, 1).detach();
        let mean = (sums.narrow(0, 0, c) / &n).view(shape.as_slice()).to_kind(stat);
        // The variance is taken around the *detached* mean, which leaves its gradient exact
        // (∂var/∂mean = -2 Σ_all (x - mean) / n is zero at the global mean) and spares each
        // replica the term 2 ∂L/∂var · Σ_local (x - mean), which is not zero per replica and
        // only cancels in the cross-replica sum.
        let xc = x - mean.detach();
        let var = (sum(&xc.square().sum_dim_intlist(dims.as_slice(), true, Kind::Double)) / &n).to_kind(stat);
        // y = (x - mean) * scale + bias, written so that the mean's gradient (-Σ dy · scale)
        // rides on a per-channel tensor whose value is zero: one multiply-add over the
        // activations.
        let scale = (&var + self.eps).rsqrt() * self.weight.view(shape.as_slice());
        let shift = self.bias.view(shape.as_slice()) - (&mean - mean.detach()) * &scale;
        // A bf16 input (mixed precision) makes `xc` and `y` f32 by type promotion: the
        // normalization runs in f32 and only its result is rounded, as the fused kernels do.
        let y = xc * &scale + shift;
        let y = if x.kind() == Kind::BFloat16 { y.to_kind(Kind::BFloat16) } else { y };
        let n = n.to_kind(stat);
        tch::no_grad(|| {
            let m = self.momentum;
            let mean = mean.detach().view([c]);
            let var = var.detach().view([c]);
            let var = match self.style {
                // Unbiased with the global count (n = 1 keeps the biased value).
                BnStyle::Torch => var * (&n / (&n - 1.0)).where_self(&n.gt(1.0), &n.ones_like()),
                BnStyle::Keras => var,
            };
            let mut rm = self.running_mean.shallow_clone();
            let mut rv = self.running_var.shallow_clone();
            let _ = rm.g_mul_scalar_(1.0 - m).g_add_(&(mean * m));
            let _ = rv.g_mul_scalar_(1.0 - m).g_add_(&(var * m));
            let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
        });
        y
    }
}

pub(crate) struct Linear {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    low: Arc<LowPrecision>,
}

impl Linear {
    /// `init` for the weight; the bias (when present) is zeros for Keras (`zeros` default) or
    /// PyTorch's U(±1/sqrt(fan_in)) when `torch_bias_init`.
    pub(crate) fn new(s: &Scope, c_in: i64, c_out: i64, bias: bool, init: Init, torch_bias_init: bool) -> Self {
        let weight = s.float("weight", &[c_out, c_in], init, Role::Trainable);
        let bias_init = if torch_bias_init { Init::Uniform(1.0 / (c_in as f64).sqrt()) } else { Init::Zeros };
        let bias = bias.then(|| s.float("bias", &[c_out], bias_init, Role::Trainable));
        let low = s.low_precision(&weight, bias.as_ref());
        Self { name: s.name().to_string(), weight, bias, low }
    }

    pub(crate) fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = if ctx.bf16 {
            let (w, b) = self.low.get(ctx.train);
            bf16(x).linear(&w, b.as_ref())
        } else {
            x.linear(&self.weight, self.bias.as_ref())
        };
        if ctx.trace.is_some() {
            let n = self.weight.numel() + self.bias.as_ref().map_or(0, |b| b.numel());
            let [o, i] = self.weight.size()[..] else { unreachable!() };
            let kind = format!("Linear {i}->{o}{}", if self.bias.is_some() { "" } else { " no bias" });
            ctx.record(&self.name, kind, &y, n as i64, 0);
        }
        y
    }
}

/// TF `MaxPool2D(k, s, 'same')`: padded cells never win (-inf), the odd pixel goes bottom/right.
pub(crate) fn tf_max_pool(x: &Tensor, k: i64, s: i64) -> Tensor {
    let (t, b) = tf_same_pad(x.size()[2], k, s);
    let (l, r) = tf_same_pad(x.size()[3], k, s);
    if t == b && l == r && t == l && 2 * t <= k {
        x.max_pool2d([k, k], [s, s], [t, t], [1, 1], false)
    } else {
        x.pad([l, r, t, b], "constant", f64::NEG_INFINITY).max_pool2d([k, k], [s, s], [0, 0], [1, 1], false)
    }
}

/// TF `AveragePooling2D(k, 'same')` (stride = k): TF averages over the valid cells only, which
/// is PyTorch's `ceil_mode=true, count_include_pad=false` without padding when `k == s`.
pub(crate) fn tf_avg_pool_same(x: &Tensor, k: i64) -> Tensor {
    x.avg_pool2d([k, k], [k, k], [0, 0], true, false, None::<i64>)
}
