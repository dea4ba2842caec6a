//! The U-Net (`images::unet::Unet`) on plain buffers: its training step with the backward pass
//! written out, AdamW and the EMA of the weights, and its inference forward pass for the
//! samplers. candle runs the same net as some sixty ops per pass, each allocating its output
//! and keeping a graph node, and its thread pool spins between them; here the step is a fixed
//! program of layers over buffers allocated once.
//!
//! Layout: an activation is an (N, H·W, C) array, pixels in rows and channels contiguous
//! (NHWC), so a k×k convolution is im2col (contiguous runs of C values per tap) and one gemm
//! against a (k·k·C)×O weight, a 1×1 convolution is a gemm on the activation itself, and
//! GroupNorm's per-channel work vectorises across the channels of a pixel. Weights are kept in
//! that layout and turned back into candle's (O, C, k, k) when stored or read as gradients.
//!
//! The 3×3 stride-1 convolutions with at least 8 channels each way (nearly all of the net's
//! flops) go through `train::fast::winograd` instead: Winograd F(2×2, 3×3), forward and
//! backward in the transformed domain, 2.25× fewer multiplies; the kernel is transformed from
//! the current weights at each forward pass and reused by the backward.
//!
//! Backward, per layer (ḡ = ∂L/∂output):
//! - convolution Y = im2col(X)·W + b: ∂W = im2col(X)ᵀ ḡ (the columns are rebuilt, not kept),
//!   ∂b = Σ_rows ḡ, ∂X += col2im(ḡ Wᵀ) (im2col's adjoint: each tap's C values added back);
//! - GroupNorm + SiLU of x + s (s the block's embedding per image and channel; the formulas of
//!   `images::norm`): ȳ = ḡ σ(y)(1 + y(1 − σ(y))), ∂β = Σ ȳ, ∂γ = Σ ȳ x̂,
//!   ∂x = r(γ ȳ − mean_g(γ ȳ) − x̂ mean_g(γ ȳ x̂)), ∂s = Σ_pixels ∂x;
//! - linear layers, SiLU, the class embedding's rows, the residual (a + b)/√2, the skip
//!   concatenation and nearest upsampling (its adjoint adds each copy back).
//!
//! Every buffer's gradient is accumulated (a buffer read by several layers gets the sum).
//! Work is split per image (im2col, col2im, GroupNorm) or done by gemm, whose threading splits
//! output tiles and keeps each sum's order; per-channel sums over the batch are taken per image
//! and added in image order. So the bits do not depend on the thread count
//! (`fast_unet_bits_do_not_depend_on_threads`). Pinned to candle's autograd of
//! `images::objective::edm_losses` on the candle U-Net by
//! `engine/tests/fastmlp.rs::fast_unet_matches_candle_autograd`.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use gemm::Parallelism;
use rayon::prelude::*;
use schema::image::UnetSpec;

use super::image::Rows;
use super::winograd;
use super::{Param, adam_slices, affine, exp_f32, mm};
use crate::images::Precond;
use crate::images::unet::NULL_CLASS;

/// GroupNorm's ε (as `images::unet`).
const GN_EPS: f32 = 1e-5;

/// Elements per task of the threaded AdamW and EMA updates.
const UPDATE_CHUNK: usize = 1 << 15;

/// One task of the threaded AdamW update: matching slices of (weights, m, v, gradient).
type UpdateChunk<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32], &'a [f32]);

/// An activation's shape per image: `h`×`w` pixels of `c` channels (a vector: 1×1).
#[derive(Clone, Copy, Debug)]
struct Buf {
    h: usize,
    w: usize,
    c: usize,
}

impl Buf {
    fn pixels(&self) -> usize {
        self.h * self.w
    }
    fn len(&self) -> usize {
        self.h * self.w * self.c
    }
}

/// One layer of the program; `usize` fields name buffers (`src`, `dst`, …) or parameters
/// (`w`, `b`, `gamma`, `beta`, `table`).
#[derive(Clone, Debug)]
enum Op {
    /// k×k convolution, padding k/2, with bias; W stored (k·k·C)×O, rows (ky, kx, c).
    Conv {
        src: usize,
        dst: usize,
        k: usize,
        stride: usize,
        w: usize,
        b: usize,
    },
    /// y = x Wᵀ + b on vectors, W (out × in) as candle stores it.
    Lin {
        src: usize,
        dst: usize,
        w: usize,
        b: usize,
    },
    Silu {
        src: usize,
        dst: usize,
    },
    /// y = x + E[label].
    ClassAdd {
        src: usize,
        dst: usize,
        table: usize,
    },
    /// SiLU(GroupNorm(x + s)) with s the vector buffer `shift` per (image, channel).
    Gn {
        src: usize,
        shift: Option<usize>,
        dst: usize,
        gamma: usize,
        beta: usize,
        groups: usize,
        stat: usize,
    },
    /// y = (a + b)·scale.
    AddScale {
        a: usize,
        b: usize,
        dst: usize,
        scale: f32,
    },
    /// Channels of `a` then of `b`.
    Concat {
        a: usize,
        b: usize,
        dst: usize,
    },
    /// Nearest upsampling to the destination's size (candle's index rule).
    Up {
        src: usize,
        dst: usize,
    },
}

/// How a parameter is stored here relative to candle.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// The same order as candle.
    Plain,
    /// Conv weight: candle (O, C, k, k), here ((ky·k + kx)·C + c, o).
    Conv { o: usize, c: usize, k: usize },
}

impl Layout {
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

/// The layer program of a spec and the names and shapes of its parameters.
struct Program {
    bufs: Vec<Buf>,
    ops: Vec<Op>,
    /// (VarMap name, element count, layout).
    params: Vec<(String, usize, Layout)>,
    /// GroupNorm layers (each keeps μ and 1/σ per image and group).
    gn_groups: Vec<usize>,
    input: usize,
    fourier: usize,
    output: usize,
}

impl Program {
    fn buf(&mut self, h: usize, w: usize, c: usize) -> usize {
        self.bufs.push(Buf { h, w, c });
        self.bufs.len() - 1
    }

    fn param(&mut self, name: String, len: usize, layout: Layout) -> usize {
        self.params.push((name, len, layout));
        self.params.len() - 1
    }

    fn conv(&mut self, name: &str, src: usize, cout: usize, k: usize, stride: usize) -> usize {
        let s = self.bufs[src];
        let p = k / 2;
        let (h, w) = ((s.h + 2 * p - k) / stride + 1, (s.w + 2 * p - k) / stride + 1);
        let wi = self.param(format!("{name}.weight"), cout * s.c * k * k, Layout::Conv { o: cout, c: s.c, k });
        let bi = self.param(format!("{name}.bias"), cout, Layout::Plain);
        let dst = self.buf(h, w, cout);
        self.ops.push(Op::Conv { src, dst, k, stride, w: wi, b: bi });
        dst
    }

    fn lin(&mut self, name: &str, src: usize, out: usize) -> usize {
        let fin = self.bufs[src].c;
        let w = self.param(format!("{name}.weight"), out * fin, Layout::Plain);
        let b = self.param(format!("{name}.bias"), out, Layout::Plain);
        let dst = self.buf(1, 1, out);
        self.ops.push(Op::Lin { src, dst, w, b });
        dst
    }

    fn gn(&mut self, name: &str, src: usize, shift: Option<usize>, groups: usize) -> usize {
        let s = self.bufs[src];
        let gamma = self.param(format!("{name}.weight"), s.c, Layout::Plain);
        let beta = self.param(format!("{name}.bias"), s.c, Layout::Plain);
        let dst = self.buf(s.h, s.w, s.c);
        self.gn_groups.push(groups);
        self.ops.push(Op::Gn { src, shift, dst, gamma, beta, groups, stat: self.gn_groups.len() - 1 });
        dst
    }

