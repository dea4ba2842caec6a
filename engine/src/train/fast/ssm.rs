//! The hand-derived SSM / SSM-VR step (tangent rows stacked under the primal rows).

use candle_core::Result;
use gemm::Parallelism;

use super::*;

/// Buffers of one slice of an SSM batch, grown on first use and reused after: the stacked
/// [primal; tangent] rows of every layer, activation derivatives, the slice's probes and its
/// parameter gradients.
#[derive(Default)]
struct SsmShard {
    xs: Vec<Vec<f32>>,
    us: Vec<Vec<f32>>,
    d1s: Vec<Vec<f32>>,
    d2s: Vec<Vec<f32>>,
    o: Vec<f32>,
    g: Vec<f32>,
    gz: Vec<f32>,
    gx: Vec<f32>,
    v: Vec<f32>,
    grads: Vec<(Vec<f32>, Vec<f32>)>,
}

/// Shape and options of the net for SSM.
struct SsmNet {
    act: Activation,
    dims: Vec<usize>,
    dim: usize,
    conditional: bool,
    scale_by_sigma: bool,
    vr: bool,
}

/// Hand-derived SSM / SSM-VR step for the MLP score net: the primal rows and the K·N tangent
/// rows (J·v pushed forward) share every matrix product, stacked as one (1+K)·N-row matrix, and
/// the backward pass runs through both paths (it needs a'').
///
/// Per point (weights w_i = σ_i² with a ladder, else 1; c_i = 1/σ_i when `scale_by_sigma`):
/// SSM ℓ = (1/K)Σ_k (v_kᵀS)² + (2/K)Σ_k v_kᵀJv_k; SSM-VR ℓ = ‖S‖² + (2/K)Σ_k v_kᵀJv_k.
///
/// Buffers persist across steps (grown on first use); the points of a batch are split into
/// [`slices_for`]`(n)` slices (a function of the batch size only) run at once, as in
/// [`FastDsm`](super::FastDsm).
pub struct FastSsm {
    net: SsmNet,
    params: Vec<(Param, Param)>,
    lr: f64,
    t: i32,
    /// Slices per batch; None: [`slices_for`] of each batch's size.
    slices: Option<usize>,
    shards: Vec<SsmShard>,
}

impl FastSsm {
    pub fn new(model: &MlpScore, vr: bool, lr: f64) -> Result<Self> {
        Self::build(model, vr, lr, None)
    }

    /// A trainer that splits every batch into `slices` slices.
    pub fn with_slices(model: &MlpScore, vr: bool, lr: f64, slices: usize) -> Result<Self> {
        Self::build(model, vr, lr, Some(slices.max(1)))
    }

    fn build(model: &MlpScore, vr: bool, lr: f64, slices: Option<usize>) -> Result<Self> {
        let arch = &model.arch;
        let params: Vec<(Param, Param)> = model.layers.iter().chain(std::iter::once(&model.out)).map(|l| Ok((Param::new(&l.w)?, Param::new(&l.b)?))).collect::<Result<Vec<_>>>()?;
        let shards = (0..slices.unwrap_or(16))
            .map(|_| SsmShard { grads: params.iter().map(|(w, b)| (vec![0.0; w.w.len()], vec![0.0; b.w.len()])).collect(), ..Default::default() })
            .collect();
        let net = SsmNet { act: arch.activation, dims: layer_widths(model), dim: arch.dim, conditional: arch.conditional, scale_by_sigma: arch.scale_by_sigma, vr };
        Ok(FastSsm { net, params, lr, t: 0, slices, shards })
    }

    /// Loss and gradients for points `x` (N×D), probes `v` (K×N×D, probe-major) and per-point
    /// σ (None: unconditional, unweighted).
    pub fn loss_and_grad(&mut self, x: &[f32], v: &[f32], sigma: Option<&[f32]>) -> f64 {
        let d = self.net.dim;
        let n = x.len() / d;
        let k = v.len() / (n * d).max(1);
        // The slice count depends on the batch size only (never on the thread count).
        let ns = self.slices.unwrap_or_else(|| slices_for(n)).clamp(1, n.max(1)).min(self.shards.len());
        let rows = n.div_ceil(ns);
        let (net, params) = (&self.net, &self.params);
        let sums = if ns == 1 {
            vec![ssm_slice(net, params, &mut self.shards[0], x, v, k, 0, n, n, sigma, Parallelism::None)]
        } else {
            run_slices(&mut self.shards[..ns], |i, sh| {
                let (lo, hi) = ((i * rows).min(n), ((i + 1) * rows).min(n));
                ssm_slice(net, params, sh, x, v, k, lo, hi, n, sigma, Parallelism::None)
            })
        };
        sum_slice_grads(&mut self.params, self.shards[..ns].iter().map(|sh| &sh.grads));
        sums.iter().sum::<f64>() / n as f64
    }

