//! "Which digit is this?" asked of a class-conditional score model itself: an image belongs to
//! the class whose conditional denoising loss is lowest (the diffusion-classifier rule: the
//! loss bounds −log p(x | c) up to a class-independent constant, so its argmin is a Bayes
//! decision under equal priors). Only a score closure S(x̃, σ, c) is needed, so this works with
//! any model type. Every class sees the same fixed (σ, ε) draws — common random numbers — so
//! the comparison between classes carries no draw-to-draw noise of its own.
//!
//! The loss of image x, class c and draw (σ, ε) is the NCSN-weighted DSM term
//! ‖σ S(x + σε, σ, c) + ε‖² / D (D = h·w), averaged over the draws.

use crate::rng::Rng;

/// `per_sigma` draws (σ, ε) for each σ, ε ~ N(0, I) of h·w values (shared by every image), in
/// antithetic pairs (ε, −ε) (`per_sigma` is rounded up to even). The pair cancels the term of
/// the loss linear in ε, 2σ S·ε, which is most of its variance at small σ: for a score linear
/// in x̃ (a Gaussian class) the class-dependent part of the pair's loss is then exact.
pub fn draws(sigmas: &[f32], per_sigma: usize, h: usize, w: usize, rng: &mut Rng) -> Vec<(f32, Vec<f32>)> {
    let mut out = Vec::with_capacity(sigmas.len() * (per_sigma + 1));
    for &s in sigmas {
        for _ in 0..per_sigma.div_ceil(2) {
            let e = rng.normals_f32(h * w);
            out.push((s, e.iter().map(|x| -x).collect()));
            out.push((s, e));
        }
    }
    out
}

/// Mean denoising loss of every image under every class: n×`n_classes` row-major (row i:
/// image i). `images` are n×h×w; each draw's noise is h×w values (the same for every image) or
/// n×h×w (one per image). `score(noisy, sigmas, labels)` gets a batch of n noisy images with
/// their σ and class (one call per draw and class, all n images at once: a model that needs
/// smaller batches splits inside the closure) and returns S, n×h×w; its error is passed on.
///
/// # Panics
/// If `images` is not whole h×w images, a noise has another length, `n_classes` is not in
/// 1..=256, or `score` returns a batch of the wrong length.
pub fn denoising_losses<E>(
    n_classes: usize,
    images: &[f32],
    h: usize,
    w: usize,
    draws: &[(f32, Vec<f32>)],
    mut score: impl FnMut(&[f32], &[f32], &[u8]) -> Result<Vec<f32>, E>,
) -> Result<Vec<f64>, E> {
    let d = h * w;
    assert!(d > 0 && images.len().is_multiple_of(d), "{} pixels are not whole {h}×{w} images", images.len());
    assert!((1..=256).contains(&n_classes), "{n_classes} classes do not fit in u8 labels");
    let n = images.len() / d;
    let mut losses = vec![0.0f64; n * n_classes];
    if n == 0 || draws.is_empty() {
        return Ok(losses);
    }
    let mut noisy = vec![0f32; n * d];
    let mut eps = vec![0f32; n * d];
    for (k, (sigma, noise)) in draws.iter().enumerate() {
        assert!(noise.len() == d || noise.len() == n * d, "draw {k}: {} noise values for {n} images of {h}×{w}", noise.len());
        for (i, e) in eps.chunks_mut(d).enumerate() {
            e.copy_from_slice(if noise.len() == d { noise } else { &noise[i * d..(i + 1) * d] });
        }
        for ((y, &x), &e) in noisy.iter_mut().zip(images).zip(&eps) {
            *y = x + sigma * e;
        }
        let sigmas = vec![*sigma; n];
        for c in 0..n_classes {
            let labels = vec![c as u8; n];
            let s = score(&noisy, &sigmas, &labels)?;
            assert_eq!(s.len(), n * d, "the score of {n} images of {h}×{w}");
            for (i, (si, ei)) in s.chunks(d).zip(eps.chunks(d)).enumerate() {
                let l: f64 = si.iter().zip(ei).map(|(&s, &e)| ((sigma * s + e) as f64).powi(2)).sum();
                losses[i * n_classes + c] += l / d as f64;
            }
        }
    }
    losses.iter_mut().for_each(|l| *l /= draws.len() as f64);
    Ok(losses)
}

