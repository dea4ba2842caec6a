//! GroupNorm (with its per-channel affine) followed by SiLU, fused, with its hand-derived
//! backward, in one place: on NHWC buffers for the plain-buffer U-Net ([`gn_forward`],
//! [`gn_backward`]) and on NCHW tensors' data for the candle custom op `images::norm`
//! ([`nchw_forward`], [`nchw_backward`]).
//!
//! Per image n and group g of M = (C/G)·H·W values of x + s (s a per-(image, channel) shift,
//! the U-Net's embedding; zero for none): μ, σ² (biased), r = 1/√(σ² + ε), x̂ = (x + s − μ) r,
//! y = γ_c x̂ + β_c, out = SiLU(y) = y σ(y). Backward from ḡ = ∂L/∂out: ȳ = ḡ σ(y)(1 + y(1 − σ(y))),
//! ∂β = Σ ȳ, ∂γ = Σ ȳ x̂, ∂x = r(γ ȳ − mean_g(γ ȳ) − x̂ mean_g(γ ȳ x̂)), ∂s[n, c] = Σ_pixels ∂x.
//! Statistics are summed in f64; per-channel sums are taken per image and added in image order
//! by the callers, so the bits do not depend on the thread count. The two layouts sum in
//! different orders (and the NCHW one uses libm's exp, as candle's SiLU), so they agree to
//! rounding, not to the bit.

use rayon::prelude::*;

use super::conv::Grid;
use super::{sigmoid, sigmoid_libm};

/// SiLU(GroupNorm(x + s)) per image (x NHWC of shape `b`, s (N, C)); keeps μ and 1/σ per
/// (image, group) in `stats`.
#[allow(clippy::too_many_arguments)]
pub fn gn_forward(x: &[f32], shift: &[f32], out: &mut [f32], dsilu: Option<&mut [f32]>, stats: &mut [f32], gamma: &[f32], beta: &[f32], b: Grid, groups: usize, eps: f32) {
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
                let rs = (1.0 / (var + eps as f64).sqrt()) as f32;
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
pub fn gn_backward(
    acc: bool,
    x: &[f32],
    shift: &[f32],
    dout: &[f32],
    stats: &[f32],
    gamma: &[f32],
    b: Grid,
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

/// Mean and 1/√(var + ε) of one NCHW group's values x + s (channel k's `hw` values shifted by
/// s[k]; sums in f64).
fn nchw_stats(x: &[f32], s: &[f32], hw: usize, eps: f32) -> (f32, f32) {
    let m = x.len() as f64;
    let vals = || x.chunks(hw).zip(s).flat_map(|(x, &s)| x.iter().map(move |&v| (v + s) as f64));
    let mean = vals().sum::<f64>() / m;
    let var = vals().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// The NCHW forward: x (N, C, hw), shift (N, C), γ and β (C) → `out` (N, C, hw); SiLU after
/// the norm when `silu`.
#[allow(clippy::too_many_arguments)]
pub fn nchw_forward(x: &[f32], shift: &[f32], gamma: &[f32], beta: &[f32], c: usize, hw: usize, groups: usize, eps: f32, silu: bool, out: &mut [f32]) {
    let (img, cg) = (c * hw, c / groups);
    let group = cg * hw;
    if img == 0 {
        return;
    }
    out.par_chunks_mut(img).zip(x.par_chunks(img)).zip(shift.par_chunks(c)).for_each(|((o, x), sh)| {
        for (g, (o, x)) in o.chunks_mut(group).zip(x.chunks(group)).enumerate() {
            let sh = &sh[g * cg..(g + 1) * cg];
            let (mean, r) = nchw_stats(x, sh, hw, eps);
            for (k, (o, x)) in o.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
                let ch = g * cg + k;
                let a = gamma[ch] * r;
                let b = beta[ch] + (sh[k] - mean) * a;
                for (o, &x) in o.iter_mut().zip(x) {
                    let y = x * a + b;
                    *o = if silu { y * sigmoid_libm(y) } else { y };
                }
            }
        }
    });
}

/// The NCHW backward: from x, shift, ḡ = `dout`, γ, β, writes ∂x into `dx` (N, C, hw) and per
/// image [∂s (C); ∂γ (C); ∂β (C)] into `partial` (N × 3C).
#[allow(clippy::too_many_arguments)]
pub fn nchw_backward(
    x: &[f32],
    shift: &[f32],
    dout: &[f32],
    gamma: &[f32],
    beta: &[f32],
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    silu: bool,
    dx: &mut [f32],
    partial: &mut [f32],
) {
    let (img, cg) = (c * hw, c / groups);
    let group = cg * hw;
    if img == 0 {
        return;
    }
    dx.par_chunks_mut(img).zip(partial.par_chunks_mut(3 * c)).zip(x.par_chunks(img).zip(dout.par_chunks(img))).zip(shift.par_chunks(c)).for_each(
        |(((dx, part), (x, dout)), sh)| {
            let (ds, part) = part.split_at_mut(c);
            let (dgamma, dbeta) = part.split_at_mut(c);
            for g in 0..groups {
                let span = g * group..(g + 1) * group;
                let (x, dout, dx) = (&x[span.clone()], &dout[span.clone()], &mut dx[span]);
                let sh = &sh[g * cg..(g + 1) * cg];
                let (mean, r) = nchw_stats(x, sh, hw, eps);
                // First pass: x̄̂ = γ ȳ into dx, the channel sums and the group's two means.
                let (mut s1, mut s2) = (0f64, 0f64);
                for k in 0..cg {
                    let ch = g * cg + k;
                    let (gm, bt, mean) = (gamma[ch], beta[ch], mean - sh[k]);
                    let (mut db, mut dg) = (0f32, 0f32);
                    let (mut a1, mut a2) = (0f32, 0f32);
                    let span = k * hw..(k + 1) * hw;
                    for ((d, &x), &go) in dx[span.clone()].iter_mut().zip(&x[span.clone()]).zip(&dout[span]) {
                        let xh = (x - mean) * r;
                        let dy = if silu {
                            let y = gm * xh + bt;
                            let s = sigmoid_libm(y);
                            go * s * (1.0 + y * (1.0 - s))
                        } else {
                            go
                        };
                        db += dy;
                        dg += dy * xh;
                        let dxh = dy * gm;
                        a1 += dxh;
                        a2 += dxh * xh;
                        *d = dxh;
                    }
                    dbeta[ch] = db;
                    dgamma[ch] = dg;
                    s1 += a1 as f64;
                    s2 += a2 as f64;
                }
                let m1 = (s1 / group as f64) as f32;
                let m2 = (s2 / group as f64) as f32;
                for (k, (dx, x)) in dx.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
                    let mean = mean - sh[k];
                    let mut s = 0f32;
                    for (d, &x) in dx.iter_mut().zip(x) {
                        let xh = (x - mean) * r;
                        *d = r * (*d - m1 - xh * m2);
                        s += *d;
                    }
                    ds[g * cg + k] = s;
                }
            }
        },
    );
}
