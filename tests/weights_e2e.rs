//! End-to-end: weights in and vectors out through `bt-cli` on real image files made here.
//! A tiny pretraining run gives the weights; then `embed --weights`, `eval knn --weights`,
//! `import`, `pretrain --init` (recorded in the run), `neighbors` (a resized, recompressed copy
//! of an image is its nearest neighbour, contact sheet written) and `duplicates` (the two
//! grouped, CSV and JSON). The published PyTorch layouts themselves are tested in
//! `crates/bt-model/tests/foreign.rs`; exports in `crates/bt-train/tests/export.rs`.
use bt_e2e::{bt_cli, text};
use std::path::{Path, PathBuf};

/// 8 images per class (`warm/`, `cool/`), 96 x 80, JPEG and PNG: smooth colour fields with
/// three soft blobs each, colours and places from a per-image generator (low frequencies, so a
/// resized, recompressed copy stays close to its original while the images differ).
fn write_photos(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut state = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    for (c, class) in ["warm", "cool"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..8u32 {
            let bg: [f32; 3] = [next() * 255.0, next() * 255.0, next() * 255.0];
            let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..3)
                .map(|_| {
                    (
                        next() * 96.0,
                        next() * 80.0,
                        8.0 + next() * 20.0,
                        [next() * 255.0, next() * 255.0, next() * 255.0],
                    )
                })
                .collect();
            let img = image::RgbImage::from_fn(96, 80, |x, y| {
                let mut px = bg.map(|b| b * (0.6 + 0.4 * x as f32 / 96.0));
                if c == 1 {
                    px = [px[2], px[1], px[0]];
                }
                for (bx, by, r, col) in &blobs {
                    let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
                    let w = (-d2 / (r * r)).exp();
                    px = [0, 1, 2].map(|k| px[k] * (1.0 - w) + col[k] * w);
                }
                image::Rgb(px.map(|v| v.clamp(0.0, 255.0) as u8))
            });
            let p = dir.join(class).join(format!("p{i}.{}", if i % 2 == 0 { "jpg" } else { "png" }));
            img.save(&p).unwrap();
            files.push(p);
        }
    }
    files
}

