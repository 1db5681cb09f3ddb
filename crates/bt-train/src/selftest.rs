//! A device (CUDA) checked against the CPU on the paths the trainer uses: the loss (both
//! implementations and normalizations, values and gradients), the flat LAMB/LARS step, the
//! side-stream input upload, and a few training steps of a small model (f32, and bf16 +
//! channels-last teacher-forced at the f32 weights, `crate::modecheck`). [`run`] returns one [`Check`] per comparison; `bt-cli selftest` prints them
//! and `scripts/gpu-check.sh` runs it on the GPU machine. With the CPU as the device under test
//! it compares the CPU with itself (the code runs and the f32 paths agree).
use crate::device::{StepSettings, Uploader};
use crate::error::Result;
use bt_config::{Arch, Config, LossImpl, LossNorm, OptimKind, Precision};
use tch::{nn, Device, Kind, Tensor};

/// One comparison of the device under test against the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was compared.
    pub name: String,
    /// Within tolerance.
    pub ok: bool,
    /// The measured differences and the tolerance.
    pub detail: String,
}

#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        self.checks.push(Check { name: name.to_string(), ok, detail });
    }
}

/// Runs every check of `dev` against the CPU.
pub fn run(dev: Device) -> Result<Vec<Check>> {
    // The f32 comparisons run with TF32 off (a 10-bit mantissa would fail the 1e-3 tolerances
    // for the wrong reason); `train` switches it off again after `apply_backend`. The caller's
    // switches are put back whatever happens.
    let tf32 = bt_shim::allow_tf32()?;
    let res = (|| {
        let mut r = Report::default();
        bt_shim::set_allow_tf32(false)?;
        loss_checks(&mut r, dev)?;
        optim_checks(&mut r, dev)?;
        upload_check(&mut r, dev)?;
        train_checks(&mut r, dev)?;
        Ok(r.checks)
    })();
    bt_shim::set_allow_tf32_each(tf32.0, tf32.1)?;
    res
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_device(Device::Cpu).to_kind(Kind::Double) - b.to_device(Device::Cpu).to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// The largest of `errs`, NaN if any is NaN (`fold(0.0, f64::max)` would drop a NaN, and a
/// device returning NaN would pass every `err < tol`), infinite for two lists of different
/// lengths.
fn worst(a_len: usize, b_len: usize, errs: impl IntoIterator<Item = f64>) -> f64 {
    if a_len != b_len {
        return f64::INFINITY;
    }
    errs.into_iter().fold(0.0, |m, e| if m.is_nan() || e.is_nan() { f64::NAN } else { m.max(e) })
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

fn loss_checks(r: &mut Report, dev: Device) -> Result<()> {
    tch::manual_seed(11);
    let (n, d) = (64i64, 96i64);
    let za = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let zb = &za * 0.8 + Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * 0.6;
    for imp in [LossImpl::Reference, LossImpl::Fused] {
        for norm in [LossNorm::KerasSeed, LossNorm::Batchnorm] {
            let cfg = bt_config::LossConfig { normalization: norm, implementation: imp, ..Default::default() };
            let opts = bt_loss::LossOptions::from_config(&cfg);
            let run = |device: Device| -> Result<(f64, Tensor, Tensor)> {
                let a = za.to_device(device).set_requires_grad(true);
                let b = zb.to_device(device).set_requires_grad(true);
                let out = bt_loss::barlow_twins_loss(&a, &b, &opts)?;
                out.loss.backward();
                Ok((out.loss.double_value(&[]), a.grad(), b.grad()))
            };
            let (lc, gac, gbc) = run(Device::Cpu)?;
            let (ld, gad, gbd) = run(dev)?;
            let gscale = gac.abs().max().double_value(&[]).max(1e-12);
            let gerr = worst(1, 1, [max_abs(&gac, &gad), max_abs(&gbc, &gbd)]) / gscale;
            r.check(
                &format!("loss {imp:?}/{norm:?}"),
                rel(lc, ld) < 1e-4 && gerr < 1e-3,
                format!("loss cpu {lc:.6} device {ld:.6} (rel {:.1e}), grad rel err {gerr:.1e}", rel(lc, ld)),
            );
        }
    }
    Ok(())
}

fn optim_checks(r: &mut Report, dev: Device) -> Result<()> {
    let shapes: Vec<Vec<i64>> = vec![vec![32, 3, 3, 3], vec![32], vec![32], vec![64, 32], vec![64], vec![5, 7, 1, 1]];
    tch::manual_seed(5);
    let init: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu))).collect();
    let grads: Vec<Vec<Tensor>> = (0..3)
        .map(|_| shapes.iter().map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu))).collect())
        .collect();
    for kind in [OptimKind::Lamb, OptimKind::Lars] {
        let cfg = bt_config::OptimConfig { name: kind, weight_decay: 1e-4, lr: 1e-2, ..Default::default() };
        let run = |device: Device| -> Result<Vec<Tensor>> {
            let named: Vec<(String, Tensor)> = init
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("p{i}"), t.copy().to_device(device).set_requires_grad(true)))
                .collect();
            let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
            let mut opt = bt_optim::build(&cfg, named)?;
            for g in &grads {
                opt.zero_grad();
                // d/dp Σ p·g = g: sets each gradient to g on the device. (`init` is copied above:
                // on the CPU `to_device` would alias it and the optimizer would move it.)
                let l = params.iter().zip(g).fold(Tensor::zeros([], (Kind::Float, device)), |acc, (p, g)| {
                    acc + (p * g.to_device(device)).sum(Kind::Float)
                });
                l.backward();
                opt.step(&bt_optim::LrPair::same(cfg.lr))?;
            }
            Ok(params.iter().map(|p| p.detach().to_device(Device::Cpu)).collect())
        };
        let (c, d) = (run(Device::Cpu)?, run(dev)?);
        let err = worst(c.len(), d.len(), c.iter().zip(&d).map(|(a, b)| max_abs(a, b)));
        r.check(&format!("optimizer {kind:?} 3 steps"), err < 1e-5, format!("max |param cpu - device| {err:.1e}"));
    }
    Ok(())
}

