//! Structure, checkpoints and speed hooks of bt-model (no Python needed).
mod common;

use bt_config::{Arch, ModelConfig, Precision};
use bt_model::{tf_same_pad, BarlowTwins, CheckpointKind, Encoder, ModelError, Role};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

fn cfg(arch: Arch, width: i64, projector: Vec<i64>) -> ModelConfig {
    ModelConfig { arch, width, projector, ..ModelConfig::default() }
}

fn rand_x(n: i64) -> Tensor {
    Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu))
}

#[test]
fn tf_same_padding_puts_the_odd_pixel_bottom_right() {
    // SEED_NOTES: 7x7/2 on 38: 2 top, 3 bottom; 3x3/2 on 10: 0 top, 1 bottom.
    assert_eq!(tf_same_pad(38, 7, 2), (2, 3));
    assert_eq!(tf_same_pad(10, 3, 2), (0, 1));
    assert_eq!(tf_same_pad(19, 3, 2), (1, 1));
    assert_eq!(tf_same_pad(5, 3, 1), (1, 1));
}

#[test]
fn keras_spatial_sizes_follow_the_notebook() {
    // SEED_NOTES: 38 -> 19 -> 10 -> 10 -> 5 -> 3 -> 2 -> 1.
    let vs = nn::VarStore::new(Device::Cpu);
    let m = BarlowTwins::new(&vs.root(), &cfg(Arch::KerasResnet34, 8, vec![16, 16]));
    let rows = m.layer_table(32, 32);
    let side = |name: &str| rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("{name}")).output_shape[2];
    assert_eq!(side("encoder.conv1"), 19);
    assert_eq!(side("encoder.maxpool"), 10);
    assert_eq!(side("encoder.layer1.2.conv2"), 10);
    assert_eq!(side("encoder.layer2.0.conv1"), 5);
    assert_eq!(side("encoder.layer2.0.downsample.0"), 5);
    assert_eq!(side("encoder.layer3.0.conv1"), 3);
    assert_eq!(side("encoder.layer4.0.conv1"), 2);
    assert_eq!(side("encoder.avgpool"), 1);
    let (tr, nt) = rows.iter().fold((0, 0), |(a, b), r| (a + r.trainable, b + r.non_trainable));
    let c = m.param_counts();
    assert_eq!((tr, nt), (c.total_trainable(), c.total_non_trainable()));
}

#[test]
fn cifar_resnet_counts_equal_torchvision() {
    // torchvision 0.26 with conv1 = Conv2d(3, 64, 3, 1, 1, bias=False), fc = Identity:
    //   sum(p.numel() for p in m.parameters()),
    //   sum(b.numel() for n, b in m.named_buffers() if 'running' in n)
    // resnet18 11168832 9600 / resnet34 21276992 17024 / resnet50 23500352 53120
    for (arch, tr, nt, f) in [
        (Arch::CifarResnet18, 11_168_832, 9_600, 512),
        (Arch::CifarResnet34, 21_276_992, 17_024, 512),
        (Arch::CifarResnet50, 23_500_352, 53_120, 2048),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BarlowTwins::new(&vs.root(), &cfg(arch, 64, vec![8]));
        let c = m.param_counts();
        assert_eq!((c.encoder_trainable, c.encoder_non_trainable, m.feature_dim()), (tr, nt, f), "{arch:?}");
    }
}

#[test]
fn projector_layout_follows_the_config() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut c = cfg(Arch::CifarResnet18, 8, vec![32, 24, 16]);
    c.projector_bias = false;
    let m = BarlowTwins::new(&vs.root(), &c);
    let names: Vec<&str> =
        m.variables().iter().filter(|v| v.name.starts_with("projector.")).map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "projector.0.weight",
            "projector.1.weight",
            "projector.1.bias",
            "projector.1.running_mean",
            "projector.1.running_var",
            "projector.1.num_batches_tracked",
            "projector.3.weight",
            "projector.4.weight",
            "projector.4.bias",
            "projector.4.running_mean",
            "projector.4.running_var",
            "projector.4.num_batches_tracked",
            "projector.6.weight",
        ]
    );
    let c2 = ModelConfig { projector_bn: false, ..cfg(Arch::CifarResnet18, 8, vec![32, 16]) };
    let vs = nn::VarStore::new(Device::Cpu);
    let m = BarlowTwins::new(&vs.root(), &c2);
    let p = m.param_counts();
    assert_eq!(p.projector_trainable, (64 * 32 + 32) + (32 * 16 + 16));
    assert_eq!(p.projector_non_trainable, 0);
    let z = m.forward(&rand_x(4), true);
    assert_eq!(z.size(), [4, 16]);
}