fn ok(c: &mut std::process::Command) -> String {
    let o = c.env("OMP_NUM_THREADS", "1").output().expect("spawn bt-cli");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const SMALL: [&str; 8] = [
    "--set",
    "data.image_size=32",
    "--set",
    "model.width=4",
    "--set",
    "model.projector=[32, 32]",
    "--set",
    "data.batch_size=8",
];

#[test]
fn weights_in_and_search_by_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let (photos, run) = (tmp.path().join("photos"), tmp.path().join("run"));
    let files = write_photos(&photos);
    // The copy: a third smaller, JPEG quality 60, in the same folder as another image.
    let orig = &files[3];
    let small = image::open(orig).unwrap().resize_exact(64, 53, image::imageops::FilterType::Triangle).to_rgb8();
    let copy = photos.join("warm").join("zz_copy.jpg");
    let mut jpg = std::fs::File::create(&copy).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 60).encode_image(&small).unwrap();
    drop(jpg);

    let pre = |out: &Path, extra: &[&str]| {
        let mut c = bt_cli();
        c.args(["pretrain", "--preset", "imagenet100-resnet18", "--device", "cpu", "--data"]).arg(&photos);
        c.args(SMALL).args(["--set", "run.epochs=1", "--set", "data.workers=2"]).args(extra).arg("--out").arg(out);
        ok(&mut c)
    };
    pre(&run, &[]);

    // embed --weights: our encoder file as "published" weights, the model from the preset.
    let v = tmp.path().join("v.npy");
    let mut c = bt_cli();
    c.args(["embed", "--weights"]).arg(run.join("encoder.safetensors")).args(["--preset", "imagenet100-resnet18"]);
    c.args(SMALL).arg("--data").arg(&photos).arg("--out").arg(&v);
    let out = ok(&mut c);
    assert!(out.contains("17 x 32 Encoder embeddings of the Train split"), "{out}");
    let names: Vec<String> =
        std::fs::read_to_string(tmp.path().join("v.files.txt")).unwrap().lines().map(String::from).collect();
    assert_eq!(names.len(), 17);
    let row = names.iter().position(|n| Path::new(n) == orig.as_path()).expect("original's row");

    // eval knn --weights on the labeled folder.
    let mut c = bt_cli();
    c.args(["eval", "knn", "--weights"]).arg(run.join("model.safetensors")).args(["--preset", "imagenet100-resnet18"]);
    c.args(SMALL).arg("--data").arg(&photos).arg("--test-data").arg(&photos);
    let out = ok(&mut c);
    assert!(out.contains("knn"), "{out}");

    // neighbors: the copy first, with the highest similarity; a contact sheet.
    let sheet = tmp.path().join("sheet.png");
    let mut c = bt_cli();
    c.args(["neighbors", "--embeddings"]).arg(&v).args(["--row", &row.to_string(), "--k", "3", "--out"]).arg(&sheet);
    let out = ok(&mut c);
    let lines: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].ends_with("zz_copy.jpg"), "the copy is not the nearest:\n{out}");
    let sim = |l: &str| l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap();
    let (s1, s2) = (sim(lines[0]), sim(lines[1]));
    assert!(s1 > s2, "{out}");
    let png = image::open(&sheet).unwrap();
    assert_eq!(png.width(), 4 * (160 + 8) + 8, "query + 3 tiles");

    // neighbors --query: the image embedded on the fly, the same way `embed` did it, finds its
    // own row first at cosine 1 (4 printed decimals).
    let mut c = bt_cli();
    c.args(["neighbors", "--embeddings"]).arg(&v).arg("--query").arg(orig).args(["--k", "2", "--weights"]);
    c.arg(run.join("encoder.safetensors")).args(["--preset", "imagenet100-resnet18"]).args(SMALL);
    let out = ok(&mut c);
    let first = out.lines().find(|l| l.trim_start().starts_with('1')).unwrap_or_default().to_string();
    assert!(first.ends_with(&*orig.to_string_lossy()) && sim(&first) >= 0.9999, "{out}");

    // duplicates between the copy's and the runner-up's similarity: exactly the two.
    let t = format!("{}", (s1 + s2) / 2.0);
    let (csv, json) = (tmp.path().join("d.csv"), tmp.path().join("d.json"));
    ok(bt_cli().args(["duplicates", "--embeddings"]).arg(&v).args(["--threshold", &t, "--out"]).arg(&csv));
    let text_csv = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text_csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{text_csv}");
    assert!(
        rows.iter().any(|r| r.ends_with("zz_copy.jpg")) && rows.iter().any(|r| r.ends_with(&*orig.to_string_lossy())),
        "{text_csv}"
    );
    ok(bt_cli().args(["duplicates", "--embeddings"]).arg(&v).args(["--threshold", &t, "--out"]).arg(&json));
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j[0]["files"].as_array().unwrap().len(), 2, "{j}");

    // import: our full checkpoint through the foreign reader, written as an encoder file.
    let enc = tmp.path().join("imported.safetensors");
    let mut c = bt_cli();
    c.args(["import"])
        .arg(run.join("model.safetensors"))
        .args(["--arch", "resnet18", "--width", "4", "--out"])
        .arg(&enc);
    let out = ok(&mut c);
    assert!(out.contains("Ours layout") && out.contains("projector tensors"), "{out}");
    assert_eq!(std::fs::read(&enc).unwrap().len(), std::fs::read(run.join("encoder.safetensors")).unwrap().len());
    // ... and a wrong architecture is refused with the key lists.
    let o = bt_cli()
        .args(["import"])
        .arg(run.join("model.safetensors"))
        .args(["--arch", "resnet50", "--out"])
        .arg(&enc)
        .output()
        .unwrap();
    let e = text(&o);
    assert!(!o.status.success() && e.contains("missing") && e.contains("layer1.0.conv3.weight"), "{e}");

    // pretrain --init: recorded in config.toml and init.json.
    let run2 = tmp.path().join("run2");
    let out = pre(&run2, &["--init", run.join("model.safetensors").to_str().unwrap()]);
    let cfg = std::fs::read_to_string(run2.join("config.toml")).unwrap();
    assert!(cfg.contains("init = ") && cfg.contains("model.safetensors"), "{cfg}");
    let init: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run2.join("init.json")).unwrap()).unwrap();
    assert_eq!(init["loaded"], "EncoderAndProjector", "{init}\n{out}");
}
