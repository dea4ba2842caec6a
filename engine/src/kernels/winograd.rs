//! 3×3, stride-1, padding-1 convolutions of NHWC images as Winograd F(2×2, 3×3) (Lavin & Gray
//! 2016): each 2×2 block of output pixels comes from a 4×4 input tile through
//! Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, so the products are 16 gemms of (tiles × C)·(C × O), one per
//! point ξ of the transformed tile: 16 multiplies per 4 outputs instead of 36, 2.25× fewer
//! flops than im2col (about 1.7× on a 7×7 image, whose 4×4 tiles cover 8×8).
//!
//! The layer is linear in the image and in the kernel, so its backward pass is its adjoint,
//! again in the transformed domain, with ḡ = ∂L/∂Y:
//! - Ḡ = A ḡ Aᵀ per tile (the output transform's adjoint; pixels past the image are zero);
//! - ∂U_ξ = Ḡ_ξ V_ξᵀ, then ∂X = Σ_tiles B ∂U Bᵀ scattered back onto the overlapping tiles;
//! - ∂V_ξ = U_ξᵀ Ḡ_ξ summed over tiles, then ∂g = Gᵀ ∂V G.
//!
//! Work goes in chunks of whole images (about [`TILE_ROWS`] tiles each, fixed by the shape) and
//! in [`PARTS`] fixed runs of chunks; every gemm is single-threaded inside its task, and the
//! weight gradient's per-run sums are added in run order, so the bits do not depend on the
//! thread count. Kernels are stored as the U-Net's im2col weights, ((ky·3 + kx)·C + c) × O.

use rayon::prelude::*;

use super::mm;
use gemm::Parallelism;

/// Tiles per chunk (at least one image): the rows of each of the 16 products.
const TILE_ROWS: usize = 256;

/// Fixed runs of chunks (the tasks of a pass; the weight gradient's partial sums).
pub const PARTS: usize = 8;

/// A convolution's shape: h×w images, `c` channels in, `o` out.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub o: usize,
}

impl Shape {
    fn tiles(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }

    /// Images per chunk.
    fn chunk(&self) -> usize {
        let (th, tw) = self.tiles();
        (TILE_ROWS / (th * tw)).max(1)
    }

    /// Scratch floats of one run: the forward's U and M, or the backward's U, Ḡ and ∂U.
    pub fn scratch(&self, train: bool) -> usize {
        let (th, tw) = self.tiles();
        let rows = self.chunk() * th * tw;
        16 * rows * if train { 2 * self.c + self.o } else { self.c + self.o } + self.aux()
    }

    /// Floats of the padded grids ([`grid`]) of one image.
    fn aux(&self) -> usize {
        let (hp, wp) = grid(*self);
        hp * wp * self.c.max(self.o)
    }

    /// Floats of one run's weight-gradient part: ∂V (16 × C × O), then ∂b (O).
    pub fn part(&self) -> usize {
        16 * self.c * self.o + self.o
    }
}

/// Whether a convolution goes through here: 3×3, stride 1, and enough channels both ways for
/// 16 products to beat one (the U-Net's first and last convolutions have 1).
pub fn eligible(k: usize, stride: usize, c: usize, o: usize) -> bool {
    k == 3 && stride == 1 && c >= 8 && o >= 8
}

/// V = G g Gᵀ for every (c, o): `w` ((ky·3 + kx)·C + c) × O → `v` (16 × C × O).
pub fn kernel_transform(w: &[f32], v: &mut [f32], c: usize, o: usize) {
    let m = c * o;
    v[..16 * m].par_chunks_mut(m).enumerate().for_each(|(xi, out)| {
        let (i, j) = (xi / 4, xi % 4);
        // Row i of G: its weights on g's three rows (and j the same on the columns).
        let g = |i: usize| -> [f32; 3] {
            match i {
                0 => [1.0, 0.0, 0.0],
                1 => [0.5, 0.5, 0.5],
                2 => [0.5, -0.5, 0.5],
                _ => [0.0, 0.0, 1.0],
            }
        };
        let (gi, gj) = (g(i), g(j));
        out.iter_mut().for_each(|x| *x = 0.0);
        for (ky, &a) in gi.iter().enumerate() {
            for (kx, &b) in gj.iter().enumerate() {
                let f = a * b;
                if f != 0.0 {
                    let tap = &w[(ky * 3 + kx) * m..][..m];
                    out.iter_mut().zip(tap).for_each(|(x, t)| *x += f * t);
                }
            }
        }
    });
}