/// The class of lowest [`denoising_losses`] for each image (ties: the lowest class).
pub fn classify_by_denoising<E>(
    n_classes: usize,
    images: &[f32],
    h: usize,
    w: usize,
    draws: &[(f32, Vec<f32>)],
    score: impl FnMut(&[f32], &[f32], &[u8]) -> Result<Vec<f32>, E>,
) -> Result<Vec<u8>, E> {
    let losses = denoising_losses(n_classes, images, h, w, draws, score)?;
    Ok(losses.chunks(n_classes).map(|row| (0..n_classes).fold(0, |best, c| if row[c] < row[best] { c } else { best }) as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class c: x ~ N(μ_c, s² I) in D = h·w dimensions, so x̃ = x + σε ~ N(μ_c, v I), v = s² + σ²,
    /// and the exact score is S(x̃, σ, c) = −(x̃ − μ_c)/v.
    struct Gaussians {
        means: Vec<Vec<f32>>,
        s: f32,
    }

    impl Gaussians {
        fn new(classes: usize, d: usize, spread: f32, s: f32, rng: &mut Rng) -> Self {
            Gaussians { means: (0..classes).map(|_| rng.normals_f32(d).into_iter().map(|m| m * spread).collect()).collect(), s }
        }

        fn sample(&self, n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<u8>) {
            let labels: Vec<u8> = (0..n).map(|i| (i % self.means.len()) as u8).collect();
            let x = labels.iter().flat_map(|&c| self.means[c as usize].iter().map(|&m| m + self.s * rng.normal() as f32).collect::<Vec<_>>()).collect();
            (x, labels)
        }

        fn score(&self, noisy: &[f32], sigmas: &[f32], labels: &[u8]) -> Result<Vec<f32>, String> {
            let d = self.means[0].len();
            Ok(noisy
                .chunks(d)
                .zip(sigmas)
                .zip(labels)
                .flat_map(|((x, &sg), &c)| x.iter().zip(&self.means[c as usize]).map(move |(x, m)| -(x - m) / (self.s * self.s + sg * sg)).collect::<Vec<_>>())
                .collect())
        }

        fn nearest_mean(&self, x: &[f32]) -> Vec<u8> {
            let d = self.means[0].len();
            let dist = |x: &[f32], m: &[f32]| x.iter().zip(m).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
            x.chunks(d).map(|x| (0..self.means.len()).min_by(|&a, &b| dist(x, &self.means[a]).total_cmp(&dist(x, &self.means[b]))).unwrap() as u8).collect()
        }
    }

    /// With the exact score, σS + ε = a + bε with a = −σ(x − μ_c)/v and b = 1 − σ²/v, so the
    /// expected loss is (‖a‖² + b²D)/D and one draw's loss has variance (4b²‖a‖² + 2b⁴D)/D².
    /// The mean over K = 4000 draws must lie within 5 standard errors of the closed form
    /// (per-image noise here, the other layout of the draws).
    #[test]
    fn mean_loss_matches_closed_form() {
        let mut rng = Rng::new(1);
        let (h, w, sigma) = (2, 3, 0.7f32);
        let d = h * w;
        let g = Gaussians::new(3, d, 1.0, 0.5, &mut rng);
        let (x, _) = g.sample(4, &mut rng);
        let k = 4000;
        let draws: Vec<(f32, Vec<f32>)> = (0..k).map(|_| (sigma, rng.normals_f32(4 * d))).collect();
        let losses = denoising_losses(3, &x, h, w, &draws, |a, b, c| g.score(a, b, c)).unwrap();
        let v = (g.s * g.s + sigma * sigma) as f64;
        let b = 1.0 - (sigma * sigma) as f64 / v;
        for (i, xi) in x.chunks(d).enumerate() {
            for c in 0..3 {
                let a2: f64 = xi.iter().zip(&g.means[c]).map(|(&x, &m)| (sigma as f64 * (x - m) as f64 / v).powi(2)).sum();
                let expect = (a2 + b * b * d as f64) / d as f64;
                let se = ((4.0 * b * b * a2 + 2.0 * b.powi(4) * d as f64) / (d * d) as f64 / k as f64).sqrt();
                let got = losses[i * 3 + c];
                assert!((got - expect).abs() < 5.0 * se, "image {i}, class {c}: {got} vs {expect} ± {se}");
            }
        }
    }

    /// Classes: 10 Gaussians in D = 16 (means N(0, spread²), s = 1). In expectation the loss is
    /// σ²‖x − μ_c‖²/(v²D) plus a class-independent constant, so the rule is the nearest mean,
    /// the Bayes classifier here. With antithetic draws ([`draws`], 3 σ × 16) the linear noise
    /// term cancels and the score is linear, so the rule is exactly the nearest mean: the
    /// predictions agree with it on every image, for well separated classes (spread 3: all
    /// right) and overlapping ones (spread 0.5: 70% Bayes accuracy). With as many
    /// independent draws the term 2σb(μ_c′ − μ_c)·ε̄/(vD) (b = 1 − σ²/v) flips the near-ties:
    /// agreement measured 0.91 at spread 0.5 (0.79 with other draws) — what the pairs are for.
    #[test]
    fn picks_the_nearest_class() {
        let mut rng = Rng::new(2);
        let (h, w) = (4, 4);
        for (spread, min_accuracy) in [(3.0, 1.0), (0.5, 0.65)] {
            let g = Gaussians::new(10, h * w, spread, 1.0, &mut rng);
            let (x, labels) = g.sample(500, &mut rng);
            let frac = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(p, q)| p == q).count() as f64 / a.len() as f64;
            let paired = draws(&[0.3, 1.0, 3.0], 16, h, w, &mut rng);
            assert_eq!(paired.len(), 48);
            let pred = classify_by_denoising(10, &x, h, w, &paired, |a, b, c| g.score(a, b, c)).unwrap();
            let (acc, agree) = (frac(&pred, &labels), frac(&pred, &g.nearest_mean(&x)));
            assert!(acc >= min_accuracy && agree == 1.0, "spread {spread}: accuracy {acc}, agreement with the nearest mean {agree}");

            let independent: Vec<(f32, Vec<f32>)> = paired.iter().map(|(s, e)| (*s, rng.normals_f32(e.len()))).collect();
            let pred = classify_by_denoising(10, &x, h, w, &independent, |a, b, c| g.score(a, b, c)).unwrap();
            let agree_independent = frac(&pred, &g.nearest_mean(&x));
            assert!(agree_independent >= if spread > 1.0 { 1.0 } else { 0.75 }, "spread {spread}: independent draws agree on {agree_independent}");
        }
    }

    /// One call per draw and class with the whole batch: the same noisy images for every class,
    /// the draw's σ and the class as labels; errors of the closure come back unchanged.
    #[test]
    fn calls_and_errors() {
        let (h, w) = (1, 2);
        let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let draws = vec![(0.5, vec![1.0, -1.0]), (2.0, vec![0.0, 2.0])];
        let mut calls: Vec<(Vec<f32>, Vec<f32>, Vec<u8>)> = Vec::new();
        let losses = denoising_losses(2, &x, h, w, &draws, |a, b, c| -> Result<Vec<f32>, ()> {
            calls.push((a.to_vec(), b.to_vec(), c.to_vec()));
            Ok(vec![c[0] as f32; a.len()])
        })
        .unwrap();
        let noisy0 = vec![0.5, 0.5, 2.5, 2.5, 4.5, 4.5];
        let noisy1 = vec![0.0, 5.0, 2.0, 7.0, 4.0, 9.0];
        let expect = [(noisy0.clone(), 0.5, 0), (noisy0, 0.5, 1), (noisy1.clone(), 2.0, 0), (noisy1, 2.0, 1)];
        assert_eq!(calls.len(), 4);
        for (got, (noisy, s, c)) in calls.iter().zip(expect) {
            assert_eq!(got, &(noisy, vec![s; 3], vec![c; 3]));
        }
        // Class 0: S = 0, the loss is mean ε²: draw 0 (1 + 1)/2 = 1, draw 1 (0 + 4)/2 = 2 → 1.5;
        // class 1: S = 1: draw 0 ((1.5)² + (−0.5)²)/2 = 1.25, draw 1 ((2)² + (4)²)/2 = 10 → 5.625.
        assert_eq!(losses, [1.5, 5.625, 1.5, 5.625, 1.5, 5.625]);
        let err = classify_by_denoising(3, &x, h, w, &draws, |_, _, _| Err::<Vec<f32>, _>("model failed")).unwrap_err();
        assert_eq!(err, "model failed");
        assert_eq!(classify_by_denoising(3, &[], h, w, &draws, |_, _, _| Err::<Vec<f32>, _>("unused")), Ok(vec![]));
    }
}
