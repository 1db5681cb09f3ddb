//! Issue 16: `scripts/gpu-check.sh` fits one GPU run by construction, and its `--dry-run` (the
//! same stages on CPU at tiny sizes) passes here, so no path or flag of the script can first fail
//! on the GPU machine.
use bt_e2e::bt_cli_path;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What one GPU run may last, start-up excluded (docs/GPU.md).
const BUDGET_S: u64 = 540;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu-check.sh")
}

/// `LIMIT_<name>=<seconds>` lines of the script.
fn limits(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.strip_prefix("LIMIT_")?.split_once('=')?;
            let v: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((k.to_string(), v.parse().unwrap_or_else(|_| panic!("LIMIT_{k} has no number: `{l}`"))))
        })
        .collect()
}

#[test]
fn stage_limits_sum_within_the_budget_and_every_stage_uses_one() {
    let text = std::fs::read_to_string(script()).unwrap();
    let limits = limits(&text);
    assert!(limits.len() >= 8, "too few LIMIT_ lines parsed: {limits:?}");
    let total: u64 = limits.iter().map(|(_, v)| v).sum();
    assert!(total <= BUDGET_S, "stage limits sum to {total} s, over {BUDGET_S} s: {limits:?}");
    assert!(text.contains(&format!("BUDGET_S={BUDGET_S}")), "the script checks itself against {BUDGET_S} s");
    // Every stage call takes its limit from a declared LIMIT_ variable (a literal would escape the sum).
    let calls: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("stage ")).collect();
    assert!(calls.len() >= 9, "stage calls: {calls:?}");
    for c in calls {
        let limit = c.split_whitespace().nth(2).unwrap_or("");
        let name = limit.trim_matches('"').strip_prefix("$LIMIT_").unwrap_or_else(|| panic!("`{c}`: no $LIMIT_"));
        assert!(limits.iter().any(|(k, _)| k == name), "`{c}`: LIMIT_{name} is not declared");
    }
}

#[test]
fn the_script_refuses_limits_over_the_budget() {
    // The script's own check (a copy with one limit raised past the budget).
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(script()).unwrap().replace("LIMIT_pretrain=", "LIMIT_pretrain=1");
    let copy = dir.path().join("gpu-check.sh");
    std::fs::write(&copy, text).unwrap();
    let o = Command::new("bash").arg(&copy).arg("--dry-run").env("OUT", dir.path().join("out")).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("over the 540s budget"));
    assert!(!dir.path().join("out").exists(), "nothing may run before the budget check");
}

/// Runs the script's own `knn_gain` function (copied out of it) on a metrics file holding kNN
/// points `top1s`, the gain required or not; returns its exit status.
fn knn_gain(top1s: &[f64], require: bool) -> bool {
    let text = std::fs::read_to_string(script()).unwrap();
    let start = text.find("knn_gain() {").expect("the script defines knn_gain");
    let end = start + text[start..].find("\n}\n").expect("knn_gain ends") + 3;
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let mut m = String::from("{\"kind\":\"run\",\"event\":\"start\"}\n");
    for (e, t) in top1s.iter().enumerate() {
        // serde_json writes the keys sorted, as the trainer's records are.
        m += &format!("{{\"epoch\":{e},\"k\":200,\"kind\":\"knn\",\"step\":{e},\"temperature\":0.1,\"top1\":{t}}}\n");
        m += "{\"kind\":\"epoch\",\"top1\":0.99}\n";
    }
    std::fs::write(&metrics, m).unwrap();
    let prog = format!("{}\nknn_gain \"$1\" \"$2\"", &text[start..end]);
    let o = Command::new("bash").args(["-c", &prog, "_"]).arg(&metrics).arg(if require { "1" } else { "0" });
    o.output().unwrap().status.success()
}

#[test]
fn the_knn_stage_fails_a_run_that_did_not_learn() {
    assert!(knn_gain(&[0.25, 0.31, 0.42], true), "a gain passes");
    assert!(!knn_gain(&[0.25, 0.31, 0.2], true), "a loss against the random init fails");
    assert!(!knn_gain(&[0.25, 0.25], true), "no gain fails");
    assert!(!knn_gain(&[0.25], true), "a missing end point fails");
    assert!(!knn_gain(&[], false), "no points fail even in the dry run");
    assert!(knn_gain(&[0.25, 0.2], false), "the dry run only needs the points");
}

