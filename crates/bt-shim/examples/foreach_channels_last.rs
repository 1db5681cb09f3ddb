//! The shim without the CLI, on CPU: one SGD-with-momentum step over a parameter list with
//! multi-tensor ops (checked against the per-tensor loop), then a convolution on a
//! channels-last input (checked against the NCHW one).
//!
//! Run: `cargo run --release -p bt-shim --example foreach_channels_last`
//! Expected: both "max |diff|" lines print 0 or a few 1e-7, and "channels-last: true".
use tch::{Device, Kind, Tensor};

fn main() -> bt_shim::Result<()> {
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(0);
    let shapes: [&[i64]; 4] = [&[64, 3, 3, 3], &[64], &[128, 64, 3, 3], &[10, 128]];
    let params: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
    let grads: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
    let (lr, momentum) = (0.1, 0.9);

    // Multi-tensor: buf = momentum * buf + g; p -= lr * buf  -- 3 calls for the whole list.
    let p_multi: Vec<Tensor> = params.iter().map(|p| p.copy()).collect();
    let buf: Vec<Tensor> = params.iter().map(|p| p.zeros_like()).collect();
    bt_shim::foreach_mul_scalar_(&buf, momentum)?;
    bt_shim::foreach_add_(&buf, &grads, 1.0)?;
    bt_shim::foreach_add_(&p_multi, &buf, -lr)?;

    // The same step tensor by tensor (3 calls per tensor).
    let mut diff: f64 = 0.0;
    for ((p, g), pm) in params.iter().zip(&grads).zip(&p_multi) {
        let b = g.zeros_like() * momentum + g;
        let want = p - b * lr;
        diff = diff.max((want - pm).abs().max().double_value(&[]));
    }
    println!("SGD momentum step over {} tensors: max |diff| vs per-tensor loop = {diff:e}", params.len());

    let norms = bt_shim::foreach_norm(&p_multi)?;
    let norms: Vec<f64> = norms.iter().map(|n| n.double_value(&[])).collect();
    println!("per-tensor L2 norms after the step: {norms:.3?}");

    let x = Tensor::randn([8, 3, 32, 32], opts);
    let w = &params[0];
    let nchw = x.conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let xc = bt_shim::to_channels_last(&x)?;
    let nhwc = xc.conv2d(&bt_shim::to_channels_last(w)?, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    println!(
        "input strides {:?} -> channels-last {:?}; output channels-last: {}",
        x.stride(),
        xc.stride(),
        bt_shim::is_channels_last(&nhwc)
    );
    println!("conv NHWC vs NCHW: max |diff| = {:e}", (&nhwc - &nchw).abs().max().double_value(&[]));
    println!("bt-shim built with CUDA: {}; CUDA devices: {}", bt_shim::built_with_cuda(), bt_shim::cuda_device_count());
    Ok(())
}
