//! Convolutions on the CPU with padding k/2, in one place.
//!
//! NHWC (the plain-buffer U-Net and the digit classifier): an activation is an (N, H·W, C)
//! array, pixels in rows and channels contiguous, and a weight is ((ky·k + kx)·C + c) × O, so a
//! k×k convolution is im2col ([`im2col_rows`]: contiguous runs of C values per tap) and one gemm,
//! or, for wide images with many channels, [`conv_implicit`] (per tap one product read in place
//! from a padded copy); a 1×1 convolution is a gemm on the activation itself; 3×3 stride-1
//! layers with at least 8 channels each way go through [`super::winograd`] instead. Backward:
//! ∂W = im2col(X)ᵀ ḡ ([`weight_grad`], the columns rebuilt, not kept), ∂b = Σ_rows ḡ,
//! ∂X += col2im(ḡ Wᵀ) ([`input_grad`]; stride 1: the same-padded convolution of ḡ with the
//! flipped, transposed kernel).
//!
//! NCHW (the candle U-Net's custom op, `images::conv`): [`Geometry`], [`im2col_nchw`] with rows
//! ordered (c, ky, kx) as candle's (O, C, k, k) weight, and its adjoint [`col2im_nchw`].
//!
//! Work is split per image or in fixed tasks of [`CONV_ROWS`] rows, gemm single-threaded inside
//! a task, partial sums added in order: the bits do not depend on the thread count.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{add_bias, mm};

/// An NHWC activation's shape per image: `h`×`w` pixels of `c` channels (a vector: 1×1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Grid {
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }
    pub fn len(&self) -> usize {
        self.h * self.w * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The output grid of a k×k convolution (padding k/2) with `cout` channels.
    pub fn conv_out(&self, cout: usize, k: usize, stride: usize) -> Grid {
        let p = k / 2;
        Grid { h: (self.h + 2 * p - k) / stride + 1, w: (self.w + 2 * p - k) / stride + 1, c: cout }
    }
}

/// A convolution's [`super::winograd::Shape`] from its input and output grids.
pub fn wino_shape(s: Grid, o: Grid) -> super::winograd::Shape {
    super::winograd::Shape { h: s.h, w: s.w, c: s.c, o: o.c }
}

/// Rows per task of the convolutions: a task's columns (≤ 256 × 1,440 floats here) stay in
/// the core's L2 cache between im2col and gemm. Fixed, so the bits do not depend on the
/// thread count.
pub const CONV_ROWS: usize = 256;

/// Partial sums of a weight gradient (fixed, for the same reason), added in order.
pub const WGRAD_PARTS: usize = 4;

