//! The U-Net (`images::unet::Unet`) on plain buffers: its training step with the backward pass
//! written out, AdamW and the EMA of the weights, and its inference forward pass for the
//! samplers. candle runs the same net as some sixty ops per pass, each allocating its output
//! and keeping a graph node, and its thread pool spins between them; here the step is a fixed
//! program of layers over buffers allocated once.
//!
//! The program is `images::unet::arch::Arch`, the same description the candle net is built
//! from; this module only runs it:
//! - [`interp`]: the interpreter, forward and backward, layer by layer, over the CPU kernels of
//!   `crate::kernels` (convolutions: Winograd for the 3×3 stride-1 layers with at least 8
//!   channels each way, else im2col / implicit + gemm; fused GroupNorm + SiLU);
//! - [`adamw`]: the optimiser and the EMA of the weights;
//! - here: the buffers, loading images and σ's coefficients, the loss, and the weights' way in
//!   and out of candle's VarMap.
//!
//! Layout: an activation is an (N, H·W, C) array, pixels in rows and channels contiguous
//! (NHWC), so a k×k convolution is im2col (contiguous runs of C values per tap) and one gemm
//! against a (k·k·C)×O weight, and GroupNorm's per-channel work vectorises across the channels
//! of a pixel. Weights are kept in that layout and turned back into candle's (O, C, k, k) when
//! stored or read as gradients.
//!
//! Every buffer's gradient is accumulated (a buffer read by several layers gets the sum).
//! Work is split per image (im2col, col2im, GroupNorm) or done by gemm, whose threading splits
//! output tiles and keeps each sum's order; per-channel sums over the batch are taken per image
//! and added in image order. So the bits do not depend on the thread count
//! (`fast_unet_bits_do_not_depend_on_threads`). Pinned to candle's autograd of
//! `images::objective::edm_losses` on the candle U-Net by
//! `engine/tests/fastunet.rs::fast_unet_matches_candle_autograd`.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use gemm::Parallelism;
use schema::image::UnetSpec;

use super::Param;
use super::image::Rows;
use crate::images::Precond;
use crate::images::unet::NULL_CLASS;
use crate::images::unet::arch::{Arch, Op, ParamSpec};
use crate::kernels::conv::wino_shape;
use crate::kernels::winograd;

mod adamw;
mod interp;

/// How a parameter is stored here relative to candle.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// The same order as candle.
    Plain,
    /// Conv weight: candle (O, C, k, k), here ((ky·k + kx)·C + c, o).
    Conv { o: usize, c: usize, k: usize },
}

impl Layout {
    fn of(p: &ParamSpec) -> Self {
        match p.conv {
            Some((o, c, k)) => Layout::Conv { o, c, k },
            None => Layout::Plain,
        }
    }

    /// candle's order → this module's.
    fn to_ours(self, v: &[f32]) -> Vec<f32> {
        match self {
            Layout::Plain => v.to_vec(),
            Layout::Conv { o, c, k } => {
                let mut out = vec![0.0; v.len()];
                for oi in 0..o {
                    for ci in 0..c {
                        for t in 0..k * k {
                            out[(t * c + ci) * o + oi] = v[(oi * c + ci) * k * k + t];
                        }
                    }
                }
                out
            }
        }
    }

    /// This module's order → candle's.
    fn to_candle(self, v: &[f32]) -> Vec<f32> {
        match self {
            Layout::Plain => v.to_vec(),
            Layout::Conv { o, c, k } => {
                let mut out = vec![0.0; v.len()];
                for oi in 0..o {
                    for ci in 0..c {
                        for t in 0..k * k {
                            out[(oi * c + ci) * k * k + t] = v[(t * c + ci) * o + oi];
                        }
                    }
                }
                out
            }
        }
    }
}

