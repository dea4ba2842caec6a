//! Hand-derived training steps for MLP score nets, and their inference forward pass: forward,
//! backward and Adam in plain Rust over preallocated buffers, with matrix products by `gemm`
//! (the kernel candle itself uses) and a fused, vectorisable SiLU/sigmoid. They replace candle's
//! autograd for the hottest loops, where per-op allocation and graph bookkeeping, not FLOPs,
//! dominated. The candle model stays the source of truth for evaluation: parameters are copied
//! in at construction and written back with `store`.
//!
//! - [`dsm`]: multi-σ DSM (λ(σ) = σ²), the batch split over threads;
//! - [`ssm`]: SSM / SSM-VR with the tangent rows stacked under the primal rows;
//! - [`ism`]: exact ISM on the closed-form trace (depth 2);
//! - [`forward`]: S(x, σ) for the samplers;
//! - [`image`]: EDM's loss for the class-conditional image MLP (`images::mlp`), with AdamW and
//!   the EMA of the weights;
//! - [`unet`]: the same for the U-Net (`images::unet`) on NHWC buffers, and its inference pass.
//!
//! The kernels they share (gemm, convolutions, GroupNorm + SiLU, Adam, EMA) live in
//! `crate::kernels`.
//!
//! Architecture Invariant: each step is pinned to candle's autograd of the same loss by tests
//! (`engine/tests/fastmlp.rs`).

use candle_core::{Device, Result, Tensor};
use gemm::Parallelism;

use crate::models::layers::Dense;
use crate::models::mlp::MlpScore;
use schema::trial::Activation;

/// Rows per slice of a batch. The number of slices depends on the batch size only, never on
/// the thread count, so a trial's numbers do not depend on how many threads run it.
pub const SLICE_ROWS: usize = 256;

/// Slices of a batch of `n` points: one per `SLICE_ROWS` rows, at least one, at most 16.
pub fn slices_for(n: usize) -> usize {
    (n / SLICE_ROWS).clamp(1, 16)
}

pub mod dsm;
pub mod forward;
pub mod image;
pub mod ism;
pub mod ssm;
pub mod unet;

pub use crate::kernels::exp_f32;
use crate::kernels::optim::adam_slices;
use crate::kernels::{col_sums, mm};

pub use dsm::FastDsm;
pub use forward::FastForward;
pub use image::FastImageMlp;
pub use ism::FastIsm;
pub use ssm::FastSsm;

/// A dense layer's pre-activation for `n` rows: `z[..n·fo]` = h·op(W) + b, with h n×`fi`,
/// W `fo`×`fi` when `wt` (as stored by the trainers) or `fi`×`fo` (transposed, as the
/// inference passes keep it), b of length `fo`.
#[allow(clippy::too_many_arguments)]
fn affine(z: &mut [f32], h: &[f32], w: &[f32], b: &[f32], n: usize, fo: usize, fi: usize, wt: bool, par: Parallelism) {
    for row in z[..n * fo].chunks_exact_mut(fo) {
        row.copy_from_slice(b);
    }
    mm(z, h, w, n, fo, fi, false, wt, true, par);
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

/// a(z), a'(z) and a''(z).
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

/// `buf` with at least `len` elements (contents unspecified).
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
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

/// Adam (candle's AdamW formula with weight decay 0, β = (0.9, 0.999), ε = 1e-8).
fn adam(params: &mut [(Param, Param)], t: i32, lr: f64) {
    adam_each(params.iter_mut().flat_map(|(w, b)| [w, b]), t, lr);
}

/// [`adam`] over any parameters.
fn adam_each<'a>(params: impl Iterator<Item = &'a mut Param>, t: i32, lr: f64) {
    for p in params {
        adam_slices(&mut p.w, &mut p.m, &mut p.v, &p.g, t, lr);
    }
}

/// Writes parameters back into the candle model's variables.
fn store(params: &[(Param, Param)], model: &MlpScore, vars: &candle_nn::VarMap) -> Result<()> {
    let data = vars.data().lock().expect("varmap lock");
    let layers: Vec<&Dense> = model.layers.iter().chain(std::iter::once(&model.out)).collect();
    for (l, (w, b)) in params.iter().enumerate() {
        for (p, t) in [(w, &layers[l].w), (b, &layers[l].b)] {
            let var = data.values().find(|v| v.as_tensor().id() == t.id()).expect("layer tensor is a VarMap variable");
            var.set(&Tensor::from_slice(&p.w, t.shape(), &Device::Cpu)?)?;
        }
    }
    Ok(())
}
