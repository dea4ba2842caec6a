//! Fréchet distance between the Gaussian fits of two feature sets (FID when the features are
//! a classifier's penultimate layer, [`super::classifier::Classifier::features`]):
//! ‖μa−μb‖² + tr(Σa + Σb − 2(Σa^{½} Σb Σa^{½})^{½}), in f64. Square roots of PSD matrices come
//! from a symmetric eigen-decomposition by Householder tridiagonalisation and implicit QL
//! (tred2/tql2 of EISPACK, as in JAMA), O(d³) with a small constant: d = 256 in tens of
//! milliseconds, where cyclic Jacobi needs many O(d³) sweeps. Eigenvalues below zero
//! (rounding) are clamped to 0. The toy sample metrics' Fréchet distance
//! ([`super::samples::frechet`]) is this one too.

/// Mean and unbiased covariance (d×d row-major) of row-major f32 points, accumulated in f64.
///
/// # Panics
/// If `dim` is 0 or `xs.len()` is not a multiple of it.
pub fn moments(xs: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    assert!(dim > 0 && xs.len().is_multiple_of(dim), "{} values are not rows of {dim}", xs.len());
    let n = xs.len() / dim;
    let mut mu = vec![0.0; dim];
    for x in xs.chunks(dim) {
        for (m, &v) in mu.iter_mut().zip(x) {
            *m += v as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    // Upper triangle of Σ (x−μ)(x−μ)ᵀ, then mirrored.
    let mut cov = vec![0.0; dim * dim];
    let mut c = vec![0.0; dim];
    for x in xs.chunks(dim) {
        for ((c, &v), m) in c.iter_mut().zip(x).zip(&mu) {
            *c = v as f64 - m;
        }
        for i in 0..dim {
            let ci = c[i];
            for (s, &cj) in cov[i * dim + i..(i + 1) * dim].iter_mut().zip(&c[i..]) {
                *s += ci * cj;
            }
        }
    }
    let denom = n.saturating_sub(1).max(1) as f64;
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] / denom;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    (mu, cov)
}

/// Fréchet distance between two feature sets, `a`: n_a×dim and `b`: n_b×dim row-major. Each
/// side needs at least two rows for a covariance; NaN when a value is not finite.
pub fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (mu_a, cov_a) = moments(a, dim);
    let (mu_b, cov_b) = moments(b, dim);
    frechet_from_moments(&mu_a, &cov_a, &mu_b, &cov_b, dim)
}

/// ‖μa−μb‖² + tr Σa + tr Σb − 2 tr (Σa^{½} Σb Σa^{½})^{½}, clamped at 0 (rounding can make a
/// distance of identical sets a hair negative). NaN when an input is not finite.
pub fn frechet_from_moments(mu_a: &[f64], cov_a: &[f64], mu_b: &[f64], cov_b: &[f64], dim: usize) -> f64 {
    let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
    if ![mu_a, cov_a, mu_b, cov_b].iter().all(|v| finite(v)) {
        return f64::NAN;
    }
    let dm: f64 = mu_a.iter().zip(mu_b).map(|(a, b)| (a - b) * (a - b)).sum();
    let tr: f64 = (0..dim).map(|i| cov_a[i * dim + i] + cov_b[i * dim + i]).sum();
    let s = sqrt_psd(cov_a, dim);
    let mut m = matmul(&matmul(&s, cov_b, dim), &s, dim);
    symmetrize(&mut m, dim);
    let (w, _) = symmetric_eigen(&m, dim);
    let tr_sqrt: f64 = w.iter().map(|x| x.max(0.0).sqrt()).sum();
    (dm + tr - 2.0 * tr_sqrt).max(0.0)
}

/// The PSD square root V diag(√max(λ, 0)) Vᵀ of a symmetric matrix.
pub fn sqrt_psd(a: &[f64], dim: usize) -> Vec<f64> {
    let (w, v) = symmetric_eigen(a, dim);
    let mut out = vec![0.0; dim * dim];
    for k in 0..dim {
        let r = w[k].max(0.0).sqrt();
        if r == 0.0 {
            continue;
        }
        let vk = &v[k * dim..(k + 1) * dim];
        for i in 0..dim {
            let f = r * vk[i];
            for (o, &x) in out[i * dim..(i + 1) * dim].iter_mut().zip(vk) {
                *o += f * x;
            }
        }
    }
    symmetrize(&mut out, dim);
    out
}