/// Preallocated U-Net for batches of up to `cap` images: the training step (when built with
/// [`FastUnet::trainer`]) or the inference pass alone ([`FastUnet::inference`]).
pub struct FastUnet {
    prog: Arch,
    precond: Precond,
    freq: Vec<f32>,
    cap: usize,
    params: Vec<Param>,
    ema: Vec<Vec<f32>>,
    ema_decay: f64,
    lr: f64,
    t: i32,
    par: Parallelism,
    train: bool,
    act: Vec<Vec<f32>>,
    grad: Vec<Vec<f32>>,
    /// μ and 1/σ per image and group, per GroupNorm layer.
    stats: Vec<Vec<f32>>,
    /// im2col columns (and their gradient).
    cols: Vec<f32>,
    /// A flipped, transposed kernel (the backward's ∂X).
    wflip: Vec<f32>,
    /// Per op: the Winograd-transformed kernel of a 3×3 stride-1 convolution that goes through
    /// `winograd` (16 × C × O, from the current weights), else empty.
    wino_v: Vec<Vec<f32>>,
    /// The Winograd passes' scratch, weight-gradient parts and summed ∂V.
    wino_scratch: Vec<f32>,
    wino_parts: Vec<f32>,
    wino_dv: Vec<f32>,
    /// Partial sums of a weight gradient.
    wparts: Vec<f32>,
    /// Whether each buffer's gradient holds a contribution yet in this backward pass.
    written: Vec<bool>,
    /// SiLU′(y) of each GroupNorm layer's output (training only; its backward's ȳ after).
    dsilu: Vec<Vec<f32>>,
    /// Per-image partial sums of per-channel gradients (GroupNorm's γ and β).
    partial: Vec<f32>,
    labels: Vec<u32>,
    /// c_in, c_skip, c_out per image of the current pass.
    coefs: [Vec<f32>; 3],
    /// Channel-major (NCHW) copies of the output and of its gradient, for images of several
    /// channels (callers' images are NCHW; the buffers NHWC).
    planar: Vec<f32>,
    planar_grad: Vec<f32>,
}

impl FastUnet {
    /// The trainer of the U-Net `spec` on h×w images of `channels` channels whose weights are in `varmap` (built by
    /// `images::unet::Unet::new`), batches of `batch`.
    #[allow(clippy::too_many_arguments)]
    pub fn trainer(spec: &UnetSpec, precond: Precond, channels: usize, h: usize, w: usize, varmap: &VarMap, batch: usize, lr: f64, ema_decay: f64) -> Result<Self> {
        Self::build(spec, precond, channels, h, w, varmap, batch, true, lr, ema_decay, candle_core::utils::get_num_threads())
    }

    /// As [`FastUnet::trainer`] with gemm on `threads` threads.
    #[allow(clippy::too_many_arguments)]
    pub fn trainer_with_threads(
        spec: &UnetSpec,
        precond: Precond,
        channels: usize,
        h: usize,
        w: usize,
        varmap: &VarMap,
        batch: usize,
        lr: f64,
        ema_decay: f64,
        threads: usize,
    ) -> Result<Self> {
        Self::build(spec, precond, channels, h, w, varmap, batch, true, lr, ema_decay, threads)
    }

