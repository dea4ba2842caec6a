//! Score-matching objectives as per-point loss terms, usable for training and for evaluating
//! any θ on a fixed evaluation set.
//!
//! Conventions (no ½ factors, matching the write-up): L_ESM = E‖S − ∇log p‖²,
//! L_ISM = E[‖S‖² + 2 tr ∂S/∂x], so L_ESM − L_ISM = C = E‖∇log p‖² for every θ.
//! SSM = E[(vᵀS)² + 2 vᵀJv], SSM-VR = E[‖S‖² + 2 vᵀJv] (E vvᵀ = I, so both equal L_ISM in
//! expectation over v). DSM(σ) = E‖S(x₀+σε, σ) + ε/σ‖² = E_{p_σ}‖S − ∇log p_σ‖² + C_DSM(σ) with
//! C_DSM(σ) = D/σ² − E_{p_σ}‖∇log p_σ‖². With a noise ladder every objective is applied to the
//! perturbed data at a level drawn per point and weighted by λ(σ) = σ² (NCSN).

use candle_core::{D, Device, Result, Tensor};

pub use schema::trial::{ObjectiveKind, ProbeDist};

use crate::data::DataSource;
use crate::models::{Probes, Tangents};
use crate::models::{ScoreModel, layers};
use crate::rng::Rng;

/// ‖S − target‖² per point.
pub fn esm_terms(s: &Tensor, target: &Tensor) -> Result<Tensor> {
    (s - target)?.sqr()?.sum(1)
}

/// ‖S‖² + 2 tr J per point.
pub fn ism_terms(s: &Tensor, trace: &Tensor) -> Result<Tensor> {
    s.sqr()?.sum(1)? + trace.affine(2.0, 0.0)?
}

/// SSM (`vr = false`) or SSM-VR (`vr = true`) per point, averaged over the K probes v (K, N, D).
pub fn ssm_terms(tg: &Tangents, v: &Tensor, vr: bool) -> Result<Tensor> {
    let vjv = (v * tg.jv()?)?.sum(D::Minus1)?.mean(0)?;
    let quad = if vr { tg.score.sqr()?.sum(1)? } else { v.broadcast_mul(&tg.score.unsqueeze(0)?)?.sum(D::Minus1)?.sqr()?.mean(0)? };
    quad + vjv.affine(2.0, 0.0)?
}

/// ‖S + ε/σ‖² per point (σ a (N, 1) column).
pub fn dsm_terms(s: &Tensor, eps: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    (s + eps.broadcast_div(sigma)?)?.sqr()?.sum(1)
}

/// K probe vectors per point, probe-major (K × N × D values).
pub fn probe_values(k: usize, n: usize, d: usize, dist: ProbeDist, rng: &mut Rng) -> Vec<f32> {
    (0..k * n * d)
        .map(|_| match dist {
            ProbeDist::Rademacher => rng.rademacher() as f32,
            ProbeDist::Gaussian => rng.normal() as f32,
        })
        .collect()
}

/// K probe vectors per point, shape (K, N, D).
pub fn probes(k: usize, n: usize, d: usize, dist: ProbeDist, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(probe_values(k, n, d, dist, rng), (k, n, d), dev)
}

/// What a training step needs to know.
#[derive(Clone, Debug)]
pub struct TrainObjective {
    pub kind: ObjectiveKind,
    /// The ladder, or None for unconditional training on clean data.
    pub sigmas: Option<Vec<f64>>,
    pub probes: usize,
    pub probe: ProbeDist,
    /// Basis tangents per chunk for the exact trace (bounds memory to chunk·N·H floats).
    pub trace_chunk: usize,
}

/// A batch perturbed at one ladder level per point: x̃ = x₀ + σε.
pub struct Perturbed {
    pub xt: Vec<f32>,
    pub eps: Vec<f32>,
    pub sigma: Vec<f32>,
}

/// Draws a level (uniformly) and ε ~ N(0, I) for each of the row-major points `x0`.
pub fn perturb(x0: &[f64], d: usize, levels: &[f64], rng: &mut Rng) -> Perturbed {
    let n = x0.len() / d;
    let mut p = Perturbed { xt: Vec::with_capacity(x0.len()), eps: Vec::with_capacity(x0.len()), sigma: Vec::with_capacity(n) };
    for i in 0..n {
        let s = levels[rng.below(levels.len())];
        p.sigma.push(s as f32);
        for j in 0..d {
            let e = rng.normal();
            p.eps.push(e as f32);
            p.xt.push((x0[i * d + j] + s * e) as f32);
        }
    }
    p
}

