//! Synchronized projector batch norm (`BarlowTwins::set_projector_sync`) against libtorch's own
//! batch-norm kernel. The multi-process case (two ranks over Gloo equal one process holding both
//! ranks' rows) is tested in crates/bt-cli/tests/distributed.rs.
use bt_config::{Arch, ModelConfig, SyncBn};
use bt_model::{BarlowTwins, Role};
use tch::{nn, Device, Kind, Tensor};

/// Two identical models (the second a copy of the first's variables: tests run in parallel
/// threads and share libtorch's global generator, so seeding alone would not make them equal).
fn models(arch: Arch) -> ((nn::VarStore, BarlowTwins), (nn::VarStore, BarlowTwins)) {
    let a = model(arch);
    let b = model(arch);
    tch::no_grad(|| {
        for (x, y) in a.1.variables().iter().zip(b.1.variables()) {
            y.tensor.shallow_clone().copy_(&x.tensor);
        }
    });
    (a, b)
}

fn model(arch: Arch) -> (nn::VarStore, BarlowTwins) {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig { arch, width: 4, projector: vec![24, 24, 8], ..ModelConfig::default() };
    let m = BarlowTwins::new(&vs.root(), &cfg);
    (vs, m)
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

/// One replica: the synced path (sum = identity, whose backward is the identity too) computes
/// what `batch_norm` computes: outputs, every gradient, running statistics and counters.
fn one_replica_equals_native(arch: Arch) {
    let ((_va, plain), (_vb, mut synced)) = models(arch);
    synced.set_projector_sync(Some(Box::new(|t: &Tensor| t.shallow_clone())));
    let x = Tensor::rand([12, 3, 32, 32], (Kind::Float, Device::Cpu));
    let za = plain.forward(&x, true);
    let zb = synced.forward(&x, true);
    assert!(max_rel(&zb, &za) < 1e-5, "{arch:?}: outputs differ by {}", max_rel(&zb, &za));
    // A loss that mixes rows, so the batch-statistics terms of the gradient matter.
    let w = Tensor::rand([12, 8], (Kind::Float, Device::Cpu));
    (&za * &w).sum(Kind::Float).square().backward();
    (&zb * &w).sum(Kind::Float).square().backward();
    // Gradients are compared against the largest gradient of the model: the bias of a linear
    // layer followed by batch norm has a gradient that is zero up to rounding.
    let scale = plain
        .variables()
        .iter()
        .filter(|v| v.role == Role::Trainable)
        .map(|v| v.tensor.grad().abs().max().double_value(&[]))
        .fold(0.0f64, f64::max);
    let mut checked = 0;
    for (a, b) in plain.variables().iter().zip(synced.variables()) {
        assert_eq!(a.name, b.name);
        match a.role {
            Role::Trainable => {
                let d = (b.tensor.grad() - a.tensor.grad()).abs().max().double_value(&[]) / scale;
                assert!(d < 1e-4, "{arch:?}: gradient of {} differs by {d}", a.name);
            }
            Role::Buffer => {
                let d = max_rel(&b.tensor, &a.tensor);
                assert!(d < 1e-5, "{arch:?}: {} differs by {d}", a.name);
            }
            Role::Counter => assert_eq!(a.tensor.int64_value(&[]), b.tensor.int64_value(&[]), "{}", a.name),
        }
        checked += a.name.starts_with("projector.") as usize;
    }
    assert!(checked >= 8, "the projector's BN variables were compared ({checked})");
}

#[test]
fn one_replica_sync_bn_equals_native_batch_norm_torch_style() {
    one_replica_equals_native(Arch::CifarResnet18);
}

#[test]
fn one_replica_sync_bn_equals_native_batch_norm_keras_style() {
    one_replica_equals_native(Arch::KerasResnet34);
}

/// Two replicas holding the same rows (sum = 2x): the statistics are those of the rows, but the
/// count is the global one, so the running variance's unbiased correction uses 2N - 1.
#[test]
fn the_running_variance_uses_the_global_count() {
    let ((_va, plain), (_vb, mut synced)) = models(Arch::CifarResnet18);
    synced.set_projector_sync(Some(Box::new(|t: &Tensor| t * 2.0)));
    let n = 6i64;
    let x = Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu));
    let za = tch::no_grad(|| plain.forward(&x, true));
    let zb = tch::no_grad(|| synced.forward(&x, true));
    assert!(max_rel(&zb, &za) < 1e-5, "outputs differ by {}", max_rel(&zb, &za));
    let get = |m: &BarlowTwins, name: &str| {
        m.variables().iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name}")).tensor.shallow_clone()
    };
    let (rv_a, rv_b) = (get(&plain, "projector.1.running_var"), get(&synced, "projector.1.running_var"));
    // running_var = 0.9 * 1 + 0.1 * var_unbiased; undo the momentum and compare the batch terms.
    let (va, vb) = ((rv_a - 0.9) / 0.1, (rv_b - 0.9) / 0.1);
    let nf = n as f64;
    let expect = va * ((nf - 1.0) / nf) * (2.0 * nf / (2.0 * nf - 1.0));
    assert!(max_rel(&vb, &expect) < 1e-4, "running_var: {}", max_rel(&vb, &expect));
}

