//! The hand-derived exact-ISM step on the closed-form trace of depth-2 MLP score nets.

use candle_core::Result;
use gemm::Parallelism;

use super::*;

/// Hand-derived exact ISM step for depth-2 MLP score nets, on the closed-form trace
/// tr J = c·d₂ᵀ Q d₁ with Q = W₂ ⊙ (W₁ₓ W_out)ᵀ and d_l = a'(z_l) (see
/// `MlpScore::score_and_trace_closed`). Per point (weights w_i = σ_i² with a ladder, else 1;
/// c_i = 1/σ_i when `scale_by_sigma`): ℓ = c²‖o‖² + 2c·d₂ᵀQd₁, L = mean w·ℓ.
///
/// Backward, with β_i = 2 w_i c_i / N: the trace reaches z₂ through d₂ (β a''(z₂) ⊙ Q d₁), z₁
/// through d₁ (β a''(z₁) ⊙ Qᵀ d₂), and the parameters through Q: with G = Σ β d₂d₁ᵀ,
/// ∂W₂ += G ⊙ Pᵀ and ∂P = (G ⊙ W₂)ᵀ for P = W₁ₓW_out, so ∂W₁ₓ += ∂P W_outᵀ and
/// ∂W_out += W₁ₓᵀ ∂P. Cost: a few N·H² and H²·D products, no D tangents.
pub struct FastIsm {
    act: Activation,
    dims: Vec<usize>, // [in, H, H, D]
    dim: usize,
    conditional: bool,
    scale_by_sigma: bool,
    params: Vec<(Param, Param)>,
    lr: f64,
    t: i32,
    par: Parallelism,
    buf: IsmBuffers,
}

#[derive(Default)]
struct IsmBuffers {
    h0: Vec<f32>,
    a1: Vec<f32>,
    d1: Vec<f32>,
    e1: Vec<f32>,
    a2: Vec<f32>,
    d2: Vec<f32>,
    e2: Vec<f32>,
    z: Vec<f32>,
    o: Vec<f32>,
    u: Vec<f32>,
    v: Vec<f32>,
    go: Vec<f32>,
    g2: Vec<f32>,
    g1: Vec<f32>,
    w1x: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
    gq: Vec<f32>,
    dp: Vec<f32>,
    tmp: Vec<f32>,
    betas: Vec<f32>,
}

impl FastIsm {
    /// None unless the net has exactly two hidden layers (the closed form this step uses).
    pub fn new(model: &MlpScore, lr: f64) -> Result<Option<Self>> {
        let arch = &model.arch;
        if arch.depth != 2 {
            return Ok(None);
        }
        let params = model.layers.iter().chain(std::iter::once(&model.out)).map(|l| Ok((Param::new(&l.w)?, Param::new(&l.b)?))).collect::<Result<Vec<_>>>()?;
        Ok(Some(FastIsm {
            act: arch.activation,
            dims: layer_widths(model),
            dim: arch.dim,
            conditional: arch.conditional,
            scale_by_sigma: arch.scale_by_sigma,
            params,
            lr,
            t: 0,
            par: parallelism(),
            buf: IsmBuffers::default(),
        }))
    }

