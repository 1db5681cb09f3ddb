//! bt-loss against independent references (scripts/fixtures/loss_ref.py: PyTorch f64 from the
//! definitions, and lightly's BarlowTwinsLoss), fused vs reference, low precision, and the
//! data-parallel split.
use bt_loss::{barlow_twins_loss, CrossReplicaReduce, LossError, LossImpl, LossNorm, LossOptions, ReduceError};
use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use tch::{Device, Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixtures() -> (Vec<serde_json::Value>, HashMap<String, Tensor>) {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/loss_cases.json")).unwrap()).unwrap();
    let tensors = Tensor::read_safetensors(format!("{FIXTURES}/loss_ref.safetensors")).unwrap().into_iter().collect();
    (cases, tensors)
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).reshape([-1]).double_value(&[0])
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// max |a - b| / max |b|: the gradient error relative to the gradient's scale.
fn rel_max(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    scalar(&(&a - &b).abs().max()) / scalar(&b.abs().max()).max(1e-300)
}

fn norm_of(s: &str) -> LossNorm {
    match s {
        "keras-seed" => LossNorm::KerasSeed,
        "batchnorm" => LossNorm::Batchnorm,
        other => panic!("unknown normalization {other}"),
    }
}

/// Loss output and gradients for f32 (or other kind) inputs.
fn run(za: &Tensor, zb: &Tensor, opts: &LossOptions) -> (f64, f64, f64, Tensor, Tensor) {
    let za = za.detach().set_requires_grad(true);
    let zb = zb.detach().set_requires_grad(true);
    let out = barlow_twins_loss(&za, &zb, opts).unwrap();
    let grads = Tensor::run_backward(&[&out.loss], &[&za, &zb], false, false);
    (scalar(&out.loss), scalar(&out.invariance), scalar(&out.redundancy), grads[0].copy(), grads[1].copy())
}

#[test]
fn matches_pytorch_and_lightly_fixtures_to_1e5() {
    let (cases, t) = fixtures();
    assert_eq!(cases.len(), 8);
    let mut lightly_checked = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let g = |k: &str| t.get(&format!("{name}/{k}")).unwrap_or_else(|| panic!("{name}/{k}"));
        let (za, zb) = (g("z_a"), g("z_b"));
        assert_eq!(za.kind(), Kind::Float);
        for imp in [LossImpl::Reference, LossImpl::Fused] {
            let opts = LossOptions {
                lambda: case["lambda"].as_f64().unwrap(),
                normalization: norm_of(case["normalization"].as_str().unwrap()),
                scale: case["scale"].as_f64().unwrap(),
                implementation: imp,
                reducer: None,
            };
            let (loss, inv, red, ga, gb) = run(za, zb, &opts);
            let ctx = format!("{name} {imp:?}");
            assert!(rel(loss, scalar(g("loss"))) < 1e-5, "{ctx}: loss {loss} vs {}", scalar(g("loss")));
            assert!(rel(inv, scalar(g("invariance"))) < 1e-5, "{ctx}: invariance {inv}");
            assert!(rel(red, scalar(g("redundancy"))) < 1e-5, "{ctx}: redundancy {red}");
            assert!(rel_max(&ga, g("grad_a")) < 1e-5, "{ctx}: grad_a {}", rel_max(&ga, g("grad_a")));
            assert!(rel_max(&gb, g("grad_b")) < 1e-5, "{ctx}: grad_b {}", rel_max(&gb, g("grad_b")));
            if case["lightly"].as_bool().unwrap() {
                // lightly has no scale factor: compare at scale 1.
                let opts1 = LossOptions { scale: 1.0, ..opts.clone() };
                let (loss1, _, _, ga1, gb1) = run(za, zb, &opts1);
                assert!(rel(loss1, scalar(g("lightly_loss"))) < 1e-5, "{ctx}: lightly loss");
                assert!(rel_max(&ga1, g("lightly_grad_a")) < 1e-5, "{ctx}: lightly grad_a");
                assert!(rel_max(&gb1, g("lightly_grad_b")) < 1e-5, "{ctx}: lightly grad_b");
                lightly_checked += 1;
            }
        }
    }
    assert_eq!(lightly_checked, 8, "4 batchnorm cases x 2 implementations");
}

/// `N x D` with zero-mean, mutually orthogonal columns of equal norm: whitened features.
fn whitened(n: i64, d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let x = Tensor::randn([n, d], (Kind::Double, Device::Cpu));
    let x = &x - x.mean_dim(0, true, Kind::Double);
    let (q, _r) = Tensor::linalg_qr(&x, "reduced");
    (q * (n as f64).sqrt()).to_kind(Kind::Float)
}