/// ∂g = Gᵀ ∂V G: `dv` (16 × C × O) → `dw` ((ky·3 + kx)·C + c) × O, written.
pub fn kernel_adjoint(dv: &[f32], dw: &mut [f32], c: usize, o: usize) {
    let m = c * o;
    dw[..9 * m].par_chunks_mut(m).enumerate().for_each(|(tap, out)| {
        let (ky, kx) = (tap / 3, tap % 3);
        // Column ky of G: the weight of each of V's four rows.
        let gt = |k: usize| -> [f32; 4] {
            match k {
                0 => [1.0, 0.5, 0.5, 0.0],
                1 => [0.0, 0.5, -0.5, 0.0],
                _ => [0.0, 0.5, 0.5, 1.0],
            }
        };
        let (ga, gb) = (gt(ky), gt(kx));
        out.iter_mut().for_each(|x| *x = 0.0);
        for (i, &a) in ga.iter().enumerate() {
            for (j, &b) in gb.iter().enumerate() {
                let f = a * b;
                if f != 0.0 {
                    let src = &dv[(i * 4 + j) * m..][..m];
                    out.iter_mut().zip(src).for_each(|(x, s)| *x += f * s);
                }
            }
        }
    });
}

/// 16 disjoint `len`-float rows of `buf`.
fn rows16(buf: &mut [f32], len: usize) -> [&mut [f32]; 16] {
    let mut it = buf[..16 * len].chunks_exact_mut(len);
    std::array::from_fn(|_| it.next().expect("16 rows"))
}

/// The padded grid of an image: (2·th + 2) × (2·tw + 2) pixels, the image at offset (1, 1).
fn grid(s: Shape) -> (usize, usize) {
    let (th, tw) = s.tiles();
    (2 * th + 2, 2 * tw + 2)
}

/// `x` (h × w × c) into `xp` (the padded grid, c channels), zeros around it.
fn pad(x: &[f32], xp: &mut [f32], s: Shape, c: usize) {
    let (hp, wp) = grid(s);
    let xp = &mut xp[..hp * wp * c];
    xp[..wp * c].iter_mut().for_each(|v| *v = 0.0);
    for (iy, row) in xp[wp * c..(s.h + 1) * wp * c].chunks_exact_mut(wp * c).enumerate() {
        row[..c].iter_mut().for_each(|v| *v = 0.0);
        row[c..(s.w + 1) * c].copy_from_slice(&x[iy * s.w * c..(iy + 1) * s.w * c]);
        row[(s.w + 1) * c..].iter_mut().for_each(|v| *v = 0.0);
    }
    xp[(s.h + 1) * wp * c..].iter_mut().for_each(|v| *v = 0.0);
}

/// The 16 `c`-float pixel slices of the 4×4 tile whose top-left pixel is (y, x) of a grid
/// `wp` pixels wide.
fn tile(g: &[f32], y: usize, x: usize, wp: usize, c: usize) -> [&[f32]; 16] {
    std::array::from_fn(|q| {
        let at = ((y + q / 4) * wp + x + q % 4) * c;
        &g[at..at + c]
    })
}

/// The same, mutable.
fn tile_mut(g: &mut [f32], y: usize, x: usize, wp: usize, c: usize) -> [&mut [f32]; 16] {
    let mut rest = &mut g[(y * wp + x) * c..];
    let mut out: [Option<&mut [f32]>; 16] = Default::default();
    for i in 0..4 {
        if i > 0 {
            rest = &mut std::mem::take(&mut rest)[(wp - 4) * c..];
        }
        let (px, r) = std::mem::take(&mut rest).split_at_mut(4 * c);
        for (j, p) in px.chunks_exact_mut(c).enumerate() {
            out[4 * i + j] = Some(p);
        }
        rest = r;
    }
    out.map(|p| p.expect("16 pixels"))
}

/// Channels per step of the transforms' loops (fixed-size arrays the compiler vectorises);
/// the rest one at a time.
const L: usize = 8;