fn upload_check(r: &mut Report, dev: Device) -> Result<()> {
    let n = 8usize;
    let a: Vec<f32> = (0..n * 3072).map(|i| (i % 977) as f32 / 977.0).collect();
    let b: Vec<f32> = a.iter().map(|x| 1.0 - x).collect();
    let mut up = Uploader::new(dev, true)?;
    let mut ok = true;
    let mut last = Vec::new();
    // Several in flight at once, as in the trainer (next batch staged while the current runs).
    let staged: Vec<_> = (0..3).map(|_| up.upload(&[&a, &b], n, 32)).collect::<Result<_>>()?;
    for s in staged {
        let ts = s.ready(&mut up)?;
        ok &= ts.iter().all(|t| t.device() == dev && bt_shim::is_channels_last(t));
        last = ts;
    }
    let want = Tensor::from_slice(&a).view([n as i64, 3, 32, 32]);
    let err = worst(1, 1, [max_abs(&last[0], &want), max_abs(&last[1], &(1.0 - &want))]);
    let (wait, measured) = up.final_wait_ms()?;
    r.check(
        "input upload (side stream, channels-last)",
        ok && err == 0.0,
        format!("exact copy: {}, channels-last on {dev:?}: {ok}, measured waits {measured} ({wait:.3} ms)", err == 0.0),
    );
    Ok(())
}

