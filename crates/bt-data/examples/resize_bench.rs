//! Thread CPU time of `pil::resize` (Pillow-exact) on a few crop shapes of the ImageNet recipe,
//! best of `ROUNDS`: `cargo run --release -p bt-data --example resize_bench [ROUNDS]`.
//! The machine is shared, so wall time would measure the other tenants; the best of several
//! rounds of this thread's CPU time measures us. Linux only (the clock id below).
use bt_data::pil::{resize, Filter, Region};

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    // libc's, linked anyway; declared here to keep `libc` out of the dev-dependencies.
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// This thread's CPU time in ns: `CLOCK_THREAD_CPUTIME_ID` (3 on Linux) is exact to the ns,
/// where `/proc/thread-self/schedstat` only advances at scheduler ticks.
fn cpu_ns() -> u64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable `struct timespec` (two i64 on x86-64/aarch64 Linux).
    let rc = unsafe { clock_gettime(3, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}

/// FNV-1a of the output: equal before and after a change of the kernels means the same bits.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325, |h, &v| (h ^ v as u64).wrapping_mul(0x100000001b3))
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(7, |s| s.parse().expect("ROUNDS: an integer"));
    // (source w, h, region left, top, w, h, output side, filter, flip)
    let shapes = [
        (500, 375, 100, 50, 300, 280, 224, Filter::Bicubic, false),
        (500, 375, 100, 50, 300, 280, 224, Filter::Bicubic, true),
        (1200, 900, 100, 50, 1000, 800, 224, Filter::Bicubic, false),
        (500, 375, 20, 10, 400, 300, 96, Filter::Bicubic, false),
        (500, 375, 200, 150, 120, 100, 224, Filter::Bicubic, false),
        (500, 375, 100, 50, 300, 280, 224, Filter::Bilinear, false),
        // Small regions: a strong upscale, and a small downscale.
        (500, 375, 300, 200, 60, 45, 224, Filter::Bicubic, false),
        (500, 375, 300, 200, 40, 40, 32, Filter::Bicubic, false),
        // Taller than wide by more than 2x the width's reduction: Pillow's vertical-first order.
        (500, 375, 100, 0, 240, 375, 224, Filter::Bicubic, false),
    ];
    for (sw, sh, left, top, w, h, s, f, flip) in shapes {
        let src: Vec<u8> = (0..3 * sw * sh).map(|i| ((i * 7919) >> 3) as u8).collect();
        let region = Region { left, top, width: w, height: h };
        let bx = [0.0, 0.0, w as f32, h as f32];
        let mut out = vec![0u8; 3 * s * s];
        // Enough calls per round for ~10 ms of work at the slowest shape.
        let iters = 20;
        let best = (0..rounds)
            .map(|_| {
                let t = cpu_ns();
                for _ in 0..iters {
                    resize(&src, sw, sh, region, bx, f, flip, &mut out, s, s);
                    std::hint::black_box(&mut out);
                }
                (cpu_ns() - t) as f64 / 1e3 / iters as f64
            })
            .fold(f64::INFINITY, f64::min);
        println!("{sw}x{sh} region {w}x{h} -> {s} {f:?} flip {flip}: {best:.1} us/call (fnv {:016x})", fnv(&out));
    }
}
