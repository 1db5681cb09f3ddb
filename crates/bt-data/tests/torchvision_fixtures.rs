//! The `jitter_style = "torchvision"` ops and RandomResizedCrop's resize against torchvision
//! 0.26 itself (fixtures from `scripts/fixtures/augment_torchvision.py`), to 1e-5.
use bt_data::ops::{self, CropRect};
use safetensors::SafeTensors;
use serde_json::Value;

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.shape(), &[3, 32, 32], "{name}");
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn check(op: &str, run: impl Fn(&mut Vec<f32>, &Value)) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let bytes = std::fs::read(format!("{dir}/augment_torchvision.safetensors")).unwrap();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/augment_torchvision.json")).unwrap()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut n = 0;
    for c in meta["cases"].as_array().unwrap().iter().filter(|c| c["op"] == op) {
        let mut x = tensor(&st, c["input"].as_str().unwrap());
        let want = tensor(&st, c["output"].as_str().unwrap());
        run(&mut x, &c["params"]);
        // The workspace's comparison: a NaN, an infinity or a length mismatch fails too.
        bt_testkit::assert_close(&format!("{op} {} (got vs torchvision)", c["params"]), &x, &want, 1e-5);
        n += 1;
    }
    assert!(n > 0, "no cases for {op}");
}

fn f(p: &Value, k: &str) -> f64 {
    p[k].as_f64().unwrap()
}

#[test]
fn brightness() {
    check("tv_brightness", |x, p| ops::tv_adjust_brightness(x, f(p, "factor") as f32));
}

#[test]
fn contrast() {
    check("tv_contrast", |x, p| ops::tv_adjust_contrast(x, 32, 32, f(p, "factor")));
}

#[test]
fn saturation() {
    check("tv_saturation", |x, p| ops::tv_adjust_saturation(x, 32, 32, f(p, "factor")));
}

#[test]
fn hue() {
    check("tv_hue", |x, p| ops::tv_adjust_hue(x, 32, 32, f(p, "hue")));
}

#[test]
fn solarize() {
    check("tv_solarize", |x, p| ops::solarize(x, f(p, "threshold") as f32));
}

#[test]
fn resized_crop_upscale_equals_half_pixel_bilinear() {
    check("tv_resized_crop", |x, p| {
        let u = |k: &str| p[k].as_u64().unwrap() as usize;
        let rect = CropRect { top: u("top"), left: u("left"), height: u("height"), width: u("width") };
        let mut out = vec![0f32; 3072];
        ops::crop_resize_f32(x, 32, 32, rect, false, &mut out, 32, 32);
        *x = out;
    });
}
