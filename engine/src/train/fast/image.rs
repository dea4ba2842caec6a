//! The hand-derived training step of the class-conditional image MLP (`images::mlp::ImageMlp`):
//! the weighted denoising loss mean_i w_i·mean_j (D_ij − x0_ij)² with
//! D = c_skip y + c_out F(c_in y; c_noise, c), y = x0 + σ ε, F = MLP([c_in y, sin/cos(c_noise f_k),
//! E[c]]) — EDM's loss when w = λ(σ) and the coefficients are EDM's, multi-σ and continuous-time
//! DSM with other coefficients and weights ([`Rows`] carries them per image, so the objective
//! lives in one place, `images::objective`). Forward, backward (parameters and the class
//! embedding's rows), AdamW (weight decay 0, as the autograd path) and the EMA of the weights,
//! over preallocated buffers.
//!
//! The batch is split into [`image_slices_for`]`(batch)` slices (a function of the batch size
//! only) run at once on rayon's pool, and their gradients are summed in slice order; a batch
//! that is one slice (up to 256 images) threads its products instead. Either way the result
//! does not depend on the thread count.
//!
//! Pinned to candle's autograd of `images::objective::edm_losses` by
//! `engine/tests/fastmlp.rs::fast_image_mlp_matches_candle_autograd`.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use gemm::Parallelism;
use rayon::prelude::*;
use schema::image::ImageMlpSpec;

use super::*;
use crate::images::Precond;
use crate::kernels::optim;

/// Rows per slice of an image batch. Products of 128 × 1024 × 1024 are large enough for gemm's
/// own threading (over output tiles; the sum over the inner dimension keeps its order, so the
/// bits do not depend on the thread count — `fast_image_mlp_bits_do_not_depend_on_threads`),
/// and splitting them further only adds gradient sums: one slice up to 256 rows.
pub const IMAGE_SLICE_ROWS: usize = 256;

/// Slices of an image batch of `n`: one per [`IMAGE_SLICE_ROWS`] rows, at least 1, at most 16.
pub fn image_slices_for(n: usize) -> usize {
    (n / IMAGE_SLICE_ROWS).clamp(1, 16)
}

/// The per-image numbers of one batch: σ, the loss weight and the preconditioning's
/// coefficients, all f32 as the autograd path computes them.
pub struct Rows {
    pub sigma: Vec<f32>,
    pub weight: Vec<f32>,
    pub c_skip: Vec<f32>,
    pub c_out: Vec<f32>,
    pub c_in: Vec<f32>,
    pub c_noise: Vec<f32>,
}

impl Rows {
    pub fn new(precond: &Precond, sigma: Vec<f32>, weight: Vec<f32>) -> Self {
        let [c_skip, c_out, c_in, c_noise] = precond.columns(&sigma);
        Rows { sigma, weight, c_skip, c_out, c_in, c_noise }
    }

    fn range(&self, lo: usize, hi: usize) -> RowsRef<'_> {
        RowsRef {
            sigma: &self.sigma[lo..hi],
            weight: &self.weight[lo..hi],
            c_skip: &self.c_skip[lo..hi],
            c_out: &self.c_out[lo..hi],
            c_in: &self.c_in[lo..hi],
            c_noise: &self.c_noise[lo..hi],
        }
    }
}

#[derive(Clone, Copy)]
struct RowsRef<'a> {
    sigma: &'a [f32],
    weight: &'a [f32],
    c_skip: &'a [f32],
    c_out: &'a [f32],
    c_in: &'a [f32],
    c_noise: &'a [f32],
}

/// The net's shape: dims = [D + 2K + E, H, …, H, D].
struct Shape {
    dims: Vec<usize>,
    dim: usize,
    /// Fourier frequencies f_k (K of them).
    freq: Vec<f32>,
    /// Class-embedding width E (0 without classes).
    emb: usize,
}

/// Elements per task of the Adam (+ EMA) update (256 KiB per buffer: a chunk stays in L2).
const ADAM_CHUNK: usize = 1 << 16;

/// One task of the Adam (+ EMA) update: matching slices of (weights, m, v, gradient, EMA).
type AdamChunk<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32], &'a [f32], &'a mut [f32]);