#[test]
fn perfectly_correlated_whitened_views_give_zero_loss_in_batchnorm_mode() {
    let z = whitened(64, 16, 1);
    // A positive per-feature affine map of the same embedding: perfect correlation.
    // Deterministic (not the global RNG: other tests in this binary reseed it concurrently).
    let scale = Tensor::linspace(0.5, 3.5, 16, (Kind::Float, Device::Cpu));
    let zb = &z * &scale + 7.0;
    for imp in [LossImpl::Reference, LossImpl::Fused] {
        let opts = LossOptions {
            normalization: LossNorm::Batchnorm,
            lambda: 0.0051,
            implementation: imp,
            ..LossOptions::default()
        };
        let (loss, _, red, _, _) = run(&z, &zb, &opts);
        // The only deviation is BN's epsilon: c_ii = var/sqrt((var+eps)(var_b+eps)) ≈ 1 - 1e-5.
        assert!(loss.abs() < 1e-6, "{imp:?}: loss {loss}");
        // Reference sums the off-diagonal c_ij² directly. Fused gets it as Σ(G_a⊙G_b)/N² − Σc_ii²,
        // a difference of two f32 numbers ≈ D = 16: its rounding floor is a few ulps of 16
        // (ulp(16) = 1.9e-6), documented in the crate. Bound it by 4 ulps of D, not 1e-6.
        let tol = match imp {
            LossImpl::Fused => 4.0 * 16.0 * f64::from(f32::EPSILON),
            _ => 1e-6,
        };
        assert!(red.abs() < tol, "{imp:?}: redundancy {red} (tolerance {tol})");
        // A view that is not correlated is far from 0: the check can fail.
        let (other, _, _, _, _) = run(&z, &whitened(64, 16, 2), &opts);
        assert!(other > 1.0, "{other}");
    }
}

#[test]
fn fused_equals_reference_on_random_shapes() {
    tch::manual_seed(3);
    // (N, D): D < 2N, D = 2N, D > 2N, odd sizes, N = 3 (at N = 2 the seed's z̃ = ±1 and the
    // gradient is 0 up to rounding).
    for (n, d) in [(64, 16), (32, 64), (17, 200), (100, 33), (3, 9), (40, 81)] {
        let base = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
        let za = &base * 2.0 + 1.0;
        let zb = &base * 0.5 + Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * 0.8;
        for norm in [LossNorm::KerasSeed, LossNorm::Batchnorm] {
            let opts = LossOptions { normalization: norm, ..LossOptions::default() };
            let r = run(&za, &zb, &opts.clone().with_implementation(LossImpl::Reference));
            let f = run(&za, &zb, &opts.clone().with_implementation(LossImpl::Fused));
            let ctx = format!("n={n} d={d} {norm:?}");
            assert!(rel(f.0, r.0) < 1e-5, "{ctx}: loss {} vs {}", f.0, r.0);
            assert!(rel(f.2, r.2) < 1e-5, "{ctx}: redundancy {} vs {}", f.2, r.2);
            assert!(rel_max(&f.3, &r.3) < 1e-5, "{ctx}: grad_a {}", rel_max(&f.3, &r.3));
            assert!(rel_max(&f.4, &r.4) < 1e-5, "{ctx}: grad_b {}", rel_max(&f.4, &r.4));
        }
    }
}

/// bf16 embeddings (what a bf16-autocast projector emits): the loss upcasts before any
/// reduction, so it equals the f64 loss of the same (rounded) values; the same fused formula
/// evaluated in bf16 loses the redundancy term to cancellation.
#[test]
fn bf16_inputs_are_reduced_in_f32_and_naive_bf16_cancels() {
    // N >> D and strongly correlated views: Σ c_ij² ≈ D = 16 dominates the off-diagonal sum
    // (≈ D²/N = 0.25), so Σ c_ij² − Σ c_ii² cancels ~6 bits.
    let (n, d) = (1024, 16);
    tch::manual_seed(5);
    let z = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * 0.05;
    let za = z.to_kind(Kind::BFloat16);
    let zb = (&z + noise).to_kind(Kind::BFloat16);
    let opts =
        LossOptions { normalization: LossNorm::Batchnorm, implementation: LossImpl::Fused, ..LossOptions::default() };
    let out = barlow_twins_loss(&za, &zb, &opts).unwrap();
    assert_eq!(out.loss.kind(), Kind::Float, "reductions run in f32");
    let exact = barlow_twins_loss(
        &za.to_kind(Kind::Double),
        &zb.to_kind(Kind::Double),
        &opts.clone().with_implementation(LossImpl::Reference),
    )
    .unwrap();
    let (red, red_exact) = (scalar(&out.redundancy), scalar(&exact.redundancy));
    assert!(rel(red, red_exact) < 1e-5, "f32 fused {red} vs f64 {red_exact}");
    assert!(rel(scalar(&out.loss), scalar(&exact.loss)) < 1e-5);

    // The same formula with every op in bf16.
    let bf = |z: &Tensor| {
        let m = z.mean_dim(0, true, Kind::BFloat16);
        let c = z - m;
        let v = c.square().mean_dim(0, true, Kind::BFloat16);
        c / (v + 1e-5).sqrt()
    };
    let (a, b) = (bf(&za), bf(&zb));
    let nf = n as f64;
    let total = (a.matmul(&a.tr()) * b.matmul(&b.tr())).sum(Kind::BFloat16) / (nf * nf);
    let diag = (&a * &b).sum_dim_intlist(0, false, Kind::BFloat16) / nf;
    let naive = scalar(&(total - diag.square().sum(Kind::BFloat16)));
    eprintln!("bf16 naive {naive}, f32 fused {red}, f64 {red_exact}");
    assert!(rel(naive, red_exact) > 0.05, "bf16 {naive} vs exact {red_exact}: no cancellation seen");
}

