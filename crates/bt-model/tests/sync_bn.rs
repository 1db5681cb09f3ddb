//! Synchronized projector batch norm (`BarlowTwins::set_projector_sync`) against libtorch's own
//! batch-norm kernel. The multi-process case (two ranks over Gloo equal one process holding both
//! ranks' rows) is tested in crates/bt-cli/tests/distributed.rs.
use bt_config::{Arch, ModelConfig};
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
    let cfg = ModelConfig {
        arch,
        width: 4,
        projector: vec![24, 24, 8],
        ..ModelConfig::default()
    };
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
    assert!(
        max_rel(&zb, &za) < 1e-5,
        "{arch:?}: outputs differ by {}",
        max_rel(&zb, &za)
    );
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
                let d = (b.tensor.grad() - a.tensor.grad())
                    .abs()
                    .max()
                    .double_value(&[])
                    / scale;
                assert!(d < 1e-4, "{arch:?}: gradient of {} differs by {d}", a.name);
            }
            Role::Buffer => {
                let d = max_rel(&b.tensor, &a.tensor);
                assert!(d < 1e-5, "{arch:?}: {} differs by {d}", a.name);
            }
            Role::Counter => assert_eq!(
                a.tensor.int64_value(&[]),
                b.tensor.int64_value(&[]),
                "{}",
                a.name
            ),
        }
        checked += a.name.starts_with("projector.") as usize;
    }
    assert!(
        checked >= 8,
        "the projector's BN variables were compared ({checked})"
    );
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
    assert!(
        max_rel(&zb, &za) < 1e-5,
        "outputs differ by {}",
        max_rel(&zb, &za)
    );
    let get = |m: &BarlowTwins, name: &str| {
        m.variables()
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .tensor
            .shallow_clone()
    };
    let (rv_a, rv_b) = (
        get(&plain, "projector.1.running_var"),
        get(&synced, "projector.1.running_var"),
    );
    // running_var = 0.9 * 1 + 0.1 * var_unbiased; undo the momentum and compare the batch terms.
    let (va, vb) = ((rv_a - 0.9) / 0.1, (rv_b - 0.9) / 0.1);
    let nf = n as f64;
    let expect = va * ((nf - 1.0) / nf) * (2.0 * nf / (2.0 * nf - 1.0));
    assert!(
        max_rel(&vb, &expect) < 1e-4,
        "running_var: {}",
        max_rel(&vb, &expect)
    );
}