/// What one simulated replica hands back: its embeddings and its variables (shallow clones: the
/// gradients of the joint backward land on them).
struct Replica {
    z: Tensor,
    vars: Vec<(String, Role, Tensor)>,
}

/// Two replicas, each a copy of `weights` in its own thread, run the synced model on their half
/// of `x`. The cross-replica sum swaps tensors through channels and returns `own + other`
/// *with the other's autograd graph*: one backward of the sum of both replicas' losses then sends
/// each sum's gradient to both inputs, which is the contract (the backward adds the incoming
/// gradients across replicas) that `bt_dist::all_reduce_sum_autograd` implements with c10d.
fn two_replicas(cfg: &ModelConfig, scope: SyncBn, weights: &[Tensor], x: &Tensor) -> [Replica; 2] {
    let (to_b, from_a) = std::sync::mpsc::channel::<Tensor>();
    let (to_a, from_b) = std::sync::mpsc::channel::<Tensor>();
    let half = x.size()[0] / 2;
    std::thread::scope(|s| {
        let run = |rows: Tensor, tx: std::sync::mpsc::Sender<Tensor>, rx: std::sync::mpsc::Receiver<Tensor>| {
            let weights: Vec<Tensor> = weights.iter().map(|w| w.copy()).collect();
            move || {
                let vs = nn::VarStore::new(Device::Cpu);
                let mut m = BarlowTwins::new(&vs.root(), cfg);
                to_f64(&m);
                tch::no_grad(|| {
                    for (v, w) in m.variables().iter().zip(&weights) {
                        v.tensor.shallow_clone().copy_(w);
                    }
                });
                m.set_sync_bn(
                    scope,
                    Some(Box::new(move |t: &Tensor| {
                        tx.send(t.shallow_clone()).expect("peer alive");
                        t + rx.recv().expect("peer alive")
                    })),
                );
                assert_eq!(m.sync_bn(), scope);
                let z = m.forward(&rows, true);
                let vars = m.variables().iter().map(|v| (v.name.clone(), v.role, v.tensor.shallow_clone())).collect();
                Replica { z, vars }
            }
        };
        let a = s.spawn(run(x.narrow(0, 0, half), to_b, from_b));
        let b = s.spawn(run(x.narrow(0, half, half), to_a, from_a));
        [a.join().unwrap(), b.join().unwrap()]
    })
}

/// Every variable in f64 (the counters stay int64). In f32 two replicas differ from one full
/// batch by ~1e-4 of the largest gradient in a 50-layer net with 8 rows: per-replica partial sums
/// round differently, and each batch norm's backward (a difference of nearly equal terms)
/// amplifies that through the depth. In f64 the comparison is tight enough to catch any real
/// error.
fn to_f64(m: &BarlowTwins) {
    for v in m.variables().iter().filter(|v| v.role != Role::Counter) {
        let mut t = v.tensor.shallow_clone();
        t.set_data(&v.tensor.to_kind(Kind::Double));
    }
}