/// A test-only collective: `world` threads of one process meet at a barrier, each deposits its
/// tensor, and every rank gets the sum (or concatenation) of the *graph-attached* tensors. All
/// replicas' losses then live in one autograd graph, and one backward of Σ_r L_r gives each
/// replica exactly what a differentiable all-reduce would (backward = sum of the replicas'
/// gradients), which is the contract of [`CrossReplicaReduce`].
struct InProcess {
    world: usize,
    slots: Mutex<Vec<Option<Tensor>>>,
    barrier: Barrier,
}

struct Rank {
    shared: Arc<InProcess>,
    rank: usize,
}

impl Rank {
    fn exchange(&self, x: &Tensor) -> Vec<Tensor> {
        self.shared.slots.lock().unwrap()[self.rank] = Some(x.shallow_clone());
        self.shared.barrier.wait();
        let all: Vec<Tensor> =
            self.shared.slots.lock().unwrap().iter().map(|s| s.as_ref().unwrap().shallow_clone()).collect();
        // Nobody overwrites a slot before every rank has read this round.
        self.shared.barrier.wait();
        all
    }
}

impl CrossReplicaReduce for Rank {
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
        let all = self.exchange(x);
        Ok(all.iter().skip(1).fold(all[0].shallow_clone(), |acc, t| acc + t))
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
        Ok(Tensor::cat(&self.exchange(x), 0))
    }
}

#[test]
fn two_replica_split_equals_full_batch_loss_and_gradients() {
    tch::manual_seed(6);
    let world = 2usize;
    for (n, d, imp) in [(24, 10, LossImpl::Reference), (8, 60, LossImpl::Fused), (12, 30, LossImpl::Auto)] {
        let base = Tensor::randn([n, d], (Kind::Double, Device::Cpu));
        let za = &base * 1.5 - 0.3;
        let zb = &base + Tensor::randn([n, d], (Kind::Double, Device::Cpu)) * 0.7;
        for norm in [LossNorm::KerasSeed, LossNorm::Batchnorm] {
            let opts =
                LossOptions { normalization: norm, implementation: imp, scale: 0.1, lambda: 0.0051, reducer: None };
            let full = run(&za, &zb, &opts);

            let (za_l, zb_l) = (za.detach().set_requires_grad(true), zb.detach().set_requires_grad(true));
            let shared = Arc::new(InProcess {
                world,
                slots: Mutex::new((0..world).map(|_| None).collect()),
                barrier: Barrier::new(world),
            });
            let shard = n / world as i64;
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let a = za_l.narrow(0, rank as i64 * shard, shard);
                    let b = zb_l.narrow(0, rank as i64 * shard, shard);
                    let o = opts.clone().with_reducer(Arc::new(Rank { shared: shared.clone(), rank }));
                    std::thread::spawn(move || barlow_twins_loss(&a, &b, &o).unwrap().loss)
                })
                .collect();
            let losses: Vec<Tensor> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let ctx = format!("n={n} d={d} {imp:?} {norm:?}");
            for l in &losses {
                assert!(rel(scalar(l), full.0) < 1e-12, "{ctx}: replica loss {} vs {}", scalar(l), full.0);
            }
            // What the replicas' backward passes deliver together (each its own rows).
            let total = losses.iter().skip(1).fold(losses[0].shallow_clone(), |acc, l| acc + l);
            let g = Tensor::run_backward(&[&total], &[&za_l, &zb_l], false, false);
            // W · ∂L/∂z; DDP's mean over replicas then gives the full-batch gradient exactly.
            let (ga, gb) = (&g[0] / world as f64, &g[1] / world as f64);
            assert!(rel_max(&ga, &full.3) < 1e-12, "{ctx}: grad_a {}", rel_max(&ga, &full.3));
            assert!(rel_max(&gb, &full.4) < 1e-12, "{ctx}: grad_b {}", rel_max(&gb, &full.4));
        }
    }
}