    /// `images::unet::ResBlock`.
    fn block(&mut self, name: &str, x: usize, emb: usize, cout: usize, groups: usize) -> usize {
        let cin = self.bufs[x].c;
        let n1 = self.gn(&format!("{name}.norm1"), x, None, groups);
        let h1 = self.conv(&format!("{name}.conv1"), n1, cout, 3, 1);
        let e = self.lin(&format!("{name}.emb"), emb, cout);
        let n2 = self.gn(&format!("{name}.norm2"), h1, Some(e), groups);
        let h2 = self.conv(&format!("{name}.conv2"), n2, cout, 3, 1);
        let skip = if cin != cout { self.conv(&format!("{name}.skip"), x, cout, 1, 1) } else { x };
        let s = self.bufs[h2];
        let dst = self.buf(s.h, s.w, s.c);
        self.ops.push(Op::AddScale { a: h2, b: skip, dst, scale: std::f32::consts::FRAC_1_SQRT_2 });
        dst
    }

    /// The program of `images::unet::Unet::new` and `raw`, layer for layer.
    fn new(spec: &UnetSpec, h: usize, w: usize) -> std::result::Result<Self, String> {
        let (c, g) = (spec.channels, spec.groups);
        if spec.mults.is_empty() || c < 2 || g == 0 {
            return Err(format!("U-Net spec {spec:?}: needs levels, at least 2 channels and a group"));
        }
        for &m in &spec.mults {
            if !(c * m).is_multiple_of(g) || !c.is_multiple_of(g) {
                return Err(format!("U-Net: {} channels in {g} groups", c * m));
            }
        }
        let mut p = Program { bufs: Vec::new(), ops: Vec::new(), params: Vec::new(), gn_groups: Vec::new(), input: 0, fourier: 0, output: 0 };
        p.input = p.buf(h, w, 1);
        let half = c / 2;
        p.fourier = p.buf(1, 1, 2 * half);
        let conv_in = p.conv("conv_in", p.input, c, 3, 1);
        let e1 = p.lin("emb1", p.fourier, spec.emb);
        let e1s = p.buf(1, 1, spec.emb);
        p.ops.push(Op::Silu { src: e1, dst: e1s });
        let mut e2 = p.lin("emb2", e1s, spec.emb);
        if spec.class_cond {
            let table = p.param("class_emb.weight".into(), (NULL_CLASS as usize + 1) * spec.emb, Layout::Plain);
            let dst = p.buf(1, 1, spec.emb);
            p.ops.push(Op::ClassAdd { src: e2, dst, table });
            e2 = dst;
        }
        let emb = p.buf(1, 1, spec.emb);
        p.ops.push(Op::Silu { src: e2, dst: emb });
        // conv_in's parameters come first in the VarMap walk of `Unet::new`, but the order of
        // `params` only matters for the update, not for the names.
        let mut hb = conv_in;
        let mut skips = Vec::new();
        let levels = spec.mults.len();
        for (i, &m) in spec.mults.iter().enumerate() {
            for b in 0..spec.blocks {
                hb = p.block(&format!("down{i}.block{b}"), hb, emb, c * m, g);
            }
            skips.push(hb);
            if i + 1 < levels {
                let ch = p.bufs[hb].c;
                hb = p.conv(&format!("down{i}.down"), hb, ch, 3, 2);
            }
        }
        for name in ["mid0", "mid1"] {
            let ch = p.bufs[hb].c;
            hb = p.block(name, hb, emb, ch, g);
        }
        for (i, &m) in spec.mults.iter().enumerate().rev() {
            let skip = skips.pop().expect("one skip per level");
            for b in 0..spec.blocks {
                let x = if b == 0 {
                    let (s, k) = (p.bufs[hb], p.bufs[skip]);
                    if (s.h, s.w) != (k.h, k.w) {
                        return Err(format!("U-Net: level {i} is {}×{} on the way up, {}×{} on the way down", s.h, s.w, k.h, k.w));
                    }
                    let dst = p.buf(s.h, s.w, s.c + k.c);
                    p.ops.push(Op::Concat { a: hb, b: skip, dst });
                    dst
                } else {
                    hb
                };
                hb = p.block(&format!("up{i}.block{b}"), x, emb, c * m, g);
            }
            if i > 0 {
                let target = p.bufs[*skips.last().expect("a level above")];
                let ch = p.bufs[hb].c;
                let dst = p.buf(target.h, target.w, ch);
                p.ops.push(Op::Up { src: hb, dst });
                hb = p.conv(&format!("up{i}.up"), dst, ch, 3, 1);
            }
        }
        let n = p.gn("norm_out", hb, None, g);
        p.output = p.conv("conv_out", n, 1, 3, 1);
        Ok(p)
    }
}

/// Preallocated U-Net for batches of up to `cap` images: the training step (when built with
/// [`FastUnet::trainer`]) or the inference pass alone ([`FastUnet::inference`]).
pub struct FastUnet {
    prog: Program,
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
}

impl FastUnet {
    /// The trainer of the U-Net `spec` on h×w images whose weights are in `varmap` (built by
    /// `images::unet::Unet::new`), batches of `batch`.
    pub fn trainer(spec: &UnetSpec, precond: Precond, h: usize, w: usize, varmap: &VarMap, batch: usize, lr: f64, ema_decay: f64) -> Result<Self> {
        Self::build(spec, precond, h, w, varmap, batch, true, lr, ema_decay, candle_core::utils::get_num_threads())
    }

    /// As [`FastUnet::trainer`] with gemm on `threads` threads.
    #[allow(clippy::too_many_arguments)]
    pub fn trainer_with_threads(spec: &UnetSpec, precond: Precond, h: usize, w: usize, varmap: &VarMap, batch: usize, lr: f64, ema_decay: f64, threads: usize) -> Result<Self> {
        Self::build(spec, precond, h, w, varmap, batch, true, lr, ema_decay, threads)
    }

    /// The inference pass alone, `cap` images per pass (larger inputs go in chunks).
    pub fn inference(spec: &UnetSpec, precond: Precond, h: usize, w: usize, varmap: &VarMap, cap: usize) -> Result<Self> {
        Self::build(spec, precond, h, w, varmap, cap, false, 0.0, 0.0, candle_core::utils::get_num_threads())
    }

