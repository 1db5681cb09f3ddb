//! The ImageNet-stem ResNets (`resnet18|34|50`) against torchvision itself.
//!
//! Fixtures: `scripts/fixtures/torchvision_resnet.py` counts torchvision's parameters and
//! 224x224 multiply-adds (forward hooks, cross-checked by `torch.utils.flop_counter`), and runs
//! resnet18/50 (`fc = Identity`) with every weight from the deterministic generator mirrored in
//! `common::gen`, so only the inputs and outputs are committed.
mod common;

use bt_config::{Arch, ModelConfig};
use bt_model::{BarlowTwins, LayerRow, Role};
use std::collections::HashMap;
use tch::{nn, Device, Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn tensors() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(format!("{FIXTURES}/torchvision_resnet.safetensors")).unwrap().into_iter().collect()
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/torchvision_resnet.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn model(arch: Arch, width: i64) -> (nn::VarStore, BarlowTwins) {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig { arch, width, projector: vec![8], ..ModelConfig::default() };
    let m = BarlowTwins::new(&vs.root(), &cfg);
    (vs, m)
}

const ARCHS: [(&str, Arch); 3] =
    [("resnet18", Arch::Resnet18), ("resnet34", Arch::Resnet34), ("resnet50", Arch::Resnet50)];

#[test]
fn parameter_counts_equal_torchvision() {
    let meta = meta();
    for (name, arch) in ARCHS {
        let c = &meta["counts"][name];
        let (_vs, m) = model(arch, 64);
        let p = m.param_counts();
        assert_eq!(
            (p.encoder_trainable, p.encoder_non_trainable, m.feature_dim()),
            (c["trainable"].as_i64().unwrap(), c["running"].as_i64().unwrap(), c["features"].as_i64().unwrap()),
            "{name}"
        );
    }
    // The number the task states, so a regenerated fixture cannot silently move it.
    assert_eq!(meta["counts"]["resnet50"]["trainable"], 23_508_032);
}

/// Multiply-adds of the conv and linear rows: one per weight per output position (torchvision's
/// convs have no bias; the projector's linear layers are left out by the caller).
fn macs(rows: &[LayerRow]) -> i64 {
    rows.iter()
        .filter(|r| r.kind.starts_with("Conv2d"))
        .map(|r| r.trainable * r.output_shape[2] * r.output_shape[3])
        .sum()
}

#[test]
fn layer_table_at_224_has_torchvisions_shapes_params_and_macs() {
    let meta = meta();
    for (name, arch) in [("resnet18", Arch::Resnet18), ("resnet50", Arch::Resnet50)] {
        let (_vs, m) = model(arch, 64);
        let rows = m.layer_table(224, 224);
        let side = |n: &str| {
            let r = rows.iter().find(|r| r.name == n);
            r.unwrap_or_else(|| panic!("{name}: no row {n}")).output_shape[2]
        };
        // torchvision: 224 -> conv1 112 -> maxpool 56 -> layer2 28 -> layer3 14 -> layer4 7.
        assert_eq!(side("encoder.conv1"), 112, "{name}");
        assert_eq!(side("encoder.maxpool"), 56, "{name}");
        assert_eq!(side("encoder.layer1.0.conv1"), 56, "{name}");
        assert_eq!(side("encoder.layer2.0.downsample.0"), 28, "{name}");
        assert_eq!(side("encoder.layer3.0.conv2"), 14, "{name}");
        assert_eq!(side("encoder.layer4.1.conv2"), 7, "{name}");
        let avg = rows.iter().find(|r| r.name == "encoder.avgpool").unwrap();
        assert_eq!(avg.output_shape, [1, meta["counts"][name]["features"].as_i64().unwrap()]);
        let convs = rows.iter().filter(|r| r.kind.starts_with("Conv2d")).count();
        if arch == Arch::Resnet50 {
            // v1.5: the stride sits on the 3x3 conv of the bottleneck, not on the first 1x1.
            assert_eq!(side("encoder.layer2.0.conv1"), 56);
            assert_eq!(side("encoder.layer2.0.conv2"), 28);
            assert_eq!(side("encoder.layer3.5.conv3"), 14);
            // stem + 16 bottlenecks x 3 + 4 downsample convs.
            assert_eq!(convs, 1 + 16 * 3 + 4);
        } else {
            assert_eq!(convs, 1 + 8 * 2 + 3);
        }
        let enc: Vec<LayerRow> = rows.iter().filter(|r| r.name.starts_with("encoder.")).cloned().collect();
        assert_eq!(macs(&enc), meta["counts"][name]["macs_224"].as_i64().unwrap(), "{name}");
        let (tr, nt) = enc.iter().fold((0, 0), |(a, b), r| (a + r.trainable, b + r.non_trainable));
        let p = m.param_counts();
        assert_eq!((tr, nt), (p.encoder_trainable, p.encoder_non_trainable), "{name}");
    }
    // ResNet-50 at 224: ~4.09 GMACs (torchvision's documented 4.09 GFLOPS are multiply-adds).
    let r50 = meta["counts"]["resnet50"]["macs_224"].as_i64().unwrap();
    assert!((4.08e9..4.10e9).contains(&(r50 as f64)), "{r50}");
}

#[test]
fn forward_equals_torchvision_in_eval_and_train_mode() {
    let t = tensors();
    let meta = meta();
    let x = &t["x"];
    for (name, arch) in [("resnet18", Arch::Resnet18), ("resnet50", Arch::Resnet50)] {
        let (_vs, m) = model(arch, 64);
        common::fill_deterministic(&m);
        let h_eval = tch::no_grad(|| m.encode(x, false));
        let e = common::rel_err(&h_eval, &t[&format!("{name}.eval")]);
        assert!(e < 1e-4, "{name} eval: {e}");
        let h_train = tch::no_grad(|| m.encode(x, true));
        let e = common::rel_err(&h_train, &t[&format!("{name}.train")]);
        assert!(e < 1e-4, "{name} train: {e}");
        if name == "resnet18" {
            let mut n = 0;
            for layer in meta["after"].as_array().unwrap() {
                for leaf in ["running_mean", "running_var"] {
                    let key = format!("{}.{leaf}", layer.as_str().unwrap());
                    let ours = m
                        .variables()
                        .iter()
                        .find(|v| v.name == format!("encoder.{key}"))
                        .unwrap_or_else(|| panic!("{key}"));
                    let e = common::rel_err(&ours.tensor, &t[&format!("{name}.after.{key}")]);
                    assert!(e < 1e-5, "{key}: {e}");
                    n += 1;
                }
            }
            assert_eq!(n, 8);
        }
    }
}

#[test]
fn any_input_side_gives_the_feature_vector() {
    let (_vs, m) = model(Arch::Resnet18, 4);
    for side in [33, 64, 97, 224] {
        let x = Tensor::rand([2, 3, side, side], (Kind::Float, Device::Cpu));
        let h = tch::no_grad(|| m.encode(&x, false));
        assert_eq!(h.size(), [2, 32], "side {side}");
    }
}

#[test]
fn zero_init_residual_zeroes_each_bottlenecks_bn3_only() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch: Arch::Resnet50,
        width: 8,
        projector: vec![8],
        zero_init_residual: true,
        ..ModelConfig::default()
    };
    let m = BarlowTwins::new(&vs.root(), &cfg);
    let mut zeroed = 0;
    for v in m.variables().iter().filter(|v| v.role == Role::Trainable) {
        let zero = v.tensor.abs().sum(Kind::Float).double_value(&[]) == 0.0;
        let bn_gamma = v.name.contains(".bn") || v.name.ends_with("downsample.1.weight");
        if v.name.ends_with(".bn3.weight") {
            assert!(zero, "{}", v.name);
            zeroed += 1;
        } else if bn_gamma && v.name.ends_with(".weight") {
            assert!(!zero, "{}", v.name);
        }
    }
    assert_eq!(zeroed, 16);
}