    pub fn grads(&self, l: usize) -> (&[f32], &[f32]) {
        (&self.params[l].0.g, &self.params[l].1.g)
    }

    pub fn step(&mut self, x: &[f32], v: &[f32], sigma: Option<&[f32]>) -> f64 {
        let l = self.loss_and_grad(x, v, sigma);
        if l.is_finite() {
            self.t += 1;
            adam(&mut self.params, self.t, self.lr);
        }
        l
    }

    pub fn store(&self, model: &MlpScore, vars: &candle_nn::VarMap) -> Result<()> {
        store(&self.params, model, vars)
    }
}

impl crate::train::ToyStep for FastSsm {
    const NAME: &'static str = "fast_ssm";

    /// The training points (perturbed on the ladder, if any), then the probes.
    fn train(&mut self, x0: &[f64], d: usize, objective: &crate::objectives::TrainObjective, rng: &mut crate::rng::Rng) -> Result<f64> {
        let (x, sig) = crate::train::training_points(x0, d, objective.sigmas.as_deref(), rng);
        let v = crate::objectives::probe_values(objective.probes, x0.len() / d, d, objective.probe, rng);
        Ok(self.step(&x, &v, sig.as_deref()))
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn store(&self, model: &MlpScore, varmap: &candle_nn::VarMap) -> Result<()> {
        FastSsm::store(self, model, varmap)
    }
}

/// SSM forward and backward for points `lo..hi` of a batch of `n_total` (probes `v` are the
/// whole batch's, K×N×D probe-major): returns Σ w·loss over the slice and leaves its gradients
/// (already scaled by 1/`n_total`) in `sh.grads`.
#[allow(clippy::too_many_arguments)]
fn ssm_slice(
    net: &SsmNet,
    params: &[(Param, Param)],
    sh: &mut SsmShard,
    x: &[f32],
    v_all: &[f32],
    k: usize,
    lo: usize,
    hi: usize,
    n_total: usize,
    sigma: Option<&[f32]>,
    par: Parallelism,
) -> f64 {
    let d = net.dim;
    let n = hi - lo;
    let rows = n * (1 + k);
    let nl = params.len();
    let w0 = net.dims[0];
    let sigma = sigma.map(|s| &s[lo..hi]);
    if n == 0 {
        for (w, b) in sh.grads.iter_mut() {
            w.iter_mut().for_each(|v| *v = 0.0);
            b.iter_mut().for_each(|v| *v = 0.0);
        }
        return 0.0;
    }
    // This slice's probes, contiguous: v[kk][i] = v_all[kk][lo + i].
    let v = sized(&mut sh.v, k * n * d);
    for kk in 0..k {
        v[kk * n * d..(kk + 1) * n * d].copy_from_slice(&v_all[(kk * n_total + lo) * d..(kk * n_total + hi) * d]);
    }
    let v = &sh.v[..k * n * d];
    sh.xs.resize_with(nl, Vec::new);
    sh.us.resize_with(nl - 1, Vec::new);
    sh.d1s.resize_with(nl - 1, Vec::new);
    sh.d2s.resize_with(nl - 1, Vec::new);
    // X[0] = [h0; t0].
    let x0 = sized(&mut sh.xs[0], rows * w0);
    x0.iter_mut().for_each(|e| *e = 0.0);
    for i in 0..n {
        x0[i * w0..i * w0 + d].copy_from_slice(&x[(lo + i) * d..(lo + i + 1) * d]);
        if let (true, Some(s)) = (net.conditional, sigma) {
            x0[i * w0 + d] = s[i].ln();
        }
    }
    for r in 0..k * n {
        x0[(n + r) * w0..(n + r) * w0 + d].copy_from_slice(&v[r * d..(r + 1) * d]);
    }
    for l in 0..nl - 1 {
        let (fi, fo) = (net.dims[l], net.dims[l + 1]);
        let y = sized(&mut sh.us[l], rows * fo);
        for i in 0..n {
            y[i * fo..(i + 1) * fo].copy_from_slice(&params[l].1.w);
        }
        y[n * fo..].iter_mut().for_each(|e| *e = 0.0);
        let (lo_x, hi_x) = sh.xs.split_at_mut(l + 1);
        mm(y, &lo_x[l][..rows * fi], &params[l].0.w, rows, fo, fi, false, true, true, par);
        let next = sized(&mut hi_x[0], rows * fo);
        let d1 = sized(&mut sh.d1s[l], n * fo);
        let d2 = sized(&mut sh.d2s[l], n * fo);
        activate2(net.act, &y[..n * fo], &mut next[..n * fo], d1, d2);
        for r in 0..k * n {
            let i = r % n;
            let (t, u) = (&mut next[(n + r) * fo..(n + r + 1) * fo], &y[(n + r) * fo..(n + r + 1) * fo]);
            for ((t, u), dd) in t.iter_mut().zip(u).zip(&d1[i * fo..(i + 1) * fo]) {
                *t = u * dd;
            }
        }
    }
    // Output rows: o (primal) and J·v (tangent), before the per-point scale c.
    let (fi, fo) = (net.dims[nl - 1], d);
    let o = sized(&mut sh.o, rows * fo);
    for i in 0..n {
        o[i * fo..(i + 1) * fo].copy_from_slice(&params[nl - 1].1.w);
    }
    o[n * fo..].iter_mut().for_each(|e| *e = 0.0);
    mm(o, &sh.xs[nl - 1][..rows * fi], &params[nl - 1].0.w, rows, fo, fi, false, true, true, par);
    let o = &sh.o[..rows * fo];
    // Loss and ∂L/∂(output rows); the mean is over the whole batch.
    let wmax = net.dims.iter().copied().max().unwrap_or(d);
    let g = sized(&mut sh.g, rows * wmax);
    g[..rows * fo].iter_mut().for_each(|e| *e = 0.0);
    let mut loss = 0.0f64;
    let mut si = vec![0.0f32; d];
    for i in 0..n {
        let c = match (net.conditional && net.scale_by_sigma, sigma) {
            (true, Some(s)) => 1.0 / s[i],
            _ => 1.0,
        };
        let w = sigma.map_or(1.0, |s| s[i] * s[i]);
        let base = w / n_total as f32;
        for (s, ov) in si.iter_mut().zip(&o[i * d..(i + 1) * d]) {
            *s = c * ov;
        }
        let mut li = 0.0f32;
        if net.vr {
            li += si.iter().map(|s| s * s).sum::<f32>();
            for j in 0..d {
                g[i * d + j] = c * base * 2.0 * si[j];
            }
        }
        for kk in 0..k {
            let r = n + kk * n + i;
            let vr = &v[(kk * n + i) * d..(kk * n + i + 1) * d];
            let vjv: f32 = vr.iter().zip(&o[r * d..(r + 1) * d]).map(|(a, b)| a * c * b).sum();
            li += 2.0 * vjv / k as f32;
            for j in 0..d {
                g[r * d + j] = c * base * 2.0 / k as f32 * vr[j];
            }
            if !net.vr {
                let vs: f32 = vr.iter().zip(&si).map(|(a, b)| a * b).sum();
                li += vs * vs / k as f32;
                for j in 0..d {
                    g[i * d + j] += c * base * 2.0 / k as f32 * vs * vr[j];
                }
            }
        }
        loss += (w * li) as f64;
    }
    // Backward.
    for l in (0..nl).rev() {
        let (fi, fo) = (net.dims[l], net.dims[l + 1]);
        if l + 1 < nl {
            // g = [g_h; g_t] (rows × fo) → [g_z; g_u].
            let (d1, d2, u) = (&sh.d1s[l], &sh.d2s[l], &sh.us[l]);
            let g = &mut sh.g[..rows * fo];
            let gz = sized(&mut sh.gz, n * fo);
            for i in 0..n * fo {
                gz[i] = g[i] * d1[i];
            }
            for r in 0..k * n {
                let i = r % n;
                for j in 0..fo {
                    let gt = g[(n + r) * fo + j];
                    gz[i * fo + j] += gt * u[(n + r) * fo + j] * d2[i * fo + j];
                    g[(n + r) * fo + j] = gt * d1[i * fo + j];
                }
            }
            g[..n * fo].copy_from_slice(gz);
        }
        let g = &sh.g[..rows * fo];
        let (gw, gb) = &mut sh.grads[l];
        mm(gw, g, &sh.xs[l][..rows * fi], fo, fi, rows, true, false, false, par);
        gb.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..n {
            for (b, v) in gb.iter_mut().zip(&g[i * fo..(i + 1) * fo]) {
                *b += v;
            }
        }
        if l > 0 {
            let gx = sized(&mut sh.gx, rows * fi);
            mm(gx, g, &params[l].0.w, rows, fi, fo, false, false, false, par);
            std::mem::swap(&mut sh.g, &mut sh.gx);
        }
    }
    loss
}