/// A few training steps of a small model; returns the losses and the trainable parameters.
fn train(cfg: &Config, dev: Device, settings: StepSettings, steps: usize) -> Result<(Vec<f64>, Vec<Tensor>)> {
    tch::manual_seed(cfg.run.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = bt_model::BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    let mut vs = vs;
    vs.set_device(dev);
    model.set_precision(settings.precision);
    settings.apply_backend(dev)?;
    if settings.precision == Precision::F32 {
        // apply_backend turns TF32 on for f32 training runs; this run is a 1e-3 comparison.
        bt_shim::set_allow_tf32(false)?;
    }
    let mut opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs))?;
    let opts = bt_loss::LossOptions::from_config(&cfg.loss);
    let mut up = Uploader::new(dev, settings.channels_last)?;
    let n = cfg.data.batch_size;
    let mut losses = Vec::new();
    for s in 0..steps {
        let xa = Tensor::rand([n as i64, 3, 32, 32], (Kind::Float, Device::Cpu));
        let _ = s;
        let xb = (&xa * 0.7 + Tensor::rand([n as i64, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.3).contiguous();
        let (va, vb): (Vec<f32>, Vec<f32>) = (Vec::try_from(xa.reshape([-1]))?, Vec::try_from(xb.reshape([-1]))?);
        let ts = up.upload(&[&va, &vb], n, 32)?.ready(&mut up)?;
        // The trainer's precision scheme: bf16 weight copies made once per step.
        model.refresh_low_precision_weights(settings.channels_last)?;
        let out = bt_loss::barlow_twins_loss(&model.forward(&ts[0], true), &model.forward(&ts[1], true), &opts)?;
        opt.zero_grad();
        out.loss.backward();
        opt.step(&bt_optim::LrPair::same(cfg.optim.lr))?;
        losses.push(out.loss.double_value(&[]));
    }
    let params = bt_optim::trainable_named(&vs).into_iter().map(|(_, t)| t.detach().to_device(Device::Cpu)).collect();
    Ok((losses, params))
}

fn train_checks(r: &mut Report, dev: Device) -> Result<()> {
    let mut cfg = Config::default();
    cfg.model.arch = Arch::CifarResnet18;
    cfg.model.width = 8;
    cfg.model.projector = vec![128, 128];
    cfg.data.batch_size = 32;
    cfg.run.seed = 3;
    let f32s = StepSettings { precision: Precision::F32, channels_last: false };
    let (lc, pc) = train(&cfg, Device::Cpu, f32s, 3)?;
    let (ld, pd) = train(&cfg, dev, f32s, 3)?;
    let lerr = worst(lc.len(), ld.len(), lc.iter().zip(&ld).map(|(a, b)| rel(*a, *b)));
    let num: f64 = pc.iter().zip(&pd).map(|(a, b)| (a - b).square().sum(Kind::Double).double_value(&[])).sum();
    let den: f64 = pc.iter().map(|a| a.square().sum(Kind::Double).double_value(&[])).sum();
    let perr = (num / den.max(1e-30)).sqrt();
    r.check(
        "3 training steps f32 (cifar-resnet18 w8, LAMB)",
        lerr < 1e-3 && perr < 1e-3,
        format!("losses cpu {lc:.4?} device {ld:.4?} (max rel {lerr:.1e}); param rel L2 diff {perr:.1e}"),
    );
    // The mode a CUDA run trains in (bf16 + channels-last) against CPU f32 at the same weights,
    // step after step, within the bounds its arithmetic allows (issue 22; crate::modecheck).
    let fast = StepSettings { precision: Precision::Bf16, channels_last: true };
    let cfg = crate::modecheck::check_config()?;
    let diffs = crate::modecheck::trace(&cfg, dev, fast, 10)?;
    let v = crate::modecheck::Bounds::for_precision(Precision::Bf16).violations(&diffs);
    let worst = diffs.iter().map(crate::modecheck::StepDiff::loss_rel).fold(0.0, f64::max);
    let beta = diffs.iter().map(|d| (d.grad_beta - 1.0).abs()).fold(0.0, f64::max);
    r.check(
        "10 training steps bf16 + channels-last vs CPU f32 at the same weights",
        v.is_empty(),
        format!(
            "max rel loss {worst:.1e}, max |grad beta - 1| {beta:.2e}{}",
            if v.is_empty() { String::new() } else { format!("; {}", v.join("; ")) }
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn selftest_passes_on_cpu_and_puts_the_tf32_switches_back() {
        // A state neither libtorch's default nor what the selftest sets.
        bt_shim::set_allow_tf32_each(true, false).unwrap();
        // Whether the CPU-vs-CPU checks agree is not asserted here: other tests of this binary
        // draw from libtorch's global RNG concurrently (the `bt-cli selftest` run checks that).
        let checks = super::run(tch::Device::Cpu).unwrap();
        assert_eq!(checks.len(), 9, "{:?}", checks.iter().map(|c| &c.name).collect::<Vec<_>>());
        assert_eq!(bt_shim::allow_tf32().unwrap(), (true, false), "the caller's TF32 switches are back");
    }
}