/// The training loss of one batch of clean points `x0`, handed to `sink` as pieces whose sum is
/// the loss; `sink` back-propagates each piece before the next is built, so the exact-trace
/// graph never holds more than one chunk of tangents.
pub fn loss_pieces(
    model: &dyn ScoreModel,
    obj: &TrainObjective,
    data: &dyn DataSource,
    x0: &[f64],
    rng: &mut Rng,
    dev: &Device,
    sink: &mut dyn FnMut(Tensor) -> Result<()>,
) -> Result<()> {
    let d = data.dim();
    let n = x0.len() / d;
    // Perturb at one ladder level per point (λ(σ) = σ² weights), or keep the clean points.
    let (x, eps, sig, weight) = match &obj.sigmas {
        Some(levels) => {
            let p = perturb(x0, d, levels, rng);
            let sig = Tensor::from_vec(p.sigma, (n, 1), dev)?;
            let w = sig.sqr()?.squeeze(1)?;
            (Tensor::from_vec(p.xt, (n, d), dev)?, Some(Tensor::from_vec(p.eps, (n, d), dev)?), Some(sig), Some(w))
        }
        None => (layers::points(x0, d, dev)?, None, None, None),
    };
    let weighted_mean = |terms: Tensor| -> Result<Tensor> {
        match &weight {
            Some(w) => (terms * w)?.mean_all(),
            None => terms.mean_all(),
        }
    };
    let sig_ref = sig.as_ref();
    match obj.kind {
        ObjectiveKind::Dsm => {
            let (eps, sig) = (eps.as_ref().expect("dsm has a ladder"), sig.as_ref().expect("dsm has a ladder"));
            let s = model.score(&x, Some(sig), None)?;
            sink(weighted_mean(dsm_terms(&s, eps, sig)?)?)
        }
        ObjectiveKind::Esm => {
            let Some(mix) = data.exact() else { candle_core::bail!("esm needs the exact score of the data (validation refuses this trial)") };
            let xf: Vec<f64> = x.flatten_all()?.to_vec1::<f32>()?.iter().map(|&v| v as f64).collect();
            let target = match &obj.sigmas {
                Some(_) => {
                    let sv: Vec<f32> = sig_ref.expect("ladder").flatten_all()?.to_vec1()?;
                    let mut t = Vec::with_capacity(xf.len());
                    let mut out = vec![0.0; d];
                    for i in 0..n {
                        mix.perturbed(sv[i] as f64).score(&xf[i * d..(i + 1) * d], &mut out);
                        t.extend(out.iter().map(|&v| v as f32));
                    }
                    Tensor::from_vec(t, (n, d), dev)?
                }
                None => layers::points(&mix.scores(&xf), d, dev)?,
            };
            let s = model.score(&x, sig_ref, None)?;
            sink(weighted_mean(esm_terms(&s, &target)?)?)
        }
        ObjectiveKind::Ism => {
            if let Some(c) = model.closed_trace() {
                let (s, tr) = c.score_and_trace(&x, sig_ref)?;
                return sink(weighted_mean(ism_terms(&s, &tr)?)?);
            }
            let Some(tm) = model.tangents() else { candle_core::bail!("ism needs tangents or a closed-form trace (validation refuses this trial)") };
            let mut start = 0;
            while start < d {
                let len = obj.trace_chunk.min(d - start);
                let tg = tm.tangents(&x, sig_ref, &Probes::Basis { start, len })?;
                let tr2 = tg.diag(start, len)?.sum(0)?.affine(2.0, 0.0)?;
                let terms = if start == 0 { (tg.score.sqr()?.sum(1)? + tr2)? } else { tr2 };
                sink(weighted_mean(terms)?)?;
                start += len;
            }
            Ok(())
        }
        ObjectiveKind::Ssm | ObjectiveKind::SsmVr => {
            let Some(tm) = model.tangents() else { candle_core::bail!("ssm needs tangents (validation refuses this trial)") };
            let v = probes(obj.probes, n, d, obj.probe, rng, dev)?;
            let tg = tm.tangents(&x, sig_ref, &Probes::Vectors(&v))?;
            sink(weighted_mean(ssm_terms(&tg, &v, obj.kind == ObjectiveKind::SsmVr)?)?)
        }
    }
}