/// One slice's buffers.
struct Shard {
    h: Vec<Vec<f32>>,
    d: Vec<Vec<f32>>,
    out: Vec<f32>,
    g: Vec<f32>,
    g2: Vec<f32>,
    ge: Vec<f32>,
    /// x0 and y = x0 + σε, feature-major.
    xt: Vec<f32>,
    yt: Vec<f32>,
    /// This slice's gradients, in the order of `FastImageMlp::params`.
    grads: Vec<Vec<f32>>,
}

/// Preallocated trainer of one image MLP and batch size (see the module docs).
pub struct FastImageMlp {
    shape: Shape,
    /// [layer0.weight, layer0.bias, …, out.weight, out.bias, class_emb.weight?], weights
    /// (out × in) row-major as candle stores them.
    params: Vec<Param>,
    names: Vec<String>,
    ema: Vec<Vec<f32>>,
    ema_decay: f64,
    lr: f64,
    t: i32,
    /// gemm threading inside a slice (only when there is one slice).
    par: Parallelism,
    shards: Vec<Shard>,
}

impl FastImageMlp {
    /// The trainer of the MLP `spec` on `dim` pixels whose weights are in `varmap` (built by
    /// `images::mlp::ImageMlp::new`), split as [`image_slices_for`]`(batch)`.
    pub fn new(spec: &ImageMlpSpec, dim: usize, varmap: &VarMap, batch: usize, lr: f64, ema_decay: f64) -> Result<Self> {
        Self::with_slices(spec, dim, varmap, batch, lr, ema_decay, image_slices_for(batch))
    }

    /// As [`FastImageMlp::new`] with `slices` slices per batch.
    pub fn with_slices(spec: &ImageMlpSpec, dim: usize, varmap: &VarMap, batch: usize, lr: f64, ema_decay: f64, slices: usize) -> Result<Self> {
        Self::with_threads(spec, dim, varmap, batch, lr, ema_decay, slices, candle_core::utils::get_num_threads())
    }

    /// As [`FastImageMlp::with_slices`], a single slice's products on `threads` threads.
    #[allow(clippy::too_many_arguments)]
    pub fn with_threads(spec: &ImageMlpSpec, dim: usize, varmap: &VarMap, batch: usize, lr: f64, ema_decay: f64, slices: usize, threads: usize) -> Result<Self> {
        let half = spec.emb / 2;
        let emb = if spec.class_cond { spec.emb } else { 0 };
        let mut dims = vec![dim + 2 * half + emb];
        dims.extend(std::iter::repeat_n(spec.hidden, spec.depth));
        dims.push(dim);
        let mut names: Vec<String> = Vec::new();
        for l in 0..=spec.depth {
            let p = if l == spec.depth { "out".to_string() } else { format!("layer{l}") };
            names.push(format!("{p}.weight"));
            names.push(format!("{p}.bias"));
        }
        if spec.class_cond {
            names.push("class_emb.weight".into());
        }
        let params = {
            let data = varmap.data().lock().expect("varmap lock");
            names
                .iter()
                .map(|n| match data.get(n) {
                    Some(v) => Param::new(v.as_tensor()),
                    None => Err(candle_core::Error::Msg(format!("image MLP variable `{n}` missing from the VarMap"))),
                })
                .collect::<Result<Vec<_>>>()?
        };
        for (l, w) in dims.windows(2).enumerate() {
            if params[2 * l].w.len() != w[0] * w[1] || params[2 * l + 1].w.len() != w[1] {
                return Err(candle_core::Error::Msg(format!("image MLP layer {l} does not have shape {}×{}", w[1], w[0])));
            }
        }
        let ns = slices.clamp(1, batch.max(1));
        let rows = batch.div_ceil(ns);
        // The hidden activations, `g` and `g2` trade places (the forward swaps each new
        // activation with `g2`, the backward swaps `g` and `g2` once per hidden layer), so any of
        // them may hold the output's gradient (rows × dim) next step: each gets rows × max(hidden,
        // dim). (Sized by their first role, an odd depth with hidden < dim left the output's
        // gradient a hidden-sized buffer on the second step.)
        let wmax = spec.hidden.max(dim);
        let shards = (0..ns)
            .map(|_| Shard {
                h: dims[..dims.len() - 1].iter().enumerate().map(|(l, &w)| vec![0.0; rows * if l == 0 { w } else { wmax }]).collect(),
                d: dims[1..dims.len() - 1].iter().map(|&w| vec![0.0; rows * w]).collect(),
                out: vec![0.0; rows * dim],
                g: vec![0.0; rows * wmax],
                g2: vec![0.0; rows * wmax],
                ge: vec![0.0; rows * emb],
                xt: vec![0.0; rows * dim],
                yt: vec![0.0; rows * dim],
                grads: params.iter().map(|p| vec![0.0; p.w.len()]).collect(),
            })
            .collect();
        let ema = params.iter().map(|p| p.w.clone()).collect();
        let shape = Shape { dims, dim, freq: crate::images::frequency_values(half), emb };
        let par = if ns == 1 && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        Ok(FastImageMlp { shape, params, names, ema, ema_decay, lr, t: 0, par, shards })
    }

