//! Confidence intervals for the proportions a trial judges against targets (`class_match`,
//! `which_digit_accuracy`, `classifier_accuracy`): Wilson's score interval, which keeps its
//! coverage near 0 and 1 where the normal ("Wald") interval collapses. A target counts as met
//! only when the interval's lower end clears it.

/// z of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson's 95% score interval for `hits` successes out of `n`: the p with
/// |hits/n − p| ≤ z·sqrt(p(1 − p)/n). (0, 1) when n is 0.
pub fn wilson(hits: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (nf, z2) = (n as f64, Z95 * Z95);
    let p = hits as f64 / nf;
    let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
    let half = Z95 / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    // At 0 or n hits the end is exactly 0 or 1 (the formula leaves rounding residue there).
    (if hits == 0 { 0.0 } else { (centre - half).max(0.0) }, if hits >= n { 1.0 } else { (centre + half).min(1.0) })
}

/// A proportion as metrics: `name` (hits/n), `name_lo`, `name_hi` (Wilson 95%) and `name_n`.
pub fn proportion_metrics(name: &str, hits: usize, n: usize) -> Vec<(String, f64)> {
    let (lo, hi) = wilson(hits, n);
    let p = if n == 0 { f64::NAN } else { hits as f64 / n as f64 };
    vec![(name.to_string(), p), (format!("{name}_lo"), lo), (format!("{name}_hi"), hi), (format!("{name}_n"), n as f64)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval's ends solve |p̂ − p| = z·sqrt(p(1 − p)/n): found here independently by
    /// bisection on that equation, on each side of p̂.
    fn by_bisection(hits: usize, n: usize) -> (f64, f64) {
        let ph = hits as f64 / n as f64;
        let gap = |p: f64| (ph - p).abs() - Z95 * (p * (1.0 - p) / n as f64).sqrt();
        let solve = |mut inside: f64, mut outside: f64| {
            for _ in 0..200 {
                let mid = 0.5 * (inside + outside);
                if gap(mid) <= 0.0 { inside = mid } else { outside = mid }
            }
            0.5 * (inside + outside)
        };
        (if hits == 0 { 0.0 } else { solve(ph, 0.0) }, if hits == n { 1.0 } else { solve(ph, 1.0) })
    }

    #[test]
    fn wilson_ends_solve_the_score_equation() {
        for (hits, n) in [(959, 1000), (5, 10), (0, 20), (20, 20), (1, 3), (9_700, 10_000)] {
            let (lo, hi) = wilson(hits, n);
            let (blo, bhi) = by_bisection(hits, n);
            assert!((lo - blo).abs() < 1e-9 && (hi - bhi).abs() < 1e-9, "{hits}/{n}: ({lo}, {hi}) vs ({blo}, {bhi})");
        }
        // The case: 0.959 on 1,000 images is not a met 0.95 target.
        let (lo, _) = wilson(959, 1000);
        assert!(lo < 0.95 && (lo - 0.9451).abs() < 5e-4, "lo = {lo}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn proportion_metrics_name_the_interval() {
        let m = proportion_metrics("class_match", 97, 100);
        let names: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["class_match", "class_match_lo", "class_match_hi", "class_match_n"]);
        assert_eq!((m[0].1, m[3].1), (0.97, 100.0));
        assert!(m[1].1 < 0.97 && m[2].1 > 0.97);
    }
}