#[test]
fn bad_config_is_an_error_naming_the_key() {
    let vs = nn::VarStore::new(Device::Cpu);
    let e = BarlowTwins::try_new(&vs.root(), &cfg(Arch::CifarResnet18, 8, vec![])).unwrap_err();
    assert!(e.to_string().contains("model.projector"), "{e}");
    let e = BarlowTwins::try_new(&vs.root(), &cfg(Arch::CifarResnet18, 0, vec![8])).unwrap_err();
    assert!(e.to_string().contains("model.width"), "{e}");
}

#[test]
fn every_trainable_variable_gets_a_gradient() {
    for arch in [Arch::KerasResnet34, Arch::CifarResnet18, Arch::CifarResnet50] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BarlowTwins::new(&vs.root(), &cfg(arch, 4, vec![16, 16]));
        let z = m.forward(&rand_x(4), true);
        z.square().sum(Kind::Float).backward();
        for v in m.variables().iter().filter(|v| v.role == Role::Trainable) {
            let g = v.tensor.grad();
            assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{arch:?} {}", v.name);
        }
        assert_eq!(vs.trainable_variables().len(), m.trainable_variables().len());
    }
}

#[test]
fn train_mode_updates_running_stats_and_counters_inference_does_not() {
    for arch in [Arch::KerasResnet34, Arch::CifarResnet18] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BarlowTwins::new(&vs.root(), &cfg(arch, 4, vec![16, 16]));
        let rv = |name: &str| m.variables().iter().find(|v| v.name == name).unwrap().tensor.copy();
        let x = rand_x(4);
        let _ = tch::no_grad(|| m.forward(&x, false));
        assert_eq!(rv("encoder.bn1.running_var").double_value(&[0]), 1.0);
        let _ = m.forward(&x, true);
        let _ = m.forward(&x, true);
        assert_ne!(rv("encoder.bn1.running_var").double_value(&[0]), 1.0);
        assert_eq!(rv("projector.1.num_batches_tracked").int64_value(&[]), 2);
    }
}

#[test]
fn zero_init_residual_zeroes_each_blocks_last_bn() {
    for (arch, last) in [(Arch::CifarResnet18, "bn2"), (Arch::CifarResnet50, "bn3")] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BarlowTwins::new(&vs.root(), &ModelConfig { zero_init_residual: true, ..cfg(arch, 8, vec![8]) });
        let mut n = 0;
        for v in m.variables() {
            let zero = v.tensor.abs().sum(Kind::Float).double_value(&[]) == 0.0;
            if v.name.ends_with(&format!(".{last}.weight")) {
                assert!(zero, "{}", v.name);
                n += 1;
            } else if v.name.ends_with(".bn1.weight") {
                assert!(!zero, "{}", v.name);
            }
        }
        assert!(n >= 8, "{arch:?}: {n} blocks");
    }
}

fn bits(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let mut v = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut v, t.numel());
    v
}

#[test]
fn full_checkpoint_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let c = cfg(Arch::KerasResnet34, 4, vec![16, 16]);
    let a = BarlowTwins::new(&vs.root(), &c);
    let _ = a.forward(&rand_x(4), true); // non-default running stats and counters
    a.save_full(&path).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let b = BarlowTwins::new(&vs2.root(), &c);
    assert_eq!(b.load(&path).unwrap(), CheckpointKind::Full);
    for (va, vb) in a.variables().iter().zip(b.variables()) {
        assert_eq!(va.name, vb.name);
        assert_eq!(va.tensor.kind(), vb.tensor.kind(), "{}", va.name);
        assert_eq!(bits(&va.tensor), bits(&vb.tensor), "{}", va.name);
    }
    let nbt = b.variables().iter().find(|v| v.name.ends_with("num_batches_tracked")).unwrap();
    assert_eq!((nbt.tensor.kind(), nbt.tensor.size(), nbt.tensor.int64_value(&[])), (Kind::Int64, vec![], 1));
    let x = rand_x(3);
    let (za, zb) = tch::no_grad(|| (a.forward(&x, false), b.forward(&x, false)));
    assert_eq!(bits(&za), bits(&zb));
}

