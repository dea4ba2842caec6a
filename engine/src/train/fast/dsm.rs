//! The hand-derived multi-σ DSM step: loss mean_i ‖σ_i·S_i + ε_i‖² with S_i = o_i·c_i
//! (c_i = 1/σ_i when `scale_by_sigma`, else 1), i.e. λ(σ) = σ² weighted DSM, as in `objectives`.

use candle_core::Result;
use gemm::Parallelism;

use super::*;

/// Buffers of one slice of the batch: h[0] = input, h[l] = a(z_l); d[l] = a'(z_l); g/g2 =
/// gradients w.r.t. activations; `grads` = this slice's parameter gradients.
struct DsmShard {
    h: Vec<Vec<f32>>,
    d: Vec<Vec<f32>>,
    out: Vec<f32>,
    g: Vec<f32>,
    g2: Vec<f32>,
    grads: Vec<(Vec<f32>, Vec<f32>)>,
}

/// Shape and options of the net, shared by the shards.
struct DsmNet {
    act: Activation,
    dims: Vec<usize>, // [in, H, …, H, D]
    dim: usize,
    conditional: bool,
    scale_by_sigma: bool,
}

/// Preallocated DSM trainer for one MLP score net and batch size.
///
/// The batch is split into [`slices_for`]`(batch)` contiguous slices (a function of the batch
/// size only) that run forward and backward at once on rayon's pool, each with single-threaded
/// products, and their parameter gradients are summed in slice order — products of 1024×128
/// are too small for gemm's own threading to pay, so splitting the data is what makes a second
/// core useful. The result depends neither on scheduling nor on the thread count.
pub struct FastDsm {
    net: DsmNet,
    /// (weight, bias) per layer, the output layer last.
    params: Vec<(Param, Param)>,
    lr: f64,
    t: i32,
    /// gemm threading inside a slice (none: slices are the unit of parallelism).
    par: Parallelism,
    shards: Vec<DsmShard>,
}

impl FastDsm {
    /// Trainer with the batch split into [`slices_for`]`(batch)` slices.
    pub fn new(model: &MlpScore, batch: usize, lr: f64) -> Result<Self> {
        Self::with_slices(model, batch, lr, slices_for(batch))
    }

    /// Trainer that splits each batch into `slices` slices (see the type's docs).
    pub fn with_slices(model: &MlpScore, batch: usize, lr: f64, slices: usize) -> Result<Self> {
        let arch = &model.arch;
        let dims = layer_widths(model);
        let params: Vec<(Param, Param)> = model.layers.iter().chain(std::iter::once(&model.out)).map(|l| Ok((Param::new(&l.w)?, Param::new(&l.b)?))).collect::<Result<Vec<_>>>()?;
        let nshards = slices.clamp(1, batch.max(1));
        let par = Parallelism::None;
        let rows = batch.div_ceil(nshards);
        let wmax = arch.hidden.max(arch.dim);
        let shards = (0..nshards)
            .map(|_| DsmShard {
                h: dims[..dims.len() - 1].iter().map(|&w| vec![0.0; rows * w]).collect(),
                d: dims[1..dims.len() - 1].iter().map(|&w| vec![0.0; rows * w]).collect(),
                out: vec![0.0; rows * arch.dim],
                g: vec![0.0; rows * wmax],
                g2: vec![0.0; rows * wmax],
                grads: params.iter().map(|(w, b)| (vec![0.0; w.w.len()], vec![0.0; b.w.len()])).collect(),
            })
            .collect();
        let net = DsmNet { act: arch.activation, dim: arch.dim, conditional: arch.conditional, scale_by_sigma: arch.scale_by_sigma, dims };
        Ok(FastDsm { net, params, lr, t: 0, par, shards })
    }

    /// Loss and parameter gradients (left in the `g` of each parameter) for perturbed points
    /// `xt` (N×D), their noise `eps` and per-point σ.
    pub fn loss_and_grad(&mut self, xt: &[f32], eps: &[f32], sigma: &[f32]) -> f64 {
        let n = sigma.len();
        let d = self.net.dim;
        let ns = self.shards.len();
        let rows = n.div_ceil(ns);
        let (net, params, par) = (&self.net, &self.params, self.par);
        let sums = if ns == 1 {
            vec![dsm_slice(net, params, &mut self.shards[0], xt, eps, sigma, n, par)]
        } else {
            run_slices(&mut self.shards, |k, sh| {
                let (lo, hi) = ((k * rows).min(n), ((k + 1) * rows).min(n));
                dsm_slice(net, params, sh, &xt[lo * d..hi * d], &eps[lo * d..hi * d], &sigma[lo..hi], n, Parallelism::None)
            })
        };
        sum_slice_grads(&mut self.params, self.shards.iter().map(|sh| &sh.grads));
        sums.iter().sum::<f64>() / n as f64
    }

    /// One Adam step.
    pub fn adam_step(&mut self) {
        self.t += 1;
        adam(&mut self.params, self.t, self.lr);
    }

    /// One training step; returns the loss before the update.
    pub fn step(&mut self, xt: &[f32], eps: &[f32], sigma: &[f32]) -> f64 {
        let l = self.loss_and_grad(xt, eps, sigma);
        if l.is_finite() {
            self.adam_step();
        }
        l
    }

