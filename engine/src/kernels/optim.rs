//! The optimiser updates on plain slices: Adam (candle's AdamW formula with weight decay 0) and
//! the exponential moving average of the weights with its warm-up, shared by the hand-derived
//! steps and the autograd path (which applies [`ema_decay`] to candle tensors).

/// Adam (candle's AdamW formula with weight decay 0, β = (0.9, 0.999), ε = 1e-8) on the
/// matching slices of one parameter's weights, moments and gradient, at step `t` (from 1).
pub fn adam_slices(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], t: i32, lr: f64) {
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let sm = 1.0 / (1.0 - 0.9f64.powi(t)) as f32;
    let sv = 1.0 / (1.0 - 0.999f64.powi(t)) as f32;
    let lr = lr as f32;
    for (((w, m), v), g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *w -= lr * (*m * sm) / ((*v * sv).sqrt() + eps);
    }
}

/// The EMA's decay after step `step` (from 0): d = min(decay, (1 + step)/(10 + step)), so the
/// average follows the weights closely at first.
pub fn ema_decay(decay: f64, step: u64) -> f64 {
    decay.min((1.0 + step as f64) / (10.0 + step as f64))
}

/// The EMA's coefficients (d, 1 − d) in f32 for the plain-buffer updates.
pub fn ema_coefs(decay: f64, step: u64) -> (f32, f32) {
    let d = ema_decay(decay, step);
    (d as f32, (1.0 - d) as f32)
}

/// shadow ← a·shadow + b·w (a, b from [`ema_coefs`]).
#[inline]
pub fn ema_blend(shadow: &mut [f32], w: &[f32], (a, b): (f32, f32)) {
    shadow.iter_mut().zip(w).for_each(|(s, w)| *s = *s * a + w * b);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warm-up's closed form, and one Adam step from zero moments: m̂ = g, v̂ = g², so the
    /// weight moves by lr·g/(|g| + ε) ≈ lr·sign(g).
    #[test]
    fn warm_up_and_first_adam_step() {
        assert_eq!(ema_decay(0.999, 0), 0.1);
        assert_eq!(ema_decay(0.999, 8), 0.5);
        assert_eq!(ema_decay(0.9, 1_000_000), 0.9);
        let (mut w, mut m, mut v) = (vec![1.0f32, 1.0], vec![0.0; 2], vec![0.0; 2]);
        adam_slices(&mut w, &mut m, &mut v, &[0.5, -2.0], 1, 0.01);
        assert!((w[0] - 0.99).abs() < 1e-6 && (w[1] - 1.01).abs() < 1e-6, "{w:?}");
        let mut s = vec![2.0f32];
        ema_blend(&mut s, &[4.0], ema_coefs(0.999, 8));
        assert_eq!(s, vec![3.0]);
    }
}
