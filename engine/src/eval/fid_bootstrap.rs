//! FID with its uncertainty, next to the real-data floor at the same n.
//!
//! The Fréchet distance of n samples' features to a reference set is biased upward like 1/n
//! (the covariances' estimation noise adds to the distance), so it is compared with the
//! distance of as many *real* training images to the same reference: the floor, what a
//! perfect generator would score at that n. Both come with a bootstrap standard error (the
//! sample set, the floor set and the reference set each resampled with replacement, the
//! reference resample shared by the two in each replicate), and their ratio with a 95%
//! interval ratio ± 1.96·SE_boot(ratio): a target "FID ≤ k × floor" is met only when the
//! interval's upper end is at most k.

use rayon::prelude::*;

use super::fid::{frechet_from_moments, moments};
use super::interval::Z95;
use crate::rng::Rng;

/// Bootstrap replicates of [`fid_with_floor`] (the SE's own relative error is about
/// 1/√(2·reps) = 7%).
pub const BOOTSTRAP_REPS: usize = 100;

/// FID of samples and of the floor against one reference, with bootstrap errors.
#[derive(Debug, Clone, PartialEq)]
pub struct FidEstimate {
    /// Images on each side (samples and floor alike).
    pub n: usize,
    pub fid: f64,
    pub fid_se: f64,
    pub floor: f64,
    pub floor_se: f64,
    /// fid / floor, and its 95% interval.
    pub ratio: f64,
    pub ratio_lo: f64,
    pub ratio_hi: f64,
}

impl FidEstimate {
    /// As metrics: `fid`, `fid_se`, `fid_n`, `fid_real_floor`, `fid_real_floor_se`,
    /// `fid_over_floor`, `fid_over_floor_lo`, `fid_over_floor_hi`.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        [
            ("fid", self.fid),
            ("fid_se", self.fid_se),
            ("fid_n", self.n as f64),
            ("fid_real_floor", self.floor),
            ("fid_real_floor_se", self.floor_se),
            ("fid_over_floor", self.ratio),
            ("fid_over_floor_lo", self.ratio_lo),
            ("fid_over_floor_hi", self.ratio_hi),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Mean and unbiased covariance of the multiset of rows of `xs` in which row i appears
/// `counts[i]` times (f64 accumulation, as [`moments`]).
pub fn weighted_moments(xs: &[f32], dim: usize, counts: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let n: f64 = counts.iter().map(|&c| c as f64).sum();
    let mut mu = vec![0.0; dim];
    for (x, &k) in xs.chunks(dim).zip(counts) {
        if k > 0 {
            for (m, &v) in mu.iter_mut().zip(x) {
                *m += k as f64 * v as f64;
            }
        }
    }
    mu.iter_mut().for_each(|m| *m /= n.max(1.0));
    let mut cov = vec![0.0; dim * dim];
    let mut c = vec![0.0; dim];
    for (x, &k) in xs.chunks(dim).zip(counts) {
        if k == 0 {
            continue;
        }
        for ((c, &v), m) in c.iter_mut().zip(x).zip(&mu) {
            *c = v as f64 - m;
        }
        for i in 0..dim {
            let ci = k as f64 * c[i];
            for (s, &cj) in cov[i * dim + i..(i + 1) * dim].iter_mut().zip(&c[i..]) {
                *s += ci * cj;
            }
        }
    }
    let denom = (n - 1.0).max(1.0);
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] / denom;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    (mu, cov)
}

/// How many times each of n rows is drawn in n draws with replacement.
fn resample_counts(n: usize, rng: &mut Rng) -> Vec<u32> {
    let mut c = vec![0u32; n];
    for _ in 0..n {
        c[rng.below(n)] += 1;
    }
    c
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt())
}