/// The pitfall the contract avoids: with an identity-backward all-reduce (the official code's
/// and lightly's `all_reduce(c)`), the gradient through the batch moments is wrong, not merely
/// scaled.
#[test]
fn identity_backward_reduce_gives_a_wrong_gradient() {
    struct Detached(Rank);
    impl CrossReplicaReduce for Detached {
        fn world_size(&self) -> usize {
            self.0.world_size()
        }
        fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
            let s = self.0.all_reduce_sum(&x.detach())?;
            Ok(x + (s - x.detach()))
        }
        fn all_gather(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
            self.0.all_gather(x)
        }
    }
    tch::manual_seed(7);
    let (n, d) = (16i64, 6i64);
    let za = Tensor::randn([n, d], (Kind::Double, Device::Cpu));
    let zb = &za + Tensor::randn([n, d], (Kind::Double, Device::Cpu));
    let opts = LossOptions { implementation: LossImpl::Reference, ..LossOptions::default() };
    let full = run(&za, &zb, &opts);
    let (za_l, zb_l) = (za.detach().set_requires_grad(true), zb.detach().set_requires_grad(true));
    let shared =
        Arc::new(InProcess { world: 2, slots: Mutex::new((0..2).map(|_| None).collect()), barrier: Barrier::new(2) });
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let a = za_l.narrow(0, rank * 8, 8);
            let b = zb_l.narrow(0, rank * 8, 8);
            let o = opts.clone().with_reducer(Arc::new(Detached(Rank { shared: shared.clone(), rank: rank as usize })));
            std::thread::spawn(move || barlow_twins_loss(&a, &b, &o).unwrap().loss)
        })
        .collect();
    let losses: Vec<Tensor> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(rel(scalar(&losses[0]), full.0) < 1e-12, "the forward value is still right");
    let total = &losses[0] + &losses[1];
    let g = Tensor::run_backward(&[&total], &[&za_l], false, false);
    // Neither the full-batch gradient nor any multiple of it.
    for w in [1.0, 2.0, 0.5] {
        assert!(rel_max(&(&g[0] / w), &full.3) > 1e-3, "scale {w}");
    }
}

/// A one-replica "collective" that fails after `ok` successful all-reduces, or returns gathered
/// rows with a wrong width.
struct Faulty {
    ok: std::sync::atomic::AtomicUsize,
    bad_gather: bool,
}

impl CrossReplicaReduce for Faulty {
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
        let left = self.ok.load(std::sync::atomic::Ordering::SeqCst);
        if left == 0 {
            return Err("rank 1 lost (heartbeat stopped)".into());
        }
        self.ok.store(left - 1, std::sync::atomic::Ordering::SeqCst);
        Ok(x.shallow_clone())
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
        Ok(if self.bad_gather { x.narrow(1, 0, x.size()[1] - 1) } else { x.shallow_clone() })
    }
}

/// Errors are values: a failed collective anywhere in the loss (first, or mid-way after the
/// moments), and a libtorch shape error inside it, come back as `Err` naming what failed; no
/// panic.
#[test]
fn failed_collectives_and_libtorch_errors_are_errors() {
    tch::manual_seed(8);
    let za = Tensor::randn([6, 20], (Kind::Float, Device::Cpu));
    let zb = Tensor::randn([6, 20], (Kind::Float, Device::Cpu));
    let with = |ok: usize, bad_gather: bool, imp: LossImpl| {
        let r = Faulty { ok: ok.into(), bad_gather };
        let opts = LossOptions::default().with_implementation(imp).with_reducer(Arc::new(r));
        barlow_twins_loss(&za, &zb, &opts)
    };
    // Enough successful all-reduces for a whole loss: the count, 2 per view, then 1 (reference)
    // or 2 (fused).
    assert!(with(6, false, LossImpl::Reference).is_ok());
    assert!(with(7, false, LossImpl::Fused).is_ok());
    for (ok, want) in [(0, "all_reduce_sum(row count)"), (1, "all_reduce_sum(column sums)"), (5, "all_reduce_sum(c)")] {
        match with(ok, false, LossImpl::Reference) {
            Err(LossError::Reduce { op, source }) => {
                assert_eq!(op, want);
                assert!(source.to_string().contains("rank 1 lost"), "{source}");
            }
            other => panic!("after {ok} all-reduces: {other:?}"),
        }
    }
    match with(7, true, LossImpl::Fused) {
        Err(e @ LossError::Torch { op: "gram(a)", .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("gram(a)") && msg.contains("19"), "{msg}");
        }
        other => panic!("a 6x19 gather against 6x20 rows: {other:?}"),
    }
}
