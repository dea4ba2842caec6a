//! A hand-derived DSM training step for the MLP score net: forward, backward and Adam in plain
//! Rust over preallocated buffers (and the same for SSM / SSM-VR, [`FastSsm`]), with matrix products by `gemm` (the kernel candle itself
//! uses) and a fused, vectorisable SiLU/sigmoid. It replaces candle's autograd for the hottest
//! loop (multi-σ DSM on small MLPs), where per-op allocation and graph bookkeeping, not FLOPs,
//! dominated. The candle model stays the source of truth for evaluation: parameters are copied
//! in at construction and written back with [`FastDsm::store`].
//!
//! Loss, as in `objectives`: mean_i ‖σ_i·S_i + ε_i‖² with S_i = o_i·c_i (c_i = 1/σ_i when
//! `scale_by_sigma`, else 1), i.e. λ(σ) = σ² weighted DSM.

use candle_core::{Device, Result, Tensor};
use gemm::Parallelism;

use crate::nets::{Activation, MlpScore};

/// e^x for f32 without libm: 2^n · p(r), r = x − n·ln2 ∈ [−ln2/2, ln2/2], degree-6 Taylor
/// polynomial (relative error < 2e-7). Written so loops over it auto-vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2²³ trick (no floor/round call).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n without a float→int conversion (which blocks vectorisation): n + 127 + 2²³ holds the
    // biased exponent in its low mantissa bits; shift it into the exponent field.
    p * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
}

/// C (m×n, row-major) = [C +] op(A)·op(B); A is m×k (or k×m stored when `at`), B is k×n (or
/// n×k stored when `bt`).
#[allow(clippy::too_many_arguments)]
fn mm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, at: bool, bt: bool, acc: bool, par: Parallelism) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    let (a_cs, a_rs) = if at { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if bt { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the asserts above bound every index gemm touches for these strides.
    unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, acc, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs, 1.0f32, 1.0f32, false, false, false, par);
    }
}