#[inline(always)]
fn vadd<const N: usize>(a: [f32; N], b: [f32; N]) -> [f32; N] {
    std::array::from_fn(|l| a[l] + b[l])
}

#[inline(always)]
fn vsub<const N: usize>(a: [f32; N], b: [f32; N]) -> [f32; N] {
    std::array::from_fn(|l| a[l] - b[l])
}

#[inline(always)]
fn vneg<const N: usize>(a: [f32; N]) -> [f32; N] {
    std::array::from_fn(|l| -a[l])
}

/// o_j = f(r)_j over the channels, `N`-wide steps by `fl`, the rest by `f1`; added with `acc`.
#[inline(always)]
fn lanes<const I: usize, const J: usize>(
    r: &[&[f32]; I],
    o: &mut [&mut [f32]; J],
    c: usize,
    acc: bool,
    fl: fn([[f32; L]; I]) -> [[f32; L]; J],
    f1: fn([[f32; 1]; I]) -> [[f32; 1]; J],
) {
    let full = c / L * L;
    let mut k = 0;
    while k < full {
        let v = fl(std::array::from_fn(|q| r[q][k..k + L].try_into().expect("L floats")));
        for (o, v) in o.iter_mut().zip(v) {
            let d = &mut o[k..k + L];
            if acc {
                d.iter_mut().zip(v).for_each(|(d, v)| *d += v);
            } else {
                d.copy_from_slice(&v);
            }
        }
        k += L;
    }
    while k < c {
        let v = f1(std::array::from_fn(|q| [r[q][k]]));
        for (o, v) in o.iter_mut().zip(v) {
            if acc {
                o[k] += v[0];
            } else {
                o[k] = v[0];
            }
        }
        k += 1;
    }
}

/// Bᵀ d B on one tile ((i, j) row-major), Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1].
#[inline(always)]
fn bt_d_b<const N: usize>(v: [[f32; N]; 16]) -> [[f32; N]; 16] {
    let mut a = [[0.0f32; N]; 16];
    for j in 0..4 {
        a[j] = vsub(v[j], v[8 + j]);
        a[4 + j] = vadd(v[4 + j], v[8 + j]);
        a[8 + j] = vsub(v[8 + j], v[4 + j]);
        a[12 + j] = vsub(v[4 + j], v[12 + j]);
    }
    let mut o = [[0.0f32; N]; 16];
    for i in 0..4 {
        o[4 * i] = vsub(a[4 * i], a[4 * i + 2]);
        o[4 * i + 1] = vadd(a[4 * i + 1], a[4 * i + 2]);
        o[4 * i + 2] = vsub(a[4 * i + 2], a[4 * i + 1]);
        o[4 * i + 3] = vsub(a[4 * i + 1], a[4 * i + 3]);
    }
    o
}

/// B t Bᵀ, the adjoint of [`bt_d_b`]: rows d̄₀ = t₀, d̄₁ = t₁ − t₂ + t₃, d̄₂ = t₁ + t₂ − t₀,
/// d̄₃ = −t₃, and the same on the columns.
#[inline(always)]
fn b_t_bt<const N: usize>(v: [[f32; N]; 16]) -> [[f32; N]; 16] {
    let mut a = [[0.0f32; N]; 16];
    for j in 0..4 {
        a[j] = v[j];
        a[4 + j] = vadd(vsub(v[4 + j], v[8 + j]), v[12 + j]);
        a[8 + j] = vsub(vadd(v[4 + j], v[8 + j]), v[j]);
        a[12 + j] = vneg(v[12 + j]);
    }
    let mut o = [[0.0f32; N]; 16];
    for i in 0..4 {
        o[4 * i] = a[4 * i];
        o[4 * i + 1] = vadd(vsub(a[4 * i + 1], a[4 * i + 2]), a[4 * i + 3]);
        o[4 * i + 2] = vsub(vadd(a[4 * i + 1], a[4 * i + 2]), a[4 * i]);
        o[4 * i + 3] = vneg(a[4 * i + 3]);
    }
    o
}

