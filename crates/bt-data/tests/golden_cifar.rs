//! Pins the CIFAR/synthetic batches to what the pipeline produced before the `ImageSource`
//! refactor (commit 622a40d): the demo's deterministic accuracies depend on these exact bytes.
//! The constants were printed by this same test at that commit (`PRINT_GOLDEN=1`).
use bt_config::{AugmentConfig, DataConfig};
use bt_data::{synthetic, TwinPipeline};
use std::sync::Arc;

fn fnv(h: &mut u64, bytes: impl IntoIterator<Item = u8>) {
    for b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn digest(aug: &AugmentConfig) -> u64 {
    let ds = Arc::new(synthetic::generate(96, 7, synthetic::Split::Train));
    let data = DataConfig { batch_size: 32, workers: 2, ..Default::default() };
    let pipe = TwinPipeline::new(ds, &data, aug, 1234).unwrap();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for e in 0..2 {
        for b in pipe.epoch(e, 0) {
            let b = b.unwrap();
            for v in b.view_a.iter().chain(&b.view_b) {
                fnv(&mut h, v.to_bits().to_le_bytes());
            }
            fnv(&mut h, b.indices.iter().flat_map(|i| i.to_le_bytes()));
        }
    }
    h
}

#[test]
fn batches_are_bit_identical_to_the_pre_refactor_pipeline() {
    let got = [digest(&AugmentConfig::keras_seed()), digest(&AugmentConfig::cifar_asymmetric())];
    if std::env::var_os("PRINT_GOLDEN").is_some() {
        println!("GOLDEN {got:#x?}");
    }
    assert_eq!(got, GOLDEN);
}

const GOLDEN: [u64; 2] = [0xb12f_7261_33f1_86a2, 0x6aaf_e2cc_c7e1_2703];