    #[allow(clippy::too_many_arguments)]
    fn build(spec: &UnetSpec, precond: Precond, h: usize, w: usize, varmap: &VarMap, cap: usize, train: bool, lr: f64, ema_decay: f64, threads: usize) -> Result<Self> {
        let prog = Program::new(spec, h, w).map_err(candle_core::Error::Msg)?;
        let cap = cap.max(1);
        let params = {
            let data = varmap.data().lock().expect("varmap lock");
            prog.params
                .iter()
                .map(|(name, len, layout)| {
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
            freq: crate::images::frequency_values(spec.channels / 2),
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
            wparts: if train { vec![0.0; WGRAD_PARTS * (kernel + maxc)] } else { Vec::new() },
            written: vec![false; prog.bufs.len()],
            dsilu: prog
                .ops
                .iter()
                .filter_map(|op| if let Op::Gn { src, .. } = op { Some(if train { vec![0.0; cap * prog.bufs[*src].len()] } else { Vec::new() }) } else { None })
                .collect(),
            partial: if train { vec![0.0; cap * 2 * maxc] } else { Vec::new() },
            labels: vec![NULL_CLASS; cap],
            coefs: Default::default(),
            params,
            prog,
        })
    }

    /// Images per pass.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Pixels per image.
    fn dim(&self) -> usize {
        self.prog.bufs[self.prog.input].len()
    }

    /// Loads the network input c_in·y, the Fourier features of c_noise and the labels of `n`
    /// images; `y` holds the noisy images.
    fn load(&mut self, y: &[f32], sigma: &[f32], labels: &[u32]) {
        let n = sigma.len();
        let d = self.dim();
        let [c_skip, c_out, c_in, c_noise] = self.precond.columns(sigma);
        let inp = &mut self.act[self.prog.input];
        for i in 0..n {
            for (o, &v) in inp[i * d..(i + 1) * d].iter_mut().zip(&y[i * d..(i + 1) * d]) {
                *o = c_in[i] * v;
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

    /// Runs the program forward on the first `n` images loaded.
    fn forward(&mut self, n: usize) {
        for i in 0..self.prog.ops.len() {
            let op = self.prog.ops[i].clone();
            match op {
                Op::Conv { src, dst, k, stride, w, b } => {
                    let (s, o) = (self.prog.bufs[src], self.prog.bufs[dst]);
                    let mut out = std::mem::take(&mut self.act[dst]);
                    if winograd::eligible(k, stride, s.c, o.c) {
                        let v = &mut self.wino_v[i];
                        winograd::kernel_transform(&self.params[w].w, v, s.c, o.c);
                        winograd::forward(&self.act[src][..n * s.len()], &mut out[..n * o.len()], v, &self.params[b].w, &mut self.wino_scratch, wino_shape(s, o), n);
                        self.act[dst] = out;
                        continue;
                    }
                    conv_forward(&self.act[src][..n * s.len()], &mut out[..n * o.len()], &mut self.cols, &self.params[w].w, &self.params[b].w, s, o, k, stride);
                    self.act[dst] = out;
                }
                Op::Lin { src, dst, w, b } => {
                    let (fi, fo) = (self.prog.bufs[src].c, self.prog.bufs[dst].c);
                    let mut out = std::mem::take(&mut self.act[dst]);
                    affine(&mut out, &self.act[src], &self.params[w].w, &self.params[b].w, n, fo, fi, true, Parallelism::None);
                    self.act[dst] = out;
                }
                Op::Silu { src, dst } => {
                    let len = n * self.prog.bufs[src].len();
                    let mut out = std::mem::take(&mut self.act[dst]);
                    for (o, &x) in out[..len].iter_mut().zip(&self.act[src][..len]) {
                        *o = x * sigmoid(x);
                    }
                    self.act[dst] = out;
                }
                Op::ClassAdd { src, dst, table } => {
                    let e = self.prog.bufs[src].c;
                    let mut out = std::mem::take(&mut self.act[dst]);
                    for i in 0..n {
                        let row = &self.params[table].w[self.labels[i] as usize * e..][..e];
                        for ((o, &x), &t) in out[i * e..(i + 1) * e].iter_mut().zip(&self.act[src][i * e..]).zip(row) {
                            *o = x + t;
                        }
                    }
                    self.act[dst] = out;
                }
                Op::Gn { src, shift, dst, gamma, beta, groups, stat } => {
                    let s = self.prog.bufs[src];
                    let mut out = std::mem::take(&mut self.act[dst]);
                    let zeros;
                    let sh: &[f32] = match shift {
                        Some(e) => &self.act[e],
                        None => {
                            zeros = vec![0.0; n * s.c];
                            &zeros
                        }
                    };
                    let dsilu = if self.train { Some(&mut self.dsilu[stat][..n * s.len()]) } else { None };
                    gn_forward(&self.act[src][..n * s.len()], sh, &mut out[..n * s.len()], dsilu, &mut self.stats[stat], &self.params[gamma].w, &self.params[beta].w, s, groups);
                    self.act[dst] = out;
                }
                Op::AddScale { a, b, dst, scale } => {
                    let len = n * self.prog.bufs[dst].len();
                    let mut out = std::mem::take(&mut self.act[dst]);
                    out[..len].par_chunks_mut(CHUNK).zip(self.act[a][..len].par_chunks(CHUNK)).zip(self.act[b][..len].par_chunks(CHUNK)).for_each(|((o, a), b)| {
                        for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                            *o = (a + b) * scale;
                        }
                    });
                    self.act[dst] = out;
                }
                Op::Concat { a, b, dst } => {
                    let (ca, cb) = (self.prog.bufs[a].c, self.prog.bufs[b].c);
                    let p = self.prog.bufs[dst].pixels();
                    let mut out = std::mem::take(&mut self.act[dst]);
                    out[..n * p * (ca + cb)].par_chunks_mut(p * (ca + cb)).zip(self.act[a].par_chunks(p * ca)).zip(self.act[b].par_chunks(p * cb)).for_each(|((o, a), b)| {
                        for ((o, a), b) in o.chunks_exact_mut(ca + cb).zip(a.chunks_exact(ca)).zip(b.chunks_exact(cb)) {
                            o[..ca].copy_from_slice(a);
                            o[ca..].copy_from_slice(b);
                        }
                    });
                    self.act[dst] = out;
                }
                Op::Up { src, dst } => {
                    let (s, o) = (self.prog.bufs[src], self.prog.bufs[dst]);
                    let mut out = std::mem::take(&mut self.act[dst]);
                    out[..n * o.len()].par_chunks_mut(o.len()).zip(self.act[src].par_chunks(s.len())).for_each(|(out, x)| {
                        for oy in 0..o.h {
                            let sy = nearest(oy, s.h, o.h);
                            for ox in 0..o.w {
                                let sx = nearest(ox, s.w, o.w);
                                let from = (sy * s.w + sx) * s.c;
                                let to = (oy * o.w + ox) * o.c;
                                out[to..to + o.c].copy_from_slice(&x[from..from + s.c]);
                            }
                        }
                    });
                    self.act[dst] = out;
                }
            }
        }
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
            let f = &self.act[self.prog.output];
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
            let f = &self.act[self.prog.output];
            let df = &mut self.grad[self.prog.output];
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
        }
        self.backward(n);
        total / n as f64
    }

    /// The gradient buffer `t` to add a layer's contribution to, and whether it already holds
    /// one (else the layer writes instead of adding, so no buffer is ever cleared in bulk);
    /// with `zero`, a buffer holding none is cleared for the first `len` values and reported
    /// as holding one (for the scatter-adds).
    fn take_grad(&mut self, t: usize, len: usize, zero: bool) -> (Vec<f32>, bool) {
        let mut g = std::mem::take(&mut self.grad[t]);
        let mut acc = self.written[t];
        if !acc && zero {
            g[..len].par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = 0.0));
            acc = true;
        }
        self.written[t] = true;
        (g, acc)
    }

