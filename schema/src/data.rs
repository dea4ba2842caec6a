//! Data-set presets as plain numbers. The engine turns a [`MixtureSpec`] into a data source
//! with exact log-density and score (`engine::data::mixture`); here it is only what validation
//! needs: the dimension, the components and the extent of the mass.

/// An isotropic Gaussian mixture Σ_k π_k N(μ_k, s_k² I).
#[derive(Clone, Debug, PartialEq)]
pub struct MixtureSpec {
    pub dim: usize,
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    pub stds: Vec<f64>,
}

impl MixtureSpec {
    /// The two-mode 1D example of the write-up: 0.3·N(−4, 1) + 0.7·N(0, 1).
    pub fn seed1d() -> Self {
        MixtureSpec { dim: 1, weights: vec![0.3, 0.7], means: vec![vec![-4.0], vec![0.0]], stds: vec![1.0, 1.0] }
    }

    /// The NCSN toy: 0.8·N((5,5), I) + 0.2·N((−5,−5), I).
    pub fn ncsn2d() -> Self {
        MixtureSpec { dim: 2, weights: vec![0.8, 0.2], means: vec![vec![5.0, 5.0], vec![-5.0, -5.0]], stds: vec![1.0, 1.0] }
    }

    /// Eight equal Gaussians of std 0.5 on a circle of radius 4.
    pub fn ring8() -> Self {
        let means = (0..8)
            .map(|k| {
                let a = 2.0 * std::f64::consts::PI * k as f64 / 8.0;
                vec![4.0 * a.cos(), 4.0 * a.sin()]
            })
            .collect();
        MixtureSpec { dim: 2, weights: vec![1.0 / 8.0; 8], means, stds: vec![0.5; 8] }
    }

    /// `components` (≤ dim) equal-weight unit Gaussians in R^dim with means (sep/√2)·e_k, so
    /// every pair of means is `sep` apart.
    pub fn iso(dim: usize, components: usize, sep: f64) -> Self {
        let means = (0..components)
            .map(|k| {
                let mut m = vec![0.0; dim];
                m[k] = sep / std::f64::consts::SQRT_2;
                m
            })
            .collect();
        MixtureSpec { dim, weights: vec![1.0 / components as f64; components], means, stds: vec![1.0; components] }
    }

    pub fn components(&self) -> usize {
        self.weights.len()
    }

    /// Half-width of a box centred at 0 that holds essentially all the mass (|μ| + 6 s).
    pub fn extent(&self) -> f64 {
        let m = self.means.iter().flatten().fold(0.0f64, |a, b| a.max(b.abs()));
        m + 6.0 * self.max_std()
    }

    pub fn max_std(&self) -> f64 {
        self.stds.iter().fold(0.0f64, |a, b| a.max(*b))
    }
}
