//! Does the generator copy its training images? For each sample, the Euclidean distance (in
//! pixels on the [−1, 1] scale) to its nearest training image, read against the same distance
//! for held-out images (real digits the model never saw, which are as close to the training
//! set as a fresh digit is): the metric `memorisation` is the fraction of samples closer to a
//! training image than the 1st percentile of the held-out images' nearest-training distances.
//! A generator of fresh digits scores about 0.01; one that replays training images scores 1.
//! `memorisation_lo`/`_hi` are its Wilson 95% interval, `nn_distance_ratio` the median
//! sample distance over the median held-out one (about 1 for fresh digits, 0 for copies).

use rayon::prelude::*;

use super::interval::proportion_metrics;

/// The held-out percentile below which a sample counts as a near-copy.
pub const PERCENTILE: f64 = 0.01;

/// ‖a − b‖² in f32 with eight partial sums (so the loop vectorises), then summed in f64.
fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let d = x[k] - y[k];
            acc[k] += d * d;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

/// For each row of `queries`, the Euclidean distance to its nearest row of `train` (both
/// row-major with `dim` columns): brute force, queries in parallel.
pub fn nearest_distances(queries: &[f32], train: &[f32], dim: usize) -> Vec<f64> {
    queries.par_chunks(dim).map(|q| train.chunks_exact(dim).map(|t| sq_dist(q, t)).fold(f64::INFINITY, f64::min).sqrt()).collect()
}

/// The `p`-quantile of `v` (nearest rank on the sorted values: the ⌈p·n⌉-th smallest).
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let k = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[k - 1]
}

/// The memorisation metrics of `samples` against the training images `train`, with the
/// held-out images `held` as the reference for a fresh digit's distance (all n×dim, the same
/// pixel scale): `memorisation` (with `_lo`, `_hi`, `_n`), `memorisation_threshold` (the
/// held-out 1st percentile), `nn_distance_ratio`.
pub fn memorisation_metrics(samples: &[f32], held: &[f32], train: &[f32], dim: usize) -> Vec<(String, f64)> {
    let ds = nearest_distances(samples, train, dim);
    let dh = nearest_distances(held, train, dim);
    let threshold = quantile(&dh, PERCENTILE);
    let close = ds.iter().filter(|&&d| d < threshold).count();
    let mut m = proportion_metrics("memorisation", close, ds.len());
    m.push(("memorisation_threshold".into(), threshold));
    m.push(("nn_distance_ratio".into(), quantile(&ds, 0.5) / quantile(&dh, 0.5)));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::split;

    /// Real digits: the embedded MNIST test split, split as a trial splits it, on [−1, 1].
    fn digits() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let set = crate::data::idx::load_embedded_mnist().unwrap();
        let d = set.dim();
        let seed = split::split_seed(set.n, set.shape(), &set.labels);
        let parts = split::stratified(&set.labels, 2000, 0, Some(3000), seed).unwrap();
        let px = |idx: &[usize]| -> Vec<f32> { idx.iter().flat_map(|&i| set.pixels[i * d..(i + 1) * d].iter().map(|&b| (b as f32 + 0.5) / 128.0 - 1.0)).collect() };
        (px(&parts.train), px(&parts.held[..1000]), px(&parts.held[1000..]))
    }

    #[test]
    fn nearest_distance_is_the_brute_force_minimum() {
        let mut rng = crate::rng::Rng::new(4);
        let dim = 13;
        let q: Vec<f32> = (0..5 * dim).map(|_| rng.normal() as f32).collect();
        let t: Vec<f32> = (0..40 * dim).map(|_| rng.normal() as f32).collect();
        let got = nearest_distances(&q, &t, dim);
        for (i, g) in got.iter().enumerate() {
            let want = t.chunks(dim).map(|r| r.iter().zip(&q[i * dim..(i + 1) * dim]).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
            assert!((g - want).abs() < 1e-4 * want, "{g} vs {want}");
        }
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.01), 1.0);
    }

    /// Exact training copies score 1; fresh digits (held-out images the reference did not use)
    /// score about the percentile, 0.01 — within a binomial 4-SE band.
    #[test]
    fn copies_score_one_and_fresh_digits_one_percent() {
        let (train, reference, fresh) = digits();
        let dim = 784;
        let copies = train[..500 * dim].to_vec();
        let m = memorisation_metrics(&copies, &reference, &train, dim);
        let get = |m: &[(String, f64)], k: &str| m.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get(&m, "memorisation"), 1.0);
        assert_eq!(get(&m, "nn_distance_ratio"), 0.0);
        let m = memorisation_metrics(&fresh, &reference, &train, dim);
        let (p, n) = (get(&m, "memorisation"), get(&m, "memorisation_n"));
        assert_eq!(n, 1000.0);
        let se = (0.01f64 * 0.99 / n).sqrt();
        assert!((p - 0.01).abs() < 4.0 * se + 1.0 / n, "fresh digits: {p}");
        assert!((get(&m, "nn_distance_ratio") - 1.0).abs() < 0.1, "ratio {}", get(&m, "nn_distance_ratio"));
        // Near-copies (a training image plus a little noise) are caught; heavily perturbed ones
        // are not.
        let mut rng = crate::rng::Rng::new(9);
        let near: Vec<f32> = copies.iter().map(|&v| v + 0.02 * rng.normal() as f32).collect();
        assert!(get(&memorisation_metrics(&near, &reference, &train, dim), "memorisation") > 0.99);
    }
}
