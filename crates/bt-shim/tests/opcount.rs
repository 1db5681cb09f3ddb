//! The operator counter (`bt_shim::count_ops`). One test function: counting is process-wide, so
//! a second test running operators on another thread would be counted too.
use bt_shim::count_ops;
use tch::{Kind, Tensor};

#[test]
fn counts_kernel_operators_not_composites_views_or_what_ran_before() {
    let x = Tensor::ones([4, 3], (Kind::Float, tch::Device::Cpu));
    let w = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu));
    let _outside = &x + 1.0;
    let (y, c) = count_ops(|| x.linear::<Tensor>(&w, None).relu()).unwrap();
    assert_eq!(y.size(), [4, 2]);
    // linear -> (t, matmul -> mm): one matrix product and one relu compute; t is a view.
    assert_eq!(c.count("aten::relu") + c.count("aten::clamp_min"), 1, "{c:?}");
    assert_eq!(c.count("aten::mm") + c.count("aten::addmm"), 1, "{c:?}");
    assert_eq!(c.kernels(), 2, "{c:?}");
    assert!(c.ops > c.kernels(), "composites and views are in ops: {c:?}");
    assert_eq!(c.count("aten::add"), 0, "an operator before counting began is not counted: {c:?}");

    // A scalar read (`.item()`) is one aten::_local_scalar_dense.
    let s = Tensor::from_slice(&[1.0f32, 2.0]).sum(Kind::Float);
    let (v, c) = count_ops(|| s.double_value(&[])).unwrap();
    assert_eq!(v, 3.0);
    assert_eq!(c.count("aten::_local_scalar_dense"), 1, "{c:?}");

    // Backward: the autograd engine's operators are counted too.
    let p = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let (_, c) = count_ops(|| (&p * &p).sum(Kind::Float).backward()).unwrap();
    assert!(c.kernels() >= 3, "forward mul + sum and backward ops: {c:?}");

    let (_, again) = count_ops(|| ()).unwrap();
    assert_eq!(again.ops, 0, "a new count starts from zero: {again:?}");
}