    /// Loss and gradients (kept in each parameter's `g`) of clean images `x0` (N×D), noise
    /// `eps` (N×D), labels (N; `NULL_CLASS` = no class, ignored without class embedding) and
    /// the per-image numbers `rows`.
    pub fn loss_and_grad(&mut self, x0: &[f32], eps: &[f32], labels: &[u32], rows: &Rows) -> f64 {
        let n = rows.sigma.len();
        let d = self.shape.dim;
        let ns = self.shards.len();
        let per = n.div_ceil(ns);
        let (shape, params, par) = (&self.shape, &self.params, self.par);
        let sums = if ns == 1 {
            vec![slice(shape, params, &mut self.shards[0], x0, eps, labels, rows.range(0, n), n, par)]
        } else {
            run_slices(&mut self.shards, |k, sh| {
                let (lo, hi) = ((k * per).min(n), ((k + 1) * per).min(n));
                slice(shape, params, sh, &x0[lo * d..hi * d], &eps[lo * d..hi * d], &labels[lo..hi], rows.range(lo, hi), n, Parallelism::None)
            })
        };
        for (i, p) in self.params.iter_mut().enumerate() {
            // One slice: its gradient buffer becomes the parameter's (every slice overwrites
            // all of its gradients), no copy.
            if ns == 1 {
                std::mem::swap(&mut p.g, &mut self.shards[0].grads[i]);
                continue;
            }
            p.g.copy_from_slice(&self.shards[0].grads[i]);
            for sh in &self.shards[1..] {
                p.g.iter_mut().zip(&sh.grads[i]).for_each(|(a, b)| *a += b);
            }
        }
        sums.iter().sum::<f64>() / n as f64
    }

    /// One AdamW step (weight decay 0) on the gradients of the last `loss_and_grad`.
    pub fn adam_step(&mut self) {
        self.update(None);
    }

    /// AdamW, then (with `ema` = (d, 1 − d)) the EMA, chunk by chunk: each chunk's new weights
    /// enter its EMA while they are still in cache, one pass over memory instead of two.
    /// Elementwise, so chunks on several threads give the same bits as one pass, and the
    /// same bits as [`FastImageMlp::adam_step`] followed by [`FastImageMlp::ema_update`].
    fn update(&mut self, ema: Option<(f32, f32)>) {
        self.t += 1;
        let (t, lr) = (self.t, self.lr);
        let chunk = |(w, m, v, g, s): AdamChunk| {
            adam_slices(w, m, v, g, t, lr);
            if let Some(coefs) = ema {
                optim::ema_blend(s, w, coefs);
            }
        };
        let mut chunks: Vec<AdamChunk> = Vec::new();
        for (p, s) in self.params.iter_mut().zip(&mut self.ema) {
            let parts = p.w.chunks_mut(ADAM_CHUNK).zip(p.m.chunks_mut(ADAM_CHUNK)).zip(p.v.chunks_mut(ADAM_CHUNK)).zip(p.g.chunks(ADAM_CHUNK)).zip(s.chunks_mut(ADAM_CHUNK));
            chunks.extend(parts.map(|((((w, m), v), g), s)| (w, m, v, g, s)));
        }
        match self.par {
            Parallelism::Rayon(_) => chunks.into_par_iter().for_each(chunk),
            Parallelism::None => chunks.into_iter().for_each(chunk),
        }
    }