/// FID of `samples` and of `floor` (as many real images, features n×dim each) against
/// `reference` (m×dim), with `reps` bootstrap replicates drawn from `rng` (see the module).
/// Replicates run in parallel; the result depends only on the inputs and the stream.
pub fn fid_with_floor(samples: &[f32], floor: &[f32], reference: &[f32], dim: usize, reps: usize, rng: &mut Rng) -> FidEstimate {
    let n = samples.len() / dim;
    let (ms, cs) = moments(samples, dim);
    let (mf, cf) = moments(floor, dim);
    let (mr, cr) = moments(reference, dim);
    let fid = frechet_from_moments(&ms, &cs, &mr, &cr, dim);
    let floor_fid = frechet_from_moments(&mf, &cf, &mr, &cr, dim);
    let draws: Vec<[Vec<u32>; 3]> = (0..reps).map(|_| [resample_counts(n, rng), resample_counts(floor.len() / dim, rng), resample_counts(reference.len() / dim, rng)]).collect();
    let boot: Vec<(f64, f64)> = draws
        .par_iter()
        .map(|[a, b, r]| {
            let (mr, cr) = weighted_moments(reference, dim, r);
            let (ma, ca) = weighted_moments(samples, dim, a);
            let (mb, cb) = weighted_moments(floor, dim, b);
            (frechet_from_moments(&ma, &ca, &mr, &cr, dim), frechet_from_moments(&mb, &cb, &mr, &cr, dim))
        })
        .collect();
    let (_, fid_se) = mean_sd(&boot.iter().map(|b| b.0).collect::<Vec<_>>());
    let (_, floor_se) = mean_sd(&boot.iter().map(|b| b.1).collect::<Vec<_>>());
    let (_, ratio_se) = mean_sd(&boot.iter().map(|b| b.0 / b.1).collect::<Vec<_>>());
    let ratio = fid / floor_fid;
    FidEstimate { n, fid, fid_se, floor: floor_fid, floor_se, ratio, ratio_lo: (ratio - Z95 * ratio_se).max(0.0), ratio_hi: ratio + Z95 * ratio_se }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::fid::frechet_distance;

    /// n points in `dim` dimensions, N(shift, diag(scale²)).
    fn gauss(n: usize, dim: usize, shift: f64, scale: f64, rng: &mut Rng) -> Vec<f32> {
        (0..n * dim).map(|_| (shift + scale * rng.normal()) as f32).collect()
    }

    #[test]
    fn weighted_moments_equal_the_repeated_rows() {
        let mut rng = Rng::new(3);
        let xs = gauss(20, 3, 0.5, 2.0, &mut rng);
        let counts: Vec<u32> = (0..20).map(|i| (i % 3) as u32).collect();
        let repeated: Vec<f32> = xs.chunks(3).zip(&counts).flat_map(|(x, &k)| std::iter::repeat_n(x, k as usize).flatten().copied()).collect();
        let (m1, c1) = weighted_moments(&xs, 3, &counts);
        let (m2, c2) = moments(&repeated, 3);
        for (a, b) in m1.iter().chain(&c1).zip(m2.iter().chain(&c2)) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    /// The bootstrap SE against the spread of the FID over independent draws of all three
    /// sets from the same distributions (the quantity it estimates), and the floor of draws of
    /// the reference's own distribution far below a shifted generator's FID.
    #[test]
    fn bootstrap_se_matches_repeated_draws() {
        let (n, m, dim) = (400, 800, 4);
        let mut rng = Rng::new(11);
        let repeated: Vec<f64> = (0..200)
            .map(|_| {
                let s = gauss(n, dim, 0.3, 1.2, &mut rng);
                let r = gauss(m, dim, 0.0, 1.0, &mut rng);
                frechet_distance(&s, &r, dim)
            })
            .collect();
        let (true_mean, true_sd) = mean_sd(&repeated);
        let mut ratios = Vec::new();
        for seed in 0..5 {
            let mut rng = Rng::new(100 + seed);
            let s = gauss(n, dim, 0.3, 1.2, &mut rng);
            let f = gauss(n, dim, 0.0, 1.0, &mut rng);
            let r = gauss(m, dim, 0.0, 1.0, &mut rng);
            let e = fid_with_floor(&s, &f, &r, dim, 200, &mut Rng::new(seed));
            ratios.push(e.fid_se / true_sd);
            assert!((e.fid - true_mean).abs() < 5.0 * true_sd, "fid {} vs {true_mean} ± {true_sd}", e.fid);
            assert!(e.floor < 0.25 * e.fid, "floor {} vs fid {}", e.floor, e.fid);
            assert!(e.ratio_lo < e.ratio && e.ratio < e.ratio_hi && (e.ratio - e.fid / e.floor).abs() < 1e-12);
            assert_eq!(e.n, n);
        }
        let mean_ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
        assert!((0.7..1.4).contains(&mean_ratio), "bootstrap SE / true SD = {mean_ratio} ({ratios:?})");
        // Deterministic given the stream.
        let mut rng = Rng::new(5);
        let (s, f, r) = (gauss(50, 2, 0.0, 1.0, &mut rng), gauss(50, 2, 0.0, 1.0, &mut rng), gauss(60, 2, 0.0, 1.0, &mut rng));
        assert_eq!(fid_with_floor(&s, &f, &r, 2, 20, &mut Rng::new(1)), fid_with_floor(&s, &f, &r, 2, 20, &mut Rng::new(1)));
    }
}
