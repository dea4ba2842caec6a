//! Data sources: where training points come from (capabilities say whether a source has labels),
//! and — for toy densities only — the exact density. Exact densities are Gaussian mixtures,
//! the family closed under σ-perturbation, which ESM_σ and the DSM constant need; a source
//! without one (images) gets no ESM objective and no ESM/ISM/quadrature columns.
//!
//! Adding a data set: one file in this folder implementing [`DataSource`], one variant in
//! `schema::trial::DataSpec` (with its caps and its raw form in `schema::form::toy`), and one line in [`build`]. An image set (any
//! channel count: [`idx`], [`shapes`]) is one file here returning an [`idx::ImageSet`], one line
//! in `images::load_set` and its name in `schema::image::IMAGE_PRESETS`.

use schema::caps::DataCaps;
use schema::trial::DataSpec;

use crate::rng::Rng;

pub mod idx;
pub mod mixture;
pub mod shapes;

pub use mixture::Mixture;

/// A batch of training points, row-major (n × dim), with their class labels (empty where the
/// source has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub x: Vec<f64>,
    pub labels: Vec<u32>,
}

/// A source of training (and reference) points.
pub trait DataSource: Send + Sync {
    fn dim(&self) -> usize;

    /// The label in tables and messages.
    fn label(&self) -> &str;

    /// `n` points drawn with `rng`.
    fn sample(&self, n: usize, rng: &mut Rng) -> Batch;

    /// The exact density, where there is one.
    fn exact(&self) -> Option<&Mixture> {
        None
    }

    /// What this source offers, as the schema declares it.
    fn caps(&self) -> DataCaps {
        DataCaps { exact_score: self.exact().is_some(), labels: false }
    }
}

/// A Gaussian mixture as a data source.
pub struct MixtureSource {
    pub label: String,
    pub mixture: Mixture,
}

impl DataSource for MixtureSource {
    fn dim(&self) -> usize {
        self.mixture.dim
    }
    fn label(&self) -> &str {
        &self.label
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Batch {
        Batch { x: self.mixture.sample(n, rng), labels: Vec::new() }
    }
    fn exact(&self) -> Option<&Mixture> {
        Some(&self.mixture)
    }
}

/// The registry: one line per data kind; None for an image set, which `images::load` reads.
pub fn build(spec: &DataSpec) -> Option<Box<dyn DataSource>> {
    match spec {
        DataSpec::Mixture { preset, mixture } => Some(Box::new(MixtureSource { label: preset.clone(), mixture: mixture.clone().into() })),
        DataSpec::Images(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::data::MixtureSpec;

    #[test]
    fn registry_matches_declared_capabilities() {
        let specs =
            vec![DataSpec::Mixture { preset: "ncsn2d".into(), mixture: MixtureSpec::ncsn2d() }, DataSpec::Mixture { preset: "iso".into(), mixture: MixtureSpec::iso(5, 3, 4.0) }];
        for spec in specs {
            let src = build(&spec).unwrap();
            assert_eq!(src.caps(), spec.caps());
            assert_eq!(src.dim(), spec.mixture().unwrap().dim);
            assert_eq!(src.label(), spec.label());
            let b = src.sample(5, &mut Rng::new(1));
            assert_eq!(b.x.len(), 5 * src.dim());
        }
    }
}