    /// Backward through the program (each buffer's gradient is the sum of its readers'
    /// contributions; parameters' gradients go to their `g`).
    fn backward(&mut self, n: usize) {
        for i in (0..self.prog.ops.len()).rev() {
            let op = self.prog.ops[i].clone();
            let dst = match op {
                Op::Conv { dst, .. }
                | Op::Lin { dst, .. }
                | Op::Silu { dst, .. }
                | Op::ClassAdd { dst, .. }
                | Op::Gn { dst, .. }
                | Op::AddScale { dst, .. }
                | Op::Concat { dst, .. }
                | Op::Up { dst, .. } => dst,
            };
            if !self.written[dst] {
                // Read by nothing downstream: a zero gradient.
                let len = n * self.prog.bufs[dst].len();
                let (g, _) = self.take_grad(dst, len, true);
                self.grad[dst] = g;
            }
            match op {
                Op::Conv { src, dst, k, stride, w, b } => {
                    let (s, o) = (self.prog.bufs[src], self.prog.bufs[dst]);
                    let rows = n * o.pixels();
                    let taps = k * k * s.c;
                    let input = src == self.prog.input;
                    if winograd::eligible(k, stride, s.c, o.c) {
                        let (mut dx, acc) = if input { (Vec::new(), false) } else { self.take_grad(src, n * s.len(), false) };
                        let [pw, pb] = self.params.get_disjoint_mut([w, b]).expect("a conv's weight and bias are two parameters");
                        let dxn = if input { None } else { Some(&mut dx[..n * s.len()]) };
                        winograd::backward(
                            &self.act[src][..n * s.len()],
                            &self.grad[dst][..rows * o.c],
                            dxn,
                            acc,
                            &self.wino_v[i],
                            &mut pw.g,
                            &mut pb.g,
                            &mut self.wino_scratch,
                            &mut self.wino_parts,
                            &mut self.wino_dv,
                            wino_shape(s, o),
                            n,
                        );
                        if !input {
                            self.grad[src] = dx;
                        }
                        continue;
                    }
                    let (mut dx, acc) = if input { (Vec::new(), false) } else { self.take_grad(src, n * s.len(), stride != 1) };
                    let dy = &self.grad[dst][..rows * o.c];
                    let x = &self.act[src][..n * s.len()];
                    let [pw, pb] = self.params.get_disjoint_mut([w, b]).expect("a conv's weight and bias are two parameters");
                    weight_grad(x, dy, &mut self.cols, &mut self.wparts, &mut pw.g, &mut pb.g, s, o, k, stride);
                    if input {
                        continue;
                    }
                    let dx_n = &mut dx[..n * s.len()];
                    let wt = &self.params[w].w;
                    if k == 1 && stride == 1 {
                        // ∂X += ḡ Wᵀ, rows in fixed tasks.
                        dx_n.par_chunks_mut(CONV_ROWS * s.c).zip(dy.par_chunks(CONV_ROWS * o.c)).for_each(|(dx, dy)| {
                            mm(dx, dy, wt, dy.len() / o.c, s.c, o.c, false, true, acc, Parallelism::None);
                        });
                    } else if stride == 1 {
                        // ∂X += im2col(ḡ) W̃ with W̃[(tap, o), c] = W[(flipped tap, c), o]: the
                        // same-padded convolution of ḡ with the flipped, transposed kernel.
                        flip_kernel(wt, &mut self.wflip, k, s.c, o.c);
                        let wide = k * k * o.c;
                        let wflip = &self.wflip[..wide * s.c];
                        if let Some(per) = implicit_scratch(o, s, k, 1).filter(|&per| per * n <= self.cols.len()) {
                            dx_n.par_chunks_mut(s.len()).zip(dy.par_chunks(o.len())).zip(self.cols.par_chunks_mut(per)).for_each(|((dx, dy), scratch)| {
                                conv_implicit(dy, dx, scratch, wflip, None, acc, o, s, k);
                            });
                            self.grad[src] = dx;
                            continue;
                        }
                        dx_n.par_chunks_mut(CONV_ROWS * s.c).zip(self.cols.par_chunks_mut(CONV_ROWS * wide)).enumerate().for_each(|(i, (dx, cols))| {
                            let r = dx.len() / s.c;
                            im2col_rows(dy, &mut cols[..r * wide], o, s, k, 1, i * CONV_ROWS);
                            mm(dx, cols, wflip, r, s.c, wide, false, false, acc, Parallelism::None);
                        });
                    } else {
                        mm(&mut self.cols, dy, wt, rows, taps, o.c, false, true, false, self.par);
                        col2im(&self.cols[..rows * taps], dx_n, s, o, k, stride);
                    }
                    self.grad[src] = dx;
                }
                Op::Lin { src, dst, w, b } => {
                    let (fi, fo) = (self.prog.bufs[src].c, self.prog.bufs[dst].c);
                    let dy = &self.grad[dst][..n * fo];
                    col_sums(&mut self.params[b].g, dy, n, fo);
                    let mut gw = std::mem::take(&mut self.params[w].g);
                    mm(&mut gw, dy, &self.act[src], fo, fi, n, true, false, false, Parallelism::None);
                    self.params[w].g = gw;
                    if src == self.prog.fourier {
                        continue;
                    }
                    let (mut dx, acc) = self.take_grad(src, n * fi, false);
                    mm(&mut dx, &self.grad[dst], &self.params[w].w, n, fi, fo, false, false, acc, Parallelism::None);
                    self.grad[src] = dx;
                }
                Op::Silu { src, dst } => {
                    let len = n * self.prog.bufs[src].len();
                    let (mut dx, _) = self.take_grad(src, len, true);
                    for ((g, &x), &gy) in dx[..len].iter_mut().zip(&self.act[src]).zip(&self.grad[dst]) {
                        let s = sigmoid(x);
                        *g += gy * s * (1.0 + x * (1.0 - s));
                    }
                    self.grad[src] = dx;
                }
                Op::ClassAdd { src, dst, table } => {
                    let e = self.prog.bufs[src].c;
                    let mut gt = std::mem::take(&mut self.params[table].g);
                    gt.iter_mut().for_each(|v| *v = 0.0);
                    let (mut dx, _) = self.take_grad(src, n * e, true);
                    for i in 0..n {
                        let gy = &self.grad[dst][i * e..(i + 1) * e];
                        let l = self.labels[i] as usize;
                        for ((t, d), &g) in gt[l * e..(l + 1) * e].iter_mut().zip(&mut dx[i * e..(i + 1) * e]).zip(gy) {
                            *t += g;
                            *d += g;
                        }
                    }
                    self.params[table].g = gt;
                    self.grad[src] = dx;
                }
                Op::Gn { src, shift, dst, gamma, beta, groups, stat } => {
                    let s = self.prog.bufs[src];
                    let len = n * s.len();
                    let (mut dx, acc) = self.take_grad(src, len, false);
                    let zeros;
                    let sh: &[f32] = match shift {
                        Some(e) => &self.act[e],
                        None => {
                            zeros = vec![0.0; n * s.c];
                            &zeros
                        }
                    };
                    let mut ds = vec![0.0f32; n * s.c];
                    gn_backward(
                        acc,
                        &self.act[src][..len],
                        sh,
                        &self.grad[dst][..len],
                        &self.stats[stat],
                        &self.params[gamma].w,
                        s,
                        groups,
                        &mut dx[..len],
                        &mut ds,
                        &mut self.dsilu[stat][..len],
                        &mut self.partial[..n * 2 * s.c],
                    );
                    self.grad[src] = dx;
                    // ∂γ, ∂β: the per-image partial sums added in image order.
                    let c = s.c;
                    for (pi, off) in [(gamma, 0), (beta, c)] {
                        let g = &mut self.params[pi].g;
                        g.iter_mut().for_each(|v| *v = 0.0);
                        for i in 0..n {
                            g.iter_mut().zip(&self.partial[i * 2 * c + off..][..c]).for_each(|(a, b)| *a += b);
                        }
                    }
                    if let Some(e) = shift {
                        let (mut ge, _) = self.take_grad(e, n * s.c, true);
                        ge[..n * s.c].iter_mut().zip(&ds).for_each(|(a, b)| *a += b);
                        self.grad[e] = ge;
                    }
                }
                Op::AddScale { a, b, dst, scale } => {
                    let len = n * self.prog.bufs[dst].len();
                    for t in [a, b] {
                        let (mut dx, acc) = self.take_grad(t, len, false);
                        dx[..len].par_chunks_mut(CHUNK).zip(self.grad[dst][..len].par_chunks(CHUNK)).for_each(|(d, g)| {
                            if acc {
                                d.iter_mut().zip(g).for_each(|(d, g)| *d += g * scale);
                            } else {
                                d.iter_mut().zip(g).for_each(|(d, g)| *d = g * scale);
                            }
                        });
                        self.grad[t] = dx;
                    }
                }
                Op::Concat { a, b, dst } => {
                    let (ca, cb) = (self.prog.bufs[a].c, self.prog.bufs[b].c);
                    let p = self.prog.bufs[dst].pixels();
                    let (mut ga, acc_a) = self.take_grad(a, n * p * ca, false);
                    let (mut gb, acc_b) = self.take_grad(b, n * p * cb, false);
                    let g = &self.grad[dst][..n * p * (ca + cb)];
                    ga[..n * p * ca].par_chunks_mut(p * ca).zip(gb[..n * p * cb].par_chunks_mut(p * cb)).zip(g.par_chunks(p * (ca + cb))).for_each(|((ga, gb), g)| {
                        for ((ga, gb), g) in ga.chunks_exact_mut(ca).zip(gb.chunks_exact_mut(cb)).zip(g.chunks_exact(ca + cb)) {
                            add_or_set(ga, &g[..ca], acc_a);
                            add_or_set(gb, &g[ca..], acc_b);
                        }
                    });
                    (self.grad[a], self.grad[b]) = (ga, gb);
                }
                Op::Up { src, dst } => {
                    let (s, o) = (self.prog.bufs[src], self.prog.bufs[dst]);
                    let (mut dx, _) = self.take_grad(src, n * s.len(), true);
                    dx[..n * s.len()].par_chunks_mut(s.len()).zip(self.grad[dst][..n * o.len()].par_chunks(o.len())).for_each(|(dx, g)| {
                        for oy in 0..o.h {
                            let sy = nearest(oy, s.h, o.h);
                            for ox in 0..o.w {
                                let sx = nearest(ox, s.w, o.w);
                                let from = (oy * o.w + ox) * o.c;
                                let to = (sy * s.w + sx) * s.c;
                                dx[to..to + s.c].iter_mut().zip(&g[from..from + o.c]).for_each(|(d, g)| *d += g);
                            }
                        }
                    });
                    self.grad[src] = dx;
                }
            }
        }
    }

