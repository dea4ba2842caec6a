//! Score models: S(x, σ, label) in candle's `Module` style, with optional capabilities that
//! objectives and evaluators ask for ([`ScoreModel::tangents`], [`ScoreModel::closed_trace`],
//! [`ScoreModel::energy`]). What each kind offers is declared in the schema
//! (`schema::trial::ModelSpec::caps`), so validation refuses an objective a model cannot serve
//! before any work; a test pins each declaration to the implementation here.
//!
//! Adding a model kind: one file in this folder implementing [`ScoreModel`], one variant in
//! `schema::trial::ModelSpec` (with its caps), and one line in [`build`].

use std::any::Any;

use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;
use schema::caps::ModelCaps;
use schema::trial::{MlpSpec, ModelSpec};

use crate::rng::Rng;

pub mod energy;
pub mod layers;
pub mod mlp;

pub use energy::EnergyNet;
pub use layers::{Activation, Arch, Probes, Tangents};
pub use mlp::MlpScore;

/// A score model S(x, σ, label) ≈ ∇ₓ log p_σ(x | label).
pub trait ScoreModel: Any {
    /// Data dimension, hidden shape and conditioning.
    fn arch(&self) -> &Arch;

    /// S for (N, D) points; `sigma` is an (N, 1) column for noise-conditional models; `label`
    /// an (N,) class column for class-conditional models (ignored by the others).
    fn score(&self, x: &Tensor, sigma: Option<&Tensor>, label: Option<&Tensor>) -> Result<Tensor>;

    /// Forward-mode tangents J·v (SSM, and the exact trace from D basis tangents).
    fn tangents(&self) -> Option<&dyn TangentModel> {
        None
    }

    /// tr(∂S/∂x) in closed form (cheaper than D tangents).
    fn closed_trace(&self) -> Option<&dyn ClosedTrace> {
        None
    }

    /// An unnormalised log-density q with S = ∇ₓq (energy models: NLL and KL by quadrature).
    fn energy(&self) -> Option<&dyn EnergyModel> {
        None
    }

    /// For hand-derived fast paths that exist for one concrete model type.
    fn as_any(&self) -> &dyn Any;

    /// What this instance offers, as the schema declares capabilities.
    fn caps(&self) -> ModelCaps {
        ModelCaps { tangents: self.tangents().is_some(), closed_trace: self.closed_trace().is_some(), net: schema::caps::Net::Score }
    }
}

/// Models that push tangents forward.
pub trait TangentModel {
    fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents>;
}

/// Models with a closed-form exact trace.
pub trait ClosedTrace {
    /// S and tr(∂S/∂x) per point.
    fn score_and_trace(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<(Tensor, Tensor)>;
}

/// Models defined through an energy q(x, σ).
pub trait EnergyModel {
    /// q per point, shape (N, 1).
    fn energy(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor>;
}

/// The registry: one line per model kind.
pub fn build(spec: &ModelSpec, dim: usize, conditional: bool, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<Box<dyn ScoreModel>> {
    let arch = |m: &MlpSpec| Arch { dim, hidden: m.hidden, depth: m.depth, activation: m.activation, conditional, scale_by_sigma: m.scale_by_sigma };
    Ok(match spec {
        ModelSpec::Mlp(m) => Box::new(MlpScore::new(arch(m), varmap, rng, dev)?),
        ModelSpec::EnergyMlp(m) => Box::new(EnergyNet::new(arch(m), varmap, rng, dev)?),
        ModelSpec::Image(m) => candle_core::bail!("model `{}` is an image net: `images::build` builds it", m.name()),
    })
}

/// S and the exact trace tr(∂S/∂x) per point: in closed form where the model has one, else from
/// D basis tangents in chunks of `chunk`. Errors if the model has neither (validation refuses
/// such trials first).
pub fn score_and_trace(model: &dyn ScoreModel, x: &Tensor, sigma: Option<&Tensor>, chunk: usize) -> Result<(Tensor, Tensor)> {
    match model.closed_trace() {
        Some(c) => c.score_and_trace(x, sigma),
        None => score_and_trace_tangents(model, x, sigma, chunk),
    }
}

/// The exact trace from D basis tangents in chunks of `chunk` (the reference method).
pub fn score_and_trace_tangents(model: &dyn ScoreModel, x: &Tensor, sigma: Option<&Tensor>, chunk: usize) -> Result<(Tensor, Tensor)> {
    let Some(tm) = model.tangents() else { candle_core::bail!("this model has neither tangents nor a closed-form trace") };
    let d = model.arch().dim;
    let mut score = None;
    let mut trace: Option<Tensor> = None;
    let mut start = 0;
    while start < d {
        let len = chunk.min(d - start);
        let tg = tm.tangents(x, sigma, &Probes::Basis { start, len })?;
        let part = tg.diag(start, len)?.sum(0)?;
        trace = Some(match trace {
            Some(t) => (t + part)?,
            None => part,
        });
        score.get_or_insert(tg.score);
        start += len;
    }
    Ok((score.expect("dim ≥ 1"), trace.expect("dim ≥ 1")))
}

impl ScoreModel for MlpScore {
    fn arch(&self) -> &Arch {
        &self.arch
    }
    fn score(&self, x: &Tensor, sigma: Option<&Tensor>, _label: Option<&Tensor>) -> Result<Tensor> {
        MlpScore::score(self, x, sigma)
    }
    fn tangents(&self) -> Option<&dyn TangentModel> {
        Some(self)
    }
    fn closed_trace(&self) -> Option<&dyn ClosedTrace> {
        (self.arch.depth <= 2).then_some(self as &dyn ClosedTrace)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl TangentModel for MlpScore {
    fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents> {
        MlpScore::tangents(self, x, sigma, probes)
    }
}

impl ClosedTrace for MlpScore {
    fn score_and_trace(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        match self.score_and_trace_closed(x, sigma)? {
            Some(st) => Ok(st),
            None => candle_core::bail!("closed-form trace needs depth ≤ 2"),
        }
    }
}

impl ScoreModel for EnergyNet {
    fn arch(&self) -> &Arch {
        &self.arch
    }
    fn score(&self, x: &Tensor, sigma: Option<&Tensor>, _label: Option<&Tensor>) -> Result<Tensor> {
        EnergyNet::score(self, x, sigma)
    }
    fn tangents(&self) -> Option<&dyn TangentModel> {
        Some(self)
    }
    fn energy(&self) -> Option<&dyn EnergyModel> {
        Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl TangentModel for EnergyNet {
    fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents> {
        EnergyNet::tangents(self, x, sigma, probes)
    }
}

impl EnergyModel for EnergyNet {
    fn energy(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        EnergyNet::energy(self, x, sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::trial::Activation;

    /// Every model kind offers exactly the capabilities the schema declares for it.
    #[test]
    fn registry_matches_declared_capabilities() {
        let m = |depth| MlpSpec { hidden: 8, depth, activation: Activation::Silu, scale_by_sigma: false };
        for spec in [ModelSpec::Mlp(m(1)), ModelSpec::Mlp(m(2)), ModelSpec::Mlp(m(3)), ModelSpec::EnergyMlp(m(2))] {
            let vm = VarMap::new();
            let model = build(&spec, 3, true, &vm, &mut Rng::new(0), &Device::Cpu).unwrap();
            assert_eq!(model.caps(), spec.caps(), "{spec:?}");
        }
    }
}