#[test]
fn encoder_checkpoint_has_torchvision_names_and_leaves_the_projector() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc.safetensors");
    let c = cfg(Arch::CifarResnet18, 8, vec![16, 16]);
    let vs = nn::VarStore::new(Device::Cpu);
    let a = BarlowTwins::new(&vs.root(), &c);
    a.save_encoder(&path).unwrap();
    let names: Vec<String> = Tensor::read_safetensors(&path).unwrap().into_iter().map(|(n, _)| n).collect();
    for want in [
        "conv1.weight",
        "bn1.running_mean",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.1.running_var",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(names.iter().all(|n| !n.starts_with("encoder.") && !n.starts_with("projector.")));
    let vs2 = nn::VarStore::new(Device::Cpu);
    let b = BarlowTwins::new(&vs2.root(), &c);
    let proj_before = bits(&b.variables().iter().find(|v| v.name == "projector.0.weight").unwrap().tensor);
    assert_eq!(b.load(&path).unwrap(), CheckpointKind::EncoderOnly);
    let x = rand_x(2);
    let (ha, hb) = tch::no_grad(|| (a.encode(&x, false), b.encode(&x, false)));
    assert_eq!(bits(&ha), bits(&hb));
    assert_eq!(proj_before, bits(&b.variables().iter().find(|v| v.name == "projector.0.weight").unwrap().tensor));
}

#[test]
fn loading_is_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let r18 = BarlowTwins::new(&vs.root(), &cfg(Arch::CifarResnet18, 8, vec![16]));
    r18.save_encoder(&path).unwrap();
    // Another architecture: missing and unexpected keys, both named.
    let vs2 = nn::VarStore::new(Device::Cpu);
    let r34 = BarlowTwins::new(&vs2.root(), &cfg(Arch::CifarResnet34, 8, vec![16]));
    match r34.load(&path) {
        Err(ModelError::Keys { missing, unexpected, .. }) => {
            assert!(missing.iter().any(|k| k == "layer1.2.conv1.weight"), "{missing:?}");
            assert!(unexpected.is_empty(), "{unexpected:?}");
        }
        other => panic!("{other:?}"),
    }
    // Another width: same names, shapes differ.
    let vs3 = nn::VarStore::new(Device::Cpu);
    let wide = BarlowTwins::new(&vs3.root(), &cfg(Arch::CifarResnet18, 16, vec![16]));
    let e = wide.load(&path).unwrap_err();
    assert!(matches!(e, ModelError::Mismatch { .. }) && e.to_string().contains("conv1.weight"), "{e}");
    // An extra tensor.
    let mut t: Vec<(String, Tensor)> = Tensor::read_safetensors(&path).unwrap();
    t.push(("fc.weight".into(), Tensor::zeros([10, 64], (Kind::Float, Device::Cpu))));
    Tensor::write_safetensors(&t, &path).unwrap();
    match r18.load(&path) {
        Err(ModelError::Keys { unexpected, .. }) => assert_eq!(unexpected, ["fc.weight"]),
        other => panic!("{other:?}"),
    }
    let e = r18.load(dir.path().join("nope.safetensors")).unwrap_err();
    assert!(e.to_string().contains("nope.safetensors"), "{e}");
}

#[test]
fn channels_last_input_gives_the_same_output() {
    for arch in [Arch::KerasResnet34, Arch::CifarResnet18] {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BarlowTwins::new(&vs.root(), &cfg(arch, 8, vec![32, 32]));
        let x = rand_x(4);
        let xcl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        assert!(!xcl.is_contiguous());
        let (a, b) = tch::no_grad(|| (m.forward(&x, false), m.forward(&xcl, false)));
        let e = common::rel_err(&b, &a);
        assert!(e < 1e-5, "{arch:?}: {e:e}");
    }
}

#[test]
fn bf16_stays_close_to_f32_and_runs_under_autocast() {
    for arch in [Arch::KerasResnet34, Arch::CifarResnet18] {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = BarlowTwins::new(&vs.root(), &cfg(arch, 8, vec![32, 32]));
        let x = rand_x(8);
        let f32_out = tch::no_grad(|| m.forward(&x, false));
        m.set_precision(Precision::Bf16);
        let bf = tch::no_grad(|| tch::autocast(true, || m.forward(&x, false)));
        assert_eq!(bf.kind(), Kind::Float);
        let e = common::rel_err(&bf, &f32_out);
        // bf16 keeps 8 bits of mantissa (relative 4e-3 per rounding), accumulated over ~20 layers.
        assert!(e < 5e-2, "{arch:?}: {e:e}");
        assert!(e > 0.0, "{arch:?}: bf16 path changed nothing");
        // Training mode with gradients works too.
        let z = m.forward(&x, true);
        z.square().sum(Kind::Float).backward();
        assert!(m.trainable_variables()[0].grad().defined());
    }
}

