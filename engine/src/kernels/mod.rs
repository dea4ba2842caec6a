//! The CPU kernels, in one place: matrix products ([`mm`], gemm), convolutions ([`conv`]:
//! im2col / implicit / col2im on NHWC and NCHW images, and [`winograd`] F(2×2, 3×3)), the fused
//! GroupNorm + SiLU and its backward ([`norm`]), column sums, SiLU/sigmoid, and the optimiser
//! updates ([`optim`]: Adam(W) on slices, the EMA with its warm-up). Their users only arrange
//! buffers around them: the candle custom ops of the U-Net (`images::conv`, `images::norm`) and
//! of the digit classifier (`eval::classifier::ops`), the plain-buffer U-Net
//! (`train::fast::unet`), the MLP steps (`train::fast`) and the autograd path's EMA.
//!
//! Architecture Invariant: every kernel's bits depend on its inputs only, never on the thread
//! count (fixed task sizes, per-task partial sums added in order). Each is pinned to an
//! independent computation (candle's own ops, a direct convolution) by the tests next to its
//! users and in [`conv`] and [`winograd`].

use gemm::Parallelism;

pub mod conv;
pub mod norm;
pub mod optim;
pub mod winograd;

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

/// The logistic function with [`exp_f32`] (the plain-buffer passes).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// The logistic function with libm's `exp` (the candle custom ops, matching candle's own SiLU).
#[inline(always)]
pub fn sigmoid_libm(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// C (m×n, row-major) = [C +] op(A)·op(B); A is m×k (or k×m stored when `at`), B is k×n (or
/// n×k stored when `bt`).
#[allow(clippy::too_many_arguments)]
pub fn mm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, at: bool, bt: bool, acc: bool, par: Parallelism) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    let (a_cs, a_rs) = if at { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if bt { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the asserts above bound every index gemm touches for these strides.
    unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, acc, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs, 1.0f32, 1.0f32, false, false, false, par);
    }
}

/// out[j] = Σ_i m[i·w + j] over the n rows of an n×w matrix, rows added in order.
pub fn col_sums(out: &mut [f32], m: &[f32], n: usize, w: usize) {
    out.iter_mut().for_each(|v| *v = 0.0);
    for row in m[..n * w].chunks_exact(w) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}

/// Each row of `y` (b.len() values) plus b.
pub fn add_bias(y: &mut [f32], b: &[f32]) {
    for row in y.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exponential against libm's over the range the nets use, and the column
    /// sums against a direct sum.
    #[test]
    fn exp_and_col_sums() {
        for i in -800..=800 {
            let x = i as f32 * 0.1;
            let (a, b) = (exp_f32(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "e^{x}: {a} vs {b}");
        }
        let m: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut out = vec![9.0; 4];
        col_sums(&mut out, &m, 3, 4);
        assert_eq!(out, vec![12.0, 15.0, 18.0, 21.0]);
    }
}
