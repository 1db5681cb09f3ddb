//! `bt-cli model-summary`: the per-layer table and parameter totals of a preset's model.
use super::config::ConfigArgs;
use anyhow::{bail, Result};
use bt_model::BarlowTwins;
use tch::{nn, Device};

#[derive(clap::Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Input height and width of the traced forward (CIFAR: 32).
    #[arg(long, default_value_t = 32)]
    pub size: i64,
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn shape(s: &[i64]) -> String {
    // Batch dimension dropped, as Keras prints `None`.
    let dims: Vec<String> = s[1..].iter().map(|d| d.to_string()).collect();
    format!("N x {}", dims.join(" x "))
}

pub fn summary(a: SummaryArgs) -> Result<()> {
    let cfg = a.cfg.load()?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    let rows = model.layer_table(a.size, a.size);
    println!(
        "model: {:?}, width {}, projector {:?} (bn {}, bias {}), input N x 3 x {} x {}",
        cfg.model.arch,
        cfg.model.width,
        cfg.model.projector,
        cfg.model.projector_bn,
        cfg.model.projector_bias,
        a.size,
        a.size
    );
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let k = rows.iter().map(|r| r.kind.len()).max().unwrap_or(4).max(4);
    println!("{:<w$}  {:<k$}  {:<20}  {:>12}  {:>14}", "name", "layer", "output shape", "params", "non-trainable");
    println!("{}", "-".repeat(w + k + 20 + 12 + 14 + 8));
    for r in &rows {
        println!(
            "{:<w$}  {:<k$}  {:<20}  {:>12}  {:>14}",
            r.name,
            r.kind,
            shape(&r.output_shape),
            thousands(r.trainable),
            thousands(r.non_trainable)
        );
    }
    let c = model.param_counts();
    // The table must account for every parameter the model holds.
    let (tr, nt): (i64, i64) = rows.iter().fold((0, 0), |(a, b), r| (a + r.trainable, b + r.non_trainable));
    if (tr, nt) != (c.total_trainable(), c.total_non_trainable()) {
        bail!("layer table sums ({tr}, {nt}) differ from the model's counts {c:?}");
    }
    println!("{}", "-".repeat(w + k + 20 + 12 + 14 + 8));
    println!(
        "encoder:   {} trainable + {} non-trainable = {}  (features: {})",
        thousands(c.encoder_trainable),
        thousands(c.encoder_non_trainable),
        thousands(c.encoder_trainable + c.encoder_non_trainable),
        model.feature_dim()
    );
    println!(
        "projector: {} trainable + {} non-trainable = {}  (embedding: {})",
        thousands(c.projector_trainable),
        thousands(c.projector_non_trainable),
        thousands(c.projector_trainable + c.projector_non_trainable),
        model.embed_dim()
    );
    println!(
        "total:     {} trainable + {} non-trainable = {}",
        thousands(c.total_trainable()),
        thousands(c.total_non_trainable()),
        thousands(c.total_trainable() + c.total_non_trainable())
    );
    println!("(non-trainable = BN moving mean/variance; num_batches_tracked counters not counted)");
    println!(
        "trainable={} non_trainable={} encoder_trainable={} encoder_non_trainable={}",
        c.total_trainable(),
        c.total_non_trainable(),
        c.encoder_trainable,
        c.encoder_non_trainable
    );
    Ok(())
}
