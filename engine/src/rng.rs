//! Deterministic random streams (xoshiro256++ seeded by SplitMix64) for every random number of a
//! trial: data, initial weights, training noise, probes and samplers each get their own stream
//! derived from the trial seed, so the same seed gives the same numbers on CPU regardless of the
//! order in which streams are used.

/// Stream identifiers; keeping them in one place keeps streams disjoint.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Init = 1,
    Train = 2,
    Eval = 3,
    Constant = 4,
    Sampler = 5,
    Reference = 6,
    Probes = 7,
    Metrics = 8,
    Ladder = 9,
    /// The digit judge's initial weights (seeded by the judge's own seed, not a trial's).
    JudgeInit = 10,
    /// The digit judge's batch order.
    JudgeTrain = 11,
    /// The held-out/judge/training split's permutation (seeded per data set).
    Split = 12,
    /// Which training images make the FID floor and which samples enter an equal-n FID.
    FidDraw = 13,
    /// The FID's bootstrap resamples.
    Bootstrap = 14,
}

#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [splitmix(&mut st), splitmix(&mut st), splitmix(&mut st), splitmix(&mut st)];
        Rng { s, spare: None }
    }

    /// An independent stream for `(seed, stream)`.
    pub fn stream(seed: u64, stream: Stream) -> Self {
        Self::new(seed ^ (stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Standard normal (Box–Muller, both values used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }

    /// ±1 with equal probability.
    pub fn rademacher(&mut self) -> f64 {
        if self.next_u64() >> 63 == 0 { -1.0 } else { 1.0 }
    }

    /// `n` standard normals as f32: Box–Muller in f32 on one u64 per pair (31 bits for the
    /// radius' uniform, 24 for the angle's; both values used, r·cos first), with polynomial
    /// ln, sin and cos so the pass vectorises; the same bits with or without SIMD. Separate
    /// from [`Rng::normal`] (f64, libm), whose values it does not reproduce. The radius'
    /// uniform is at least 2⁻³¹, so |z| ≤ 6.56 (P(|Z| > 6.56) ≈ 5·10⁻¹¹).
    pub fn normals_f32(&mut self, n: usize) -> Vec<f32> {
        const CHUNK: usize = 256;
        let mut out = vec![0.0f32; n];
        let (mut u1, mut u2, mut tail) = ([0u32; CHUNK], [0u32; CHUNK], [0.0f32; 2]);
        for block in out.chunks_mut(2 * CHUNK) {
            let pairs = block.len().div_ceil(2);
            for (a, b) in u1[..pairs].iter_mut().zip(&mut u2[..pairs]) {
                let u = self.next_u64();
                *a = (u >> 33) as u32;
                *b = u as u32 & 0xFF_FFFF;
            }
            let even = block.len() / 2;
            box_muller(&u1[..even], &u2[..even], &mut block[..2 * even]);
            if pairs > even {
                box_muller(&u1[even..pairs], &u2[even..pairs], &mut tail);
                block[2 * even] = tail[0];
            }
        }
        out
    }

    /// Sample an index with probabilities `w` (summing to 1).
    pub fn categorical(&mut self, w: &[f64]) -> usize {
        let u = self.uniform();
        let mut acc = 0.0;
        for (i, &p) in w.iter().enumerate() {
            acc += p;
            if u < acc {
                return i;
            }
        }
        w.len() - 1
    }
}

/// ln x for x in [2⁻³¹, 1] (Cephes' logf: x = 2ᵉ·m, m in [√½, √2), degree-8 polynomial in
/// m − 1; relative error ~1e-7), branch-free so loops over it vectorise.
#[inline(always)]
fn ln_unit_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    let m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F00_0000); // [0.5, 1)
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = ((bits >> 23) as i32 - 126 - small as i32) as f32;
    let x = if small { m + m - 1.0 } else { m - 1.0 };
    let z = x * x;
    let p = ((((((((7.037_683_6e-2 * x - 1.151_461e-1) * x + 1.167_699_9e-1) * x - 1.242_014_1e-1) * x + 1.424_932_3e-1) * x - 1.666_805_8e-1) * x + 2.000_071_4e-1) * x
        - 2.499_999_4e-1)
        * x
        + 3.333_333e-1)
        * x
        * z;
    let y = p + e * -2.121_944_4e-4 - 0.5 * z;
    x + y + e * 0.693_359_4
}