/// SiLU and its derivative over equal-length slices, written index-wise so it vectorises.
#[inline(always)]
fn silu_body(z: &[f32], a: &mut [f32], d: &mut [f32]) {
    let n = z.len();
    let (a, d) = (&mut a[..n], &mut d[..n]);
    for i in 0..n {
        let zi = z[i];
        let s = 1.0 / (1.0 + exp_f32(-zi));
        a[i] = zi * s;
        d[i] = s * (1.0 + zi * (1.0 - s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_avx2(z: &[f32], a: &mut [f32], d: &mut [f32]) {
    silu_body(z, a, d)
}

/// SiLU with AVX2/FMA where the CPU has them (checked at run time), plain code otherwise.
fn silu(z: &[f32], a: &mut [f32], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were detected on this CPU.
        return unsafe { silu_avx2(z, a, d) };
    }
    silu_body(z, a, d)
}

/// a(z) into `a` and a'(z) into `d`.
fn activate(act: Activation, z: &[f32], a: &mut [f32], d: &mut [f32]) {
    match act {
        Activation::Silu => silu(z, a, d),
        Activation::Softplus => {
            for ((z, a), d) in z.iter().zip(a.iter_mut()).zip(d.iter_mut()) {
                *a = z.max(0.0) + (1.0 + exp_f32(-z.abs())).ln();
                *d = 1.0 / (1.0 + exp_f32(-z));
            }
        }
        Activation::Tanh => {
            for ((z, a), d) in z.iter().zip(a.iter_mut()).zip(d.iter_mut()) {
                let t = z.tanh();
                *a = t;
                *d = 1.0 - t * t;
            }
        }
        Activation::Relu => {
            for ((z, a), d) in z.iter().zip(a.iter_mut()).zip(d.iter_mut()) {
                *a = z.max(0.0);
                *d = if *z >= 0.0 { 1.0 } else { 0.0 };
            }
        }
    }
}

/// [input, H, …, H, D] of an MLP score net.
fn layer_widths(model: &MlpScore) -> Vec<usize> {
    let arch = &model.arch;
    let mut dims = vec![arch.dim + arch.conditional as usize];
    dims.extend(std::iter::repeat_n(arch.hidden, arch.depth));
    dims.push(arch.dim);
    dims
}

/// gemm threading from candle's thread count (RAYON_NUM_THREADS).
fn parallelism() -> Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None }
}

struct Param {
    w: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
}

impl Param {
    fn new(t: &Tensor) -> Result<Self> {
        let w: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let n = w.len();
        Ok(Param { w, m: vec![0.0; n], v: vec![0.0; n], g: vec![0.0; n] })
    }
}

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

/// Smallest slice worth a thread of its own: below it the split costs more than it saves.
const MIN_SHARD: usize = 128;

/// Preallocated DSM trainer for one MLP score net and batch size.
///
/// With T > 1 threads and a batch of at least 2·`MIN_SHARD`, the batch is split into T
/// contiguous slices that run forward and backward at once on T threads (each with
/// single-threaded products), and their parameter gradients are summed in a fixed order —
/// products of 1024×128 are too small for gemm's own threading to pay, so splitting the data
/// is what makes a second core useful. With one thread, one slice uses gemm as is.
/// The result does not depend on scheduling: the same T gives the same bits.
pub struct FastDsm {
    net: DsmNet,
    /// (weight, bias) per layer, the output layer last.
    params: Vec<(Param, Param)>,
    lr: f64,
    t: i32,
    /// gemm threading inside a slice (only when there is a single slice).
    par: Parallelism,
    shards: Vec<DsmShard>,
}

impl FastDsm {
    /// Trainer with the thread count from RAYON_NUM_THREADS (what candle uses).
    pub fn new(model: &MlpScore, batch: usize, lr: f64) -> Result<Self> {
        Self::with_threads(model, batch, lr, candle_core::utils::get_num_threads())
    }

    /// Trainer that splits each batch over `threads` threads (see the type's docs).
    pub fn with_threads(model: &MlpScore, batch: usize, lr: f64, threads: usize) -> Result<Self> {
        let arch = &model.arch;
        let dims = layer_widths(model);
        let params: Vec<(Param, Param)> = model.layers.iter().chain(std::iter::once(&model.out)).map(|l| Ok((Param::new(&l.w)?, Param::new(&l.b)?))).collect::<Result<Vec<_>>>()?;
        let threads = threads.max(1);
        let nshards = if threads > 1 && batch >= 2 * MIN_SHARD { threads.min(batch / MIN_SHARD) } else { 1 };
        let par = if nshards == 1 && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
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

/// a(z), a'(z) and a''(z).
/// Runs `slice(k, shard)` for every shard at once on rayon's pool (RAYON_NUM_THREADS threads,
/// already running: no thread start per step), the last one on the calling thread; returns
/// each slice's result in order. Each slice writes only its own shard.
fn run_slices<S: Send>(shards: &mut [S], slice: impl Fn(usize, &mut S) -> f64 + Sync) -> Vec<f64> {
    let ns = shards.len();
    let mut sums = vec![0.0f64; ns];
    let slice = &slice;
    rayon::in_place_scope(|scope| {
        let mut last = None;
        for (k, (sh, sum)) in shards.iter_mut().zip(sums.iter_mut()).enumerate() {
            if k + 1 == ns {
                last = Some((sh, sum));
            } else {
                scope.spawn(move |_| *sum = slice(k, sh));
            }
        }
        if let Some((sh, sum)) = last {
            *sum = slice(ns - 1, sh);
        }
    });
    sums
}

/// Parameter gradients = the slices' (weight, bias) gradients summed in slice order, so the
/// same slices give the same bits.
fn sum_slice_grads<'a>(params: &mut [(Param, Param)], mut slices: impl Iterator<Item = &'a Vec<(Vec<f32>, Vec<f32>)>>) {
    let first = slices.next().expect("at least one slice");
    for ((wp, bp), (gw, gb)) in params.iter_mut().zip(first) {
        wp.g.copy_from_slice(gw);
        bp.g.copy_from_slice(gb);
    }
    for grads in slices {
        for ((wp, bp), (gw, gb)) in params.iter_mut().zip(grads) {
            wp.g.iter_mut().zip(gw).for_each(|(a, b)| *a += b);
            bp.g.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
        }
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
        for i in 0..n {
            dst[i * fo..(i + 1) * fo].copy_from_slice(b);
        }
        mm(dst, src, w, n, fo, fi, false, true, true, par);
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

fn activate2(act: Activation, z: &[f32], a: &mut [f32], d1: &mut [f32], d2: &mut [f32]) {
    activate(act, z, a, d1);
    match act {
        Activation::Silu => {
            for (z, d2) in z.iter().zip(d2.iter_mut()) {
                let s = 1.0 / (1.0 + exp_f32(-z));
                *d2 = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s));
            }
        }
        Activation::Softplus => {
            for (d1, d2) in d1.iter().zip(d2.iter_mut()) {
                *d2 = d1 * (1.0 - d1);
            }
        }
        Activation::Tanh => {
            for (a, (d1, d2)) in a.iter().zip(d1.iter().zip(d2.iter_mut())) {
                *d2 = -2.0 * a * d1;
            }
        }
        Activation::Relu => d2.iter_mut().for_each(|v| *v = 0.0),
    }
}

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

/// `buf` with at least `len` elements (contents unspecified).
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
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
/// Buffers persist across steps (grown on first use); with several threads the points of a
/// batch are split into slices run at once, as in [`FastDsm`].
pub struct FastSsm {
    net: SsmNet,
    params: Vec<(Param, Param)>,
    lr: f64,
    t: i32,
    threads: usize,
    shards: Vec<SsmShard>,
}

impl FastSsm {
    pub fn new(model: &MlpScore, vr: bool, lr: f64) -> Result<Self> {
        Self::with_threads(model, vr, lr, candle_core::utils::get_num_threads())
    }

    pub fn with_threads(model: &MlpScore, vr: bool, lr: f64, threads: usize) -> Result<Self> {
        let arch = &model.arch;
        let params: Vec<(Param, Param)> = model.layers.iter().chain(std::iter::once(&model.out)).map(|l| Ok((Param::new(&l.w)?, Param::new(&l.b)?))).collect::<Result<Vec<_>>>()?;
        let threads = threads.max(1);
        let shards = (0..threads)
            .map(|_| SsmShard { grads: params.iter().map(|(w, b)| (vec![0.0; w.w.len()], vec![0.0; b.w.len()])).collect(), ..Default::default() })
            .collect();
        let net = SsmNet { act: arch.activation, dims: layer_widths(model), dim: arch.dim, conditional: arch.conditional, scale_by_sigma: arch.scale_by_sigma, vr };
        Ok(FastSsm { net, params, lr, t: 0, threads, shards })
    }

    /// Loss and gradients for points `x` (N×D), probes `v` (K×N×D, probe-major) and per-point
    /// σ (None: unconditional, unweighted).
    pub fn loss_and_grad(&mut self, x: &[f32], v: &[f32], sigma: Option<&[f32]>) -> f64 {
        let d = self.net.dim;
        let n = x.len() / d;
        let k = v.len() / (n * d).max(1);
        // One slice per thread when each gets at least MIN_SHARD points; else one slice with
        // gemm's own threading.
        let ns = if self.threads > 1 && n >= 2 * MIN_SHARD { self.threads.min(n / MIN_SHARD) } else { 1 };
        let rows = n.div_ceil(ns);
        let (net, params) = (&self.net, &self.params);
        let sums = if ns == 1 {
            let par = if self.threads > 1 { Parallelism::Rayon(self.threads) } else { Parallelism::None };
            vec![ssm_slice(net, params, &mut self.shards[0], x, v, k, 0, n, n, sigma, par)]
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

/// SSM forward and backward for points `lo..hi` of a batch of `n_total` (probes `v` are the
/// whole batch's, K×N×D probe-major): returns Σ w·loss over the slice and leaves its gradients
/// (already scaled by 1/`n_total`) in `sh.grads`.
#[allow(clippy::too_many_arguments)]
fn ssm_slice(net: &SsmNet, params: &[(Param, Param)], sh: &mut SsmShard, x: &[f32], v_all: &[f32], k: usize, lo: usize, hi: usize, n_total: usize, sigma: Option<&[f32]>, par: Parallelism) -> f64 {
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

/// Hand-derived exact ISM step for depth-2 MLP score nets, on the closed-form trace
/// tr J = c·d₂ᵀ Q d₁ with Q = W₂ ⊙ (W₁ₓ W_out)ᵀ and d_l = a'(z_l) (see
/// `MlpScore::score_and_trace_closed`). Per point (weights w_i = σ_i² with a ladder, else 1;
/// c_i = 1/σ_i when `scale_by_sigma`): ℓ = c²‖o‖² + 2c·d₂ᵀQd₁, L = mean w·ℓ.
///
/// Backward, with β_i = 2 w_i c_i / N: the trace reaches z₂ through d₂ (β a''(z₂) ⊙ Q d₁), z₁
/// through d₁ (β a''(z₁) ⊙ Qᵀ d₂), and the parameters through Q: with G = Σ β d₂d₁ᵀ,
/// ∂W₂ += G ⊙ Pᵀ and ∂P = (G ⊙ W₂)ᵀ for P = W₁ₓW_out, so ∂W₁ₓ += ∂P W_outᵀ and
/// ∂W_out += W₁ₓᵀ ∂P. Cost: a few N·H² and H²·D products, no D tangents.
pub struct FastIsm {
    act: Activation,
    dims: Vec<usize>, // [in, H, H, D]
    dim: usize,
    conditional: bool,
    scale_by_sigma: bool,
    params: Vec<(Param, Param)>,
    lr: f64,
    t: i32,
    par: Parallelism,
    buf: IsmBuffers,
}

#[derive(Default)]
struct IsmBuffers {
    h0: Vec<f32>,
    a1: Vec<f32>,
    d1: Vec<f32>,
    e1: Vec<f32>,
    a2: Vec<f32>,
    d2: Vec<f32>,
    e2: Vec<f32>,
    z: Vec<f32>,
    o: Vec<f32>,
    u: Vec<f32>,
    v: Vec<f32>,
    go: Vec<f32>,
    g2: Vec<f32>,
    g1: Vec<f32>,
    w1x: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
    gq: Vec<f32>,
    dp: Vec<f32>,
    tmp: Vec<f32>,
    betas: Vec<f32>,
}

impl FastIsm {
    /// None unless the net has exactly two hidden layers (the closed form this step uses).
    pub fn new(model: &MlpScore, lr: f64) -> Result<Option<Self>> {
        let arch = &model.arch;
        if arch.depth != 2 {
            return Ok(None);
        }
        let params = model.layers.iter().chain(std::iter::once(&model.out)).map(|l| Ok((Param::new(&l.w)?, Param::new(&l.b)?))).collect::<Result<Vec<_>>>()?;
        Ok(Some(FastIsm {
            act: arch.activation,
            dims: layer_widths(model),
            dim: arch.dim,
            conditional: arch.conditional,
            scale_by_sigma: arch.scale_by_sigma,
            params,
            lr,
            t: 0,
            par: parallelism(),
            buf: IsmBuffers::default(),
        }))
    }

    /// Loss and gradients (in each parameter's `g`) for points `x` (N×D) and per-point σ
    /// (None: unconditional, unweighted).
    pub fn loss_and_grad(&mut self, x: &[f32], sigma: Option<&[f32]>) -> f64 {
        let (d, w0, h) = (self.dim, self.dims[0], self.dims[1]);
        let n = x.len() / d;
        let par = self.par;
        let b = &mut self.buf;
        let [(l1w, l1b), (l2w, l2b), (l3w, l3b)] = &mut self.params[..] else { unreachable!("FastIsm is built for depth 2 only") };
        let (w1, b1, w2, b2, w3, b3) = (&l1w.w, &l1b.w, &l2w.w, &l2b.w, &l3w.w, &l3b.w);
        // Input [x, log σ].
        let h0 = sized(&mut b.h0, n * w0);
        for i in 0..n {
            h0[i * w0..i * w0 + d].copy_from_slice(&x[i * d..(i + 1) * d]);
            if w0 > d {
                h0[i * w0 + d] = match (self.conditional, sigma) {
                    (true, Some(s)) => s[i].ln(),
                    _ => 0.0,
                };
            }
        }
        let coef = |i: usize| -> (f32, f32) {
            let c = match (self.conditional && self.scale_by_sigma, sigma) {
                (true, Some(s)) => 1.0 / s[i],
                _ => 1.0,
            };
            (c, sigma.map_or(1.0, |s| s[i] * s[i]))
        };
        // Forward.
        let layer = |z: &mut Vec<f32>, src: &[f32], w: &[f32], bias: &[f32], fi: usize, fo: usize| {
            let z = sized(z, n * fo);
            for i in 0..n {
                z[i * fo..(i + 1) * fo].copy_from_slice(bias);
            }
            mm(z, src, w, n, fo, fi, false, true, true, par);
        };
        layer(&mut b.z, &b.h0, w1, b1, w0, h);
        activate2(self.act, &b.z[..n * h], sized(&mut b.a1, n * h), sized(&mut b.d1, n * h), sized(&mut b.e1, n * h));
        layer(&mut b.z, &b.a1, w2, b2, h, h);
        activate2(self.act, &b.z[..n * h], sized(&mut b.a2, n * h), sized(&mut b.d2, n * h), sized(&mut b.e2, n * h));
        layer(&mut b.o, &b.a2, w3, b3, h, d);
        // P = W₁ₓ W_out (H×H), Q_jk = W₂_jk P_kj.
        let w1x = sized(&mut b.w1x, h * d);
        for k in 0..h {
            w1x[k * d..(k + 1) * d].copy_from_slice(&w1[k * w0..k * w0 + d]);
        }
        mm(sized(&mut b.p, h * h), &b.w1x, w3, h, h, d, false, false, false, par);
        let q = sized(&mut b.q, h * h);
        for j in 0..h {
            for k in 0..h {
                q[j * h + k] = w2[j * h + k] * b.p[k * h + j];
            }
        }
        // U = D₁Qᵀ (∂t/∂d₂), V = D₂Q (∂t/∂d₁); t_i = Σ_j d₂_ij U_ij.
        mm(sized(&mut b.u, n * h), &b.d1, &b.q, n, h, h, false, true, false, par);
        mm(sized(&mut b.v, n * h), &b.d2, &b.q, n, h, h, false, false, false, par);
        let go = sized(&mut b.go, n * d);
        let mut loss = 0.0f64;
        let betas = sized(&mut b.betas, n);
        for i in 0..n {
            let (c, w) = coef(i);
            let t: f32 = b.d2[i * h..(i + 1) * h].iter().zip(&b.u[i * h..(i + 1) * h]).map(|(a, b)| a * b).sum();
            let oo: f32 = b.o[i * d..(i + 1) * d].iter().map(|v| v * v).sum();
            loss += (w * (c * c * oo + 2.0 * c * t)) as f64;
            let alpha = w / n as f32;
            for j in 0..d {
                go[i * d + j] = alpha * 2.0 * c * c * b.o[i * d + j];
            }
            betas[i] = alpha * 2.0 * c;
        }
        loss /= n as f64;
        // Backward. Output layer.
        let (gw, gb) = (&mut l3w.g, &mut l3b.g);
        mm(gw, &b.go, &b.a2, d, h, n, true, false, false, par);
        col_sums(gb, &b.go, n, d);
        let g2 = sized(&mut b.g2, n * h);
        mm(g2, &b.go, w3, n, h, d, false, false, false, par);
        through_activation(g2, &b.d2, &b.e2, &b.u, betas, h);
        let (gw, gb) = (&mut l2w.g, &mut l2b.g);
        mm(gw, &b.g2, &b.a1, h, h, n, true, false, false, par);
        col_sums(gb, &b.g2, n, h);
        let g1 = sized(&mut b.g1, n * h);
        mm(g1, &b.g2, w2, n, h, h, false, false, false, par);
        through_activation(g1, &b.d1, &b.e1, &b.v, betas, h);
        let (gw, gb) = (&mut l1w.g, &mut l1b.g);
        mm(gw, &b.g1, &b.h0, h, w0, n, true, false, false, par);
        col_sums(gb, &b.g1, n, h);
        // Through Q: G = Σ β d₂ d₁ᵀ (rows of D₂ scaled by β, reusing U's buffer).
        for i in 0..n {
            for j in i * h..(i + 1) * h {
                b.u[j] = betas[i] * b.d2[j];
            }
        }
        mm(sized(&mut b.gq, h * h), &b.u, &b.d1, h, h, n, true, false, false, par);
        let dp = sized(&mut b.dp, h * h);
        let gw2 = &mut l2w.g;
        for j in 0..h {
            for k in 0..h {
                let gq = b.gq[j * h + k];
                gw2[j * h + k] += gq * b.p[k * h + j];
                dp[k * h + j] = gq * w2[j * h + k];
            }
        }
        // ∂W₁ₓ += ∂P W_outᵀ (H×D, into the first D columns of ∂W₁); ∂W_out += W₁ₓᵀ ∂P.
        let tmp = sized(&mut b.tmp, h * d);
        mm(tmp, &b.dp, w3, h, d, h, false, true, false, par);
        let gw1 = &mut l1w.g;
        for k in 0..h {
            for (g, t) in gw1[k * w0..k * w0 + d].iter_mut().zip(&tmp[k * d..(k + 1) * d]) {
                *g += t;
            }
        }
        mm(&mut l3w.g, &b.w1x, &b.dp, d, h, h, true, false, true, par);
        loss
    }

    pub fn grads(&self, l: usize) -> (&[f32], &[f32]) {
        (&self.params[l].0.g, &self.params[l].1.g)
    }

    /// One training step (Adam); returns the loss before the update.
    pub fn step(&mut self, x: &[f32], sigma: Option<&[f32]>) -> f64 {
        let l = self.loss_and_grad(x, sigma);
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

/// ∂L/∂z from ∂L/∂a at a layer of width `h` whose derivative d = a'(z) also enters the loss
/// through the trace: g ← g ⊙ d + β_i · a''(z) ⊙ (∂t/∂d), row i scaled by β_i.
fn through_activation(g: &mut [f32], d: &[f32], e: &[f32], dt: &[f32], betas: &[f32], h: usize) {
    for (i, &beta) in betas.iter().enumerate() {
        for j in i * h..(i + 1) * h {
            g[j] = g[j] * d[j] + beta * e[j] * dt[j];
        }
    }
}

/// out[j] = Σ_i m[i·w + j] over the n rows of an n×w matrix.
fn col_sums(out: &mut [f32], m: &[f32], n: usize, w: usize) {
    out.iter_mut().for_each(|v| *v = 0.0);
    for i in 0..n {
        for (o, v) in out.iter_mut().zip(&m[i * w..(i + 1) * w]) {
            *o += v;
        }
    }
}

/// Adam (candle's AdamW formula with weight decay 0, β = (0.9, 0.999), ε = 1e-8).
fn adam(params: &mut [(Param, Param)], t: i32, lr: f64) {
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let sm = 1.0 / (1.0 - 0.9f64.powi(t)) as f32;
    let sv = 1.0 / (1.0 - 0.999f64.powi(t)) as f32;
    let lr = lr as f32;
    for p in params.iter_mut().flat_map(|(w, b)| [w, b]) {
        for (((w, m), v), g) in p.w.iter_mut().zip(p.m.iter_mut()).zip(p.v.iter_mut()).zip(&p.g) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w -= lr * (*m * sm) / ((*v * sv).sqrt() + eps);
        }
    }
}

/// Writes parameters back into the candle model's variables.
fn store(params: &[(Param, Param)], model: &MlpScore, vars: &candle_nn::VarMap) -> Result<()> {
    let data = vars.data().lock().expect("varmap lock");
    let layers: Vec<&crate::nets::Dense> = model.layers.iter().chain(std::iter::once(&model.out)).collect();
    for (l, (w, b)) in params.iter().enumerate() {
        for (p, t) in [(w, &layers[l].w), (b, &layers[l].b)] {
            let var = data.values().find(|v| v.as_tensor().id() == t.id()).expect("layer tensor is a VarMap variable");
            var.set(&Tensor::from_slice(&p.w, t.shape(), &Device::Cpu)?)?;
        }
    }
    Ok(())
}

/// Inference-only forward pass of the MLP score net over plain buffers (the samplers' hot loop).
pub struct FastForward {
    act: Activation,
    dims: Vec<usize>,
    conditional: bool,
    scale_by_sigma: bool,
    params: Vec<(Vec<f32>, Vec<f32>)>,
    par: Parallelism,
    bufs: [Vec<f32>; 3],
}

impl FastForward {
    pub fn new(model: &MlpScore) -> Result<Self> {
        let arch = &model.arch;
        let dims = layer_widths(model);
        let mut params = Vec::new();
        for l in model.layers.iter().chain(std::iter::once(&model.out)) {
            // Stored transposed (fan_in × fan_out) so the product streams contiguous rows.
            params.push((l.w.t()?.contiguous()?.flatten_all()?.to_vec1()?, l.b.flatten_all()?.to_vec1()?));
        }
        Ok(FastForward {
            act: arch.activation,
            dims,
            conditional: arch.conditional,
            scale_by_sigma: arch.scale_by_sigma,
            params,
            par: parallelism(),
            bufs: [Vec::new(), Vec::new(), Vec::new()],
        })
    }

    /// S(x, σ) for row-major points `x` into `out` (same shape).
    pub fn score(&mut self, x: &[f32], sigma: Option<f32>, out: &mut [f32]) {
        let d = *self.dims.last().expect("dims");
        let n = x.len() / d;
        let w0 = self.dims[0];
        let [h, z, dd] = &mut self.bufs;
        h.resize(n * w0, 0.0);
        for i in 0..n {
            h[i * w0..i * w0 + d].copy_from_slice(&x[i * d..(i + 1) * d]);
            if let (true, Some(s)) = (self.conditional, sigma) {
                h[i * w0 + d] = s.ln();
            }
        }
        let nl = self.params.len();
        for l in 0..nl {
            let (fi, fo) = (self.dims[l], self.dims[l + 1]);
            let (w, b) = &self.params[l];
            z.resize(n * fo, 0.0);
            for i in 0..n {
                z[i * fo..(i + 1) * fo].copy_from_slice(b);
            }
            mm(z, h, w, n, fo, fi, false, false, true, self.par);
            if l + 1 < nl {
                h.resize(n * fo, 0.0);
                dd.resize(n * fo, 0.0);
                activate(self.act, &z[..n * fo], &mut h[..n * fo], &mut dd[..n * fo]);
            }
        }
        let c = match (self.conditional && self.scale_by_sigma, sigma) {
            (true, Some(s)) => 1.0 / s,
            _ => 1.0,
        };
        for (o, v) in out.iter_mut().zip(&z[..n * d]) {
            *o = c * v;
        }
    }
}