fn symmetrize(a: &mut [f64], dim: usize) {
    for i in 0..dim {
        for j in i + 1..dim {
            let v = 0.5 * (a[i * dim + j] + a[j * dim + i]);
            a[i * dim + j] = v;
            a[j * dim + i] = v;
        }
    }
}

fn matmul(a: &[f64], b: &[f64], dim: usize) -> Vec<f64> {
    let mut out = vec![0.0; dim * dim];
    for i in 0..dim {
        for k in 0..dim {
            let aik = a[i * dim + k];
            if aik == 0.0 {
                continue;
            }
            for (o, &x) in out[i * dim..(i + 1) * dim].iter_mut().zip(&b[k * dim..(k + 1) * dim]) {
                *o += aik * x;
            }
        }
    }
    out
}

/// Eigenvalues (ascending) and unit eigenvectors of a symmetric matrix (row-major, only its
/// values are read, not checked for symmetry); eigenvector k is row k of the second vector.
/// Householder reduction to tridiagonal form, then the QL algorithm with implicit shifts.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "a {n}×{n} matrix");
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut v = a.to_vec();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tred2(&mut v, &mut d, &mut e, n);
    // tql2 rotates pairs of columns of V: on Vᵀ those are rows, contiguous.
    let mut z = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            z[j * n + i] = v[i * n + j];
        }
    }
    tql2(&mut z, &mut d, &mut e, n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values = order.iter().map(|&k| d[k]).collect();
    let vectors = order.iter().flat_map(|&k| z[k * n..(k + 1) * n].iter().copied()).collect();
    (values, vectors)
}

