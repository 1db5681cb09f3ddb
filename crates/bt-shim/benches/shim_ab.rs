//! Interleaved A/B timings on CPU: (1) the same optimizer-style update as a per-tensor tch loop
//! vs the shim's multi-tensor ops, on the CIFAR ResNet-18 parameter shapes (60 tensors, 11.2 M
//! values); (2) a 3x3 convolution on an NCHW vs a channels-last input.
//!
//! Criterion measures each variant in its own time window; on a shared, loaded machine the load
//! changes between windows. Here the two variants alternate round by round and the medians are
//! compared, so both see the same load. Run:
//! `cargo bench -p bt-shim --bench shim_ab`
//! Output ends with one `key=value` line.
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn resnet18_shapes() -> Vec<Vec<i64>> {
    let mut s = vec![vec![64, 3, 3, 3], vec![64], vec![64]];
    let mut c_in = 64;
    for (c, stride) in [(64, 1), (128, 2), (256, 2), (512, 2)] {
        for block in 0..2 {
            let cin = if block == 0 { c_in } else { c };
            s.extend([vec![c, cin, 3, 3], vec![c], vec![c], vec![c, c, 3, 3], vec![c], vec![c]]);
            if block == 0 && (stride != 1 || cin != c) {
                s.extend([vec![c, cin, 1, 1], vec![c], vec![c]]);
            }
        }
        c_in = c;
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time_ms(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs `a` and `b` alternately `rounds` times (after one warm-up each); medians in ms.
fn interleaved(rounds: usize, a: &mut dyn FnMut(), b: &mut dyn FnMut()) -> (f64, f64) {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first so neither always runs right after the other.
        if r % 2 == 0 {
            ta.push(time_ms(a));
            tb.push(time_ms(b));
        } else {
            tb.push(time_ms(b));
            ta.push(time_ms(a));
        }
    }
    (median(ta), median(tb))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rounds: usize = std::env::var("BT_AB_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let shapes = resnet18_shapes();
    let list = |seed: i64| -> Vec<Tensor> {
        tch::manual_seed(seed);
        shapes.iter().map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu))).collect()
    };
    let (m, g) = (list(1), list(2));
    let numel: i64 = shapes.iter().map(|s| s.iter().product::<i64>()).sum();
    println!(
        "update m = lerp(0.9 m, g, 0.1) over {} tensors ({numel} values), {} intra-op threads, {rounds} interleaved rounds",
        shapes.len(),
        tch::get_num_threads()
    );

    // Both sides run exactly the same two kernels per tensor (mul_ by a scalar, lerp_).
    let mut per_tensor = || {
        for (g, m) in g.iter().zip(&m) {
            let mut m = m.shallow_clone();
            let _ = m.g_mul_scalar_(0.9);
            let _ = m.lerp_(g, 0.1);
        }
    };
    let mut foreach = || {
        bt_shim::foreach_mul_scalar_(&m, 0.9).unwrap();
        bt_shim::foreach_lerp_(&m, &g, 0.1).unwrap();
    };
    let (ma, mb) = interleaved(rounds, &mut per_tensor, &mut foreach);
    println!("per-tensor tch loop (120 calls): median {ma:.2} ms");
    println!("bt-shim foreach (2 calls):       median {mb:.2} ms");
    println!("ratio per_tensor/foreach = {:.2}", ma / mb);

    let x = Tensor::randn([64, 64, 32, 32], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([64, 64, 3, 3], (Kind::Float, Device::Cpu));
    let (xc, wc) = (bt_shim::to_channels_last(&x).unwrap(), bt_shim::to_channels_last(&w).unwrap());
    let conv = |x: &Tensor, w: &Tensor| x.conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let (mn, mc) = interleaved(rounds, &mut || drop(conv(&x, &w)), &mut || drop(conv(&xc, &wc)));
    println!("conv3x3 [64, 64, 32, 32] x [64, 64, 3, 3], f32:");
    println!("NCHW input:          median {mn:.2} ms");
    println!("channels-last input: median {mc:.2} ms");
    println!("ratio nchw/channels_last = {:.2}", mn / mc);
    println!(
        "per_tensor_ms={ma:.3} foreach_ms={mb:.3} foreach_speedup={:.3} conv_nchw_ms={mn:.3} conv_channels_last_ms={mc:.3} channels_last_speedup={:.3}",
        ma / mb,
        mn / mc
    );
}