    /// Loss and gradients (in each parameter's `g`) for points `x` (N×D) and per-point σ
    /// (None: unconditional, unweighted).
    pub fn loss_and_grad(&mut self, x: &[f32], sigma: Option<&[f32]>) -> f64 {
        let (d, w0, h) = (self.dim, self.dims[0], self.dims[1]);
        let n = x.len() / d;
        let par = self.par;
        let b = &mut self.buf;
        let [(l1w, l1b), (l2w, l2b), (l3w, l3b)] = &mut self.params[..] else { unreachable!("FastIsm is built for depth 2 only") };
        let (w1, b1, w2, b2, w3, b3) = (&l1w.w, &l1b.w, &l2w.w, &l2b.w, &l3w.w, &l3b.w);
        // Input [x, log σ].
        let h0 = sized(&mut b.h0, n * w0);
        for i in 0..n {
            h0[i * w0..i * w0 + d].copy_from_slice(&x[i * d..(i + 1) * d]);
            if w0 > d {
                h0[i * w0 + d] = match (self.conditional, sigma) {
                    (true, Some(s)) => s[i].ln(),
                    _ => 0.0,
                };
            }
        }
        let coef = |i: usize| -> (f32, f32) {
            let c = match (self.conditional && self.scale_by_sigma, sigma) {
                (true, Some(s)) => 1.0 / s[i],
                _ => 1.0,
            };
            (c, sigma.map_or(1.0, |s| s[i] * s[i]))
        };
        // Forward.
        let layer = |z: &mut Vec<f32>, src: &[f32], w: &[f32], bias: &[f32], fi: usize, fo: usize| {
            let z = sized(z, n * fo);
            for i in 0..n {
                z[i * fo..(i + 1) * fo].copy_from_slice(bias);
            }
            mm(z, src, w, n, fo, fi, false, true, true, par);
        };
        layer(&mut b.z, &b.h0, w1, b1, w0, h);
        activate2(self.act, &b.z[..n * h], sized(&mut b.a1, n * h), sized(&mut b.d1, n * h), sized(&mut b.e1, n * h));
        layer(&mut b.z, &b.a1, w2, b2, h, h);
        activate2(self.act, &b.z[..n * h], sized(&mut b.a2, n * h), sized(&mut b.d2, n * h), sized(&mut b.e2, n * h));
        layer(&mut b.o, &b.a2, w3, b3, h, d);
        // P = W₁ₓ W_out (H×H), Q_jk = W₂_jk P_kj.
        let w1x = sized(&mut b.w1x, h * d);
        for k in 0..h {
            w1x[k * d..(k + 1) * d].copy_from_slice(&w1[k * w0..k * w0 + d]);
        }
        mm(sized(&mut b.p, h * h), &b.w1x, w3, h, h, d, false, false, false, par);
        let q = sized(&mut b.q, h * h);
        for j in 0..h {
            for k in 0..h {
                q[j * h + k] = w2[j * h + k] * b.p[k * h + j];
            }
        }
        // U = D₁Qᵀ (∂t/∂d₂), V = D₂Q (∂t/∂d₁); t_i = Σ_j d₂_ij U_ij.
        mm(sized(&mut b.u, n * h), &b.d1, &b.q, n, h, h, false, true, false, par);
        mm(sized(&mut b.v, n * h), &b.d2, &b.q, n, h, h, false, false, false, par);
        let go = sized(&mut b.go, n * d);
        let mut loss = 0.0f64;
        let betas = sized(&mut b.betas, n);
        for i in 0..n {
            let (c, w) = coef(i);
            let t: f32 = b.d2[i * h..(i + 1) * h].iter().zip(&b.u[i * h..(i + 1) * h]).map(|(a, b)| a * b).sum();
            let oo: f32 = b.o[i * d..(i + 1) * d].iter().map(|v| v * v).sum();
            loss += (w * (c * c * oo + 2.0 * c * t)) as f64;
            let alpha = w / n as f32;
            for j in 0..d {
                go[i * d + j] = alpha * 2.0 * c * c * b.o[i * d + j];
            }
            betas[i] = alpha * 2.0 * c;
        }
        loss /= n as f64;
        // Backward. Output layer.
        let (gw, gb) = (&mut l3w.g, &mut l3b.g);
        mm(gw, &b.go, &b.a2, d, h, n, true, false, false, par);
        col_sums(gb, &b.go, n, d);
        let g2 = sized(&mut b.g2, n * h);
        mm(g2, &b.go, w3, n, h, d, false, false, false, par);
        through_activation(g2, &b.d2, &b.e2, &b.u, betas, h);
        let (gw, gb) = (&mut l2w.g, &mut l2b.g);
        mm(gw, &b.g2, &b.a1, h, h, n, true, false, false, par);
        col_sums(gb, &b.g2, n, h);
        let g1 = sized(&mut b.g1, n * h);
        mm(g1, &b.g2, w2, n, h, h, false, false, false, par);
        through_activation(g1, &b.d1, &b.e1, &b.v, betas, h);
        let (gw, gb) = (&mut l1w.g, &mut l1b.g);
        mm(gw, &b.g1, &b.h0, h, w0, n, true, false, false, par);
        col_sums(gb, &b.g1, n, h);
        // Through Q: G = Σ β d₂ d₁ᵀ (rows of D₂ scaled by β, reusing U's buffer).
        for i in 0..n {
            for j in i * h..(i + 1) * h {
                b.u[j] = betas[i] * b.d2[j];
            }
        }
        mm(sized(&mut b.gq, h * h), &b.u, &b.d1, h, h, n, true, false, false, par);
        let dp = sized(&mut b.dp, h * h);
        let gw2 = &mut l2w.g;
        for j in 0..h {
            for k in 0..h {
                let gq = b.gq[j * h + k];
                gw2[j * h + k] += gq * b.p[k * h + j];
                dp[k * h + j] = gq * w2[j * h + k];
            }
        }
        // ∂W₁ₓ += ∂P W_outᵀ (H×D, into the first D columns of ∂W₁); ∂W_out += W₁ₓᵀ ∂P.
        let tmp = sized(&mut b.tmp, h * d);
        mm(tmp, &b.dp, w3, h, d, h, false, true, false, par);
        let gw1 = &mut l1w.g;
        for k in 0..h {
            for (g, t) in gw1[k * w0..k * w0 + d].iter_mut().zip(&tmp[k * d..(k + 1) * d]) {
                *g += t;
            }
        }
        mm(&mut l3w.g, &b.w1x, &b.dp, d, h, h, true, false, true, par);
        loss
    }

    pub fn grads(&self, l: usize) -> (&[f32], &[f32]) {
        (&self.params[l].0.g, &self.params[l].1.g)
    }

    /// One training step (Adam); returns the loss before the update.
    pub fn step(&mut self, x: &[f32], sigma: Option<&[f32]>) -> f64 {
        let l = self.loss_and_grad(x, sigma);
        if l.is_finite() {
            self.t += 1;
            adam(&mut self.params, self.t, self.lr);
        }
        l
    }

    pub fn store(&self, model: &MlpScore, vars: &candle_nn::VarMap) -> Result<()> {
        store(&self.params, model, vars)
    }
}

impl crate::train::ToyStep for FastIsm {
    const NAME: &'static str = "fast_ism";

    /// The training points (perturbed on the ladder, if any); the trace is exact.
    fn train(&mut self, x0: &[f64], d: usize, objective: &crate::objectives::TrainObjective, rng: &mut crate::rng::Rng) -> Result<f64> {
        let (x, sig) = crate::train::training_points(x0, d, objective.sigmas.as_deref(), rng);
        Ok(self.step(&x, sig.as_deref()))
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn store(&self, model: &MlpScore, varmap: &candle_nn::VarMap) -> Result<()> {
        FastIsm::store(self, model, varmap)
    }
}
