//! The interpreter of the U-Net's layer program (`images::unet::arch::Op`) on NHWC buffers:
//! the forward pass, and the backward pass layer by layer in reverse (ḡ = ∂L/∂output):
//! - convolution: `kernels::conv` / `kernels::winograd` (∂W, ∂b, ∂X);
//! - GroupNorm + SiLU of x + s: `kernels::norm` (∂x, ∂γ, ∂β, ∂s = Σ_pixels ∂x);
//! - linear layers, SiLU, the class embedding's rows, the residual (a + b)·scale, the skip
//!   concatenation and nearest upsampling (its adjoint adds each copy back).

use gemm::Parallelism;
use rayon::prelude::*;

use super::FastUnet;
use crate::images::unet::arch::{GN_EPS, Op};
use crate::kernels::conv::{conv_forward, input_grad, weight_grad, wino_shape};
use crate::kernels::norm::{gn_backward, gn_forward};
use crate::kernels::{col_sums, mm, sigmoid, winograd};
use crate::train::fast::affine;

impl FastUnet {
    /// Runs the program forward on the first `n` images loaded.
    pub(super) fn forward(&mut self, n: usize) {
        for i in 0..self.prog.ops.len() {
            let op = self.prog.ops[i];
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
                    gn_forward(
                        &self.act[src][..n * s.len()],
                        sh,
                        &mut out[..n * s.len()],
                        dsilu,
                        &mut self.stats[stat],
                        &self.params[gamma].w,
                        &self.params[beta].w,
                        s,
                        groups,
                        GN_EPS,
                    );
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
                Op::Up { src, dst, .. } => {
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
    pub(super) fn backward(&mut self, n: usize) {
        for i in (0..self.prog.ops.len()).rev() {
            let op = self.prog.ops[i];
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
                    input_grad(dy, &mut dx[..n * s.len()], acc, &self.params[w].w, &mut self.wflip, &mut self.cols, s, o, k, stride, self.par);
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
                Op::Up { src, dst, .. } => {
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
}

/// d += g (or d = g when not `acc`).
fn add_or_set(d: &mut [f32], g: &[f32], acc: bool) {
    if acc {
        d.iter_mut().zip(g).for_each(|(d, g)| *d += g);
    } else {
        d.copy_from_slice(g);
    }
}

/// Elements per rayon task of the elementwise passes.
const CHUNK: usize = 1 << 14;

/// candle's nearest-neighbour source index of destination index `i` (src → dst sizes).
fn nearest(i: usize, src: usize, dst: usize) -> usize {
    ((i as f64 * (src as f64 / dst as f64)) as usize).min(src - 1)
}
