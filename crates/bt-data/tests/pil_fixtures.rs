//! `bt_data::pil` and the evaluation transform against Pillow 13 / torchvision 0.26 outputs
//! from `scripts/fixtures/pil_ops.py` (see its header for the command). Bit-exact: every case
//! must match with a maximum difference of 0.
use bt_data::eval::eval_view;
use bt_data::pil::{self, Filter, Region};
use bt_data::Image;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil")
}

fn png(name: &str) -> Image {
    let rgb = image::open(dir().join(name)).unwrap().into_rgb8();
    Image::from_hwc(rgb.width() as usize, rgb.height() as usize, rgb.as_raw()).unwrap()
}

fn filter(c: &serde_json::Value) -> Filter {
    match c["filter"].as_str().unwrap() {
        "bilinear" => Filter::Bilinear,
        _ => Filter::Bicubic,
    }
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn every_pil_case_is_bit_exact() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for c in cases["cases"].as_array().unwrap() {
        let src = png(c["source"].as_str().unwrap());
        let want = png(c["output"].as_str().unwrap());
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let kind = c["kind"].as_str().unwrap();
        let got = match kind {
            "resized_crop" => {
                let (s, h, w) = (u("size"), u("height"), u("width"));
                let region = Region { left: u("left"), top: u("top"), width: w, height: h };
                let mut out = vec![0u8; 3 * s * s];
                let bx = [0.0, 0.0, w as f32, h as f32];
                pil::resize(&src.data, src.width, src.height, region, bx, filter(c), false, &mut out, s, s);
                out
            }
            "resize_box" => {
                let b: Vec<f32> = c["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                let (ow, oh) = (u("out_w"), u("out_h"));
                let full = Region { left: 0, top: 0, width: src.width, height: src.height };
                let mut out = vec![0u8; 3 * ow * oh];
                pil::resize(
                    &src.data,
                    src.width,
                    src.height,
                    full,
                    [b[0], b[1], b[2], b[3]],
                    filter(c),
                    false,
                    &mut out,
                    ow,
                    oh,
                );
                out
            }
            "eval" => eval_view(&src, u("size")),
            "blur" => {
                let mut img = src.data.clone();
                pil::gaussian_blur(&mut img, src.width, src.height, c["sigma"].as_f64().unwrap() as f32);
                img
            }
            k => panic!("unknown case kind {k}"),
        };
        assert_eq!(max_diff(&got, &want.data), 0, "{c}");
        *kinds.entry(kind.into()).or_default() += 1;
    }
    // Every kind is exercised (a renamed kind in the script cannot silently skip checks).
    assert_eq!(kinds.keys().cloned().collect::<Vec<_>>(), ["blur", "eval", "resize_box", "resized_crop"]);
}

#[test]
fn flip_is_the_mirror_of_the_unflipped_resize() {
    let src = png("odd.png");
    let region = Region { left: 5, top: 3, width: 90, height: 120 };
    let (mut a, mut b) = (vec![0u8; 3 * 40 * 40], vec![0u8; 3 * 40 * 40]);
    pil::resize(
        &src.data,
        src.width,
        src.height,
        region,
        [0.0, 0.0, 90.0, 120.0],
        Filter::Bicubic,
        false,
        &mut a,
        40,
        40,
    );
    pil::resize(
        &src.data,
        src.width,
        src.height,
        region,
        [0.0, 0.0, 90.0, 120.0],
        Filter::Bicubic,
        true,
        &mut b,
        40,
        40,
    );
    for (ra, rb) in a.chunks_exact(40).zip(b.chunks_exact(40)) {
        assert!(ra.iter().eq(rb.iter().rev()));
    }
}
