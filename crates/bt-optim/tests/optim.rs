//! bt-optim against scripts/fixtures/optim_ref.py: LAMB from the tfa formulas (NumPy) and Keras 3's
//! `Lamb`; LARS from the official Barlow Twins class and solo-learn's class (verbatim in the
//! script); the official lr schedule; plus state round trips and VarStore integration.
use bt_config::{LarsVariant, OptimConfig, OptimKind, ScheduleConfig, ScheduleKind};
use bt_optim::reference::{LambPerTensor, LarsPerTensor};
use bt_optim::OptimError;
use bt_optim::{build, trainable_named, Lamb, LambParams, Lars, LarsParams, LrPair, Optimizer, ParamFilter, Schedule};
use std::collections::HashMap;
use tch::{nn, Device, Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const NAMES: [&str; 7] = ["l1.weight", "l1.bias", "l2.weight", "l2.bias", "scale", "zero.weight", "dead.weight"];

fn load(file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(format!("{FIXTURES}/{file}")).unwrap().into_iter().collect()
}

struct Model {
    params: Vec<(String, Tensor)>,
    x: Tensor,
    y: Tensor,
}

impl Model {
    fn new(f: &HashMap<String, Tensor>) -> Self {
        let params =
            NAMES.iter().map(|n| (n.to_string(), f[&format!("init/{n}")].copy().set_requires_grad(true))).collect();
        Self { params, x: f["data/x"].copy(), y: f["data/y"].copy() }
    }
    fn p(&self, name: &str) -> &Tensor {
        &self.params.iter().find(|(n, _)| n == name).unwrap().1
    }
    /// The forward of optim_ref.py.
    fn loss(&self) -> Tensor {
        let h = (self.x.matmul(&self.p("l1.weight").tr()) + self.p("l1.bias")).tanh();
        let out = (h.matmul(&self.p("l2.weight").tr()) + self.p("l2.bias")) * self.p("scale")
            + h.matmul(&self.p("zero.weight").tr())
            + self.p("dead.weight").sum(Kind::Float) * 0.0;
        (out - &self.y).square().mean(Kind::Float)
    }
    fn named(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Runs 20 steps and checks every step's parameters against `traj` (`<case>/<name>`: [20, ...]).
fn check_trajectory(
    traj: &HashMap<String, Tensor>,
    case: &str,
    model: &Model,
    opt: &mut dyn Optimizer,
    lr: LrPair,
    tol: f64,
) {
    for step in 0..20 {
        opt.zero_grad();
        model.loss().backward();
        opt.step(&lr).unwrap();
        for n in NAMES {
            let want = traj[&format!("{case}/{n}")].get(step);
            let err = max_abs(model.p(n), &want);
            assert!(err <= tol, "{case} step {} {n}: max |Δ| = {err:e}", step + 1);
        }
    }
    assert_eq!(opt.step_count(), 20);
}

fn lamb_params(case: &str) -> LambParams {
    match case {
        "lamb_default" => LambParams::default(),
        "lamb_wd_excl" => LambParams {
            weight_decay: 0.01,
            exclude_from_weight_decay: ParamFilter::names(["bias"]),
            ..LambParams::default()
        },
        "lamb_wd_adapt_excl" => LambParams {
            weight_decay: 0.01,
            exclude_from_layer_adaptation: Some(ParamFilter::names(["scale", "l2."])),
            ..LambParams::default()
        },
        _ => unreachable!(),
    }
}

#[test]
fn lamb_matches_tfa_formulas_over_20_steps() {
    let f = load("optim_ref.safetensors");
    for case in ["lamb_default", "lamb_wd_excl", "lamb_wd_adapt_excl"] {
        let m = Model::new(&f);
        let mut opt = Lamb::new(m.named(), lamb_params(case)).unwrap();
        check_trajectory(&f, case, &m, &mut opt, LrPair::same(0.01), 1e-6);
        let m = Model::new(&f);
        let mut opt = LambPerTensor::new(m.named(), lamb_params(case)).unwrap();
        check_trajectory(&f, case, &m, &mut opt, LrPair::same(0.01), 1e-6);
    }
}

#[test]
fn lamb_matches_keras3_lamb_over_20_steps() {
    let f = load("optim_ref.safetensors");
    let mut k = load("optim_keras.safetensors");
    let renamed: HashMap<String, Tensor> = k.drain().map(|(n, t)| (n.replace("keras_lamb/", "keras/"), t)).collect();
    let m = Model::new(&f);
    let mut opt = Lamb::new(m.named(), LambParams::default()).unwrap();
    check_trajectory(&renamed, "keras", &m, &mut opt, LrPair::same(0.01), 1e-6);
}

fn lars_case(case: &str) -> (LarsParams, LrPair) {
    match case {
        "lars_official" => (
            LarsParams {
                variant: LarsVariant::Official,
                momentum: 0.9,
                eta: 0.01,
                weight_decay: 1e-3,
                clip_lr: false,
                exclude: ParamFilter::bias_and_norm(),
            },
            LrPair { weights: 1.0, biases: 0.1 },
        ),
        "lars_solo_clip" | "lars_solo" => (
            LarsParams {
                variant: LarsVariant::SoloLearn,
                momentum: 0.9,
                eta: 0.02,
                weight_decay: 1e-2,
                clip_lr: case == "lars_solo_clip",
                exclude: ParamFilter::bias_and_norm(),
            },
            LrPair::same(0.3),
        ),
        _ => unreachable!(),
    }
}

#[test]
fn lars_matches_official_and_solo_learn_classes_over_20_steps() {
    let f = load("optim_ref.safetensors");
    // 2e-6 (about 16 f32 ulps at |w| ≈ 1.2): solo-learn's trust ratio divides by f32 norms whose
    // summation order depends on the CPU's vector width (AVX-512 machines drift to 1.07e-6 by
    // step 15 against the NumPy trajectory); a formula error moves a step by about lr · update,
    // orders of magnitude more.
    let tol = 2e-6;
    for case in ["lars_official", "lars_solo_clip", "lars_solo"] {
        let (p, lr) = lars_case(case);
        let m = Model::new(&f);
        let mut opt = Lars::new(m.named(), p.clone()).unwrap();
        check_trajectory(&f, case, &m, &mut opt, lr, tol);
        let m = Model::new(&f);
        let mut opt = LarsPerTensor::new(m.named(), p).unwrap();
        check_trajectory(&f, case, &m, &mut opt, lr, tol);
    }
}

#[test]
fn trust_ratio_falls_back_to_one_on_zero_norms() {
    // ‖w‖ = 0: the LAMB step is lr · u with u = m̂ / (sqrt(v̂) + ε) = g / (|g| + ε) at step 1.
    let w = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let g = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0, -1.0, 0.25]).view([2, 3]);
    (&w * &g).sum(Kind::Float).backward();
    let mut opt = Lamb::new(vec![("w".into(), w.shallow_clone())], LambParams::default()).unwrap();
    opt.step(&LrPair::same(0.1)).unwrap();
    let want = &g / (g.abs() + 1e-6) * -0.1;
    assert!(max_abs(&w, &want) < 1e-7, "{w}");
    // ‖u‖ = 0 (zero gradient, no decay): ratio 1, the weights do not move and stay finite.
    let w = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (&w * 0.0).sum(Kind::Float).backward();
    let mut opt = Lars::new(
        vec![("w".into(), w.shallow_clone())],
        LarsParams { exclude: ParamFilter::none(), weight_decay: 0.0, ..LarsParams::default() },
    )
    .unwrap();
    opt.step(&LrPair::same(1.0)).unwrap();
    assert_eq!(Vec::<f32>::try_from(&w).unwrap(), vec![1.0; 4]);
}

fn run_steps(m: &Model, opt: &mut dyn Optimizer, n: usize, lr: LrPair) {
    for _ in 0..n {
        opt.zero_grad();
        m.loss().backward();
        opt.step(&lr).unwrap();
    }
}

#[test]
fn state_round_trips_exactly_through_a_file_and_across_implementations() {
    let f = load("optim_ref.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let cfgs = [
        OptimConfig { name: OptimKind::Lamb, weight_decay: 0.01, ..OptimConfig::default() },
        OptimConfig { name: OptimKind::Lars, lr: 0.3, ..OptimConfig::default() },
    ];
    for cfg in cfgs {
        let lr = LrPair::same(cfg.lr);
        // Uninterrupted: 6 steps.
        let m_full = Model::new(&f);
        let mut full = build(&cfg, m_full.named()).unwrap();
        run_steps(&m_full, full.as_mut(), 6, lr);

        // Interrupted after 3: parameters and optimizer state through a safetensors file.
        let m1 = Model::new(&f);
        let mut o1 = build(&cfg, m1.named()).unwrap();
        run_steps(&m1, o1.as_mut(), 3, lr);
        let path = dir.path().join(format!("{:?}.safetensors", cfg.name));
        let mut all = o1.state();
        all.extend(m1.named().into_iter().map(|(n, t)| (format!("param.{n}"), t.detach())));
        Tensor::write_safetensors(&all, &path).unwrap();
        let loaded = Tensor::read_safetensors(&path).unwrap();

        for per_tensor in [false, true] {
            let m2 = Model::new(&f);
            tch::no_grad(|| {
                for (n, t) in m2.named() {
                    let src = &loaded.iter().find(|(k, _)| *k == format!("param.{n}")).unwrap().1;
                    t.shallow_clone().copy_(src);
                }
            });
            let mut o2 = if per_tensor {
                bt_optim::build_per_tensor(&cfg, m2.named()).unwrap()
            } else {
                build(&cfg, m2.named()).unwrap()
            };
            o2.load_state(&loaded).unwrap();
            assert_eq!(o2.step_count(), 3);
            run_steps(&m2, o2.as_mut(), 3, lr);
            for n in NAMES {
                let err = max_abs(m2.p(n), m_full.p(n));
                if per_tensor {
                    assert!(err < 1e-6, "{:?} per-tensor resume {n}: {err:e}", cfg.name);
                } else {
                    assert_eq!(err, 0.0, "{:?} resume {n}: not bit-exact", cfg.name);
                }
            }
        }
        // A state with a missing entry is an error naming the key.
        let partial: Vec<(String, Tensor)> = o1.state().into_iter().filter(|(k, _)| !k.ends_with("l1.bias")).collect();
        let e = build(&cfg, Model::new(&f).named()).unwrap().load_state(&partial).unwrap_err().to_string();
        assert!(e.contains("l1.bias"), "{e}");
    }
}

#[test]
fn varstore_variables_are_updated_in_place_and_running_stats_are_left_alone() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let lin = nn::linear(vs.root() / "fc", 6, 4, Default::default());
    let bn = nn::batch_norm1d(vs.root() / "bn", 4, Default::default());
    let named = trainable_named(&vs);
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bn.bias", "bn.weight", "fc.bias", "fc.weight"], "running stats are not trainable");
    let before = lin.ws.copy();
    let mut opt = build(&OptimConfig::default(), named).unwrap();
    let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let y = x.apply(&lin).apply_t(&bn, true);
    y.square().mean(Kind::Float).backward();
    opt.step(&LrPair::same(0.01)).unwrap();
    // The layer's own handle sees the update: the variable now lives in the flat buffer.
    assert!(max_abs(&lin.ws, &before) > 1e-4);
    let vars = vs.variables();
    assert!(max_abs(&vars["fc.weight"], &lin.ws) == 0.0);
    // Gradients still flow into the moved variables.
    opt.zero_grad();
    let y = x.apply(&lin).apply_t(&bn, true);
    y.square().mean(Kind::Float).backward();
    assert!(lin.ws.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn warmup_cosine_matches_official_adjust_learning_rate() {
    let f = load("optim_ref.safetensors");
    let want = &f["schedule/official_lrs"];
    let steps_per_epoch = 7;
    let s = Schedule::from_config(
        &ScheduleConfig {
            kind: ScheduleKind::WarmupCosine,
            warmup_epochs: 10.0,
            scale_with_batch: true,
            final_lr_fraction: 0.001,
        },
        &OptimConfig { lr: 0.2, lr_bias: 0.0048, ..OptimConfig::default() },
        512,
        steps_per_epoch,
        30,
    );
    assert_eq!(want.size(), [30 * 7, 2]);
    for step in 0..(30 * steps_per_epoch) {
        let lr = s.lr_at(step);
        let (w, b) = (want.double_value(&[step as i64, 0]), want.double_value(&[step as i64, 1]));
        assert!((lr.weights - w).abs() <= 1e-12 * w.abs().max(1e-3), "step {step}: {} vs {w}", lr.weights);
        assert!((lr.biases - b).abs() <= 1e-12 * b.abs().max(1e-3), "step {step}: {} vs {b}", lr.biases);
    }
    // Constant (the seed): optim.lr at every step; lr_bias = 0 means the same rate.
    let c = Schedule::from_config(&ScheduleConfig::default(), &OptimConfig::default(), 512, 97, 160);
    assert_eq!(c.lr_at(0), LrPair::same(1e-3));
    assert_eq!(c.lr_at(97 * 160 - 1), LrPair::same(1e-3));
}

/// A gradient that no longer fits its parameter (here resized through `set_data`, which autograd
/// does not check) is an error naming the parameter, for the grouped and the per-tensor
/// optimizers alike, and the parameters are left as they were; a mismatched state is an error
/// too. Without the check the grouped `cat_out` would silently resize the flat gradient buffer.
#[test]
fn a_gradient_that_does_not_fit_its_parameter_is_an_error() {
    let f = load("optim_ref.safetensors");
    let cfgs = [
        OptimConfig { name: OptimKind::Lamb, ..OptimConfig::default() },
        OptimConfig { name: OptimKind::Lars, ..OptimConfig::default() },
    ];
    for cfg in cfgs {
        for grouped in [true, false] {
            let m = Model::new(&f);
            let mut opt = if grouped {
                build(&cfg, m.named()).unwrap()
            } else {
                bt_optim::build_per_tensor(&cfg, m.named()).unwrap()
            };
            m.loss().backward();
            let before = m.p("l2.weight").copy();
            let mut g = m.p("l1.bias").grad();
            g.set_data(&Tensor::zeros([7], (Kind::Float, Device::Cpu)));
            let ctx = format!("{:?} grouped={grouped}", cfg.name);
            match opt.step(&LrPair::same(0.1)) {
                Err(e @ OptimError::Grad { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("`l1.bias`") && msg.contains("[7]"), "{ctx}: {msg}");
                }
                other => panic!("{ctx}: {other:?}"),
            }
            assert_eq!(max_abs(m.p("l2.weight"), &before), 0.0, "{ctx}: parameters moved");
            // A state from another model shape: an error naming the key, not a panic.
            let mut state = opt.try_state().unwrap();
            let (key, t) = state.iter_mut().find(|(k, _)| k.ends_with(".l1.weight")).unwrap();
            *t = Tensor::zeros([1, 1], (Kind::Float, Device::Cpu));
            let key = key.clone();
            match opt.load_state(&state) {
                Err(e @ OptimError::State { .. }) => {
                    assert!(e.to_string().contains(&key), "{ctx}: {e}")
                }
                other => panic!("{ctx}: {other:?}"),
            }
        }
    }
}

/// The optimizers to compare: LAMB with decay and exclusions, both LARS variants (clip on).
fn device_cases() -> Vec<(&'static str, OptimConfig)> {
    let lamb =
        OptimConfig { name: OptimKind::Lamb, weight_decay: 1e-2, exclude_bias_and_norm: true, ..Default::default() };
    let lars = OptimConfig { name: OptimKind::Lars, weight_decay: 1e-4, ..Default::default() };
    let solo = OptimConfig { lars_variant: LarsVariant::SoloLearn, clip_lr: true, ..lars.clone() };
    vec![("lamb", lamb), ("lars-official", lars), ("lars-solo", solo)]
}

fn bits(t: &Tensor) -> Vec<u32> {
    Vec::<f32>::try_from(t.detach().reshape([-1])).unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn device_step_is_bit_identical_to_the_host_step_and_transfers_nothing() {
    let f = load("optim_ref.safetensors");
    for (case, cfg) in device_cases() {
        let (a, b) = (Model::new(&f), Model::new(&f));
        let mut host = build(&cfg, a.named()).unwrap();
        let mut dev = build(&cfg, b.named()).unwrap();
        let sched = Schedule::from_config(
            &ScheduleConfig { kind: ScheduleKind::WarmupCosine, warmup_epochs: 1.0, ..Default::default() },
            &cfg,
            256,
            5,
            4,
        );
        // The whole schedule on the device once, as the trainer keeps it.
        let table: Vec<f64> = (0..20).flat_map(|s| [sched.lr_at(s).weights, sched.lr_at(s).biases * 0.5]).collect();
        let table = Tensor::from_slice(&table).view([20, 2]);
        for step in 0..20 {
            let lr = sched.lr_at(step);
            host.zero_grad();
            a.loss().backward();
            host.step(&LrPair { weights: lr.weights, biases: lr.biases * 0.5 }).unwrap();
            dev.zero_grad();
            b.loss().backward();
            let before = bt_host::counts();
            let _ = dev.gather_grads().unwrap();
            dev.step_device(&table.get(step as i64), None).unwrap();
            assert_eq!(bt_host::counts(), before, "{case}: step_device transferred");
            for n in NAMES {
                assert_eq!(bits(a.p(n)), bits(b.p(n)), "{case} step {} {n}", step + 1);
            }
        }
        assert_eq!(dev.step_count(), 20);
        let (sa, sb) = (host.state(), dev.state());
        for ((ka, ta), (kb, tb)) in sa.iter().zip(&sb) {
            assert_eq!(ka, kb);
            assert!(ta.equal(tb), "{case}: state {ka}");
        }
    }
}

#[test]
fn a_false_apply_flag_leaves_weights_moments_and_step_unchanged() {
    let f = load("optim_ref.safetensors");
    for (case, cfg) in device_cases() {
        let m = Model::new(&f);
        let mut opt = build(&cfg, m.named()).unwrap();
        let lr = Tensor::from_slice(&[0.05f64, 0.02]);
        for step in 0..4 {
            opt.zero_grad();
            m.loss().backward();
            let skip = step == 2;
            if skip {
                // A poisoned gradient, as the guard would see it.
                let _ = m.p("l1.weight").grad().view([-1]).get(0).fill_(f64::NAN);
            }
            let before = opt.state();
            let w0: Vec<Tensor> = NAMES.iter().map(|n| m.p(n).detach().copy()).collect();
            let g = opt.gather_grads().unwrap();
            let bad = opt.nonfinite_grads().unwrap();
            let names = opt.param_names();
            let bad: Vec<f64> = Vec::try_from(&bad).unwrap();
            let flagged: Vec<&String> = names.iter().zip(&bad).filter(|(_, c)| **c > 0.0).map(|(n, _)| n).collect();
            assert_eq!(flagged, if skip { vec!["l1.weight"] } else { vec![] }, "{case}");
            let flag = Tensor::from(!skip);
            opt.step_device(&lr, Some(&flag)).unwrap();
            drop(g);
            let after = opt.state();
            let changed: Vec<&String> =
                before.iter().zip(&after).filter(|((_, t0), (_, t1))| !t0.equal(t1)).map(|((k, _), _)| k).collect();
            if skip {
                assert!(changed.is_empty(), "{case}: a skipped step changed {changed:?}");
                for (n, w) in NAMES.iter().zip(&w0) {
                    assert!(m.p(n).detach().equal(w), "{case}: a skipped step moved {n}");
                }
            } else {
                assert!(changed.iter().any(|k| k.ends_with(".step")) && changed.len() > 1, "{case}: {changed:?}");
            }
            let w: Vec<f64> = Vec::try_from(m.p("l1.weight").reshape([-1]).to_kind(Kind::Double)).unwrap();
            assert!(w.iter().all(|v| v.is_finite()), "{case} step {step}");
        }
        assert_eq!(opt.step_count(), 3, "{case}: the skipped step is not counted");
    }
}
