//! Loss gaps on fixed evaluation sets, with exact scores (data with an exact density only):
//!
//! - [`EsmIsmGap`]: L_ESM, L_ISM, their per-point difference (mean and standard error) and
//!   C = E‖∇log p‖² computed independently of the model (quadrature in 1-2D, a separate Monte
//!   Carlo sample otherwise): the claim L_ESM − L_ISM = C at every θ;
//! - [`DsmGap`]: for noise-conditional models, L_DSM(σ), L_ESM_σ and their difference against
//!   C_DSM(σ) = D/σ² − E_{p_σ}‖∇log p_σ‖². The per-point difference carries ‖ε‖²/σ², whose
//!   SD √(2D)/σ² swamps everything at small σ; the control variate (‖ε‖² − D)/σ² (mean exactly
//!   0, known in closed form) is subtracted with its least-squares coefficient (≈ 1 at small σ),
//!   leaving a standard error of order 2√E‖S‖²/(σ√n) and never more than without it;
//! - [`SsmLoss`]: L_SSM (or SSM-VR) with fixed probes.

use candle_core::{Device, Tensor};

use super::Checkpoint;
use crate::data::Mixture;
use crate::data::mixture::mean_se;
use crate::models::layers::points;
use crate::models::{self, Probes, ScoreModel};
use crate::objectives::{self, ObjectiveKind, TrainObjective};
use crate::rng::{Rng, Stream};

/// Points per evaluation chunk (bounds eval memory to chunk·(1+trace_chunk)·H floats per layer).
pub const EVAL_CHUNK: usize = 8192;

/// The fixed evaluation sample on clean data, with exact scores.
pub struct EvalSet {
    pub xs: Vec<Tensor>,
    pub targets: Vec<Tensor>,
}

impl EvalSet {
    pub fn new(points_: &[f64], scores: &[f64], dim: usize, dev: &Device) -> candle_core::Result<Self> {
        let mut xs = Vec::new();
        let mut targets = Vec::new();
        for (p, s) in points_.chunks(EVAL_CHUNK * dim).zip(scores.chunks(EVAL_CHUNK * dim)) {
            xs.push(points(p, dim, dev)?);
            targets.push(points(s, dim, dev)?);
        }
        Ok(EvalSet { xs, targets })
    }
}

/// The fixed evaluation sample on p_σ for the DSM constant: x̃ = x₀ + σε, ε, ∇log p_σ(x̃).
pub struct DsmEvalSet {
    pub sigma: f64,
    pub xs: Vec<Tensor>,
    pub eps: Vec<Tensor>,
    pub targets: Vec<Tensor>,
}

/// L_ESM, L_ISM and the mean and standard error of their per-point difference.
#[derive(Debug, Clone, Default)]
pub struct EsmIsm {
    pub l_esm: f64,
    pub l_esm_se: f64,
    pub l_ism: f64,
    pub l_ism_se: f64,
    pub gap: f64,
    pub gap_se: f64,
}

/// L_DSM(σ), L_ESM_σ and the mean and standard error of their per-point difference, with the
/// control variate (‖ε‖² − D)/σ² subtracted (`gap`, `gap_se`) and without it (`gap_raw`,
/// `gap_se_raw`).
#[derive(Debug, Clone, Default)]
pub struct DsmEsm {
    pub l_dsm: f64,
    pub l_esm_sigma: f64,
    pub gap: f64,
    pub gap_se: f64,
    pub gap_raw: f64,
    pub gap_se_raw: f64,
}

fn to_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
}

