//! Noise ladders σ₁ > σ₂ > … > σ_L: geometric, an explicit list, or `auto` following NCSNv2
//! (Song & Ermon 2020): σ₁ = the largest pairwise distance in the training data (technique 1),
//! ratio γ from Φ(√(2D)(γ−1)+3γ) − Φ(√(2D)(γ−1)−3γ) ≈ 0.5 (technique 2), and a Langevin step
//! size ε from the T/ε rule of technique 4.

/// σ_max·(σ_min/σ_max)^{i/(L−1)}, i = 0 … L−1.
pub fn geometric(sigma_max: f64, sigma_min: f64, levels: usize) -> Vec<f64> {
    if levels == 1 {
        return vec![sigma_max];
    }
    (0..levels).map(|i| sigma_max * (sigma_min / sigma_max).powf(i as f64 / (levels - 1) as f64)).collect()
}

/// Largest pairwise Euclidean distance among row-major points (exact, O(n²·D)).
pub fn max_pairwise_distance(xs: &[f64], dim: usize) -> f64 {
    let n = xs.len() / dim;
    let mut best = 0.0f64;
    for i in 0..n {
        let a = &xs[i * dim..(i + 1) * dim];
        for j in (i + 1)..n {
            let b = &xs[j * dim..(j + 1) * dim];
            let d2: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
            best = best.max(d2);
        }
    }
    best.sqrt()
}

/// Standard normal CDF via erfc (relative error below 1.2e-7, Numerical Recipes' erfcc).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18 + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The NCSNv2 overlap function of γ in dimension D.
pub fn overlap(gamma: f64, dim: usize) -> f64 {
    let a = (2.0 * dim as f64).sqrt() * (gamma - 1.0);
    normal_cdf(a + 3.0 * gamma) - normal_cdf(a - 3.0 * gamma)
}

/// γ > 1 with overlap(γ, D) = 0.5, by bisection. The overlap starts at 0.997 for γ = 1 and only
/// falls towards 0 when √(2D) > 3, so there is no root for D ≤ 4: returns None there.
pub fn ncsnv2_gamma(dim: usize) -> Option<f64> {
    if (2.0 * dim as f64).sqrt() <= 3.0 {
        return None;
    }
    let (mut lo, mut hi) = (1.0, 2.0);
    while overlap(hi, dim) > 0.5 {
        hi *= 2.0;
        if hi > 1e6 {
            return None;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if overlap(mid, dim) > 0.5 { lo = mid } else { hi = mid }
    }
    Some(0.5 * (lo + hi))
}

/// Technique 4: with u = ε'/σ_L² and T steps per level,
/// f(u) = (1−u)^{2T}(γ² − 2/(2−u)) + 2/(2−u) is the ratio of the sample variance at the end of a
/// level to σ_L²-scaled target; pick the ε' in (0, σ_L²) that brings f closest to 1.
/// NCSNv2 derives ε' for steps x ← x + α' S + √(2α') z, the convention of every Langevin step
/// here (`samplers`), so ε' is returned as it is.
pub fn ncsnv2_step_size(sigma_min: f64, gamma: f64, steps_per_level: usize) -> f64 {
    let f = |u: f64| {
        let c = 2.0 / (2.0 - u);
        (1.0 - u).powf(2.0 * steps_per_level as f64) * (gamma * gamma - c) + c
    };
    // Dense log-spaced scan, then golden-section refinement around the best point.
    let grid: Vec<f64> = (0..=4000).map(|i| 10f64.powf(-10.0 + 10.0 * i as f64 / 4000.0) * 0.999_999).collect();
    let mut best = 0;
    for i in 0..grid.len() {
        if (f(grid[i]) - 1.0).abs() < (f(grid[best]) - 1.0).abs() {
            best = i;
        }
    }
    let (mut a, mut b) = (grid[best.saturating_sub(1)], grid[(best + 1).min(grid.len() - 1)]);
    let g = 0.618_033_988_749_895;
    for _ in 0..100 {
        let c = b - g * (b - a);
        let d = a + g * (b - a);
        if (f(c) - 1.0).abs() < (f(d) - 1.0).abs() { b = d } else { a = c }
    }
    0.5 * (a + b) * sigma_min * sigma_min
}

/// The auto ladder: returns (σs, γ, whether γ came from the NCSNv2 rule).
pub fn auto(train: &[f64], dim: usize, sigma_min: f64, fallback_levels: usize) -> (Vec<f64>, f64, bool) {
    let sigma_max = max_pairwise_distance(train, dim).max(sigma_min * 1.000_001);
    match ncsnv2_gamma(dim) {
        Some(gamma) => {
            let levels = ((sigma_max / sigma_min).ln() / gamma.ln()).ceil() as usize + 1;
            let sig: Vec<f64> = (0..levels).map(|i| sigma_max / gamma.powi(i as i32)).collect();
            (sig, gamma, true)
        }
        None => {
            let sig = geometric(sigma_max, sigma_min, fallback_levels);
            let gamma = if fallback_levels > 1 { (sigma_max / sigma_min).powf(1.0 / (fallback_levels - 1) as f64) } else { 1.0 };
            (sig, gamma, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_endpoints_and_ratio() {
        let s = geometric(10.0, 0.1, 5);
        assert!((s[0] - 10.0).abs() < 1e-12 && (s[4] - 0.1).abs() < 1e-12);
        for w in s.windows(2) {
            assert!((w[0] / w[1] - 100f64.powf(0.25)).abs() < 1e-9);
        }
    }

    /// Φ against known values (Φ(1) = 0.841344746, Φ(−2) = 0.022750132).
    #[test]
    fn normal_cdf_values() {
        assert!((normal_cdf(1.0) - 0.841_344_746).abs() < 1e-6);
        assert!((normal_cdf(-2.0) - 0.022_750_132).abs() < 1e-6);
    }

    /// The root solves the equation, and for CIFAR-10's D = 3072 the ratio is the ~1.0 + small
    /// value NCSNv2 reports (γ ≈ 1.04 order); for D ≤ 4 there is no root.
    #[test]
    fn gamma_rule() {
        for d in [16, 64, 784, 3072] {
            let g = ncsnv2_gamma(d).unwrap();
            assert!((overlap(g, d) - 0.5).abs() < 1e-9, "D={d}");
            assert!(g > 1.0 && g < 3.0, "D={d}: γ={g}");
        }
        assert!(ncsnv2_gamma(3072).unwrap() < 1.1);
        assert!(ncsnv2_gamma(2).is_none());
    }

    #[test]
    fn step_size_rule_is_interior_minimum() {
        let (sl, g, t) = (0.01, 1.1, 100);
        let eps = ncsnv2_step_size(sl, g, t);
        assert!(eps > 0.0 && eps < sl * sl);
        let f = |e: f64| {
            let u = e / (sl * sl);
            let c = 2.0 / (2.0 - u);
            (1.0 - u).powf(2.0 * t as f64) * (g * g - c) + c
        };
        assert!(f(eps) <= f(eps * 1.05) && f(eps) <= f(eps * 0.95));
    }

    #[test]
    fn max_distance_exact() {
        let xs = [0.0, 0.0, 3.0, 4.0, 1.0, 1.0];
        assert!((max_pairwise_distance(&xs, 2) - 5.0).abs() < 1e-12);
    }
}