/// Rows `row0..row0 + r` (r = cols.len() / taps; global over the batch: image·pixels + pixel)
/// of the im2col matrix of a k×k, padding k/2 convolution of `x` ((N, s) NHWC) with output
/// size `o`: per output pixel its taps (ky, kx, c), zeros outside the image.
pub fn im2col_rows(x: &[f32], cols: &mut [f32], s: Grid, o: Grid, k: usize, stride: usize, row0: usize) {
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
pub fn conv_forward(x: &[f32], y: &mut [f32], cols: &mut [f32], w: &[f32], b: &[f32], s: Grid, o: Grid, k: usize, stride: usize) {
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

/// Scratch floats per image of [`conv_implicit`], where that path is the faster one: stride 1,
/// k > 1, images at least 16 pixels wide (the padded grid wastes (W + k − 1)/W of the
/// products) and at least 16 channels in.
pub fn implicit_scratch(s: Grid, o: Grid, k: usize, stride: usize) -> Option<usize> {
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
pub fn conv_implicit(x: &[f32], y: &mut [f32], scratch: &mut [f32], w: &[f32], b: Option<&[f32]>, acc: bool, s: Grid, o: Grid, k: usize) {
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
pub fn weight_grad(x: &[f32], dy: &[f32], cols: &mut [f32], parts: &mut [f32], gw: &mut [f32], gb: &mut [f32], s: Grid, o: Grid, k: usize, stride: usize) {
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
fn weight_grad_implicit(x: &[f32], dy: &[f32], cols: &mut [f32], parts: &mut [f32], gw: &mut [f32], gb: &mut [f32], s: Grid, o: Grid, k: usize, np: usize, per: usize) {
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
pub fn flip_kernel(w: &[f32], out: &mut [f32], k: usize, c: usize, o: usize) {
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
pub fn col2im(cols: &[f32], dx: &mut [f32], s: Grid, o: Grid, k: usize, stride: usize) {
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

/// ∂X of Y = conv(X) (NHWC, weight `w` ((k·k·C) × O)) from ḡ = `dy`, added into `dx` when
/// `acc`, else written; with stride > 1, `dx` must already hold zeros or a sum (col2im adds).
/// `wflip` ((k·k·O) × C) and `cols` are scratch.
#[allow(clippy::too_many_arguments)]
pub fn input_grad(dy: &[f32], dx: &mut [f32], acc: bool, w: &[f32], wflip: &mut [f32], cols: &mut [f32], s: Grid, o: Grid, k: usize, stride: usize, par: Parallelism) {
    let n = dx.len() / s.len();
    let rows = n * o.pixels();
    if k == 1 && stride == 1 {
        // ∂X += ḡ Wᵀ, rows in fixed tasks.
        dx.par_chunks_mut(CONV_ROWS * s.c).zip(dy.par_chunks(CONV_ROWS * o.c)).for_each(|(dx, dy)| {
            mm(dx, dy, w, dy.len() / o.c, s.c, o.c, false, true, acc, Parallelism::None);
        });
    } else if stride == 1 {
        // ∂X += im2col(ḡ) W̃ with W̃[(tap, o), c] = W[(flipped tap, c), o]: the same-padded
        // convolution of ḡ with the flipped, transposed kernel.
        flip_kernel(w, wflip, k, s.c, o.c);
        let wide = k * k * o.c;
        let wflip = &wflip[..wide * s.c];
        if let Some(per) = implicit_scratch(o, s, k, 1).filter(|&per| per * n <= cols.len()) {
            dx.par_chunks_mut(s.len()).zip(dy.par_chunks(o.len())).zip(cols.par_chunks_mut(per)).for_each(|((dx, dy), scratch)| {
                conv_implicit(dy, dx, scratch, wflip, None, acc, o, s, k);
            });
            return;
        }
        dx.par_chunks_mut(CONV_ROWS * s.c).zip(cols.par_chunks_mut(CONV_ROWS * wide)).enumerate().for_each(|(i, (dx, cols))| {
            let r = dx.len() / s.c;
            im2col_rows(dy, &mut cols[..r * wide], o, s, k, 1, i * CONV_ROWS);
            mm(dx, cols, wflip, r, s.c, wide, false, false, acc, Parallelism::None);
        });
    } else {
        let taps = k * k * s.c;
        mm(cols, dy, w, rows, taps, o.c, false, true, false, par);
        col2im(&cols[..rows * taps], dx, s, o, k, stride);
    }
}

/// Shape of one NCHW im2col: input (N, C, H, W), k×k taps, padding k/2, stride.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
}

impl Geometry {
    pub fn new((n, c, h, w): (usize, usize, usize, usize), k: usize, stride: usize) -> Self {
        Geometry { n, c, h, w, k, stride }
    }

    pub fn out_hw(&self) -> (usize, usize) {
        let p = self.k / 2;
        ((self.h + 2 * p - self.k) / self.stride + 1, (self.w + 2 * p - self.k) / self.stride + 1)
    }

    pub fn taps(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Values of one image's input, and of its columns.
    fn sizes(&self) -> (usize, usize) {
        let (ho, wo) = self.out_hw();
        (self.c * self.h * self.w, ho * wo * self.taps())
    }

    /// Calls `f(row offset within the image's rows, tap, source index within the image)` for
    /// every in-bounds tap of every output pixel.
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let (ho, wo) = self.out_hw();
        let (k, p, s, t) = (self.k as isize, (self.k / 2) as isize, self.stride as isize, self.taps());
        for oy in 0..ho as isize {
            for ox in 0..wo as isize {
                let row = (oy as usize * wo + ox as usize) * t;
                for c in 0..self.c {
                    for ky in 0..k {
                        let iy = oy * s + ky - p;
                        if iy < 0 || iy >= self.h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = ox * s + kx - p;
                            if ix < 0 || ix >= self.w as isize {
                                continue;
                            }
                            let tap = (c * self.k + ky as usize) * self.k + kx as usize;
                            f(row + tap, (c * self.h + iy as usize) * self.w + ix as usize);
                        }
                    }
                }
            }
        }
    }
}

/// (N, C, H, W) → (N·Ho·Wo, C·k·k) into `out` (zeros where the taps fall outside): row
/// (n, oy, ox) holds the k×k neighbourhood of the output pixel, ordered (c, ky, kx).
pub fn im2col_nchw(g: Geometry, src: &[f32], out: &mut [f32]) {
    let (img, rows) = g.sizes();
    if rows > 0 && img > 0 {
        out.par_chunks_mut(rows).zip(src.par_chunks(img)).for_each(|(dst, x)| g.for_each(|to, from| dst[to] = x[from]));
    }
}

/// The adjoint of [`im2col_nchw`]: each column entry added back into `out` (N, C, H, W) at the
/// pixel it was copied from.
pub fn col2im_nchw(g: Geometry, src: &[f32], out: &mut [f32]) {
    let (img, rows) = g.sizes();
    if rows > 0 && img > 0 {
        out.par_chunks_mut(img).zip(src.par_chunks(rows)).for_each(|(x, cols)| g.for_each(|from, to| x[to] += cols[from]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The direct k×k convolution (padding k/2, NHWC, weight ((ky·k + kx)·C + c) × O) and the
    /// adjoints of L = Σ ḡ ⊙ conv(X): (y, ∂X, ∂W), sums in f64.
    fn direct(x: &[f32], w: &[f32], b: &[f32], gy: &[f32], s: Grid, o: Grid, k: usize, stride: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = x.len() / s.len();
        let p = (k / 2) as isize;
        let (mut y, mut dx, mut dw) = (vec![0.0f64; n * o.len()], vec![0.0f64; x.len()], vec![0.0f64; w.len()]);
        for img in 0..n {
            for oy in 0..o.h {
                for ox in 0..o.w {
                    for oc in 0..o.c {
                        let yi = (img * o.pixels() + oy * o.w + ox) * o.c + oc;
                        y[yi] += b[oc] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = ((oy * stride + ky) as isize - p, (ox * stride + kx) as isize - p);
                                if iy < 0 || ix < 0 || iy as usize >= s.h || ix as usize >= s.w {
                                    continue;
                                }
                                for c in 0..s.c {
                                    let xi = (img * s.pixels() + iy as usize * s.w + ix as usize) * s.c + c;
                                    let wi = ((ky * k + kx) * s.c + c) * o.c + oc;
                                    y[yi] += x[xi] as f64 * w[wi] as f64;
                                    dx[xi] += w[wi] as f64 * gy[yi] as f64;
                                    dw[wi] += x[xi] as f64 * gy[yi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        (f(y), f(dx), f(dw))
    }

    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "{what}[{i}]: {a} vs {b} (max {scale})");
        }
    }

    /// Forward, ∂W, ∂b and ∂X (written, then added) against the direct convolution and its
    /// adjoints: 3×3 and 1×1, stride 1 and 2, odd sizes, and a wide, many-channel shape that
    /// takes the implicit (im2col-free) paths; the NHWC im2col and col2im through them.
    #[test]
    fn nhwc_convolution_matches_the_direct_sum_and_its_adjoint() {
        for (h, w, c, oc, k, stride, n) in [(5, 7, 3, 4, 3, 1, 3), (7, 7, 4, 5, 3, 2, 2), (6, 5, 3, 2, 1, 1, 2), (16, 16, 16, 8, 3, 1, 2), (9, 8, 2, 3, 3, 2, 300)] {
            let s = Grid { h, w, c };
            let o = s.conv_out(oc, k, stride);
            let mut rng = Rng::new((h * 100 + c * 10 + k) as u64);
            let x = rng.normals_f32(n * s.len());
            let wt = rng.normals_f32(k * k * c * oc);
            let b = rng.normals_f32(oc);
            let gy = rng.normals_f32(n * o.len());
            let (want_y, want_dx, want_dw) = direct(&x, &wt, &b, &gy, s, o, k, stride);
            let what = format!("{h}×{w}×{c} → {oc}, k {k}, stride {stride}");
            let mut cols = vec![0.0; n * (o.pixels() * k * k * c).max(s.pixels() * k * k * oc) + n * implicit_scratch(s, o, k, stride).unwrap_or(0)];
            let mut y = vec![0.0; n * o.len()];
            conv_forward(&x, &mut y, &mut cols, &wt, &b, s, o, k, stride);
            close(&format!("{what}: y"), &y, &want_y);
            let (mut gw, mut gb) = (vec![0.0; wt.len()], vec![0.0; oc]);
            let mut parts = vec![0.0; WGRAD_PARTS * (wt.len() + oc)];
            weight_grad(&x, &gy, &mut cols, &mut parts, &mut gw, &mut gb, s, o, k, stride);
            close(&format!("{what}: ∂W"), &gw, &want_dw);
            let want_db: Vec<f32> = (0..oc).map(|j| gy.iter().skip(j).step_by(oc).map(|&v| v as f64).sum::<f64>() as f32).collect();
            close(&format!("{what}: ∂b"), &gb, &want_db);
            let mut wflip = vec![0.0; wt.len()];
            let mut dx = vec![0.0; x.len()];
            input_grad(&gy, &mut dx, false, &wt, &mut wflip, &mut cols, s, o, k, stride, Parallelism::None);
            close(&format!("{what}: ∂X"), &dx, &want_dx);
            input_grad(&gy, &mut dx, true, &wt, &mut wflip, &mut cols, s, o, k, stride, Parallelism::None);
            close(&format!("{what}: 2∂X"), &dx, &want_dx.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        }
    }
}