/// A tiny CIFAR-10 in the official binary layout: 8 records per training file, 16 test records.
fn tiny_cifar(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = 0x9e37_79b9u32;
    let mut file = |name: &str, n: usize| {
        let mut b = Vec::new();
        for i in 0..n {
            b.push((i % 10) as u8);
            for _ in 0..3072 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b.push(x as u8);
            }
        }
        std::fs::write(dir.join(name), b).unwrap();
    };
    for i in 1..=5 {
        file(&format!("data_batch_{i}.bin"), 8);
    }
    file("test_batch.bin", 16);
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    std::fs::write(dir.join("batches.meta.txt"), names.join("\n") + "\n").unwrap();
}

/// Files under `dir` with their depth below it (1 = directly in it).
fn files(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, usize, u64)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, depth + 1, out);
        } else {
            out.push((p, depth, e.metadata().unwrap().len()));
        }
    }
}

#[test]
fn dry_run_passes_every_stage_on_cpu() {
    let Ok(py) = std::env::var("BT_PYTHON") else {
        // The bench stages run the PyTorch peer, and the script finds libtorch through Python.
        assert!(std::env::var_os("CI").is_none(), "BT_PYTHON must be set under CI (cargo xtask test sets it)");
        eprintln!("SKIPPED: gpu-check.sh --dry-run needs BT_PYTHON (a Python with torch)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    tiny_cifar(&t.join("data/cifar-10-batches-bin"));
    std::fs::create_dir_all(t.join("tests")).unwrap();
    let (out, work) = (t.join("out"), t.join("work"));
    let o = Command::new("bash")
        .arg(script())
        .arg("--dry-run")
        .env("OUT", &out)
        .env("WORK", &work)
        .env("DATA", t.join("data"))
        .env("PYTHON", &py)
        .env("BT_CLI", bt_cli_path())
        .env("TESTS", t.join("tests"))
        .env("BT_BENCH_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench"))
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "gpu-check.sh --dry-run failed:\n{log}");

    // Every stage ran (or was skipped: the data is already there) and passed.
    let summary = std::fs::read_to_string(out.join("summary.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = summary.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    let stages = ["torch lib", "info", "unpack", "selftest", "cuda tests", "bench step keras-seed"];
    let later = ["bench step cifar-resnet18", "pretrain keras-seed", "kNN pretrained vs random init", "linear probe", "archive"];
    for s in stages.iter().chain(&later) {
        let r = rows.iter().find(|r| r[0].starts_with(s)).unwrap_or_else(|| panic!("no `{s}` row:\n{summary}"));
        assert!(r[1] == "ok" || (*s == "unpack" && r[1] == "skipped"), "{s}: {r:?}\n{log}");
    }
    // The epochs were sized from the measured step time and capped at the dry run's 1.
    assert!(summary.contains("pretrain keras-seed 1 ep (sized: "), "{summary}");

    // What comes back from a GPU run: at most 8 plain files of at most 16 MiB, two folders deep,
    // no checkpoint; the run folder lives outside $OUT.
    let mut got = Vec::new();
    files(&out, 1, &mut got);
    let names: Vec<String> = got.iter().map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"summary.tsv".into()) && names.contains(&"logs.tar.gz".into()), "{names:?}");
    assert!(got.iter().all(|(_, d, n)| *d <= 2 && *n <= 16 << 20), "{got:?}");
    assert!(work.join("runs/keras-seed/model.safetensors").is_file(), "the run folder is under $WORK");

    // The archive holds every stage's complete log and the run's small files, no checkpoint.
    let gz = std::fs::File::open(out.join("logs.tar.gz")).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut entries = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut s = String::new();
        let path = e.path().unwrap().to_string_lossy().to_string();
        std::io::Read::read_to_string(&mut e, &mut s).ok();
        entries.insert(path, s);
    }
    assert!(entries.keys().all(|k| !k.ends_with(".safetensors")), "{:?}", entries.keys());
    assert!(entries.contains_key("config.toml") && entries.contains_key("metrics.jsonl"), "{:?}", entries.keys());
    let pretrain = &entries["logs/pretrain.log"];
    assert!(pretrain.lines().any(|l| l.starts_with("pretrained ")), "the log is complete:\n{pretrain}");
    assert!(entries["logs/selftest.log"].contains("selftest_failed=0"));
    assert!(entries["logs/bench-keras.log"].contains("torch_ratio="), "the PyTorch peer ran");
}