/// sin and cos of 2π·u/2²⁴ for a 24-bit u: the quadrant from u's top bits, the remainder on
/// [−π/4, π/4] through Cephes' sinf/cosf polynomials (error ~1e-7), branch-free.
#[inline(always)]
fn sin_cos_turn_f32(u: u32) -> (f32, f32) {
    let qu = (u + (1 << 21)) >> 22; // nearest quarter turn, 0..=4
    let x = (u as i32 - (qu << 22) as i32) as f32 * (std::f32::consts::FRAC_PI_2 / (1u32 << 22) as f32);
    let z = x * x;
    let s = x + x * z * (-1.666_665_5e-1 + z * (8.332_161e-3 + z * -1.951_529_6e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166_664_6e-2 + z * (-1.388_731_6e-3 + z * 2.443_315_7e-5));
    let q = qu & 3;
    let (sa, ca) = if q & 1 == 1 { (c, s) } else { (s, c) };
    (f32::from_bits(sa.to_bits() ^ ((q >> 1) << 31)), f32::from_bits(ca.to_bits() ^ (((q ^ (q >> 1)) & 1) << 31)))
}

/// out[2p], out[2p + 1] = r·cos θ, r·sin θ with r = √(−2 ln U₁), U₁ = (u1[p] + 1)/2³¹ in
/// (0, 1], θ = 2π·u2[p]/2²⁴; written index-wise so it vectorises.
#[inline(always)]
fn box_muller_body(u1: &[u32], u2: &[u32], out: &mut [f32]) {
    let n = u1.len();
    let (u2, out) = (&u2[..n], &mut out[..2 * n]);
    for p in 0..n {
        let u = (u1[p] as i32 as f32 + 1.0) * (1.0 / 2_147_483_648.0);
        let r = (-2.0 * ln_unit_f32(u)).max(0.0).sqrt();
        let (s, c) = sin_cos_turn_f32(u2[p]);
        out[2 * p] = r * c;
        out[2 * p + 1] = r * s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn box_muller_avx512(u1: &[u32], u2: &[u32], out: &mut [f32]) {
    box_muller_body(u1, u2, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn box_muller_avx2(u1: &[u32], u2: &[u32], out: &mut [f32]) {
    box_muller_body(u1, u2, out)
}

/// [`box_muller_body`] with AVX-512 or AVX2 where the CPU has them (checked at run time; no
/// FMA contraction, so the same bits as the plain code).
fn box_muller(u1: &[u32], u2: &[u32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU.
            return unsafe { box_muller_avx512(u1, u2, out) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was detected on this CPU.
            return unsafe { box_muller_avx2(u1, u2, out) };
        }
    }
    box_muller_body(u1, u2, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_moments() {
        // 200k draws: standard errors of mean and variance are ~0.0022 and ~0.0032.
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!(m.abs() < 0.01, "mean {m}");
        assert!((v - 1.0).abs() < 0.015, "var {v}");
    }

    /// Φ(x) through erfc (Abramowitz–Stegun 7.1.26 error < 1.5e-7).
    fn normal_cdf(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erfc = poly * (-z * z).exp();
        if x >= 0.0 { 1.0 - 0.5 * erfc } else { 0.5 * erfc }
    }

    #[test]
    fn normals_f32_moments_tails_and_ks() {
        let n = 2_000_000;
        let xs: Vec<f64> = Rng::new(7).normals_f32(n).into_iter().map(f64::from).collect();
        assert!(xs.iter().all(|x| x.is_finite() && x.abs() < 6.6));
        // Moments: standard errors of mean, variance, skewness and kurtosis are ~7e-4, 1e-3,
        // 1.7e-3 and 3.5e-3; bounds at ~6 of them.
        let m = xs.iter().sum::<f64>() / n as f64;
        let c = |k: i32| xs.iter().map(|x| (x - m).powi(k)).sum::<f64>() / n as f64;
        let (v, s3, k4) = (c(2), c(3), c(4));
        assert!(m.abs() < 0.004, "mean {m}");
        assert!((v - 1.0).abs() < 0.006, "var {v}");
        assert!(s3.abs() < 0.012, "third moment {s3}");
        assert!((k4 - 3.0).abs() < 0.03, "fourth moment {k4}");
        // Tails: counts beyond 2, 3 and 4 within 6 binomial standard deviations.
        for (t, p) in [(2.0, 0.045_500_26), (3.0, 0.002_699_796), (4.0, 6.334_248e-5)] {
            let got = xs.iter().filter(|x| x.abs() > t).count() as f64;
            let want = p * n as f64;
            assert!((got - want).abs() < 6.0 * (want * (1.0 - p)).sqrt() + 1.0, "|z| > {t}: {got} vs {want}");
        }
        // Kolmogorov–Smirnov against Φ: D < 1.95/√n (p = 0.001) on 200k draws.
        let mut ys = xs[..200_000].to_vec();
        ys.sort_by(f64::total_cmp);
        let k = ys.len() as f64;
        let d = ys.iter().enumerate().map(|(i, &y)| (normal_cdf(y) - i as f64 / k).abs().max((i as f64 + 1.0) / k - normal_cdf(y))).fold(0.0, f64::max);
        assert!(d < 1.95 / k.sqrt(), "KS distance {d}");
        // Pairs are independent: the correlation of consecutive values is ~0 (se 7e-4).
        let r = xs.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum::<f64>() / (n as f64 - 1.0) / v;
        assert!(r.abs() < 0.005, "lag-1 correlation {r}");
    }

    #[test]
    fn normals_f32_are_deterministic_and_simd_matches_plain() {
        assert_eq!(Rng::new(3).normals_f32(1001), Rng::new(3).normals_f32(1001));
        // An odd count is the prefix of the next even one.
        assert_eq!(Rng::new(3).normals_f32(777)[..], Rng::new(3).normals_f32(778)[..777]);
        // Every 24-bit angle's quadrant boundary and the radius' extremes, SIMD against plain.
        let mut r = Rng::new(5);
        let mut u1: Vec<u32> = (0..4096).map(|_| (r.next_u64() >> 33) as u32).collect();
        let mut u2: Vec<u32> = (0..4096).map(|_| r.next_u64() as u32 & 0xFF_FFFF).collect();
        u1[..4].copy_from_slice(&[0, 1, (1 << 31) - 2, (1 << 31) - 1]);
        u2[..10].copy_from_slice(&[0, 1, (1 << 21) - 1, 1 << 21, (1 << 22) - 1, 1 << 22, 3 << 21, 5 << 21, 7 << 21, (1 << 24) - 1]);
        let (mut a, mut b) = (vec![0.0f32; 8192], vec![0.0f32; 8192]);
        box_muller(&u1, &u2, &mut a);
        box_muller_body(&u1, &u2, &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        // The polynomials against libm: ln to 2e-7 relative, sin/cos to 3e-7 absolute.
        let h = std::f32::consts::FRAC_1_SQRT_2;
        for &u in &[2f32.powi(-31), 1e-9, 1e-3, 0.3, h.next_down(), h, h.next_up(), 0.999_999, 1.0] {
            let (got, want) = (ln_unit_f32(u) as f64, (u as f64).ln());
            assert!((got - want).abs() <= 2e-7 * want.abs().max(1e-6), "ln {u}: {got} vs {want}");
        }
        for &q in &u2 {
            let (s, c) = sin_cos_turn_f32(q);
            let t = std::f64::consts::TAU * q as f64 / (1u32 << 24) as f64;
            assert!((s as f64 - t.sin()).abs() < 3e-7 && (c as f64 - t.cos()).abs() < 3e-7, "sin/cos at {q}");
        }
    }

    #[test]
    fn evaluator_streams_differ_from_every_trial_stream() {
        // The judge (seed 0) and the evaluators draw from streams that no seed-0 trial uses.
        let first = |seed: u64, s: Stream| -> Vec<u64> {
            let mut r = Rng::stream(seed, s);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let trial = [Stream::Init, Stream::Train, Stream::Eval, Stream::Constant, Stream::Sampler, Stream::Reference, Stream::Probes, Stream::Metrics, Stream::Ladder];
        let own = [Stream::JudgeInit, Stream::JudgeTrain, Stream::Split, Stream::FidDraw, Stream::Bootstrap];
        let mut seen: Vec<Vec<u64>> = Vec::new();
        for s in trial.iter().chain(&own) {
            let v = first(0, *s);
            assert!(!seen.contains(&v), "{s:?} repeats another stream");
            seen.push(v);
        }
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(3, Stream::Train);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(3, Stream::Train);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(3, Stream::Eval);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