/// Aᵀ m A on one tile, Aᵀ = [1 1 1 0; 0 1 −1 −1]: the 2×2 outputs (y₀₀, y₀₁, y₁₀, y₁₁).
#[inline(always)]
fn at_m_a<const N: usize>(v: [[f32; N]; 16]) -> [[f32; N]; 4] {
    let mut a = [[0.0f32; N]; 8];
    for j in 0..4 {
        a[j] = vadd(vadd(v[j], v[4 + j]), v[8 + j]);
        a[4 + j] = vsub(vsub(v[4 + j], v[8 + j]), v[12 + j]);
    }
    [vadd(vadd(a[0], a[1]), a[2]), vsub(vsub(a[1], a[2]), a[3]), vadd(vadd(a[4], a[5]), a[6]), vsub(vsub(a[5], a[6]), a[7])]
}

/// A ḡ Aᵀ, the adjoint of [`at_m_a`]: each side [ȳ₀, ȳ₀ + ȳ₁, ȳ₀ − ȳ₁, −ȳ₁].
#[inline(always)]
fn a_g_at<const N: usize>(y: [[f32; N]; 4]) -> [[f32; N]; 16] {
    let side = |a: [f32; N], b: [f32; N]| [a, vadd(a, b), vsub(a, b), vneg(b)];
    let (c0, c1) = (side(y[0], y[1]), side(y[2], y[3]));
    let mut o = [[0.0f32; N]; 16];
    for j in 0..4 {
        let (u, v) = (c0[j], c1[j]);
        o[j] = u;
        o[4 + j] = vadd(u, v);
        o[8 + j] = vsub(u, v);
        o[12 + j] = vneg(v);
    }
    o
}

/// `fn $name(args)`: `$body` compiled for AVX2 where the CPU has it (checked at run time),
/// the plain build otherwise (the transforms only add and subtract: the same bits either way).
macro_rules! avx2_dispatch {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*), ($($pass:ident),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($pass),*)
                }
                // SAFETY: the feature was detected on this CPU.
                return unsafe { wide($($pass),*) };
            }
            $body($($pass),*)
        }
    };
}

avx2_dispatch!(input_transform, input_transform_body, (x: &[f32], u: &mut [f32], xp: &mut [f32], s: Shape, imgs: usize), (x, u, xp, s, imgs));

/// Bᵀ d B of every tile of `imgs` images (`x`: imgs × h × w × C) into `u` (16 × rows × C, rows
/// = imgs · tiles); `xp` holds a padded grid of C channels.
#[inline(always)]
fn input_transform_body(x: &[f32], u: &mut [f32], xp: &mut [f32], s: Shape, imgs: usize) {
    let (c, (th, tw), (_, wp)) = (s.c, s.tiles(), grid(s));
    let rows = imgs * th * tw;
    let mut ub = rows16(u, rows * c);
    for img in 0..imgs {
        pad(&x[img * s.h * s.w * c..(img + 1) * s.h * s.w * c], xp, s, c);
        for ty in 0..th {
            for tx in 0..tw {
                let row = (img * th + ty) * tw + tx;
                let d = tile(xp, 2 * ty, 2 * tx, wp, c);
                let mut o = ub.each_mut().map(|b| &mut b[row * c..(row + 1) * c]);
                lanes(&d, &mut o, c, false, bt_d_b::<L>, bt_d_b::<1>);
            }
        }
    }
}

avx2_dispatch!(output_transform, output_transform_body, (m: &[f32], y: &mut [f32], yp: &mut [f32], bias: &[f32], s: Shape, imgs: usize), (m, y, yp, bias, s, imgs));

