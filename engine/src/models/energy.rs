//! The energy net q(x, σ; θ): p_θ ∝ e^q and S = ∇ₓq, computed in closed form (a hand-written
//! backward through the MLP, as candle ops so it stays differentiable in θ); its tangents are
//! Hessian-vector products, which need a''.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;

use super::layers::{ActivationOps, Arch, Dense, Probes, Tangents, build_layers, first_tangent, input_weights, inputs};
use crate::rng::Rng;

/// The energy net q(x, σ; θ): p_θ ∝ e^q, S = ∇ₓq in closed form.
pub struct EnergyNet {
    pub arch: Arch,
    pub layers: Vec<Dense>,
    pub out: Dense,
}

impl EnergyNet {
    pub fn new(arch: Arch, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let (layers, out) = build_layers(&arch, 1, varmap, rng, dev)?;
        Ok(EnergyNet { arch, layers, out })
    }

    /// q(x, σ) (N, 1), including the 1/σ factor when `scale_by_sigma`.
    pub fn energy(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        for l in &self.layers {
            h = self.arch.activation.eval(&l.forward(&h)?, 0)?.0;
        }
        let q = self.out.forward(&h)?;
        match scale {
            Some(c) => q.broadcast_mul(&c),
            None => Ok(q),
        }
    }

    /// Forward pass keeping z_l, a'(z_l), a''(z_l); then δz_l = ∂q/∂z_l backwards.
    fn backward_pass(&self, x: &Tensor, sigma: Option<&Tensor>, order: usize) -> Result<Pass> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        let mut d1s = Vec::new();
        let mut d2s = Vec::new();
        for l in &self.layers {
            let (a, d1, d2) = self.arch.activation.eval(&l.forward(&h)?, order)?;
            d1s.push(d1.expect("order ≥ 1"));
            d2s.push(d2);
            h = a;
        }
        // δh_L = w_out (1, H); δz_l = a'(z_l) ⊙ δh_l; δh_{l−1} = δz_l W_l.
        let mut dh = self.out.w.clone();
        let mut dzs = vec![None; self.layers.len()];
        for l in (0..self.layers.len()).rev() {
            let dz = d1s[l].broadcast_mul(&dh)?;
            if l > 0 {
                dh = dz.matmul(&self.layers[l].w)?;
            }
            dzs[l] = Some((dz, dh.clone()));
        }
        let dz1 = dzs[0].as_ref().expect("depth ≥ 1").0.clone();
        let w1x = input_weights(&self.layers[0].w, self.arch.dim)?;
        let mut s = dz1.matmul(&w1x)?;
        if let Some(c) = &scale {
            s = s.broadcast_mul(c)?;
        }
        Ok(Pass { score: s, scale, d1s, d2s, dzs: dzs.into_iter().map(|v| v.expect("filled")).collect() })
    }

    pub fn score(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.backward_pass(x, sigma, 1)?.score)
    }

    /// Hessian-vector products of q by forward-mode through the closed-form score.
    pub fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents> {
        let pass = self.backward_pass(x, sigma, 2)?;
        let nl = self.layers.len();
        // Forward tangents dz_l.
        let mut dzs = Vec::with_capacity(nl);
        let mut dz = first_tangent(&self.layers[0].w, self.arch.dim, probes)?;
        for l in 0..nl {
            if l > 0 {
                let dh = dz.broadcast_mul(&pass.d1s[l - 1])?;
                let (k, n, hd) = dh.dims3()?;
                dz = dh.reshape((k * n, hd))?.matmul(&self.layers[l].w.t()?)?.reshape((k, n, self.arch.hidden))?;
            }
            dzs.push(dz.clone());
        }
        // Backward tangents: dδz_l = a''(z_l)⊙dz_l⊙δh_l + a'(z_l)⊙dδh_l; dδh_{l−1} = dδz_l W_l.
        let mut ddh: Option<Tensor> = None;
        let mut ddz = None;
        for l in (0..nl).rev() {
            let d2 = pass.d2s[l].as_ref().expect("order 2");
            let dh_l = if l + 1 < nl { pass.dzs[l + 1].1.clone() } else { self.out.w.clone() };
            let mut v = dzs[l].broadcast_mul(&(d2.broadcast_mul(&dh_l))?)?;
            if let Some(ddh) = &ddh {
                v = (v + ddh.broadcast_mul(&pass.d1s[l])?)?;
            }
            if l > 0 {
                let (k, n, hd) = v.dims3()?;
                ddh = Some(v.reshape((k * n, hd))?.matmul(&self.layers[l].w)?.reshape((k, n, self.arch.hidden))?);
            }
            ddz = Some(v);
        }
        let w1x = input_weights(&self.layers[0].w, self.arch.dim)?;
        Ok(Tangents { score: pass.score, t: ddz.expect("depth ≥ 1"), p: w1x.t()?, scale: pass.scale })
    }
}

struct Pass {
    score: Tensor,
    scale: Option<Tensor>,
    d1s: Vec<Tensor>,
    d2s: Vec<Option<Tensor>>,
    /// (δz_l, δh_{l−1}) per layer; δh_{l−1} is unused for l = 0.
    dzs: Vec<(Tensor, Tensor)>,
}