    /// The EMA coefficients (d, 1 − d) after step `step`: d = min(decay, (1 + step)/(10 + step)),
    /// as the autograd path's EMA.
    fn ema_coefs(&self, step: u64) -> (f32, f32) {
        optim::ema_coefs(self.ema_decay, step)
    }

    /// shadow ← d·shadow + (1 − d)·w with d = min(decay, (1 + step)/(10 + step)), as the
    /// autograd path's EMA.
    pub fn ema_update(&mut self, step: u64) {
        let coefs = self.ema_coefs(step);
        for (s, p) in self.ema.iter_mut().zip(&self.params) {
            optim::ema_blend(s, &p.w, coefs);
        }
    }

    /// One step: loss and gradients, then AdamW and the EMA (fused, see `update`) when the
    /// loss is finite; returns the loss before the update.
    pub fn step(&mut self, x0: &[f32], eps: &[f32], labels: &[u32], rows: &Rows, step: u64) -> f64 {
        let l = self.loss_and_grad(x0, eps, labels, rows);
        if l.is_finite() {
            let coefs = self.ema_coefs(step);
            self.update(Some(coefs));
        }
        l
    }

    /// The gradient of the variable `name` (as the VarMap names it) from the last
    /// `loss_and_grad`.
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        self.names.iter().position(|n| n == name).map(|i| &self.params[i].g[..])
    }

    /// Writes the current weights into the VarMap's variables.
    pub fn store(&self, varmap: &VarMap) -> Result<()> {
        self.write(varmap, self.params.iter().map(|p| &p.w[..]))
    }

    /// Writes the EMA weights into the VarMap's variables.
    /// The AdamW learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    pub fn store_ema(&self, varmap: &VarMap) -> Result<()> {
        self.write(varmap, self.ema.iter().map(|v| &v[..]))
    }

    fn write<'a>(&self, varmap: &VarMap, values: impl Iterator<Item = &'a [f32]>) -> Result<()> {
        let data = varmap.data().lock().expect("varmap lock");
        for (name, v) in self.names.iter().zip(values) {
            let var = data.get(name).ok_or_else(|| candle_core::Error::Msg(format!("image MLP variable `{name}` missing from the VarMap")))?;
            var.set(&Tensor::from_slice(v, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Feature rows per rayon task in the threaded elementwise passes of [`slice`] (and rows per
/// task in [`ImageForward`]'s).
const ROWS_PER_TASK: usize = 16;

/// C = [C +] A·B on strided operands: C is m×n, A m×k, B k×n, each given with its (column,
/// row) strides in elements. Column-major m×n (stride (m, 1)) is the slices' layout.
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    c: &mut [f32],
    (c_cs, c_rs): (usize, usize),
    a: &[f32],
    (a_cs, a_rs): (usize, usize),
    b: &[f32],
    (b_cs, b_rs): (usize, usize),
    m: usize,
    n: usize,
    k: usize,
    acc: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // One past the last element of an r×c operand with strides (cs, rs).
    let span = |r: usize, c: usize, cs: usize, rs: usize| (r - 1) * rs + (c - 1) * cs + 1;
    assert!(c.len() >= span(m, n, c_cs, c_rs));
    assert!(k == 0 || (a.len() >= span(m, k, a_cs, a_rs) && b.len() >= span(k, n, b_cs, b_rs)));
    // SAFETY: the asserts above bound every index gemm touches for these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// out[q] = Σ_i m[q·n + i] (rows `q0..q0 + out.len()` of a row-major matrix with rows of `n`),
/// each row summed in order, 8 rows at a time for independent chains.
fn row_sums(out: &mut [f32], m: &[f32], q0: usize, n: usize) {
    let mut blocks = out.chunks_exact_mut(8);
    let mut q = q0;
    for block in &mut blocks {
        let mut s = [0.0f32; 8];
        for i in 0..n {
            for (r, s) in s.iter_mut().enumerate() {
                *s += m[(q + r) * n + i];
            }
        }
        block.copy_from_slice(&s);
        q += 8;
    }
    for o in blocks.into_remainder() {
        *o = m[q * n..(q + 1) * n].iter().fold(0.0f32, |a, v| a + v);
        q += 1;
    }
}

/// Forward and backward on one slice (`rows.sigma.len()` images of a batch of `n_total`):
/// returns Σ_i w_i·mean_j r_ij² over the slice and leaves its gradients (already divided by
/// `n_total`) in `sh.grads`.
///
/// Every activation and gradient buffer is feature-major (column-major n×width: feature f of
/// image i at `f·n + i`), so each product's output is column-major and gemm runs with the
/// batch as its row dimension: the weights are read where they lie, never packed (the
/// row-major layout made gemm transpose-pack every weight matrix in the forward).
#[allow(clippy::too_many_arguments)]
fn slice(net: &Shape, params: &[Param], sh: &mut Shard, x0: &[f32], eps: &[f32], labels: &[u32], rows: RowsRef, n_total: usize, par: Parallelism) -> f64 {
    let n = rows.sigma.len();
    let d = net.dim;
    let nl = net.dims.len() - 1;
    if n == 0 {
        sh.grads.iter_mut().for_each(|g| g.iter_mut().for_each(|v| *v = 0.0));
        return 0.0;
    }
    let cm = (n, 1); // strides of a column-major n×w buffer
    // Input features [c_in·y, sin(c_noise f), cos(c_noise f), E[c]], with x0 and y = x0 + σε
    // kept feature-major for the residual.
    let (w0, k, e) = (net.dims[0], net.freq.len(), net.emb);
    let table = if e > 0 { Some(&params[2 * nl].w) } else { None };
    let threaded = matches!(par, Parallelism::Rayon(t) if t > 1);
    {
        let (h0, xt, yt) = (&mut sh.h[0][..n * w0], &mut sh.xt[..n * d], &mut sh.yt[..n * d]);
        let (pix, rest) = h0.split_at_mut(n * d);
        for (j, ((hr, xr), yr)) in pix.chunks_exact_mut(n).zip(xt.chunks_exact_mut(n)).zip(yt.chunks_exact_mut(n)).enumerate() {
            for i in 0..n {
                let x = x0[i * d + j];
                let y = x + eps[i * d + j] * rows.sigma[i];
                xr[i] = x;
                yr[i] = y;
                hr[i] = rows.c_in[i] * y;
            }
        }
        let (fourier, emb_rows) = rest.split_at_mut(2 * k * n);
        let (sin_rows, cos_rows) = fourier.split_at_mut(k * n);
        for (q, &f) in net.freq.iter().enumerate() {
            for i in 0..n {
                let a = rows.c_noise[i] * f;
                sin_rows[q * n + i] = a.sin();
                cos_rows[q * n + i] = a.cos();
            }
        }
        if let Some(t) = table {
            for (i, &l) in labels.iter().enumerate() {
                let l = l as usize;
                for (q, &v) in t[l * e..(l + 1) * e].iter().enumerate() {
                    emb_rows[q * n + i] = v;
                }
            }
        }
    }
    // Forward: z = h Wᵀ + b (W fo×fi row-major read as Wᵀ with strides (fi, 1)), then SiLU.
    for l in 0..nl {
        let (fi, fo) = (net.dims[l], net.dims[l + 1]);
        let (w, b) = (&params[2 * l].w, &params[2 * l + 1].w);
        let is_out = l + 1 == nl;
        let (src, dst) = if is_out {
            (&sh.h[l][..], &mut sh.out[..])
        } else {
            let (lo, hi) = sh.h.split_at_mut(l + 1);
            (&lo[l][..], &mut hi[0][..])
        };
        for (row, &bv) in dst[..n * fo].chunks_exact_mut(n).zip(b) {
            row.iter_mut().for_each(|v| *v = bv);
        }
        gemm_strided(dst, cm, src, cm, w, (fi, 1), n, fo, fi, true, par);
        if !is_out {
            let z = std::mem::take(&mut sh.h[l + 1]);
            let mut a = std::mem::take(&mut sh.g2);
            if a.len() < z.len() {
                a.resize(z.len(), 0.0);
            }
            if threaded {
                // Elementwise, so chunks on several threads give the same bits as one pass.
                let c = ROWS_PER_TASK * n;
                z[..n * fo].par_chunks(c).zip(a[..n * fo].par_chunks_mut(c)).zip(sh.d[l][..n * fo].par_chunks_mut(c)).for_each(|((z, a), dv)| silu(z, a, dv));
            } else {
                silu(&z[..n * fo], &mut a[..n * fo], &mut sh.d[l][..n * fo]);
            }
            sh.g2 = z;
            sh.h[l + 1] = a;
            if sh.g2.len() < n * fo {
                sh.g2.resize(n * fo, 0.0);
            }
        }
    }
    // r = c_skip·y + c_out·F − x0; loss_i = w_i·mean_j r²; ∂L/∂F = (2 w_i c_out,i /(N·D))·r.
    // Feature by feature, each image's Σ_j r² accumulated in feature order.
    let kr: Vec<f32> = (0..n).map(|i| 2.0 * rows.weight[i] * rows.c_out[i] / (n_total * d) as f32).collect();
    let mut acc = vec![0.0f32; n];
    for (j, g) in sh.g[..n * d].chunks_exact_mut(n).enumerate() {
        let (xr, yr, fr) = (&sh.xt[j * n..(j + 1) * n], &sh.yt[j * n..(j + 1) * n], &sh.out[j * n..(j + 1) * n]);
        for i in 0..n {
            let r = rows.c_skip[i] * yr[i] + rows.c_out[i] * fr[i] - xr[i];
            acc[i] += r * r;
            g[i] = kr[i] * r;
        }
    }
    // Per-image losses summed in image order.
    let loss = acc.iter().zip(rows.weight).map(|(&a, &w)| (w * a / d as f32) as f64).sum::<f64>();
    // Backward.
    for l in (0..nl).rev() {
        let (fi, fo) = (net.dims[l], net.dims[l + 1]);
        let gz = &sh.g[..n * fo];
        let (gw, rest) = sh.grads[2 * l..].split_first_mut().expect("weight");
        // ∂W (fo×fi row-major) = gzᵀ h: gzᵀ is fo×n with strides (1, n), h n×fi column-major.
        gemm_strided(gw, (1, fi), gz, (1, n), &sh.h[l], cm, fo, fi, n, false, par);
        // ∂b: each feature's row of gz summed over the images in order, whichever thread.
        if threaded {
            rest[0][..fo].par_chunks_mut(64).enumerate().for_each(|(q, out)| row_sums(out, gz, 64 * q, n));
        } else {
            row_sums(&mut rest[0][..fo], gz, 0, n);
        }
        let w = &params[2 * l].w;
        if l > 0 {
            // ∂h = gz W (W fo×fi row-major: strides (1, fi)), then ⊙ a'(z).
            gemm_strided(&mut sh.g2, cm, gz, cm, w, (1, fi), n, fi, fo, false, par);
            if threaded {
                let c = ROWS_PER_TASK * n;
                sh.g2[..n * fi].par_chunks_mut(c).zip(sh.d[l - 1][..n * fi].par_chunks(c)).for_each(|(g, dv)| g.iter_mut().zip(dv).for_each(|(g, dv)| *g *= dv));
            } else {
                for (g, dv) in sh.g2[..n * fi].iter_mut().zip(&sh.d[l - 1][..n * fi]) {
                    *g *= dv;
                }
            }
            std::mem::swap(&mut sh.g, &mut sh.g2);
        } else if e > 0 {
            // ∂L/∂E[c] = Σ over the slice's images of class c of (gz W)[:, embedding columns]:
            // ge (n×e column-major) = gz · W[:, off..off + e] (strides (1, fi) from column off).
            let off = fi - e;
            gemm_strided(&mut sh.ge, cm, gz, cm, &w[off..], (1, fi), n, e, fo, false, par);
            let gt = &mut sh.grads[2 * nl];
            gt.iter_mut().for_each(|v| *v = 0.0);
            for (i, &c) in labels.iter().enumerate() {
                let c = c as usize;
                for (q, g) in gt[c * e..(c + 1) * e].iter_mut().enumerate() {
                    *g += sh.ge[q * n + i];
                }
            }
        }
    }
    loss
}

/// The image MLP's inference pass over plain buffers (the samplers' and "which digit"'s hot
/// loop): D(x; σ, c) with the weights the VarMap holds when it is built (the EMA weights after
/// training), products threaded by gemm as in training.
pub struct ImageForward {
    shape: Shape,
    /// (weight, bias) per layer, weights transposed: (in × out) row-major.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    table: Vec<f32>,
    precond: Precond,
    par: Parallelism,
    bufs: [Vec<f32>; 3],
}

impl ImageForward {
    pub fn new(spec: &ImageMlpSpec, dim: usize, precond: Precond, varmap: &VarMap) -> Result<Self> {
        let trainer = FastImageMlp::with_threads(spec, dim, varmap, 1, 0.0, 0.0, 1, 1)?;
        let FastImageMlp { shape, mut params, .. } = trainer;
        let table = if shape.emb > 0 { params.pop().map(|p| p.w).unwrap_or_default() } else { Vec::new() };
        // Weights stored transposed (in × out) so the products stream contiguous rows.
        let layers = params
            .chunks_exact_mut(2)
            .zip(shape.dims.windows(2))
            .map(|(p, io)| {
                let (fi, fo) = (io[0], io[1]);
                let w = &p[0].w;
                let wt: Vec<f32> = (0..fi * fo).map(|q| w[(q % fo) * fi + q / fo]).collect();
                (wt, std::mem::take(&mut p[1].w))
            })
            .collect();
        let threads = candle_core::utils::get_num_threads();
        let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        Ok(ImageForward { shape, layers, table, precond, par, bufs: Default::default() })
    }

    /// D(x; σ_i, labels) for the rows of `x` (N×D), one σ per row, into `out` (N×D); labels
    /// as in training (`NULL_CLASS`: no class; ignored without a class embedding).
    pub fn denoise(&mut self, x: &[f32], sigma: &[f32], labels: &[u32], out: &mut [f32]) {
        let net = &self.shape;
        let (d, w0, k, e) = (net.dim, net.dims[0], net.freq.len(), net.emb);
        let n = x.len() / d;
        let [c_skip, c_out, c_in, c_noise] = self.precond.columns(sigma);
        let [h, z, dd] = &mut self.bufs;
        h.resize(n * w0, 0.0);
        for i in 0..n {
            let (c_in, c_noise) = (c_in[i], c_noise[i]);
            let row = &mut h[i * w0..(i + 1) * w0];
            for j in 0..d {
                row[j] = c_in * x[i * d + j];
            }
            for (q, &f) in net.freq.iter().enumerate() {
                let a = c_noise * f;
                row[d + q] = a.sin();
                row[d + k + q] = a.cos();
            }
            if e > 0 {
                let l = labels[i] as usize;
                row[d + 2 * k..].copy_from_slice(&self.table[l * e..(l + 1) * e]);
            }
        }
        let nl = self.layers.len();
        for (l, (w, b)) in self.layers.iter().enumerate() {
            let (fi, fo) = (net.dims[l], net.dims[l + 1]);
            z.resize(n * fo, 0.0);
            super::affine(z, h, w, b, n, fo, fi, false, self.par);
            if l + 1 < nl {
                h.resize(n * fo, 0.0);
                dd.resize(n * fo, 0.0);
                if matches!(self.par, Parallelism::Rayon(t) if t > 1) {
                    // Elementwise: the same bits on any number of threads.
                    let c = ROWS_PER_TASK * fo;
                    z[..n * fo].par_chunks(c).zip(h[..n * fo].par_chunks_mut(c)).zip(dd[..n * fo].par_chunks_mut(c)).for_each(|((z, h), dd)| silu(z, h, dd));
                } else {
                    silu(&z[..n * fo], &mut h[..n * fo], &mut dd[..n * fo]);
                }
            }
        }
        for i in 0..n {
            for j in i * d..(i + 1) * d {
                out[j] = c_skip[i] * x[j] + c_out[i] * z[j];
            }
        }
    }
}