/// Y = Aᵀ M A + bias of every tile: `m` (16 × rows × O) → `y` (imgs × h × w × O), the 2×2
/// blocks cropped to the image; `yp` holds 2·th × 2·tw pixels of O channels.
#[inline(always)]
fn output_transform_body(m: &[f32], y: &mut [f32], yp: &mut [f32], bias: &[f32], s: Shape, imgs: usize) {
    let (oc, (th, tw)) = (s.o, s.tiles());
    let rows = imgs * th * tw;
    let w2 = 2 * tw;
    let bias = &bias[..oc];
    for img in 0..imgs {
        for ty in 0..th {
            let band = &mut yp[2 * ty * w2 * oc..(2 * ty + 2) * w2 * oc];
            let (top, bottom) = band.split_at_mut(w2 * oc);
            for tx in 0..tw {
                let row = (img * th + ty) * tw + tx;
                let r: [&[f32]; 16] = std::array::from_fn(|xi| &m[(xi * rows + row) * oc..(xi * rows + row + 1) * oc]);
                let (y00, y01) = top[2 * tx * oc..(2 * tx + 2) * oc].split_at_mut(oc);
                let (y10, y11) = bottom[2 * tx * oc..(2 * tx + 2) * oc].split_at_mut(oc);
                lanes(&r, &mut [y00, y01, y10, y11], oc, false, at_m_a::<L>, at_m_a::<1>);
            }
        }
        let y = &mut y[img * s.h * s.w * oc..(img + 1) * s.h * s.w * oc];
        for (py, out) in y.chunks_exact_mut(s.w * oc).enumerate() {
            let src = &yp[py * w2 * oc..(py * w2 + s.w) * oc];
            for (out, src) in out.chunks_exact_mut(oc).zip(src.chunks_exact(oc)) {
                out.iter_mut().zip(src).zip(bias).for_each(|((o, v), b)| *o = v + b);
            }
        }
    }
}

avx2_dispatch!(output_adjoint, output_adjoint_body, (dy: &[f32], g: &mut [f32], gp: &mut [f32], s: Shape, imgs: usize), (dy, g, gp, s, imgs));