    /// Gradients of layer `l` (weight, bias) from the last `loss_and_grad`.
    pub fn grads(&self, l: usize) -> (&[f32], &[f32]) {
        (&self.params[l].0.g, &self.params[l].1.g)
    }

    /// Writes the parameters back into the candle model's variables.
    pub fn store(&self, model: &MlpScore, vars: &candle_nn::VarMap) -> Result<()> {
        store(&self.params, model, vars)
    }
}

impl crate::train::ToyStep for FastDsm {
    const NAME: &'static str = "fast_dsm";

    /// Multi-σ DSM: each point perturbed at a random ladder level (`objectives::perturb`).
    fn train(&mut self, x0: &[f64], d: usize, objective: &crate::objectives::TrainObjective, rng: &mut crate::rng::Rng) -> Result<f64> {
        let levels = objective.sigmas.as_deref().ok_or_else(|| candle_core::Error::Msg("the hand-derived DSM step needs a noise ladder".into()))?;
        let p = crate::objectives::perturb(x0, d, levels, rng);
        Ok(self.step(&p.xt, &p.eps, &p.sigma))
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn store(&self, model: &MlpScore, varmap: &candle_nn::VarMap) -> Result<()> {
        FastDsm::store(self, model, varmap)
    }
}

/// Forward and backward of DSM on one slice of the batch (`sigma.len()` rows of a batch of
/// `n_total`): returns Σ‖r‖² over the slice and leaves the slice's parameter gradients (already
/// scaled by 1/`n_total`) in `sh.grads`.
#[allow(clippy::too_many_arguments)]
fn dsm_slice(net: &DsmNet, params: &[(Param, Param)], sh: &mut DsmShard, xt: &[f32], eps: &[f32], sigma: &[f32], n_total: usize, par: Parallelism) -> f64 {
    let n = sigma.len();
    let (d, nl) = (net.dim, params.len());
    if n == 0 {
        sh.grads.iter_mut().for_each(|(w, b)| {
            w.iter_mut().for_each(|v| *v = 0.0);
            b.iter_mut().for_each(|v| *v = 0.0);
        });
        return 0.0;
    }
    // Input [x, log σ].
    let w0 = net.dims[0];
    for i in 0..n {
        sh.h[0][i * w0..i * w0 + d].copy_from_slice(&xt[i * d..(i + 1) * d]);
        if net.conditional {
            sh.h[0][i * w0 + d] = sigma[i].ln();
        }
    }
    // Forward: z = h Wᵀ + b (into the next h buffer), then activation in place.
    for l in 0..nl {
        let (fi, fo) = (net.dims[l], net.dims[l + 1]);
        let (w, b) = (&params[l].0.w, &params[l].1.w);
        let is_out = l + 1 == nl;
        let (src, dst) = if is_out {
            (&sh.h[l][..], &mut sh.out[..])
        } else {
            let (lo, hi) = sh.h.split_at_mut(l + 1);
            (&lo[l][..], &mut hi[0][..])
        };
        super::affine(dst, src, w, b, n, fo, fi, true, par);
        if !is_out {
            let z = std::mem::take(&mut sh.h[l + 1]);
            let mut a = std::mem::take(&mut sh.g2);
            activate(net.act, &z[..n * fo], &mut a[..n * fo], &mut sh.d[l][..n * fo]);
            sh.g2 = z;
            sh.h[l + 1] = a;
            if sh.g2.len() < n * fo {
                sh.g2.resize(n * fo, 0.0);
            }
        }
    }
    // Residual r = σ·c·o + ε; loss = mean ‖r‖² over the whole batch; ∂L/∂o = (2/N)·σ·c·r.
    let mut loss = 0.0f64;
    for i in 0..n {
        let c = if net.scale_by_sigma { 1.0 } else { sigma[i] };
        let k = 2.0 / n_total as f32 * c;
        let mut row = 0.0f32;
        for j in 0..d {
            let r = c * sh.out[i * d + j] + eps[i * d + j];
            row += r * r;
            sh.g[i * d + j] = k * r;
        }
        loss += row as f64;
    }
    // Backward.
    for l in (0..nl).rev() {
        let (fi, fo) = (net.dims[l], net.dims[l + 1]);
        let gz = &sh.g[..n * fo];
        // dW = gzᵀ h (fo×fi), db = Σ gz.
        let (gw, gb) = &mut sh.grads[l];
        mm(gw, gz, &sh.h[l], fo, fi, n, true, false, false, par);
        gb.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..n {
            for (g, v) in gb.iter_mut().zip(&gz[i * fo..(i + 1) * fo]) {
                *g += v;
            }
        }
        if l > 0 {
            // g_h = gz W (n×fi), then g_z = g_h ⊙ a'(z).
            mm(&mut sh.g2, gz, &params[l].0.w, n, fi, fo, false, false, false, par);
            for (g, dv) in sh.g2[..n * fi].iter_mut().zip(&sh.d[l - 1][..n * fi]) {
                *g *= dv;
            }
            std::mem::swap(&mut sh.g, &mut sh.g2);
        }
    }
    loss
}