    /// One AdamW step (weight decay 0, as the autograd path) on the last gradients.
    pub fn adam_step(&mut self) {
        self.t += 1;
        let (t, lr) = (self.t, self.lr);
        let mut chunks: Vec<UpdateChunk> = Vec::new();
        for p in &mut self.params {
            let parts = p.w.chunks_mut(UPDATE_CHUNK).zip(p.m.chunks_mut(UPDATE_CHUNK)).zip(p.v.chunks_mut(UPDATE_CHUNK)).zip(p.g.chunks(UPDATE_CHUNK));
            chunks.extend(parts.map(|(((w, m), v), g)| (w, m, v, g)));
        }
        chunks.into_par_iter().for_each(|(w, m, v, g)| adam_slices(w, m, v, g, t, lr));
    }

    /// shadow ← d·shadow + (1 − d)·w, d = min(decay, (1 + step)/(10 + step)) (the autograd
    /// path's EMA).
    pub fn ema_update(&mut self, step: u64) {
        let dd = self.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64));
        let (a, b) = (dd as f32, (1.0 - dd) as f32);
        let mut chunks: Vec<(&mut [f32], &[f32])> = Vec::new();
        for (s, p) in self.ema.iter_mut().zip(&self.params) {
            chunks.extend(s.chunks_mut(UPDATE_CHUNK).zip(p.w.chunks(UPDATE_CHUNK)));
        }
        chunks.into_par_iter().for_each(|(s, w)| s.iter_mut().zip(w).for_each(|(s, w)| *s = *s * a + w * b));
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
        let i = self.prog.params.iter().position(|(n, _, _)| n == name)?;
        Some(self.prog.params[i].2.to_candle(&self.params[i].g))
    }

    /// The VarMap names of the parameters this net trains.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prog.params.iter().map(|(n, _, _)| n.as_str())
    }

    /// Writes the current weights into the VarMap's variables.
    pub fn store(&self, varmap: &VarMap) -> Result<()> {
        self.write(varmap, self.params.iter().map(|p| &p.w[..]))
    }

    /// Writes the EMA weights into the VarMap's variables.
    pub fn store_ema(&self, varmap: &VarMap) -> Result<()> {
        self.write(varmap, self.ema.iter().map(|v| &v[..]))
    }

    fn write<'a>(&self, varmap: &VarMap, values: impl Iterator<Item = &'a [f32]>) -> Result<()> {
        let data = varmap.data().lock().expect("varmap lock");
        for ((name, _, layout), v) in self.prog.params.iter().zip(values) {
            let var = data.get(name).ok_or_else(|| candle_core::Error::Msg(format!("U-Net variable `{name}` missing from the VarMap")))?;
            var.set(&Tensor::from_vec(layout.to_candle(v), var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// d += g (or d = g when not `acc`).
/// A convolution's [`winograd::Shape`] from its input and output buffers.
fn wino_shape(s: Buf, o: Buf) -> winograd::Shape {
    winograd::Shape { h: s.h, w: s.w, c: s.c, o: o.c }
}

fn add_or_set(d: &mut [f32], g: &[f32], acc: bool) {
    if acc {
        d.iter_mut().zip(g).for_each(|(d, g)| *d += g);
    } else {
        d.copy_from_slice(g);
    }
}

/// Elements per rayon task of the elementwise passes.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// candle's nearest-neighbour source index of destination index `i` (src → dst sizes).
fn nearest(i: usize, src: usize, dst: usize) -> usize {
    ((i as f64 * (src as f64 / dst as f64)) as usize).min(src - 1)
}

/// out[j] = Σ_i m[i·w + j] over the n rows of an n×w matrix.
fn col_sums(out: &mut [f32], m: &[f32], n: usize, w: usize) {
    out.iter_mut().for_each(|v| *v = 0.0);
    for row in m[..n * w].chunks_exact(w) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}

/// Rows per task of the convolutions: a task's columns (≤ 256 × 1,440 floats here) stay in
/// the core's L2 cache between im2col and gemm. Fixed, so the bits do not depend on the
/// thread count.
const CONV_ROWS: usize = 256;

/// Partial sums of a weight gradient (fixed, for the same reason), added in order.
const WGRAD_PARTS: usize = 4;

/// Rows `row0..row0 + r` (r = cols.len() / taps; global over the batch: image·pixels + pixel)
/// of the im2col matrix of a k×k, padding k/2 convolution of `x` ((N, s) NHWC) with output
/// size `o`: per output pixel its taps (ky, kx, c), zeros outside the image.
fn im2col_rows(x: &[f32], cols: &mut [f32], s: Buf, o: Buf, k: usize, stride: usize, row0: usize) {
    let taps = k * k * s.c;
    let pad = (k / 2) as isize;
    let po = o.pixels();
    for (j, row) in cols.chunks_exact_mut(taps).enumerate() {
        let g = row0 + j;
        let (img, p) = (g / po, g % po);
        let (oy, ox) = (p / o.w, p % o.w);
        let x = &x[img * s.len()..(img + 1) * s.len()];
        for ky in 0..k {
            let iy = (oy * stride + ky) as isize - pad;
            let dst = &mut row[ky * k * s.c..(ky + 1) * k * s.c];
            if iy < 0 || iy >= s.h as isize {
                dst.iter_mut().for_each(|v| *v = 0.0);
                continue;
            }
            let ix0 = (ox * stride) as isize - pad;
            if stride == 1 && ix0 >= 0 && ix0 + k as isize <= s.w as isize {
                // The k taps of this row are k adjacent pixels: one copy.
                let from = (iy as usize * s.w + ix0 as usize) * s.c;
                copy(dst, &x[from..from + k * s.c]);
                continue;
            }
            for kx in 0..k {
                let ix = ix0 + kx as isize;
                let d = &mut dst[kx * s.c..(kx + 1) * s.c];
                if ix < 0 || ix >= s.w as isize {
                    d.iter_mut().for_each(|v| *v = 0.0);
                } else {
                    let from = (iy as usize * s.w + ix as usize) * s.c;
                    copy(d, &x[from..from + s.c]);
                }
            }
        }
    }
}

/// `dst` ← `src` (equal lengths) as an inlined loop: the runs im2col copies are a few hundred
/// bytes, where a `memmove` call costs more than the copy.
#[inline(always)]
fn copy(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

/// Y = im2col(X) W + b (a 1×1 convolution: X W + b) in tasks of [`CONV_ROWS`] output rows,
/// each building its columns in its part of `cols` and multiplying them on its own.
#[allow(clippy::too_many_arguments)]
fn conv_forward(x: &[f32], y: &mut [f32], cols: &mut [f32], w: &[f32], b: &[f32], s: Buf, o: Buf, k: usize, stride: usize) {
    let taps = k * k * s.c;
    if k == 1 && stride == 1 {
        y.par_chunks_mut(CONV_ROWS * o.c).zip(x.par_chunks(CONV_ROWS * s.c)).for_each(|(y, a)| {
            mm(y, a, w, y.len() / o.c, o.c, taps, false, false, false, Parallelism::None);
            add_bias(y, b);
        });
        return;
    }
    let n = x.len() / s.len();
    if let Some(per) = implicit_scratch(s, o, k, stride).filter(|&per| per * n <= cols.len()) {
        y.par_chunks_mut(o.len()).zip(x.par_chunks(s.len())).zip(cols.par_chunks_mut(per)).for_each(|((y, x), scratch)| {
            conv_implicit(x, y, scratch, w, Some(b), false, s, o, k);
        });
        return;
    }
    y.par_chunks_mut(CONV_ROWS * o.c).zip(cols.par_chunks_mut(CONV_ROWS * taps)).enumerate().for_each(|(i, (y, cols))| {
        let r = y.len() / o.c;
        im2col_rows(x, &mut cols[..r * taps], s, o, k, stride, i * CONV_ROWS);
        mm(y, cols, w, r, o.c, taps, false, false, false, Parallelism::None);
        add_bias(y, b);
    });
}

/// Each row of `y` (O values) plus b.
fn add_bias(y: &mut [f32], b: &[f32]) {
    for row in y.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

/// Scratch floats per image of [`conv_implicit`], where that path is the faster one: stride 1,
/// k > 1, images at least 16 pixels wide (the padded grid wastes (W + k − 1)/W of the
/// products) and at least 16 channels in.
fn implicit_scratch(s: Buf, o: Buf, k: usize, stride: usize) -> Option<usize> {
    (stride == 1 && k > 1 && s.w >= 16 && s.c >= 16).then(|| {
        let wp = s.w + k - 1;
        (s.h * wp + k) * s.c + s.h * wp * o.c
    })
}

/// One image's k×k, stride-1 convolution without im2col: the image is copied once into rows
/// padded to W + k − 1 columns, and each tap (ky, kx) is one product of the (O × C) kernel
/// slice with a contiguous run of that buffer (the padded pixels shifted by the tap, read in
/// place: gemm multiplies it unpacked), added into an output grid of the same padded width
/// whose k − 1 extra columns are dropped when the valid pixels (plus bias) are copied out.
/// Output rows whose tap falls above or below the image are left out of that tap's product.
/// With `b`, y = conv + b; without, y = conv, or y += conv when `acc` (the backward's ∂X).
#[allow(clippy::too_many_arguments)]
fn conv_implicit(x: &[f32], y: &mut [f32], scratch: &mut [f32], w: &[f32], b: Option<&[f32]>, acc: bool, s: Buf, o: Buf, k: usize) {
    let (c, oc, p) = (s.c, o.c, k / 2);
    let wp = s.w + k - 1;
    let (xp, grid) = scratch.split_at_mut((s.h * wp + k) * c);
    let grid = &mut grid[..s.h * wp * oc];
    for (iy, row) in xp[..s.h * wp * c].chunks_exact_mut(wp * c).enumerate() {
        row[..p * c].iter_mut().for_each(|v| *v = 0.0);
        row[p * c..(p + s.w) * c].copy_from_slice(&x[iy * s.w * c..(iy + 1) * s.w * c]);
        row[(p + s.w) * c..].iter_mut().for_each(|v| *v = 0.0);
    }
    xp[s.h * wp * c..].iter_mut().for_each(|v| *v = 0.0);
    // The middle row of taps covers every output row: it goes first and writes the grid.
    let order = (0..k).map(|kx| (p, kx)).chain((0..k).filter(|&ky| ky != p).flat_map(|ky| (0..k).map(move |kx| (ky, kx))));
    for (i, (ky, kx)) in order.enumerate() {
        let y0 = p.saturating_sub(ky);
        let y1 = (s.h + p).saturating_sub(ky).min(s.h);
        if y1 <= y0 {
            continue;
        }
        let cols = (y1 - y0) * wp;
        let src = ((y0 + ky - p) * wp + kx) * c;
        let tap = (ky * k + kx) * c * oc;
        assert!(src + (cols - 1) * c + c <= xp.len() && y0 * wp * oc + cols * oc <= grid.len() && tap + c * oc <= w.len());
        // SAFETY: the assert bounds every index gemm touches: dst (O × cols) at column stride
        // O, lhs the (O × C) slice at column stride O, rhs (C × cols) at column stride C.
        unsafe {
            gemm::gemm(
                oc,
                cols,
                c,
                grid.as_mut_ptr().add(y0 * wp * oc),
                oc as isize,
                1,
                i > 0,
                w.as_ptr().add(tap),
                oc as isize,
                1,
                xp.as_ptr().add(src),
                c as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
    for (oy, out) in y.chunks_exact_mut(o.w * oc).enumerate() {
        let g = &grid[oy * wp * oc..(oy * wp + o.w) * oc];
        match (b, acc) {
            (Some(b), _) => {
                for (out, g) in out.chunks_exact_mut(oc).zip(g.chunks_exact(oc)) {
                    out.iter_mut().zip(g).zip(b).for_each(|((v, g), b)| *v = g + b);
                }
            }
            (None, true) => out.iter_mut().zip(g).for_each(|(v, g)| *v += g),
            (None, false) => out.copy_from_slice(g),
        }
    }
}

/// ∂W = im2col(X)ᵀ ḡ ((k·k·C) × O) and ∂b = Σ_rows ḡ as [`WGRAD_PARTS`] partial sums of ∂Wᵀ = ḡᵀ im2col(X) over
/// fixed runs of [`CONV_ROWS`]-row tasks (each task's columns built in its part of `cols`),
/// run at once and added in order.
#[allow(clippy::too_many_arguments)]
fn weight_grad(x: &[f32], dy: &[f32], cols: &mut [f32], parts: &mut [f32], gw: &mut [f32], gb: &mut [f32], s: Buf, o: Buf, k: usize, stride: usize) {
    let n = x.len() / s.len();
    if let Some(per) = implicit_scratch(s, o, k, stride) {
        let np = WGRAD_PARTS.min(n).max(1);
        if np * per <= cols.len() {
            return weight_grad_implicit(x, dy, cols, parts, gw, gb, s, o, k, np, per);
        }
    }
    let taps = k * k * s.c;
    let rows = dy.len() / o.c;
    let tasks = rows.div_ceil(CONV_ROWS);
    let np = WGRAD_PARTS.min(tasks).max(1);
    let one = k == 1 && stride == 1;
    // Each part: ∂Wᵀ (O × taps), then ∂b (O).
    let size = o.c * taps + o.c;
    // Part p takes tasks [p·tasks/np, (p+1)·tasks/np): hand each its run of `cols`.
    let mut runs: Vec<(usize, usize, &mut [f32], &mut [f32])> = Vec::with_capacity(np);
    let (mut rest, mut prest) = (&mut cols[..], &mut parts[..np * size]);
    for p in 0..np {
        let (t0, t1) = (p * tasks / np, (p + 1) * tasks / np);
        let len = if one { 0 } else { ((t1 * CONV_ROWS).min(rows) - t0 * CONV_ROWS) * taps };
        let (mine, r) = std::mem::take(&mut rest).split_at_mut(len);
        let (part, pr) = std::mem::take(&mut prest).split_at_mut(size);
        rest = r;
        prest = pr;
        runs.push((t0, t1, mine, part));
    }
    runs.into_par_iter().for_each(|(t0, t1, mine, part)| {
        for t in t0..t1 {
            let (lo, hi) = (t * CONV_ROWS, ((t + 1) * CONV_ROWS).min(rows));
            let a: &[f32] = if one {
                &x[lo * s.c..hi * s.c]
            } else {
                let c = &mut mine[(lo - t0 * CONV_ROWS) * taps..(hi - t0 * CONV_ROWS) * taps];
                im2col_rows(x, c, s, o, k, stride, lo);
                c
            };
            mm(part, &dy[lo * o.c..hi * o.c], a, o.c, taps, hi - lo, true, false, t > t0, Parallelism::None);
        }
        let bias = &mut part[o.c * taps..];
        bias.iter_mut().for_each(|v| *v = 0.0);
        for row in dy[t0 * CONV_ROWS * o.c..(t1 * CONV_ROWS).min(rows) * o.c].chunks_exact(o.c) {
            bias.iter_mut().zip(row).for_each(|(b, v)| *b += v);
        }
    });
    for (oi, v) in gb.iter_mut().enumerate() {
        *v = (0..np).map(|p| parts[p * size + o.c * taps + oi]).fold(0.0, |a, b| a + b);
    }
    // ∂W[t, o] = Σ_p part_p[o, t].
    for (t, row) in gw.chunks_exact_mut(o.c).enumerate() {
        for (oi, v) in row.iter_mut().enumerate() {
            *v = (0..np).map(|p| parts[p * size + oi * taps + t]).fold(0.0, |a, b| a + b);
        }
    }
}

/// [`weight_grad`] without im2col, for the shapes of [`conv_implicit`]: `np` fixed runs of
/// images, each image's x padded and ḡ laid out on the same padded grid (zeros in the extra
/// columns), and per tap ∂W_tap (C × O) += (x shifted by the tap)ᵀ ḡ over the rows the tap
/// reaches, one product each, unpacked; the runs' sums added in order.
#[allow(clippy::too_many_arguments)]
fn weight_grad_implicit(x: &[f32], dy: &[f32], cols: &mut [f32], parts: &mut [f32], gw: &mut [f32], gb: &mut [f32], s: Buf, o: Buf, k: usize, np: usize, per: usize) {
    let n = x.len() / s.len();
    let (c, oc, p) = (s.c, o.c, k / 2);
    let wp = s.w + k - 1;
    let size = k * k * c * oc + oc;
    parts[..np * size].par_chunks_mut(size).zip(cols[..np * per].par_chunks_mut(per)).enumerate().for_each(|(pi, (part, scratch))| {
        let (xp, grid) = scratch.split_at_mut((s.h * wp + k) * c);
        let grid = &mut grid[..s.h * wp * oc];
        let (dw, db) = part.split_at_mut(k * k * c * oc);
        let (i0, i1) = (pi * n / np, (pi + 1) * n / np);
        for img in i0..i1 {
            let x = &x[img * s.len()..(img + 1) * s.len()];
            let dy = &dy[img * o.len()..(img + 1) * o.len()];
            for (iy, row) in xp[..s.h * wp * c].chunks_exact_mut(wp * c).enumerate() {
                row[..p * c].iter_mut().for_each(|v| *v = 0.0);
                row[p * c..(p + s.w) * c].copy_from_slice(&x[iy * s.w * c..(iy + 1) * s.w * c]);
                row[(p + s.w) * c..].iter_mut().for_each(|v| *v = 0.0);
            }
            xp[s.h * wp * c..].iter_mut().for_each(|v| *v = 0.0);
            for (oy, row) in grid.chunks_exact_mut(wp * oc).enumerate() {
                row[..o.w * oc].copy_from_slice(&dy[oy * o.w * oc..(oy + 1) * o.w * oc]);
                row[o.w * oc..].iter_mut().for_each(|v| *v = 0.0);
            }
            for ky in 0..k {
                let y0 = p.saturating_sub(ky);
                let y1 = (s.h + p).saturating_sub(ky).min(s.h);
                if y1 <= y0 {
                    continue;
                }
                for kx in 0..k {
                    let rows = (y1 - y0) * wp;
                    let src = ((y0 + ky - p) * wp + kx) * c;
                    let tap = (ky * k + kx) * c * oc;
                    let first = img == i0;
                    assert!(src + (rows - 1) * c + c <= xp.len() && y0 * wp * oc + rows * oc <= grid.len() && tap + c * oc <= dw.len());
                    // SAFETY: the assert bounds every index: dst (C × O) row-major, lhs
                    // (C × rows) at column stride C, rhs (rows × O) row-major.
                    unsafe {
                        gemm::gemm(
                            c,
                            oc,
                            rows,
                            dw.as_mut_ptr().add(tap),
                            1,
                            oc as isize,
                            !first,
                            xp.as_ptr().add(src),
                            c as isize,
                            1,
                            grid.as_ptr().add(y0 * wp * oc),
                            1,
                            oc as isize,
                            1.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
            }
            if img == i0 {
                db.iter_mut().for_each(|v| *v = 0.0);
            }
            for row in dy.chunks_exact(oc) {
                db.iter_mut().zip(row).for_each(|(b, v)| *b += v);
            }
        }
    });
    gw.copy_from_slice(&parts[..size - oc]);
    gb.copy_from_slice(&parts[size - oc..size]);
    for q in 1..np {
        gw.iter_mut().zip(&parts[q * size..q * size + size - oc]).for_each(|(a, b)| *a += b);
        gb.iter_mut().zip(&parts[q * size + size - oc..(q + 1) * size]).for_each(|(a, b)| *a += b);
    }
}

/// W̃[(ky·k + kx)·O + o, c] = W[((k−1−ky)·k + (k−1−kx))·C + c, o] of a k×k kernel W
/// ((k·k·C) × O) into `out` ((k·k·O) × C).
fn flip_kernel(w: &[f32], out: &mut [f32], k: usize, c: usize, o: usize) {
    let t = k * k;
    for tap in 0..t {
        let from = t - 1 - tap;
        for ci in 0..c {
            let row = &w[(from * c + ci) * o..][..o];
            for (oi, &v) in row.iter().enumerate() {
                out[(tap * o + oi) * c + ci] = v;
            }
        }
    }
}

/// im2col's adjoint: each tap's values added back to their source pixel of `dx`.
fn col2im(cols: &[f32], dx: &mut [f32], s: Buf, o: Buf, k: usize, stride: usize) {
    let taps = k * k * s.c;
    let pad = (k / 2) as isize;
    dx.par_chunks_mut(s.len()).zip(cols.par_chunks(o.pixels() * taps)).for_each(|(dx, cols)| {
        for oy in 0..o.h {
            for ox in 0..o.w {
                let row = &cols[(oy * o.w + ox) * taps..][..taps];
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - pad;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - pad;
                        if ix < 0 || ix >= s.w as isize {
                            continue;
                        }
                        let to = (iy as usize * s.w + ix as usize) * s.c;
                        dx[to..to + s.c].iter_mut().zip(&row[(ky * k + kx) * s.c..][..s.c]).for_each(|(d, v)| *d += v);
                    }
                }
            }
        }
    });
}

/// SiLU(GroupNorm(x + s)) per image (x NHWC of shape `b`, s (N, C)); keeps μ and 1/σ per
/// (image, group) in `stats`.
#[allow(clippy::too_many_arguments)]
fn gn_forward(x: &[f32], shift: &[f32], out: &mut [f32], dsilu: Option<&mut [f32]>, stats: &mut [f32], gamma: &[f32], beta: &[f32], b: Buf, groups: usize) {
    let len = b.len();
    let mut none = [];
    let (dsilu, dlen) = match dsilu {
        Some(d) => (d, len),
        None => (&mut none[..], 0),
    };
    // Without SiLU′ to keep (inference), each image gets an empty slice.
    let (c, p) = (b.c, b.pixels());
    let cg = c / groups;
    let m = (p * cg) as f64;
    let n = x.len() / len;
    let mut dchunks: Vec<&mut [f32]> = if dlen > 0 { dsilu.chunks_mut(dlen).collect() } else { (0..n).map(|_| &mut [][..]).collect() };
    out.par_chunks_mut(len).zip(x.par_chunks(len)).zip(shift.par_chunks(c)).zip(stats.par_chunks_mut(2 * groups)).zip(dchunks.par_iter_mut()).for_each(
        |((((out, x), sh), st), ds)| {
            let mut sum = vec![0.0f32; c];
            for px in x.chunks_exact(c) {
                sum.iter_mut().zip(px).for_each(|(s, v)| *s += v);
            }
            let mut off = vec![0.0f32; c];
            for g in 0..groups {
                let r = g * cg..(g + 1) * cg;
                let mean = (sum[r.clone()].iter().map(|&v| v as f64).sum::<f64>() + p as f64 * sh[r.clone()].iter().map(|&v| v as f64).sum::<f64>()) / m;
                st[2 * g] = mean as f32;
                for k in r {
                    off[k] = sh[k] - mean as f32;
                }
            }
            let mut sq = vec![0.0f32; c];
            for px in x.chunks_exact(c) {
                for ((s, &v), &o) in sq.iter_mut().zip(px).zip(&off) {
                    let d = v + o;
                    *s += d * d;
                }
            }
            let (mut a, mut bb) = (vec![0.0f32; c], vec![0.0f32; c]);
            for g in 0..groups {
                let r = g * cg..(g + 1) * cg;
                let var = sq[r.clone()].iter().map(|&v| v as f64).sum::<f64>() / m;
                let rs = (1.0 / (var + GN_EPS as f64).sqrt()) as f32;
                st[2 * g + 1] = rs;
                for k in r {
                    a[k] = gamma[k] * rs;
                    bb[k] = beta[k] + off[k] * a[k];
                }
            }
            if ds.is_empty() {
                for (o, px) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    for (((o, &v), &a), &b) in o.iter_mut().zip(px).zip(&a).zip(&bb) {
                        let y = v * a + b;
                        *o = y * sigmoid(y);
                    }
                }
            } else {
                for ((o, px), d) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(ds.chunks_exact_mut(c)) {
                    for ((((o, &v), &a), &b), d) in o.iter_mut().zip(px).zip(&a).zip(&bb).zip(d) {
                        let y = v * a + b;
                        let s = sigmoid(y);
                        *o = y * s;
                        *d = s * (1.0 + y * (1.0 - s));
                    }
                }
            }
        },
    );
}

/// The backward of [`gn_forward`]: adds ∂x into `dx` (writes it when not `acc`), writes ∂s
/// (N, C) and the per-image partial sums [∂γ; ∂β] (N × 2C) into `partial`; `dsilu` holds
/// the forward's SiLU′(y) and is overwritten with ȳ.
#[allow(clippy::too_many_arguments)]
fn gn_backward(
    acc: bool,
    x: &[f32],
    shift: &[f32],
    dout: &[f32],
    stats: &[f32],
    gamma: &[f32],
    b: Buf,
    groups: usize,
    dx: &mut [f32],
    ds: &mut [f32],
    dsilu: &mut [f32],
    partial: &mut [f32],
) {
    let (c, p) = (b.c, b.pixels());
    let cg = c / groups;
    let m = (p * cg) as f32;
    dx.par_chunks_mut(b.len())
        .zip(x.par_chunks(b.len()))
        .zip(dout.par_chunks(b.len()))
        .zip(dsilu.par_chunks_mut(b.len()))
        .zip(shift.par_chunks(c))
        .zip(stats.par_chunks(2 * groups))
        .zip(ds.par_chunks_mut(c))
        .zip(partial.par_chunks_mut(2 * c))
        .for_each(|(((((((dx, x), dout), yb), sh), st), ds), part)| {
            let (mut off, mut r) = (vec![0.0f32; c], vec![0.0f32; c]);
            for k in 0..c {
                let g = k / cg;
                off[k] = sh[k] - st[2 * g];
                r[k] = st[2 * g + 1];
            }
            let (dg, db) = part.split_at_mut(c);
            dg.iter_mut().for_each(|v| *v = 0.0);
            db.iter_mut().for_each(|v| *v = 0.0);
            for ((yb, px), go) in yb.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dout.chunks_exact(c)) {
                for k in 0..c {
                    let xh = (px[k] + off[k]) * r[k];
                    let v = go[k] * yb[k];
                    yb[k] = v;
                    db[k] += v;
                    dg[k] += v * xh;
                }
            }
            let (mut m1, mut m2) = (vec![0.0f32; c], vec![0.0f32; c]);
            for g in 0..groups {
                let rg = g * cg..(g + 1) * cg;
                let a: f32 = rg.clone().map(|k| gamma[k] * db[k]).sum::<f32>() / m;
                let bsum: f32 = rg.clone().map(|k| gamma[k] * dg[k]).sum::<f32>() / m;
                for k in rg {
                    m1[k] = a;
                    m2[k] = bsum;
                }
            }
            ds.iter_mut().for_each(|v| *v = 0.0);
            for ((d, px), yb) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(yb.chunks_exact(c)) {
                for k in 0..c {
                    let xh = (px[k] + off[k]) * r[k];
                    let v = r[k] * (gamma[k] * yb[k] - m1[k] - xh * m2[k]);
                    d[k] = if acc { d[k] + v } else { v };
                    ds[k] += v;
                }
            }
        });
}