/// Tolerance of the f64 two-replica comparison.
const TOL: f64 = 1e-9;
/// Running statistics: the unsynced Keras-style batch norm (the reference) computes its update
/// in f32 whatever the input kind.
const BUF_TOL: f64 = 1e-6;

/// Synced batch norm on two half-batches equals plain batch norm on the full batch: outputs,
/// gradients (summed over replicas, as data parallelism sums/averages them), running statistics
/// and counters. `scope = All` syncs the encoder's batch norms too; with `Projector` the
/// encoder's statistics are per replica, so the same comparison must fail there.
fn two_replicas_equal_the_full_batch(arch: Arch, scope: SyncBn) -> f64 {
    let (_vs, full) = model(arch);
    to_f64(&full);
    let cfg = full.config().clone();
    let weights: Vec<Tensor> = full.variables().iter().map(|v| v.tensor.copy()).collect();
    let x = Tensor::rand([8, 3, 32, 32], (Kind::Double, Device::Cpu));
    // A per-row loss (the sum over replicas is the full-batch loss); the batch-statistics terms
    // of the gradient come from batch norm coupling the rows.
    let w = Tensor::rand([8], (Kind::Double, Device::Cpu));
    let loss = |z: &Tensor, w: &Tensor| (z.square().sum_dim_intlist(1, false, Kind::Double) * w).sum(Kind::Double);
    let z = full.forward(&x, true);
    loss(&z, &w).backward();
    let [a, b] = two_replicas(&cfg, scope, &weights, &x);
    (loss(&a.z, &w.narrow(0, 0, 4)) + loss(&b.z, &w.narrow(0, 4, 4))).backward();
    let z2 = Tensor::cat(&[&a.z, &b.z], 0);
    let mut worst = max_rel(&z2, &z);
    let scale = full
        .variables()
        .iter()
        .filter(|v| v.role == Role::Trainable)
        .map(|v| v.tensor.grad().abs().max().double_value(&[]))
        .fold(0.0f64, f64::max);
    for (i, v) in full.variables().iter().enumerate() {
        let ((name, role, ta), (_, _, tb)) = (&a.vars[i], &b.vars[i]);
        assert_eq!(name, &v.name);
        let d = match role {
            Role::Trainable => (ta.grad() + tb.grad() - v.tensor.grad()).abs().max().double_value(&[]) / scale,
            // Both replicas hold the global statistics.
            Role::Buffer => max_rel(ta, &v.tensor).max(max_rel(tb, &v.tensor)),
            Role::Counter => {
                assert_eq!(ta.int64_value(&[]), v.tensor.int64_value(&[]), "{name}");
                0.0
            }
        };
        worst = worst.max(d);
        let tol = if *role == Role::Buffer { BUF_TOL } else { TOL };
        if scope == SyncBn::All {
            assert!(d < tol, "{arch:?}: {name} differs by {d}");
        }
    }
    if scope == SyncBn::All {
        assert!(max_rel(&z2, &z) < TOL, "{arch:?}: outputs differ by {}", max_rel(&z2, &z));
    }
    worst
}

#[test]
fn all_bn_synced_two_replicas_equal_one_full_batch_resnet50() {
    two_replicas_equal_the_full_batch(Arch::Resnet50, SyncBn::All);
}

#[test]
fn all_bn_synced_two_replicas_equal_one_full_batch_keras_style() {
    two_replicas_equal_the_full_batch(Arch::KerasResnet34, SyncBn::All);
}

#[test]
fn projector_only_sync_leaves_the_encoder_per_replica() {
    // The comparison above is sensitive: with the encoder's statistics per replica it fails.
    let worst = two_replicas_equal_the_full_batch(Arch::Resnet18, SyncBn::Projector);
    assert!(worst > 1e-3, "projector-only sync matched the full batch ({worst})");
}
