//! `bt_data::pil_color` (and `ViewPolicy::render_u8`'s op order) against torchvision 0.26 on
//! Pillow 13 images, from `scripts/fixtures/pil_color.py` (see its header for the command).
//! Bit-exact: every case must match with a maximum difference of 0, and the fused
//! `ToTensor` + `Normalize` write must give torchvision's float32 bits.
use bt_data::pil_color as pc;
use bt_data::{pil, Image};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil_color")
}

fn png(name: &str) -> Image {
    let rgb = image::open(dir().join(name)).unwrap().into_rgb8();
    Image::from_hwc(rgb.width() as usize, rgb.height() as usize, rgb.as_raw()).unwrap()
}

fn jitter(img: &mut [u8], c: &serde_json::Value) {
    let order: Vec<u8> = c["order"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    let f: Vec<f64> = c["factors"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    pc::color_jitter(img, [order[0], order[1], order[2], order[3]], f[0], f[1], f[2], f[3]);
}

#[test]
fn every_pil_colour_case_is_bit_exact() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let src = png(cases["source"].as_str().unwrap());
    let mut checked = 0;
    let mut failures = Vec::new();
    for c in cases["cases"].as_array().unwrap() {
        let want = png(c["output"].as_str().unwrap());
        let mut got = src.data.clone();
        let factor = || c["factor"].as_f64().unwrap();
        match c["op"].as_str().unwrap() {
            "brightness" => pc::brightness(&mut got, factor() as f32),
            "contrast" => pc::contrast(&mut got, factor() as f32),
            "saturation" => pc::saturation(&mut got, factor() as f32),
            "hue" => pc::hue(&mut got, factor()),
            "grayscale" => pc::grayscale(&mut got),
            "solarize" => pc::solarize(&mut got, 128),
            "jitter" => jitter(&mut got, c),
            "view" => {
                jitter(&mut got, c);
                pc::grayscale(&mut got);
                pil::gaussian_blur(&mut got, src.width, src.height, c["sigma"].as_f64().unwrap() as f32);
                pc::solarize(&mut got, 128);
                let three = |k: &str| -> [f32; 3] {
                    let v: Vec<f32> = c[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                    [v[0], v[1], v[2]]
                };
                let mut t = vec![0f32; got.len()];
                pc::to_tensor(&got, &mut t, Some((three("mean"), three("std"))));
                let raw = std::fs::read(dir().join("view.f32")).unwrap();
                let want_t: Vec<f32> =
                    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let bits_differ = t.iter().zip(&want_t).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(bits_differ, 0, "ToTensor + Normalize: {bits_differ} values differ in their bits");
            }
            other => panic!("unknown op {other}"),
        }
        let diff = got.iter().zip(&want.data).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        let n = got.iter().zip(&want.data).filter(|(a, b)| a != b).count();
        if diff != 0 {
            failures.push(format!("{}: max diff {diff}, {n} values", c["output"]));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(checked, 23);
}