/// L_ESM, L_ISM and their per-point difference on the evaluation set, with the model at σ.
pub fn eval_esm_ism(model: &dyn ScoreModel, set: &EvalSet, sigma: Option<f64>, trace_chunk: usize) -> candle_core::Result<EsmIsm> {
    let (mut esm, mut ism, mut gap) = (Vec::new(), Vec::new(), Vec::new());
    for (x, target) in set.xs.iter().zip(&set.targets) {
        let n = x.dim(0)?;
        let sig = sigma.map(|s| Tensor::full(s as f32, (n, 1), x.device())).transpose()?;
        let (s, tr) = models::score_and_trace(model, x, sig.as_ref(), trace_chunk)?;
        let e = to_f64(&objectives::esm_terms(&s, target)?)?;
        let i = to_f64(&objectives::ism_terms(&s, &tr)?)?;
        gap.extend(e.iter().zip(&i).map(|(a, b)| a - b));
        esm.extend(e);
        ism.extend(i);
    }
    let (g, gse) = mean_se(&gap);
    let ((l_esm, l_esm_se), (l_ism, l_ism_se)) = (mean_se(&esm), mean_se(&ism));
    Ok(EsmIsm { l_esm, l_esm_se, l_ism, l_ism_se, gap: g, gap_se: gse })
}

/// L_DSM(σ), L_ESM_σ and their per-point difference (mean, se) on the p_σ evaluation set,
/// with and without the control variate (‖ε‖² − D)/σ².
pub fn eval_dsm(model: &dyn ScoreModel, set: &DsmEvalSet) -> candle_core::Result<DsmEsm> {
    let (mut dsm, mut esm, mut raw, mut cv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let s2 = set.sigma * set.sigma;
    for ((x, eps), target) in set.xs.iter().zip(&set.eps).zip(&set.targets) {
        let (n, dim) = x.dims2()?;
        let sig = Tensor::full(set.sigma as f32, (n, 1), x.device())?;
        let s = model.score(x, Some(&sig), None)?;
        let d = to_f64(&objectives::dsm_terms(&s, eps, &sig)?)?;
        let e = to_f64(&objectives::esm_terms(&s, target)?)?;
        // ‖ε‖² in f64 from the stored f32 noise: the variate must be the one the terms saw.
        let e2: Vec<f64> = eps.to_vec2::<f32>()?.iter().map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum()).collect();
        for ((a, b), n2) in d.iter().zip(&e).zip(&e2) {
            raw.push(a - b);
            cv.push((n2 - dim as f64) / s2);
        }
        dsm.extend(d);
        esm.extend(e);
    }
    // The variate's coefficient by least squares: 1 where ‖ε‖²/σ² dominates (small σ), less
    // where the model's terms do; the O(1/n) bias of an estimated coefficient is far below
    // the standard error.
    let (mr, mc) = (mean_se(&raw).0, mean_se(&cv).0);
    let (cov, var) = raw.iter().zip(&cv).fold((0.0, 0.0), |(c, v), (r, x)| (c + (r - mr) * (x - mc), v + (x - mc) * (x - mc)));
    let beta = if var > 0.0 { cov / var } else { 0.0 };
    let gap: Vec<f64> = raw.iter().zip(&cv).map(|(r, x)| r - beta * x).collect();
    let (g, gse) = mean_se(&gap);
    let (gr, gser) = mean_se(&raw);
    Ok(DsmEsm { l_dsm: mean_se(&dsm).0, l_esm_sigma: mean_se(&esm).0, gap: g, gap_se: gse, gap_raw: gr, gap_se_raw: gser })
}

/// C_DSM(σ) = D/σ² − E_{p_σ}‖∇log p_σ‖² and its standard error.
pub fn dsm_constant(mix: &Mixture, sigma: f64, n_mc: usize, rng: &mut Rng) -> (f64, f64) {
    let (c, se) = mix.perturbed(sigma).score_norm_constant(n_mc, rng);
    (mix.dim as f64 / (sigma * sigma) - c, se)
}

