//! Shared test helpers: the deterministic weight generator of scripts/fixtures/keras_model.py.
#![allow(dead_code)]
use bt_model::{BarlowTwins, Role};
use tch::{Kind, Tensor};

fn fnv1a64(name: &str) -> u64 {
    let mut h: u64 = 0xCBF29CE484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001B3);
    }
    h
}

/// Generator v1 (see scripts/fixtures/keras_model.py): `offset + scale * (2u - 1)` in f32 with
/// u from splitmix64 over (FNV-1a(name) + (i + 1) * golden).
pub fn gen(name: &str, n: usize, offset: f32, scale: f32) -> Vec<f32> {
    let key = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let mut z = key.wrapping_add((i + 1).wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            offset + scale * (2.0 * u - 1.0)
        })
        .collect()
}

/// Sets every variable of `model` from the generator, with the fixture script's (offset, scale)
/// per kind of variable.
pub fn fill_deterministic(model: &BarlowTwins) {
    tch::no_grad(|| {
        for v in model.variables() {
            if v.role == Role::Counter {
                continue;
            }
            let size = v.tensor.size();
            let n = v.tensor.numel();
            let leaf = v.name.rsplit('.').next().unwrap();
            let is_bn = model.variables().iter().any(|o| {
                o.name.ends_with(".running_mean")
                    && o.name.strip_suffix(".running_mean") == v.name.rsplit_once('.').map(|p| p.0)
            });
            let (offset, scale) = match (leaf, is_bn) {
                ("weight", true) => (1.0, 0.2),
                ("bias", true) => (0.0, 0.1),
                ("running_mean", _) => (0.0, 0.1),
                ("running_var", _) => (1.0, 0.5),
                ("bias", false) => (0.0, 0.05),
                ("weight", false) => {
                    // Glorot limit: conv [o, i, k, k] or dense [o, i].
                    let rf: i64 = size[2..].iter().product();
                    let (fan_in, fan_out) = (size[1] * rf, size[0] * rf);
                    (0.0, (6.0f64 / (fan_in + fan_out) as f64).sqrt() as f32)
                }
                other => panic!("unexpected variable {} {other:?}", v.name),
            };
            let data = gen(&v.name, n, offset, scale);
            let t = Tensor::from_slice(&data).reshape(&size).to_kind(Kind::Float);
            v.tensor.shallow_clone().copy_(&t);
        }
    });
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1e-30)
}
