//! Data parallelism with bt-dist, without the CLI: rendezvous, initial parameter sync, the
//! Barlow Twins loss of the global batch through `LossReducer`, and a bucketing benchmark.
//!
//! Run it on one machine (it launches its own workers, as `bt-cli launch` will):
//!
//! ```text
//! cargo run --release -p bt-dist --example allreduce -- 2
//! ```
//!
//! or under torchrun (the agent hosts the store, `TORCHELASTIC_USE_AGENT_STORE=True`):
//!
//! ```text
//! torchrun --nproc-per-node 2 --no-python target/release/examples/allreduce
//! ```
//!
//! Output (rank 0): the loss computed by the 2 ranks on 2 x 64 rows equals the single-process
//! loss on all 128 rows; then the time of all-reducing a ResNet-18-sized gradient list (62
//! tensors, 11.2 M f32) and its 41 one-dimensional tensors alone: per tensor, with the default
//! plan (25 MB buckets, tensors >= 1 MB alone), with 25 MB buckets and no solo tensors, and as
//! one flat buffer; ending with one `key=value` line.
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bt_dist::{DistEnv, LossReducer, ProcessGroup};
use bt_loss::{barlow_twins_loss, LossOptions};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("RANK").is_none() {
        let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(2);
        return launch(n);
    }
    worker()
}

/// What `bt-cli launch --nproc N` does: the torchrun variables, rank 0 hosting the store.
fn launch(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for rank in 0..n {
        children.push(
            Command::new(&exe)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .spawn()?,
        );
    }
    let mut failed = false;
    for (rank, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        if !status.success() {
            eprintln!("rank {rank} exited with {status}");
            failed = true;
        }
    }
    if failed {
        return Err("a worker failed".into());
    }
    Ok(())
}

fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let env = DistEnv::from_env()?;
    let agent = env.use_agent_store;
    let pg = Arc::new(ProcessGroup::from_env(Duration::from_secs(60))?);
    let (rank, world) = (pg.rank(), pg.world_size());
    if rank == 0 {
        println!("{world} ranks, backend {:?}, agent store: {agent}", pg.backend());
    }

    // Initial sync: every rank starts from rank 0's parameters.
    tch::manual_seed(rank as i64);
    let mut params = vec![Tensor::randn([16, 8], (Kind::Float, Device::Cpu))];
    pg.broadcast_(&mut params, 0)?;

    // The loss of the global batch: rank r holds rows [64 r, 64 (r + 1)) of 64 * world rows.
    let rows = 64;
    tch::manual_seed(1234);
    let za_all = Tensor::randn([rows * world as i64, 32], (Kind::Float, Device::Cpu));
    let zb_all = &za_all + Tensor::randn_like(&za_all) * 0.5;
    let mine = |z: &Tensor| z.narrow(0, rows * rank as i64, rows);
    let opts = LossOptions::default().with_reducer(Arc::new(LossReducer::new(pg.clone())));
    let dist = barlow_twins_loss(&mine(&za_all), &mine(&zb_all), &opts)?.loss.double_value(&[]);
    let single = barlow_twins_loss(&za_all, &zb_all, &LossOptions::default())?.loss.double_value(&[]);
    if rank == 0 {
        println!("loss over {world} ranks: {dist:.6}; single process on all rows: {single:.6}");
    }

    // Bucketing: ResNet-18's parameter shapes (conv weights, BN pairs, fc), f32.
    let mut shapes: Vec<Vec<i64>> = vec![vec![64, 3, 3, 3], vec![64], vec![64]];
    for (cin, cout) in [(64, 64), (64, 128), (128, 256), (256, 512)] {
        for block in 0..2 {
            let c0 = if block == 0 { cin } else { cout };
            shapes.extend([vec![cout, c0, 3, 3], vec![cout], vec![cout]]);
            shapes.extend([vec![cout, cout, 3, 3], vec![cout], vec![cout]]);
            if block == 0 && cin != cout {
                shapes.extend([vec![cout, cin, 1, 1], vec![cout], vec![cout]]);
            }
        }
    }
    shapes.extend([vec![10, 512], vec![10]]);
    // Two lists: every parameter (bandwidth-bound), and only the 1-D ones (biases and BN
    // pairs: latency-bound, where bucketing is meant to help).
    let full: Vec<Vec<i64>> = shapes.clone();
    let small: Vec<Vec<i64>> = shapes.into_iter().filter(|s| s.len() == 1).collect();
    drop(opts); // it holds the other reference to the group
    let mut pg = Arc::try_unwrap(pg).map_err(|_| "group still shared")?;
    let mut summary = vec![format!("world={world}")];
    for (name, list, iters) in [("resnet18", &full, 5), ("resnet18-1d", &small, 50)] {
        let mut grads: Vec<Tensor> =
            list.iter().map(|s| Tensor::ones(s.as_slice(), (Kind::Float, Device::Cpu))).collect();
        let numel: i64 = grads.iter().map(|g| g.numel() as i64).sum();
        let mut results = Vec::new();
        for (label, bucket, solo) in [
            ("per-tensor", 1, 1),
            ("default", bt_dist::DEFAULT_BUCKET_BYTES, bt_dist::DEFAULT_SOLO_BYTES),
            ("25MB-no-solo", bt_dist::DEFAULT_BUCKET_BYTES, usize::MAX),
            ("solo-64KB", bt_dist::DEFAULT_BUCKET_BYTES, 64 << 10),
            ("one-buffer", usize::MAX, usize::MAX),
        ] {
            pg.set_bucket_bytes(bucket);
            pg.set_solo_bytes(solo);
            pg.all_reduce_sum_(&mut grads)?; // warm-up
            pg.barrier()?;
            let t = Instant::now();
            for _ in 0..iters {
                pg.all_reduce_mean_(&mut grads)?;
            }
            results.push((label, t.elapsed().as_secs_f64() * 1e3 / iters as f64));
        }
        if rank == 0 {
            println!(
                "{name}: all-reduce of {} f32 tensors, {numel} elements ({:.2} MB), {iters} reps:",
                grads.len(),
                numel as f64 * 4e-6
            );
            for (label, ms) in &results {
                println!("  {label:>14}: {ms:9.3} ms");
            }
        }
        summary.push(format!(
            "{name}_per_tensor_ms={:.3} {name}_default_ms={:.3} {name}_25mb_no_solo_ms={:.3} \
             {name}_one_buffer_ms={:.3} {name}_per_tensor_over_default={:.2}",
            results[0].1,
            results[1].1,
            results[2].1,
            results[3].1,
            results[0].1 / results[1].1
        ));
    }
    if rank == 0 {
        println!("{}", summary.join(" "));
    }
    pg.barrier()?;
    Ok(())
}
