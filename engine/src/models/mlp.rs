//! The noise-conditional MLP score net S(x, σ) = W_out·h_L + b (optionally / σ, as in NCSNv2),
//! input [x, log σ], with forward-mode tangents and, at depth ≤ 2, the exact trace in closed form.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;

use super::layers::{ActivationOps, Arch, Dense, Probes, Tangents, build_layers, first_tangent, input_weights, inputs};
use crate::rng::Rng;

/// The noise-conditional MLP score net.
pub struct MlpScore {
    pub arch: Arch,
    pub layers: Vec<Dense>,
    pub out: Dense,
}

impl MlpScore {
    pub fn new(arch: Arch, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let (layers, out) = build_layers(&arch, arch.dim, varmap, rng, dev)?;
        Ok(MlpScore { arch, layers, out })
    }

    pub fn score(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        for l in &self.layers {
            h = self.arch.activation.eval(&l.forward(&h)?, 0)?.0;
        }
        let s = self.out.forward(&h)?;
        match scale {
            Some(c) => s.broadcast_mul(&c),
            None => Ok(s),
        }
    }

    /// S and the exact trace in closed form for depth ≤ 2, using the cyclic property:
    /// tr(W_out D₂ W₂ D₁ W₁ₓ) = d₂ᵀ (W₂ ⊙ Mᵀ) d₁ with M = W₁ₓ W_out (H×H, parameters only) and
    /// d_l = a'(z_l); depth 1: d₁ · diag(M). Cost N·H² instead of D·N·H² for D tangents.
    /// None for deeper nets (use tangents).
    pub fn score_and_trace_closed(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Option<(Tensor, Tensor)>> {
        if self.arch.depth > 2 {
            return Ok(None);
        }
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        let mut d1s = Vec::with_capacity(2);
        for l in &self.layers {
            let (a, d1, _) = self.arch.activation.eval(&l.forward(&h)?, 1)?;
            d1s.push(d1.expect("order 1"));
            h = a;
        }
        let mut s = self.out.forward(&h)?;
        let w1x = input_weights(&self.layers[0].w, self.arch.dim)?;
        let m = w1x.matmul(&self.out.w)?; // (H, H)
        let mut tr = if self.arch.depth == 1 {
            let n = m.dim(0)?;
            let diag = (m * Tensor::eye(n, x.dtype(), x.device())?)?.sum(1)?; // (H,)
            d1s[0].broadcast_mul(&diag)?.sum(1)?
        } else {
            let a = (&self.layers[1].w * m.t()?)?; // (H, H)
            (d1s[0].matmul(&a.t()?)? * &d1s[1])?.sum(1)?
        };
        if let Some(c) = &scale {
            s = s.broadcast_mul(c)?;
            tr = (tr * c.squeeze(1)?)?;
        }
        Ok(Some((s, tr)))
    }

    pub fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        let mut dz = first_tangent(&self.layers[0].w, self.arch.dim, probes)?;
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                let (k, n, hd) = dz.dims3()?;
                dz = dz.reshape((k * n, hd))?.matmul(&l.w.t()?)?.reshape((k, n, l.w.dim(0)?))?;
            }
            let (a, d1, _) = self.arch.activation.eval(&l.forward(&h)?, 1)?;
            dz = dz.broadcast_mul(&d1.expect("order 1"))?; // dh_l
            h = a;
        }
        let mut s = self.out.forward(&h)?;
        if let Some(c) = &scale {
            s = s.broadcast_mul(c)?;
        }
        Ok(Tangents { score: s, t: dz, p: self.out.w.clone(), scale })
    }
}