/// Ḡ = A ḡ Aᵀ of every tile (the adjoint of [`output_transform`]): `dy` (imgs × h × w × O) →
/// `g` (16 × rows × O); `gp` holds 2·th × 2·tw pixels of O channels.
#[inline(always)]
fn output_adjoint_body(dy: &[f32], g: &mut [f32], gp: &mut [f32], s: Shape, imgs: usize) {
    let (oc, (th, tw)) = (s.o, s.tiles());
    let rows = imgs * th * tw;
    let w2 = 2 * tw;
    let mut gb = rows16(g, rows * oc);
    for img in 0..imgs {
        // ḡ on the 2·th × 2·tw grid, zeros past the image.
        let dy = &dy[img * s.h * s.w * oc..(img + 1) * s.h * s.w * oc];
        for (py, row) in gp[..2 * th * w2 * oc].chunks_exact_mut(w2 * oc).enumerate() {
            if py < s.h {
                row[..s.w * oc].copy_from_slice(&dy[py * s.w * oc..(py + 1) * s.w * oc]);
                row[s.w * oc..].iter_mut().for_each(|v| *v = 0.0);
            } else {
                row.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        for ty in 0..th {
            for tx in 0..tw {
                let row = (img * th + ty) * tw + tx;
                let at = |a: usize, b: usize| &gp[((2 * ty + a) * w2 + 2 * tx + b) * oc..((2 * ty + a) * w2 + 2 * tx + b + 1) * oc];
                let r = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                let mut o = gb.each_mut().map(|b| &mut b[row * oc..(row + 1) * oc]);
                lanes(&r, &mut o, oc, false, a_g_at::<L>, a_g_at::<1>);
            }
        }
    }
}

avx2_dispatch!(input_adjoint, input_adjoint_body, (du: &[f32], dx: &mut [f32], xp: &mut [f32], acc: bool, s: Shape, imgs: usize), (du, dx, xp, acc, s, imgs));

/// ∂X += B ∂U Bᵀ of every tile, added onto its 4×4 input pixels (`du`: 16 × rows × C; `dx`:
/// imgs × h × w × C, written instead without `acc`); `xp` holds a padded grid of C channels.
#[inline(always)]
fn input_adjoint_body(du: &[f32], dx: &mut [f32], xp: &mut [f32], acc: bool, s: Shape, imgs: usize) {
    let (c, (th, tw), (hp, wp)) = (s.c, s.tiles(), grid(s));
    let rows = imgs * th * tw;
    for img in 0..imgs {
        let xp = &mut xp[..hp * wp * c];
        xp.iter_mut().for_each(|v| *v = 0.0);
        for ty in 0..th {
            for tx in 0..tw {
                let row = (img * th + ty) * tw + tx;
                let r: [&[f32]; 16] = std::array::from_fn(|xi| &du[(xi * rows + row) * c..(xi * rows + row + 1) * c]);
                lanes(&r, &mut tile_mut(xp, 2 * ty, 2 * tx, wp, c), c, true, b_t_bt::<L>, b_t_bt::<1>);
            }
        }
        let dx = &mut dx[img * s.h * s.w * c..(img + 1) * s.h * s.w * c];
        for (iy, out) in dx.chunks_exact_mut(s.w * c).enumerate() {
            let src = &xp[((iy + 1) * wp + 1) * c..((iy + 1) * wp + 1 + s.w) * c];
            if acc {
                out.iter_mut().zip(src).for_each(|(d, v)| *d += v);
            } else {
                out.copy_from_slice(src);
            }
        }
    }
}

/// Runs [`PARTS`] (or fewer) fixed runs of whole chunks of the `n` images: `f(run, first image,
/// images)` per chunk, runs at once, chunks of a run in order.
fn runs(s: Shape, n: usize) -> Vec<(usize, usize)> {
    let chunk = s.chunk();
    let chunks = n.div_ceil(chunk);
    let np = PARTS.min(chunks).max(1);
    (0..np).map(|p| ((p * chunks / np) * chunk, ((p + 1) * chunks / np * chunk).min(n))).collect()
}

/// Y = conv(X) + b of `n` images (`x`: n × h × w × C, `y`: n × h × w × O) with the transformed
/// kernel `v` (16 × C × O, from [`kernel_transform`]); `scratch` holds [`PARTS`] ×
/// [`Shape::scratch`]`(false)` floats.
pub fn forward(x: &[f32], y: &mut [f32], v: &[f32], bias: &[f32], scratch: &mut [f32], s: Shape, n: usize) {
    let (th, tw) = s.tiles();
    let (px, py) = (s.h * s.w * s.c, s.h * s.w * s.o);
    let per = s.scratch(false);
    let runs = runs(s, n);
    let mut tasks: Vec<(usize, usize, &mut [f32], &mut [f32])> = Vec::with_capacity(runs.len());
    let (mut yr, mut sr) = (&mut y[..n * py], &mut scratch[..runs.len() * per]);
    for &(i0, i1) in &runs {
        let (mine, rest) = std::mem::take(&mut yr).split_at_mut((i1 - i0) * py);
        let (sc, srest) = std::mem::take(&mut sr).split_at_mut(per);
        yr = rest;
        sr = srest;
        tasks.push((i0, i1, mine, sc));
    }
    tasks.into_par_iter().for_each(|(i0, i1, y, sc)| {
        let chunk = s.chunk();
        let rows_max = chunk * th * tw;
        let (u, rest) = sc.split_at_mut(16 * rows_max * s.c);
        let (m, t) = rest.split_at_mut(16 * rows_max * s.o);
        let mut img = i0;
        while img < i1 {
            let imgs = chunk.min(i1 - img);
            let rows = imgs * th * tw;
            input_transform(&x[img * px..(img + imgs) * px], u, t, s, imgs);
            for xi in 0..16 {
                mm(
                    &mut m[xi * rows * s.o..(xi + 1) * rows * s.o],
                    &u[xi * rows * s.c..(xi + 1) * rows * s.c],
                    &v[xi * s.c * s.o..(xi + 1) * s.c * s.o],
                    rows,
                    s.o,
                    s.c,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            output_transform(m, &mut y[(img - i0) * py..(img - i0 + imgs) * py], t, bias, s, imgs);
            img += imgs;
        }
    });
}

/// One run of the backward pass: its images, its part of ∂X, its scratch and its ∂V part.
type BackwardTask<'a> = (usize, usize, Option<&'a mut [f32]>, &'a mut [f32], &'a mut [f32]);

/// The backward pass of [`forward`]: ∂W (written, the im2col layout) and ∂b from ḡ = `dy`,
/// and ∂X added to `dx` (or written, without `acc`; skipped without `dx`). `v` is the forward's
/// transformed kernel; `scratch` holds [`PARTS`] × [`Shape::scratch`]`(true)` floats, `parts`
/// [`PARTS`] × [`Shape::part`], `dv` 16 × C × O.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    acc: bool,
    v: &[f32],
    gw: &mut [f32],
    gb: &mut [f32],
    scratch: &mut [f32],
    parts: &mut [f32],
    dv: &mut [f32],
    s: Shape,
    n: usize,
) {
    let (th, tw) = s.tiles();
    let (px, py) = (s.h * s.w * s.c, s.h * s.w * s.o);
    let per = s.scratch(true);
    let size = s.part();
    let runs = runs(s, n);
    let np = runs.len();
    let mut tasks: Vec<BackwardTask> = Vec::with_capacity(np);
    let mut dxr = dx.map(|d| &mut d[..n * px]);
    let (mut sr, mut pr) = (&mut scratch[..np * per], &mut parts[..np * size]);
    for &(i0, i1) in &runs {
        let mine = dxr.take().map(|d| {
            let (a, b) = d.split_at_mut((i1 - i0) * px);
            dxr = Some(b);
            a
        });
        let (sc, srest) = std::mem::take(&mut sr).split_at_mut(per);
        let (part, prest) = std::mem::take(&mut pr).split_at_mut(size);
        sr = srest;
        pr = prest;
        tasks.push((i0, i1, mine, sc, part));
    }
    tasks.into_par_iter().for_each(|(i0, i1, mut dx, sc, part)| {
        let chunk = s.chunk();
        let rows_max = chunk * th * tw;
        let (u, rest) = sc.split_at_mut(16 * rows_max * s.c);
        let (g, rest) = rest.split_at_mut(16 * rows_max * s.o);
        let (du, t) = rest.split_at_mut(16 * rows_max * s.c);
        let (pdv, pdb) = part.split_at_mut(16 * s.c * s.o);
        pdb.iter_mut().for_each(|b| *b = 0.0);
        let mut img = i0;
        while img < i1 {
            let imgs = chunk.min(i1 - img);
            let rows = imgs * th * tw;
            let dyc = &dy[img * py..(img + imgs) * py];
            input_transform(&x[img * px..(img + imgs) * px], u, t, s, imgs);
            output_adjoint(dyc, g, t, s, imgs);
            for xi in 0..16 {
                let (uo, go) = (&u[xi * rows * s.c..(xi + 1) * rows * s.c], &g[xi * rows * s.o..(xi + 1) * rows * s.o]);
                mm(&mut pdv[xi * s.c * s.o..(xi + 1) * s.c * s.o], uo, go, s.c, s.o, rows, true, false, img > i0, Parallelism::None);
                if dx.is_some() {
                    mm(&mut du[xi * rows * s.c..(xi + 1) * rows * s.c], go, &v[xi * s.c * s.o..(xi + 1) * s.c * s.o], rows, s.c, s.o, false, true, false, Parallelism::None);
                }
            }
            if let Some(dx) = dx.as_deref_mut() {
                input_adjoint(du, &mut dx[(img - i0) * px..(img - i0 + imgs) * px], t, acc, s, imgs);
            }
            for row in dyc.chunks_exact(s.o) {
                pdb.iter_mut().zip(row).for_each(|(b, v)| *b += v);
            }
            img += imgs;
        }
    });
    dv[..size - s.o].copy_from_slice(&parts[..size - s.o]);
    gb.copy_from_slice(&parts[size - s.o..size]);
    for q in 1..np {
        dv[..size - s.o].iter_mut().zip(&parts[q * size..q * size + size - s.o]).for_each(|(a, b)| *a += b);
        gb.iter_mut().zip(&parts[q * size + size - s.o..(q + 1) * size]).for_each(|(a, b)| *a += b);
    }
    kernel_adjoint(dv, gw, s.c, s.o);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The direct 3×3, padding-1 convolution (NHWC, the im2col weight layout).
    fn direct(x: &[f32], w: &[f32], b: &[f32], s: Shape, n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; n * s.h * s.w * s.o];
        for img in 0..n {
            for py in 0..s.h {
                for px in 0..s.w {
                    for o in 0..s.o {
                        let mut acc = b[o] as f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (py as isize + ky as isize - 1, px as isize + kx as isize - 1);
                                if iy < 0 || ix < 0 || iy as usize >= s.h || ix as usize >= s.w {
                                    continue;
                                }
                                for c in 0..s.c {
                                    acc += (x[((img * s.h + iy as usize) * s.w + ix as usize) * s.c + c] * w[((ky * 3 + kx) * s.c + c) * s.o + o]) as f64;
                                }
                            }
                        }
                        y[((img * s.h + py) * s.w + px) * s.o + o] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn close(name: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * scale, "{name}[{i}]: {a} vs {b} (max {scale})");
        }
    }

    /// The direct convolution's adjoints: ∂X and ∂W of L = Σ ḡ ⊙ conv(X).
    fn direct_adjoint(x: &[f32], w: &[f32], gy: &[f32], s: Shape, n: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut dx, mut dw) = (vec![0.0f64; x.len()], vec![0.0f64; w.len()]);
        for img in 0..n {
            for py in 0..s.h {
                for px in 0..s.w {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (py as isize + ky as isize - 1, px as isize + kx as isize - 1);
                            if iy < 0 || ix < 0 || iy as usize >= s.h || ix as usize >= s.w {
                                continue;
                            }
                            for c in 0..s.c {
                                let xi = ((img * s.h + iy as usize) * s.w + ix as usize) * s.c + c;
                                for o in 0..s.o {
                                    let (wi, g) = (((ky * 3 + kx) * s.c + c) * s.o + o, gy[((img * s.h + py) * s.w + px) * s.o + o] as f64);
                                    dx[xi] += w[wi] as f64 * g;
                                    dw[wi] += x[xi] as f64 * g;
                                }
                            }
                        }
                    }
                }
            }
        }
        (dx.into_iter().map(|v| v as f32).collect(), dw.into_iter().map(|v| v as f32).collect())
    }

    /// Forward against the direct convolution, ∂X and ∂W against its adjoints, ∂b = Σ ḡ.
    #[test]
    fn winograd_matches_the_direct_convolution_and_its_adjoint() {
        // Odd sizes (tiles past the edge), one pixel, several chunks and runs.
        for (h, w, c, o, n) in [(5usize, 7usize, 3usize, 4usize, 3usize), (8, 8, 8, 5, 2), (1, 1, 2, 3, 2), (2, 3, 4, 2, 300), (16, 17, 6, 6, 7), (7, 7, 9, 10, 40)] {
            let s = Shape { h, w, c, o };
            let mut rng = Rng::new(h as u64 * 31 + c as u64);
            let x: Vec<f32> = rng.normals_f32(n * h * w * c);
            let wt: Vec<f32> = rng.normals_f32(9 * c * o);
            let b: Vec<f32> = rng.normals_f32(o);
            let gy: Vec<f32> = rng.normals_f32(n * h * w * o);
            let mut v = vec![0.0; 16 * c * o];
            kernel_transform(&wt, &mut v, c, o);
            let mut y = vec![0.0; n * h * w * o];
            let mut scratch = vec![0.0; PARTS * s.scratch(true)];
            forward(&x, &mut y, &v, &b, &mut scratch, s, n);
            close("y", &y, &direct(&x, &wt, &b, s, n), 1e-5);

            let (mut gw, mut gb, mut dv) = (vec![0.0; 9 * c * o], vec![0.0; o], vec![0.0; 16 * c * o]);
            let mut parts = vec![0.0; PARTS * s.part()];
            let mut dx = vec![7.0; n * h * w * c];
            backward(&x, &gy, Some(&mut dx), false, &v, &mut gw, &mut gb, &mut scratch, &mut parts, &mut dv, s, n);
            // With acc, ∂X is added: twice the written one.
            let mut dx2 = dx.clone();
            backward(&x, &gy, Some(&mut dx2), true, &v, &mut gw, &mut gb, &mut scratch, &mut parts, &mut dv, s, n);
            close("2∂X", &dx2, &dx.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6);
            let (want_dx, want_dw) = direct_adjoint(&x, &wt, &gy, s, n);
            close("∂X", &dx, &want_dx, 1e-5);
            close("∂W", &gw, &want_dw, 1e-5);
            // Without ∂X, the same ∂W.
            let gw1 = gw.clone();
            backward(&x, &gy, None, false, &v, &mut gw, &mut gb, &mut scratch, &mut parts, &mut dv, s, n);
            assert_eq!(gw, gw1);
            let want_db: Vec<f32> = (0..o).map(|k| gy.iter().skip(k).step_by(o).sum()).collect();
            close("∂b", &gb, &want_db, 1e-5);
        }
    }
}
