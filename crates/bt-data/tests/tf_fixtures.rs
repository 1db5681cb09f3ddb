//! Each op against TensorFlow's own output (fixtures from `scripts/fixtures/augment_tf.py`,
//! tensorflow-cpu 2.21, on two real CIFAR-10 test images and on images with values outside
//! [0, 1]), to 1e-5.
use bt_data::ops::{self, CropRect};
use bt_data::policy::{apply_after_crop, JitterParams, Solarize, ViewParams};
use safetensors::SafeTensors;
use serde_json::Value;

const TOL: f32 = 1e-5;

struct Fixture {
    bytes: Vec<u8>,
    cases: Vec<Value>,
}

fn load() -> Fixture {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let bytes = std::fs::read(format!("{dir}/augment_tf.safetensors")).expect("fixture");
    let meta: Value = serde_json::from_slice(&std::fs::read(format!("{dir}/augment_tf.json")).unwrap()).unwrap();
    Fixture { bytes, cases: meta["cases"].as_array().unwrap().clone() }
}

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert_eq!(t.shape(), &[3, 32, 32], "{name}");
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn f(p: &Value, k: &str) -> f32 {
    p[k].as_f64().unwrap_or_else(|| panic!("param {k}")) as f32
}
fn u(p: &Value, k: &str) -> usize {
    p[k].as_u64().unwrap() as usize
}

/// Runs every case of `op` through `run`, checking each to TOL; returns how many ran.
fn check(op: &str, run: impl Fn(&[f32], &Value) -> Vec<f32>) -> usize {
    let fx = load();
    let st = SafeTensors::deserialize(&fx.bytes).unwrap();
    let mut n = 0;
    for c in fx.cases.iter().filter(|c| c["op"] == op) {
        let input = tensor(&st, c["input"].as_str().unwrap());
        let want = tensor(&st, c["output"].as_str().unwrap());
        let got = run(&input, &c["params"]);
        // The workspace's comparison: a NaN, an infinity or a length mismatch fails too.
        bt_testkit::assert_close(&format!("{op} {} {} (got vs TF)", c["input"], c["params"]), &got, &want, TOL as f64);
        n += 1;
    }
    assert!(n > 0, "no fixture cases for {op}");
    n
}

fn inplace(input: &[f32], f: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut x = input.to_vec();
    f(&mut x);
    x
}

#[test]
fn crop_resize_matches_tf_image_resize() {
    check("crop_resize", |x, p| {
        let rect = CropRect { top: u(p, "top"), left: u(p, "left"), height: u(p, "height"), width: u(p, "width") };
        let mut out = vec![0f32; 3072];
        ops::crop_resize_f32(x, 32, 32, rect, p["flip"].as_bool().unwrap(), &mut out, 32, 32);
        out
    });
}

#[test]
fn crop_resize_from_u8_equals_f32_path() {
    // The pipeline reads u8 through the x/255 table; the fixtures start from the same x/255.
    let img: Vec<u8> = (0..3072u32).map(|i| (i * 37 % 251) as u8).collect();
    let f: Vec<f32> = img.iter().map(|&b| b as f32 / 255.0).collect();
    let rect = CropRect { top: 3, left: 4, height: 25, width: 25 };
    let (mut a, mut b) = (vec![0f32; 3072], vec![0f32; 3072]);
    ops::crop_resize_u8(&img, 32, 32, rect, true, &mut a, 32, 32);
    ops::crop_resize_f32(&f, 32, 32, rect, true, &mut b, 32, 32);
    assert_eq!(a, b);
}

#[test]
fn brightness_matches() {
    check("brightness", |x, p| inplace(x, |y| ops::tf_adjust_brightness(y, f(p, "delta"))));
}

#[test]
fn contrast_matches() {
    check("contrast", |x, p| inplace(x, |y| ops::tf_adjust_contrast(y, 32, 32, f(p, "factor"))));
}

#[test]
fn saturation_matches_including_out_of_range_inputs() {
    check("saturation", |x, p| inplace(x, |y| ops::tf_adjust_saturation(y, 32, 32, f(p, "factor"))));
}

#[test]
fn hue_matches_including_out_of_range_inputs() {
    check("hue", |x, p| inplace(x, |y| ops::tf_adjust_hue(y, 32, 32, f(p, "delta"))));
}

#[test]
fn blur_matches_tfa_gaussian_filter2d_reflect() {
    check("blur", |x, p| inplace(x, |y| ops::tfa_gaussian_blur3x3(y, 32, 32, f(p, "sigma"))));
}

#[test]
fn grayscale_matches() {
    check("grayscale", |x, _| inplace(x, |y| ops::tf_grayscale(y, 32, 32)));
}

#[test]
fn solarize_seed_quirk_matches() {
    check("solarize_seed", |x, _| inplace(x, ops::solarize_seed_quirk));
}

#[test]
fn clip_matches() {
    check("clip", |x, _| inplace(x, ops::clip01));
}

#[test]
fn whole_seed_view_matches() {
    let n = check("seed_view", |x, p| {
        let side = u(p, "side");
        let params = ViewParams {
            crop: CropRect { top: u(p, "top"), left: u(p, "left"), height: side, width: side },
            flip: p["flip"].as_bool().unwrap(),
            jitter: p["jitter"].as_bool().unwrap().then(|| JitterParams::Tf {
                brightness_delta: f(p, "brightness"),
                contrast: f(p, "contrast"),
                saturation: f(p, "saturation"),
                hue: f(p, "hue"),
            }),
            blur_sigma: p["blur"].as_f64().map(|s| s as f32),
            grayscale: p["gray"].as_bool().unwrap(),
            solarize: p["solarize"].as_bool().unwrap().then_some(Solarize::SeedQuirk),
            clip: true,
        };
        let mut out = vec![0f32; 3072];
        ops::crop_resize_f32(x, 32, 32, params.crop, params.flip, &mut out, 32, 32);
        apply_after_crop(&mut out, &params);
        out
    });
    assert_eq!(n, 4);
}