#[test]
fn init_is_torchvisions_kaiming_fan_out_and_unit_bn() {
    let (_vs, m) = model(Arch::Resnet50, 64);
    let get = |n: &str| {
        let v = m.variables().iter().find(|v| v.name == n);
        v.unwrap_or_else(|| panic!("{n}")).tensor.shallow_clone()
    };
    // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (c_out k k)). The
    // sample std of n normals has relative error ~1/sqrt(2n): allow 5 of those (<= 3.7% here;
    // a fan-in init would be 4.6x, 2x and 1.4x off for conv1, conv3 and the downsample conv).
    // Tests share libtorch's generator, so no fixed seed.
    for (name, fan_out) in [
        ("encoder.conv1.weight", 64 * 49),
        ("encoder.layer4.0.conv2.weight", 512 * 9),
        ("encoder.layer4.0.conv3.weight", 2048),
        ("encoder.layer3.0.downsample.0.weight", 1024),
    ] {
        let w = get(name);
        let std = w.std(true).double_value(&[]);
        let want = (2.0 / fan_out as f64).sqrt();
        let n = w.numel() as f64;
        let tol = 5.0 / (2.0 * n).sqrt();
        assert!((std / want - 1.0).abs() < tol, "{name}: std {std}, want {want}");
        // The mean's std is want / sqrt(n).
        let mean = w.mean(Kind::Float).double_value(&[]);
        assert!(mean.abs() < 5.0 * want / n.sqrt(), "{name}: mean {mean}");
    }
    for name in ["encoder.bn1", "encoder.layer4.2.bn3", "encoder.layer1.0.downsample.1"] {
        let ones = get(&format!("{name}.weight")).eq(1.0).all().int64_value(&[]);
        let zeros = get(&format!("{name}.bias")).eq(0.0).all().int64_value(&[]);
        assert_eq!((ones, zeros), (1, 1), "{name}");
    }
}
