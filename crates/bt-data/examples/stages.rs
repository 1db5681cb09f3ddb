//! Per-stage cost of the official recipe's twin views at a given size, one thread, on the
//! first files of a folder (page cache warm): `cargo run --release -p bt-data --example stages -- DIR [SIZE] [N]`.
//! Each stage is timed by rendering with only that op switched on and subtracting the crop+resize time.
use bt_data::policy::{load_hint, JitterParams, Solarize};
use bt_data::{decode, FolderOptions, ImageFolder, ImageSource, LoadHint, TwinPolicy, ViewParams};

/// This thread's CPU time (ns, from `/proc/thread-self/schedstat`): the machine is shared, so
/// wall time would measure the other tenants; CPU time measures us.
struct Instant(u64);
impl Instant {
    fn now() -> Self {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        Self(s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0))
    }
    fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(Self::now().0 - self.0)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: stages DIR [SIZE] [N]")?;
    let size: usize = std::env::args().nth(2).map_or(Ok(224), |s| s.parse())?;
    let n: usize = std::env::args().nth(3).map_or(Ok(300), |s| s.parse())?;
    let folder = ImageFolder::open(&dir, &FolderOptions { image_size: size, ..Default::default() })?;
    let n = n.min(folder.len());
    let files: Vec<Vec<u8>> = folder.files()[..n].iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let aug = bt_config::AugmentConfig::imagenet_official();
    let pol = TwinPolicy::from_config(&aug, 0)?;
    let mut imgs = Vec::with_capacity(n);
    let mut params = Vec::with_capacity(n);
    // The pipeline's decode (reduced and stopped below the crops as they allow) and a whole
    // full-size one, alternating file by file so both see the same machine.
    let (mut dec, mut whole) = (f64::INFINITY, f64::INFINITY);
    for round in 0..3 {
        let (mut t_dec, mut t_whole) = (0.0, 0.0);
        for (i, b) in files.iter().enumerate() {
            let (w, h) = folder.dims(i).unwrap();
            let (pa, pb) = pol.sample_pair_for(0, 0, i as u64, h, w);
            let t = Instant::now();
            let img = decode::decode(b, load_hint(&[pa.crop, pb.crop], size))?;
            t_dec += t.elapsed().as_secs_f64();
            let t = Instant::now();
            decode::decode(b, LoadHint::FULL)?;
            t_whole += t.elapsed().as_secs_f64();
            if round == 0 {
                imgs.push(img);
                params.push(((w, h), pa, pb));
            }
        }
        dec = dec.min(t_dec * 1e3 / n as f64);
        whole = whole.min(t_whole * 1e3 / n as f64);
    }
    println!("decode as the pipeline (reduced, stopped below the crops): {dec:.2} ms/image; whole: {whole:.2}");
    let mut out = vec![0f32; 3 * size * size];
    // The best of 3 rounds: other tenants only ever add time.
    let mut run = |f: &dyn Fn(&ViewParams) -> ViewParams| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                for (img, (native, pa, pb)) in imgs.iter().zip(&params) {
                    pol.a.render(img, *native, &f(pa), &mut out, size);
                    pol.b.render(img, *native, &f(pb), &mut out, size);
                }
                t.elapsed().as_secs_f64() * 1e3 / n as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let bare = |p: &ViewParams| ViewParams { jitter: None, blur_sigma: None, grayscale: false, solarize: None, ..*p };
    let base = run(&bare);
    println!("crop+resize+to f32, both views: {base:.2} ms/pair");
    let jit = run(&|p: &ViewParams| ViewParams { jitter: p.jitter, ..bare(p) }) - base;
    println!("jitter (as sampled, p 0.8): {jit:.2} ms/pair");
    let forced = |p: &ViewParams| ViewParams {
        jitter: Some(JitterParams::Torchvision {
            order: [0, 1, 2, 3],
            brightness: 1.2,
            contrast: 0.8,
            saturation: 1.1,
            hue: 0.05,
        }),
        ..bare(p)
    };
    println!("jitter (forced on both views): {:.2} ms/pair", run(&forced) - base);
    println!(
        "grayscale (as sampled): {:.2} ms/pair",
        run(&|p: &ViewParams| ViewParams { grayscale: p.grayscale, ..bare(p) }) - base
    );
    let blur = run(&|p: &ViewParams| ViewParams { blur_sigma: p.blur_sigma, ..bare(p) }) - base;
    println!("blur (as sampled, 1.0 / 0.1): {blur:.2} ms/pair");
    println!(
        "solarize (forced both): {:.2} ms/pair",
        run(&|p: &ViewParams| ViewParams { solarize: Some(Solarize::Threshold), ..bare(p) }) - base
    );
    let all = run(&|p: &ViewParams| *p);
    println!(
        "all ops as sampled: {all:.2} ms/pair; + decode = {:.2} ms/pair => {:.0} pairs/s/thread before normalize",
        all + dec,
        1e3 / (all + dec)
    );
    // Each u8 op alone on one rendered view (best of 3 rounds of 500: the CPU clock ticks coarsely).
    let mut view = vec![0u8; 3 * size * size];
    pol.a.render_u8(&imgs[0], params[0].0, &bare(&params[0].1), &mut view, size);
    let mut f32v = vec![0f32; view.len()];
    type Op = Box<dyn Fn(&mut [u8])>;
    let ops: Vec<(&str, Op)> = vec![
        ("brightness", Box::new(|v| bt_data::pil_color::brightness(v, 1.2))),
        ("contrast", Box::new(|v| bt_data::pil_color::contrast(v, 0.8))),
        ("saturation", Box::new(|v| bt_data::pil_color::saturation(v, 1.1))),
        ("hue", Box::new(|v| bt_data::pil_color::hue(v, 0.05))),
        ("grayscale", Box::new(bt_data::pil_color::grayscale)),
        ("blur sigma 1.0", Box::new(move |v| bt_data::pil::gaussian_blur(v, size, size, 1.0))),
        ("solarize", Box::new(|v| bt_data::pil_color::solarize(v, 128))),
    ];
    for (name, op) in &ops {
        let best = (0..3)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..500 {
                    let mut v = view.clone();
                    op(&mut v);
                }
                t.elapsed().as_secs_f64() * 1e3 / 500.0
            })
            .fold(f64::INFINITY, f64::min);
        println!("  {name}: {best:.3} ms/view");
    }
    let t = Instant::now();
    for _ in 0..500 {
        bt_data::pil_color::to_tensor(&view, &mut f32v, Some(([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])));
    }
    println!("  to_tensor+normalize: {:.3} ms/view", t.elapsed().as_secs_f64() * 1e3 / 500.0);
    Ok(())
}