/// Householder tridiagonalisation: on return `d` holds the diagonal, `e[1..]` the
/// subdiagonal and `v` the orthogonal transformation (row-major).
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| i * n + j;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// QL with implicit shifts on the tridiagonal (d, e) from [`tred2`]; `z` holds the
/// transformation transposed (row k: eigenvector k on return).
fn tql2(z: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            // 30 iterations per eigenvalue is the classic bound; the cap only guards NaN input.
            for _ in 0..60 {
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in &mut d[l + 2..] {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = z.split_at_mut((i + 1) * n);
                    for (zi, zi1) in lo[i * n..].iter_mut().zip(&mut hi[..n]) {
                        let t = *zi1;
                        *zi1 = s * *zi + c * t;
                        *zi = c * *zi - s * t;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 || !e[l].is_finite() {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A random orthogonal matrix (Gram–Schmidt of Gaussian columns), row-major.
    fn orthogonal(d: usize, rng: &mut Rng) -> Vec<f64> {
        let mut q: Vec<Vec<f64>> = Vec::new();
        while q.len() < d {
            let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            for u in &q {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            q.push(v);
        }
        q.concat()
    }

    /// Q diag(w) Qᵀ.
    fn from_spectrum(q: &[f64], w: &[f64]) -> Vec<f64> {
        let d = w.len();
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = (0..d).map(|k| q[i * d + k] * w[k] * q[j * d + k]).sum();
            }
        }
        a
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// Eigenpairs satisfy A v = λ v and V is orthonormal, to 1e-10 relative to ‖A‖ (double
    /// rounding over d ≤ 200 terms is ~1e-13); including a repeated and a zero eigenvalue.
    #[test]
    fn eigen_decomposition_is_exact() {
        let mut rng = Rng::new(1);
        type Spectrum = fn(usize) -> f64;
        let cases: [(usize, Spectrum); 4] = [(1, |_| 3.0), (5, |k| k as f64 - 2.0), (40, |k| if k < 10 { 0.0 } else { 1.0 + k as f64 }), (200, |k| (k as f64).sin() * 5.0)];
        for (d, spectrum) in cases {
            let w: Vec<f64> = (0..d).map(spectrum).collect();
            let a = from_spectrum(&orthogonal(d, &mut rng), &w);
            let (vals, vecs) = symmetric_eigen(&a, d);
            let mut expect = w.clone();
            expect.sort_by(f64::total_cmp);
            let scale = w.iter().fold(1.0, |m: f64, x| m.max(x.abs()));
            assert!(max_abs_diff(&vals, &expect) < 1e-10 * scale, "d {d}: {vals:?}");
            for k in 0..d {
                let v = &vecs[k * d..(k + 1) * d];
                let av: Vec<f64> = (0..d).map(|i| (0..d).map(|j| a[i * d + j] * v[j]).sum()).collect();
                let lv: Vec<f64> = v.iter().map(|x| x * vals[k]).collect();
                assert!(max_abs_diff(&av, &lv) < 1e-10 * scale, "d {d}, pair {k}");
                for l in 0..d {
                    let dot: f64 = v.iter().zip(&vecs[l * d..(l + 1) * d]).map(|(x, y)| x * y).sum();
                    assert!((dot - (k == l) as u8 as f64).abs() < 1e-10, "d {d}: v{k}·v{l} = {dot}");
                }
            }
        }
    }

    /// (√A)² = A for PSD matrices, full rank and rank-deficient; tiny negative eigenvalues
    /// (−1e-14, as rounding makes them) are treated as 0.
    #[test]
    fn square_root_squares_back() {
        let mut rng = Rng::new(2);
        for (d, rank, neg) in [(3, 3, false), (64, 64, false), (64, 20, false), (128, 128, true)] {
            let w: Vec<f64> = (0..d)
                .map(|k| {
                    if k < rank {
                        0.1 + rng.uniform() * 4.0
                    } else if neg {
                        -1e-14
                    } else {
                        0.0
                    }
                })
                .collect();
            let a = from_spectrum(&orthogonal(d, &mut rng), &w);
            let s = sqrt_psd(&a, d);
            let s2 = matmul(&s, &s, d);
            assert!(max_abs_diff(&s2, &a) < 1e-10, "d {d}, rank {rank}: {}", max_abs_diff(&s2, &a));
            let (sv, _) = symmetric_eigen(&s, d);
            assert!(sv[0] > -1e-7, "square root not PSD: {}", sv[0]);
        }
    }

    /// Exact moments, no sampling. Commuting covariances Q diag(a) Qᵀ, Q diag(b) Qᵀ give
    /// ‖Δμ‖² + Σ(√a − √b)²; non-commuting 2×2 ones have tr √(Σa^{½}ΣbΣa^{½}) =
    /// √(tr(ΣaΣb) + 2√(det Σa det Σb)) (for a 2×2 PSD M, tr √M = √(tr M + 2√det M)).
    #[test]
    fn matches_closed_forms() {
        let mut rng = Rng::new(3);
        for d in [1, 4, 32, 128] {
            let q = orthogonal(d, &mut rng);
            let a: Vec<f64> = (0..d).map(|_| 0.2 + 3.0 * rng.uniform()).collect();
            let b: Vec<f64> = (0..d).map(|_| 0.2 + 3.0 * rng.uniform()).collect();
            let mu_a: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let mu_b: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let expect: f64 = mu_a.iter().zip(&mu_b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() + a.iter().zip(&b).map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();
            let got = frechet_from_moments(&mu_a, &from_spectrum(&q, &a), &mu_b, &from_spectrum(&q, &b), d);
            assert!((got - expect).abs() < 1e-9 * (1.0 + expect), "d {d}: {got} vs {expect}");
        }
        for (ca, cb) in [([2.0, 0.5, 0.5, 1.0], [1.0, -0.3, -0.3, 3.0]), ([1.0, 0.99, 0.99, 1.0], [4.0, 0.0, 0.0, 0.01])] {
            let tr_ab = ca[0] * cb[0] + ca[1] * cb[2] + ca[2] * cb[1] + ca[3] * cb[3];
            let det = |m: [f64; 4]| m[0] * m[3] - m[1] * m[2];
            let tr_sqrt = (tr_ab + 2.0 * (det(ca) * det(cb)).sqrt()).sqrt();
            let expect = ca[0] + ca[3] + cb[0] + cb[3] - 2.0 * tr_sqrt + 1.0;
            let got = frechet_from_moments(&[1.0, 0.0], &ca, &[0.0, 0.0], &cb, 2);
            assert!((got - expect).abs() < 1e-12, "{got} vs {expect}");
        }
    }

    fn gaussian(n: usize, mu: &[f64], sd: &[f64], q: &[f64], rng: &mut Rng) -> Vec<f32> {
        let d = mu.len();
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let z: Vec<f64> = sd.iter().map(|s| s * rng.normal()).collect();
            out.extend((0..d).map(|i| (mu[i] + (0..d).map(|k| q[i * d + k] * z[k]).sum::<f64>()) as f32));
        }
        out
    }

    /// Sampled sets: identical sets give 0; a permutation of the rows changes nothing; two
    /// rotated diagonal Gaussians (d = 8, 40k points each) give the closed form
    /// Σ(μa−μb)² + Σ(σa−σb)² = 8.57… up to Monte-Carlo error. That error: the mean term has
    /// standard deviation ≈ 2√(Δμᵀ(Σa/na+Σb/nb)Δμ) ≈ 0.03 here, the covariance terms relative
    /// error ~√(2/n) ≈ 0.007 on each σ² (≈ 0.01 on the sum), and the bias of the plug-in estimate
    /// is O(d/n) ≈ 4e-4; 0.15 is more than 4 standard deviations.
    #[test]
    fn sampled_gaussians() {
        let mut rng = Rng::new(4);
        let d = 8;
        let q = orthogonal(d, &mut rng);
        let mu_a: Vec<f64> = (0..d).map(|i| i as f64 * 0.3).collect();
        let mu_b: Vec<f64> = (0..d).map(|i| 1.0 - i as f64 * 0.1).collect();
        let sd_a: Vec<f64> = (0..d).map(|i| 0.5 + 0.2 * i as f64).collect();
        let sd_b: Vec<f64> = (0..d).map(|i| 1.5 - 0.1 * i as f64).collect();
        let (xa, xb) = (gaussian(40_000, &mu_a, &sd_a, &q, &mut rng), gaussian(40_000, &mu_b, &sd_b, &q, &mut rng));
        let expect: f64 = (0..d).map(|i| (mu_a[i] - mu_b[i]).powi(2) + (sd_a[i] - sd_b[i]).powi(2)).sum();
        let got = frechet_distance(&xa, &xb, d);
        assert!((got - expect).abs() < 0.15, "{got} vs {expect}");

        assert!(frechet_distance(&xa, &xa, d) < 1e-9, "identical sets: {}", frechet_distance(&xa, &xa, d));
        let mut rows: Vec<&[f32]> = xb.chunks(d).collect();
        for i in (1..rows.len()).rev() {
            rows.swap(i, rng.below(i + 1));
        }
        let shuffled = frechet_distance(&xa, &rows.concat(), d);
        assert!((shuffled - got).abs() < 1e-9 * got, "permuted: {shuffled} vs {got}");
        assert!((frechet_distance(&xb, &xa, d) - got).abs() < 1e-9 * got, "symmetric");
        assert!(frechet_distance(&[f32::NAN, 0.0, 1.0, 1.0], &xa[..4], 2).is_nan());
    }

    /// 10k points of dimension 256 per side: the distance takes well under a second in
    /// release builds (moments ~0.3 s of it; the bound here is loose for shared machines).
    #[test]
    fn fast_at_dimension_256() {
        let mut rng = Rng::new(5);
        let d = 256;
        let xa: Vec<f32> = (0..10_000 * d).map(|_| rng.normal() as f32).collect();
        let xb: Vec<f32> = (0..10_000 * d).map(|_| rng.normal() as f32 * 1.1).collect();
        let t = std::time::Instant::now();
        let f = frechet_distance(&xa, &xb, d);
        let s = t.elapsed().as_secs_f64();
        // N(0, I) against N(0, 1.21 I): 256·0.1² = 2.56, plus the upward bias of the plug-in
        // estimate, O(d²/n) = 6.6 here (it measured 3.7).
        assert!(f > 2.0 && f < 2.56 + 6.6, "{f}");
        eprintln!("frechet_distance, 2 × 10k × {d}: {s:.3} s");
        assert!(cfg!(debug_assertions) || s < 5.0, "{s} s");
    }
}