    /// The inference pass alone, `cap` images per pass (larger inputs go in chunks).
    pub fn inference(spec: &UnetSpec, precond: Precond, channels: usize, h: usize, w: usize, varmap: &VarMap, cap: usize) -> Result<Self> {
        Self::build(spec, precond, channels, h, w, varmap, cap, false, 0.0, 0.0, candle_core::utils::get_num_threads())
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        spec: &UnetSpec,
        precond: Precond,
        channels: usize,
        h: usize,
        w: usize,
        varmap: &VarMap,
        cap: usize,
        train: bool,
        lr: f64,
        ema_decay: f64,
        threads: usize,
    ) -> Result<Self> {
        let prog = Arch::new(spec, channels, h, w).map_err(candle_core::Error::Msg)?;
        let cap = cap.max(1);
        let params = {
            let data = varmap.data().lock().expect("varmap lock");
            prog.params
                .iter()
                .map(|ps| {
                    let (name, len, layout) = (&ps.name, &ps.len, Layout::of(ps));
                    let var = data.get(name).ok_or_else(|| candle_core::Error::Msg(format!("U-Net variable `{name}` missing from the VarMap")))?;
                    let mut p = Param::new(var.as_tensor())?;
                    if p.w.len() != *len {
                        return Err(candle_core::Error::Msg(format!("U-Net variable `{name}` has {} values, the spec needs {len}", p.w.len())));
                    }
                    p.w = layout.to_ours(&p.w);
                    if !train {
                        (p.m, p.v, p.g) = (Vec::new(), Vec::new(), Vec::new());
                    }
                    Ok(p)
                })
                .collect::<Result<Vec<_>>>()?
        };
        let act: Vec<Vec<f32>> = prog.bufs.iter().map(|b| vec![0.0; cap * b.len()]).collect();
        let grad: Vec<Vec<f32>> = if train { prog.bufs.iter().map(|b| vec![0.0; cap * b.len()]).collect() } else { Vec::new() };
        let stats = prog.gn_groups.iter().map(|&g| vec![0.0; cap * g * 2]).collect();
        let mut cols = 0;
        let mut kernel = 0;
        let (mut wscratch, mut wpart, mut wdv) = (0, 0, 0);
        let mut wino_v = Vec::with_capacity(prog.ops.len());
        for op in &prog.ops {
            let mut v = Vec::new();
            if let Op::Conv { src, dst, k, stride, .. } = *op {
                let (s, o) = (prog.bufs[src], prog.bufs[dst]);
                if winograd::eligible(k, stride, s.c, o.c) {
                    let shape = wino_shape(s, o);
                    wscratch = wscratch.max(shape.scratch(train));
                    wpart = wpart.max(shape.part());
                    wdv = wdv.max(16 * s.c * o.c);
                    v = vec![0.0; 16 * s.c * o.c];
                } else {
                    // The forward's columns, and the backward's of ∂Y (stride 1).
                    cols = cols.max(o.pixels() * k * k * s.c).max(s.pixels() * k * k * o.c);
                    kernel = kernel.max(k * k * s.c * o.c);
                }
            }
            wino_v.push(v);
        }
        let maxc = prog.bufs.iter().map(|b| b.c).max().unwrap_or(1);
        let ema = if train { params.iter().map(|p| p.w.clone()).collect() } else { Vec::new() };
        let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        Ok(FastUnet {
            freq: crate::images::frequency_values(prog.frequencies),
            precond,
            cap,
            ema,
            ema_decay,
            lr,
            t: 0,
            par,
            train,
            act,
            grad,
            stats,
            cols: vec![0.0; cap * cols],
            wflip: if train { vec![0.0; kernel] } else { Vec::new() },
            wino_v,
            wino_scratch: vec![0.0; winograd::PARTS * wscratch],
            wino_parts: if train { vec![0.0; winograd::PARTS * wpart] } else { Vec::new() },
            wino_dv: if train { vec![0.0; wdv] } else { Vec::new() },
            wparts: if train { vec![0.0; crate::kernels::conv::WGRAD_PARTS * (kernel + maxc)] } else { Vec::new() },
            written: vec![false; prog.bufs.len()],
            dsilu: prog
                .ops
                .iter()
                .filter_map(|op| if let Op::Gn { src, .. } = op { Some(if train { vec![0.0; cap * prog.bufs[*src].len()] } else { Vec::new() }) } else { None })
                .collect(),
            partial: if train { vec![0.0; cap * 2 * maxc] } else { Vec::new() },
            labels: vec![NULL_CLASS; cap],
            coefs: Default::default(),
            planar: if prog.bufs[prog.input].c > 1 { vec![0.0; cap * prog.bufs[prog.input].len()] } else { Vec::new() },
            planar_grad: if train && prog.bufs[prog.input].c > 1 { vec![0.0; cap * prog.bufs[prog.input].len()] } else { Vec::new() },
            params,
            prog,
        })
    }

    /// Images per pass.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Values per image (channels × pixels).
    fn dim(&self) -> usize {
        self.prog.bufs[self.prog.input].len()
    }

    /// Loads the network input c_in·y, the Fourier features of c_noise and the labels of `n`
    /// images; `y` holds the noisy images.
    fn load(&mut self, y: &[f32], sigma: &[f32], labels: &[u32]) {
        let n = sigma.len();
        let d = self.dim();
        let [c_skip, c_out, c_in, c_noise] = self.precond.columns(sigma);
        let g = self.prog.bufs[self.prog.input];
        let inp = &mut self.act[self.prog.input];
        for i in 0..n {
            let (o, y) = (&mut inp[i * d..(i + 1) * d], &y[i * d..(i + 1) * d]);
            if g.c == 1 {
                o.iter_mut().zip(y).for_each(|(o, &v)| *o = c_in[i] * v);
            } else {
                // NCHW in, NHWC here.
                for (ch, plane) in y.chunks_exact(g.pixels()).enumerate() {
                    plane.iter().enumerate().for_each(|(p, &v)| o[p * g.c + ch] = c_in[i] * v);
                }
            }
        }
        let k = self.freq.len();
        let four = &mut self.act[self.prog.fourier];
        for i in 0..n {
            for (j, &f) in self.freq.iter().enumerate() {
                let a = c_noise[i] * f;
                four[i * 2 * k + j] = a.sin();
                four[i * 2 * k + k + j] = a.cos();
            }
        }
        self.labels[..n].copy_from_slice(labels);
        self.coefs = [c_in, c_skip, c_out];
    }

    /// The denoiser D(x; σ, c) = c_skip x + c_out F(c_in x; c_noise, c) of `n` = σ.len() images
    /// into `out` (labels `NULL_CLASS` for none), in passes of [`FastUnet::capacity`] images.
    pub fn denoise(&mut self, x: &[f32], sigma: &[f32], labels: &[u32], out: &mut [f32]) {
        let d = self.dim();
        let n = sigma.len();
        for lo in (0..n).step_by(self.cap) {
            let hi = (lo + self.cap).min(n);
            self.load(&x[lo * d..hi * d], &sigma[lo..hi], &labels[lo..hi]);
            self.forward(hi - lo);
            let f = output_nchw(&self.act[self.prog.output], &mut self.planar, self.prog.bufs[self.prog.output], hi - lo);
            let [_, c_skip, c_out] = &self.coefs;
            for i in 0..hi - lo {
                for j in 0..d {
                    out[(lo + i) * d + j] = c_skip[i] * x[(lo + i) * d + j] + c_out[i] * f[i * d + j];
                }
            }
        }
    }

