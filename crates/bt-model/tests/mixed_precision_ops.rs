//! The weight cast runs once per step: counted with `bt_shim::count_ops`, alone in its test
//! binary because the count is process-wide (a parallel test's operators would be counted too).
use bt_model::{Arch, BarlowTwins, ModelConfig, Precision};
use tch::{nn, Device, Kind, Tensor};

#[test]
fn each_weight_is_cast_once_per_step_not_once_per_forward() {
    let cfg = ModelConfig { arch: Arch::CifarResnet18, width: 8, projector: vec![32, 32], ..ModelConfig::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = BarlowTwins::new(&vs.root(), &cfg);
    m.set_precision(Precision::Bf16);
    // Conv and linear weights (dim >= 2) and the linear biases: every tensor with a bf16 copy.
    let w = m
        .variables()
        .iter()
        .filter(|v| {
            v.tensor.dim() >= 2
                || (v.name.starts_with("projector.") && v.name.ends_with("bias") && {
                    let stem = v.name.trim_end_matches("bias");
                    m.variables().iter().any(|u| u.name == format!("{stem}weight") && u.tensor.dim() == 2)
                })
        })
        .count() as u64;
    let x = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let casts = |f: &dyn Fn()| bt_shim::count_ops(f).unwrap().1.count("aten::copy_");
    let per_call = casts(&|| drop(m.forward(&x, true)));
    let refresh = casts(&|| m.refresh_low_precision_weights(false).unwrap());
    let cached = casts(&|| drop(m.forward(&x, true)));
    // The refresh casts each tensor once; a forward after it casts none of them, a forward
    // without it all of them (NCHW copies in both, so the kernels' own copies are the same).
    assert_eq!(refresh, w, "one cast per weight tensor");
    assert_eq!(per_call - cached, w, "per call {per_call}, cached {cached}");
}
