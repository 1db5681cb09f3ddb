//! A counter-based random stream per (seed, epoch, index, view).
//!
//! Every sample gets its own generator whose state is a hash of its coordinates, so the
//! numbers a sample sees do not depend on which thread made it or in which order: this is what
//! makes batches bit-identical for any worker count, and lets a resumed run skip batches
//! without replaying them. The generator is SplitMix64 (Steele et al. 2014): a 64-bit counter
//! passed through a strong finalizer, which is cheap to seed (no key schedule, unlike ChaCha)
//! and good enough for augmentation parameters (it passes BigCrush).

/// Stream tags, so that streams for different purposes never collide.
pub mod stream {
    /// Augmentation parameters of view A.
    pub const VIEW_A: u64 = 0xA;
    /// Augmentation parameters of view B.
    pub const VIEW_B: u64 = 0xB;
    /// The per-epoch shuffle.
    pub const SHUFFLE: u64 = 0x5;
    /// The run-wide blur sigma of the `blur_sigma_once` quirk.
    pub const BLUR_ONCE: u64 = 0xB1;
    /// The synthetic dataset generator.
    pub const SYNTHETIC: u64 = 0x5E;
    /// Preview sampling.
    pub const PREVIEW: u64 = 0x9;
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 stream keyed by a tuple of coordinates.
#[derive(Debug, Clone)]
pub struct SampleRng {
    state: u64,
}

impl SampleRng {
    /// The stream for `(seed, epoch, index, tag)`.
    pub fn new(seed: u64, epoch: u64, index: u64, tag: u64) -> Self {
        let mut h = mix(seed.wrapping_add(GOLDEN));
        for x in [epoch, index, tag] {
            h = mix(h ^ x.wrapping_add(GOLDEN).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        }
        Self { state: h }
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `[0, n)` (`n > 0`), by Lemire's multiply-shift; the bias is below
    /// `n / 2^64`, far under anything an augmentation can show.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// `true` with probability `p` (as `tf.random.uniform([]) < p`).
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// An approximately standard normal number (Irwin-Hall sum of 4 uniforms, rescaled):
    /// enough for pixel noise in the synthetic images.
    pub fn normalish(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * (3.0f64).sqrt()
    }

    /// A seeded Fisher-Yates permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| SampleRng::new(1, 2, 3, 4).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut seen = std::collections::HashSet::new();
        for e in 0..4 {
            for i in 0..50 {
                for t in 0..2 {
                    assert!(seen.insert(SampleRng::new(7, e, i, t).next_u64()));
                }
            }
        }
    }

    #[test]
    fn uniform_is_roughly_uniform() {
        let mut r = SampleRng::new(0, 0, 0, 0);
        let n = 100_000;
        let mut hist = [0usize; 10];
        for _ in 0..n {
            hist[(r.uniform() * 10.0) as usize] += 1;
        }
        for h in hist {
            assert!((h as f64 - 10_000.0).abs() < 500.0, "{hist:?}");
        }
        let p = r.permutation(1000);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_ne!(p, s);
    }
}