#[test]
fn encoder_alone_has_torchvision_names_and_the_models_encoder_weights() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(Arch::CifarResnet18, 8, vec![16, 16]);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = BarlowTwins::new(&vs.root(), &c);
    let _ = model.forward(&rand_x(4), true); // running stats differ from a fresh encoder's
    let vs_e = nn::VarStore::new(Device::Cpu);
    let enc = Encoder::new(&vs_e.root(), &c);
    // The same variables as the model's `encoder.*`, without the prefix, in the same order.
    let want: Vec<String> =
        model.variables().iter().filter_map(|v| v.name.strip_prefix("encoder.").map(str::to_string)).collect();
    let got: Vec<String> = enc.variables().iter().map(|v| v.name.clone()).collect();
    assert_eq!(got, want);
    let inner: Vec<&str> = model.encoder().variables().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(inner, want);
    assert_eq!(vs_e.variables().len(), want.len());
    assert_eq!(enc.feature_dim(), model.feature_dim());

    // Weights from the model's encoder checkpoint and from its full checkpoint (projector
    // tensors skipped): the encoder alone then computes the model's features, as a ModuleT.
    let x = rand_x(3);
    let h = tch::no_grad(|| model.encode(&x, false));
    for (file, kind) in [("enc.safetensors", CheckpointKind::EncoderOnly), ("full.safetensors", CheckpointKind::Full)] {
        let path = dir.path().join(file);
        if kind == CheckpointKind::Full {
            model.save_full(&path).unwrap();
        } else {
            model.save_encoder(&path).unwrap();
        }
        let fresh = Encoder::new(&nn::VarStore::new(Device::Cpu).root(), &c);
        assert_ne!(bits(&tch::no_grad(|| fresh.forward_t(&x, false))), bits(&h));
        assert_eq!(fresh.load(&path).unwrap(), kind);
        let m: &dyn ModuleT = &fresh;
        assert_eq!(bits(&tch::no_grad(|| m.forward_t(&x, false))), bits(&h), "{file}");
    }
    // An encoder file saved by the encoder alone loads into the model.
    let path = dir.path().join("alone.safetensors");
    enc.save(&path).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let model2 = BarlowTwins::new(&vs2.root(), &c);
    assert_eq!(model2.load(&path).unwrap(), CheckpointKind::EncoderOnly);
    let (a, b) = tch::no_grad(|| (enc.forward(&x, false), model2.encode(&x, false)));
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn barlow_twins_forward_t_is_the_projector_of_the_encoder() {
    let c = cfg(Arch::CifarResnet18, 8, vec![16, 12]);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = BarlowTwins::new(&vs.root(), &c);
    let x = rand_x(3);
    let m: &dyn ModuleT = &model;
    let z = tch::no_grad(|| m.forward_t(&x, false));
    assert_eq!(z.size(), vec![3, 12]);
    let by_parts = tch::no_grad(|| model.project(&model.encoder().forward(&x, false), false));
    assert_eq!(bits(&z), bits(&by_parts));
}

#[test]
fn an_allocation_libtorch_refuses_is_an_error_naming_the_variable() {
    // No machine has a 64th CUDA device: every allocation there fails inside libtorch.
    let c = cfg(Arch::CifarResnet18, 8, vec![16]);
    let vs = nn::VarStore::new(Device::Cuda(63));
    match BarlowTwins::try_new(&vs.root(), &c) {
        Err(ModelError::Torch { op, name, .. }) => {
            assert_eq!((op, name.as_str()), ("allocating", "encoder.conv1.weight"))
        }
        other => panic!("expected a libtorch error, got {other:?}"),
    }
    let vs = nn::VarStore::new(Device::Cuda(63));
    let e = Encoder::try_new(&vs.root(), &c).unwrap_err().to_string();
    assert!(e.contains("`conv1.weight`"), "{e}");
}