/// Builds the p_σ evaluation set of n points.
pub fn dsm_eval_set(mix: &Mixture, sigma: f64, n: usize, rng: &mut Rng, dev: &Device) -> candle_core::Result<DsmEvalSet> {
    let d = mix.dim;
    let x0 = mix.sample(n, rng);
    let eps: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let xt: Vec<f64> = x0.iter().zip(&eps).map(|(a, e)| a + sigma * e).collect();
    let target = mix.perturbed(sigma).scores(&xt);
    let mut set = DsmEvalSet { sigma, xs: Vec::new(), eps: Vec::new(), targets: Vec::new() };
    for ((x, e), t) in xt.chunks(EVAL_CHUNK * d).zip(eps.chunks(EVAL_CHUNK * d)).zip(target.chunks(EVAL_CHUNK * d)) {
        set.xs.push(points(x, d, dev)?);
        set.eps.push(points(e, d, dev)?);
        set.targets.push(points(t, d, dev)?);
    }
    Ok(set)
}

/// The ESM/ISM gap against C, on clean data (the model at the smallest σ when conditional).
pub struct EsmIsmGap {
    pub set: EvalSet,
    pub sigma: Option<f64>,
    pub trace_chunk: usize,
    pub c: f64,
    pub c_se: f64,
}

impl Checkpoint for EsmIsmGap {
    fn columns(&self) -> &'static [&'static str] {
        &["l_esm", "l_esm_se", "l_ism", "l_ism_se", "gap", "gap_se", "c_true", "c_se"]
    }
    fn evaluate(&self, model: &dyn ScoreModel) -> candle_core::Result<Vec<f64>> {
        let g = eval_esm_ism(model, &self.set, self.sigma, self.trace_chunk)?;
        Ok(vec![g.l_esm, g.l_esm_se, g.l_ism, g.l_ism_se, g.gap, g.gap_se, self.c, self.c_se])
    }
}

/// The DSM gap at one σ against C_DSM(σ).
pub struct DsmGap {
    pub set: DsmEvalSet,
    pub c: f64,
    pub c_se: f64,
}

impl Checkpoint for DsmGap {
    fn columns(&self) -> &'static [&'static str] {
        &["l_dsm", "l_esm_sigma", "dsm_gap", "dsm_gap_se", "dsm_gap_se_raw", "c_dsm", "c_dsm_se", "dsm_sigma"]
    }
    fn evaluate(&self, model: &dyn ScoreModel) -> candle_core::Result<Vec<f64>> {
        let h = eval_dsm(model, &self.set)?;
        Ok(vec![h.l_dsm, h.l_esm_sigma, h.gap, h.gap_se, h.gap_se_raw, self.c, self.c_se, self.set.sigma])
    }
}

/// L_SSM (or SSM-VR) on fixed points with probes from the trial's probe stream.
pub struct SsmLoss {
    pub xs: Vec<Tensor>,
    pub sigma: Option<f64>,
    pub objective: TrainObjective,
    pub seed: u64,
}

impl Checkpoint for SsmLoss {
    fn columns(&self) -> &'static [&'static str] {
        &["l_ssm", "l_ssm_se"]
    }
    fn evaluate(&self, model: &dyn ScoreModel) -> candle_core::Result<Vec<f64>> {
        let Some(tm) = model.tangents() else { candle_core::bail!("ssm needs tangents") };
        let mut rng = Rng::stream(self.seed, Stream::Probes);
        let mut vals = Vec::new();
        for x in &self.xs {
            let (n, d) = x.dims2()?;
            let sig = self.sigma.map(|s| Tensor::full(s as f32, (n, 1), x.device())).transpose()?;
            let v = objectives::probes(self.objective.probes, n, d, self.objective.probe, &mut rng, x.device())?;
            let tg = tm.tangents(x, sig.as_ref(), &Probes::Vectors(&v))?;
            vals.extend(to_f64(&objectives::ssm_terms(&tg, &v, self.objective.kind == ObjectiveKind::SsmVr)?)?);
        }
        let (m, se) = mean_se(&vals);
        Ok(vec![m, se])
    }
}