    /// Loss mean_i w_i·mean_j (D_ij − x0_ij)² of clean images `x0` (N×D, N ≤ capacity), noise
    /// `eps`, labels (N; `NULL_CLASS` = none) and the per-image numbers `rows`, and its
    /// gradients (read with [`FastUnet::grad`]). Panics if built with [`FastUnet::inference`].
    pub fn loss_and_grad(&mut self, x0: &[f32], eps: &[f32], labels: &[u32], rows: &Rows) -> f64 {
        assert!(self.train, "FastUnet::loss_and_grad on an inference-only net");
        let n = rows.sigma.len();
        assert!(n <= self.cap && n > 0, "batch of {n} for a U-Net built for {}", self.cap);
        let d = self.dim();
        let y: Vec<f32> = (0..n * d).map(|j| x0[j] + rows.sigma[j / d] * eps[j]).collect();
        self.load(&y, &rows.sigma, labels);
        self.forward(n);
        self.written.iter_mut().for_each(|w| *w = false);
        self.written[self.prog.output] = true;
        let mut total = 0.0f64;
        {
            let g = self.prog.bufs[self.prog.output];
            let f = output_nchw(&self.act[self.prog.output], &mut self.planar, g, n);
            let df = if g.c == 1 { &mut self.grad[self.prog.output] } else { &mut self.planar_grad };
            for i in 0..n {
                let (cs, co, wi) = (rows.c_skip[i], rows.c_out[i], rows.weight[i]);
                let mut s = 0.0f64;
                let k = 2.0 * wi * co / (n * d) as f32;
                for j in i * d..(i + 1) * d {
                    let r = cs * y[j] + co * f[j] - x0[j];
                    s += (r * r) as f64;
                    df[j] = k * r;
                }
                total += wi as f64 * s / d as f64;
            }
            if g.c > 1 {
                let (src, dst) = (&self.planar_grad, &mut self.grad[self.prog.output]);
                for (src, dst) in src[..n * d].chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
                    for (ch, plane) in src.chunks_exact(g.pixels()).enumerate() {
                        plane.iter().enumerate().for_each(|(p, &v)| dst[p * g.c + ch] = v);
                    }
                }
            }
        }
        self.backward(n);
        total / n as f64
    }

    /// One step: loss and gradients, then AdamW and the EMA when the loss is finite; returns
    /// the loss before the update.
    pub fn step(&mut self, x0: &[f32], eps: &[f32], labels: &[u32], rows: &Rows, step: u64) -> f64 {
        let l = self.loss_and_grad(x0, eps, labels, rows);
        if l.is_finite() {
            self.adam_step();
            self.ema_update(step);
        }
        l
    }

    /// The gradient of the variable `name` (as the VarMap names it, in candle's layout) from
    /// the last `loss_and_grad`.
    pub fn grad(&self, name: &str) -> Option<Vec<f32>> {
        let i = self.prog.params.iter().position(|p| p.name == name)?;
        Some(Layout::of(&self.prog.params[i]).to_candle(&self.params[i].g))
    }

    /// The VarMap names of the parameters this net trains.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prog.params.iter().map(|p| p.name.as_str())
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
        for (ps, v) in self.prog.params.iter().zip(values) {
            let name = &ps.name;
            let var = data.get(name).ok_or_else(|| candle_core::Error::Msg(format!("U-Net variable `{name}` missing from the VarMap")))?;
            var.set(&Tensor::from_vec(Layout::of(ps).to_candle(v), var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// The output F of the first `n` images in the callers' layout (NCHW): the buffer `f` itself for
/// one channel, else its transpose written into `planar`.
fn output_nchw<'a>(f: &'a [f32], planar: &'a mut [f32], g: crate::kernels::conv::Grid, n: usize) -> &'a [f32] {
    let f = &f[..n * g.len()];
    if g.c == 1 {
        return f;
    }
    for (src, dst) in f.chunks_exact(g.len()).zip(planar.chunks_exact_mut(g.len())) {
        for (p, px) in src.chunks_exact(g.c).enumerate() {
            px.iter().enumerate().for_each(|(ch, &v)| dst[ch * g.pixels() + p] = v);
        }
    }
    &planar[..n * g.len()]
}
